"""How a rank's exception reaches the caller of :func:`~conveyor.train._launch.launch`.

A failing rank writes what it raised to ``$CONVEYOR_TRAIN_RUN_DIR/errors/rank-R.json``
(rank, exception type, message, where, traceback, time) before it tears down its
process group, then exits non-zero. Tearing the group down makes its neighbours
fail too (gloo: "Connection closed by peer"), so the launcher reports the earliest
error written, which is the cause, not the consequences:

    rank 1: the shard for rank 1 has 0 rows; ...        a TrainError: its own message
    rank 1 raised ValueError: ... (at data.py:38 in f)  anything else: type, message, place

either way a :class:`~conveyor.errors.TrainError` with ``rank`` set and the rank's
traceback as its ``__cause__`` (:class:`~conveyor.errors.RemoteTraceback`). The
ranks of one node share a clock, so "earliest" is well defined; with several nodes
each launcher sees only its own node's ranks.

The same exception also goes to torchelastic's error file (``TORCHELASTIC_ERROR_FILE``,
what ``@record`` writes), so torchrun's own failure summary shows the traceback.
Standard library only; torch is imported only to write torchelastic's file.
"""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from conveyor.errors import RemoteTraceback, TrainError

__all__ = ["RUN_DIR_VAR", "earliest_rank_error", "records_rank_errors", "write_rank_error"]

RUN_DIR_VAR = "CONVEYOR_TRAIN_RUN_DIR"
PROGRESS_FILE = "progress.log"  # in the run directory: ranks' progress lines, relayed by launch

F = TypeVar("F", bound=Callable[..., Any])


def _errors_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir, "errors")


def write_rank_error(exc: BaseException) -> None:
    """Record ``exc`` as this rank's error, once (the first call wins); call it in ``except``."""
    run_dir = os.environ.get(RUN_DIR_VAR)
    rank = int(os.environ.get("RANK", "0"))
    if run_dir:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        kind = type(exc)
        record = {
            "rank": rank,
            "type": kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}",
            "train_error": isinstance(exc, TrainError),
            "message": str(exc),
            "where": where,
            "traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
            "time": time.time(),
        }
        folder = _errors_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(folder / f"rank-{rank}.json", "x") as f:
                json.dump(record, f)
        except FileExistsError:
            return  # recorded already, nearer to where it was raised
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)


def records_rank_errors(fn: F) -> F:
    """Decorate a torchrun entry point: any exception it raises is recorded, then re-raised."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            write_rank_error(exc)
            raise

    return run  # type: ignore[return-value]


def earliest_rank_error(run_dir: str | os.PathLike[str]) -> TrainError | None:
    """The first error a rank of this run recorded, as a TrainError; None if none did."""
    records = []
    for path in _errors_dir(run_dir).glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a rank killed while writing: the others still tell
    if not records:
        return None
    first = min(records, key=lambda r: (r["time"], r["rank"]))
    rank = int(first["rank"])
    if first["train_error"]:
        message = f"rank {rank}: {first['message']}"
    else:
        message = f"rank {rank} raised {first['type']}: {first['message']}"
        if first["where"]:
            message += f" (at {first['where']})"
    error = TrainError(message, rank=rank)
    error.__cause__ = RemoteTraceback(first["traceback"])
    return error
