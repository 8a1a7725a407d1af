"""``conveyor dashboard``: the web dashboard over the run store (the dashboard extra)."""

from __future__ import annotations

from pathlib import Path

import click

from conveyor.cli.store import store_option


@click.command("dashboard")
@store_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to serve on; anything but a loopback address exposes every run "
    "(errors, item values) to whoever can reach it, without a login.",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
def dashboard_command(store_path: Path | None, host: str, port: int) -> None:
    """Serve a read-only web dashboard of the run store: runs, each run explained,
    live runs, pipelines over time. Ctrl-C stops it."""
    try:
        from conveyor.dashboard import exposed, server
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise click.ClickException(str(exc)) from None
    try:
        srv = server(store_path, host=host, port=port)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    if exposed(host):
        click.echo(
            f"warning: serving on {host}: the dashboard has no login, and anyone who can "
            "reach this address can read every run in the store (errors, item values); "
            "use --host 127.0.0.1 unless that is what you want",
            err=True,
        )
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"conveyor dashboard on http://{shown}:{port} (Ctrl-C stops it)", err=True)
    srv.run()
