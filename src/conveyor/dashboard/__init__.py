"""A web dashboard over the run store: every run, live or past, explained in a browser.

::

    $ pip install 'conveyor[dashboard]'
    $ conveyor dashboard                  # http://127.0.0.1:8765, the nearest .conveyor/runs.db

or from Python::

    from conveyor.dashboard import create_app, serve
    serve(store=".conveyor/runs.db", port=8765)   # blocks; Ctrl-C stops it
    app = create_app(".conveyor/runs.db")         # an ASGI app for a server of your own

It reads the run store and nothing else (no other service, no other file), never
writes to it, and binds 127.0.0.1 unless told otherwise. Starlette, Jinja2 and
uvicorn (the ``dashboard`` extra) are imported when an app is made, not before.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from conveyor.dashboard._app import create_app, missing_extra
from conveyor.store import RunStore

__all__ = ["DEFAULT_PORT", "create_app", "exposed", "serve", "server"]

DEFAULT_PORT = 8765


def exposed(host: str) -> bool:
    """Whether ``host`` makes the dashboard reachable from other machines (anything but
    a loopback address or ``localhost``)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve to any interface


def server(
    store: RunStore | str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> Any:
    """A ``uvicorn.Server`` for the dashboard (not started): ``run()`` serves until
    ``should_exit`` is set, from any thread."""
    try:
        import uvicorn
    except ImportError as exc:
        raise missing_extra(exc) from exc
    where = store if isinstance(store, RunStore) or store is None else Path(store)
    # On a loopback address only loopback names are answered (no DNS rebinding);
    # served to the network, any name the network uses for this machine.
    app = create_app(where, allowed_hosts=["*"] if exposed(host) else None)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,  # a live page's event stream never ends by itself
        lifespan="off",
    )
    return uvicorn.Server(config)


def serve(
    store: RunStore | str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> None:
    """Serve the dashboard over ``store`` until interrupted (Ctrl-C)."""
    server(store, host=host, port=port).run()
