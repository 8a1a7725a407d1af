"""How the ``conveyor`` command reports errors: one line, never a raw traceback.

Every :class:`~conveyor.ConveyorError` that reaches the command group becomes
``error: MESSAGE`` on stderr (with a ``caused by`` line when the cause adds
something) and exit code 1; see ``ConveyorGroup`` in :mod:`conveyor.cli`. Usage
mistakes stay click's (exit 2). Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

from typing import IO, Any

import click

from conveyor.errors import ConveyorError, RemoteTraceback


def describe_error(exc: BaseException) -> str:
    """``exc``'s message, and a ``caused by`` line for a cause it does not already
    name (the cause of a StageError is the stage's own exception)."""
    message = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is None or isinstance(cause, RemoteTraceback):
        return message
    text = str(cause)
    if text and text in message:
        return message
    return f"{message}\n  caused by {type(cause).__name__}" + (f": {text}" if text else "")


class OneLineError(click.ClickException):
    """A click exception shown as ``error: MESSAGE`` on stderr, exit code 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


class ConveyorProblem(OneLineError):
    """A ConveyorError as the command shows it: its message and cause, exit code 1."""

    def __init__(self, error: ConveyorError) -> None:
        super().__init__(describe_error(error))
        self.error = error
