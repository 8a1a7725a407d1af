"""``conveyor serve REF``: serve a registered model over HTTP.

::

    $ conveyor serve digits@champion                       # 127.0.0.1:8000
    $ conveyor serve digits@champion --handler app:Classify --max-batch 64 --target-p95 50
    $ curl -d '{"inputs": [0.1, 0.2, 0.3, 0.4]}' localhost:8000/predict

The alias is read again every ``--watch`` seconds: moving it (``conveyor models
alias``) swaps the served version with no failed request. SIGINT or SIGTERM stops
the server after the requests in flight are answered, and prints the batcher's
report (predicted against measured p95). Needs ``pip install 'conveyor[serve]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from conveyor.errors import ServeError


@click.command("serve")
@click.argument("ref")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port.")
@click.option("--handler", default=None, help="module:Class that runs the model on a batch.")
@click.option("--executor", type=click.Choice(["threads", "processes"]), default="threads")
@click.option("--workers", default=1, show_default=True, type=int, help="Copies of the model.")
@click.option("--max-batch", default=32, show_default=True, type=int)
@click.option("--no-batching", is_flag=True, help="Send every request alone.")
@click.option("--target-p95", type=float, default=None, help="Milliseconds no wait may pass.")
@click.option("--max-queue", default=1024, show_default=True, type=int, help="Then 503.")
@click.option("--max-body", default=1 << 20, show_default=True, type=int, help="Bytes; then 413.")
@click.option(
    "--watch", default=1.0, show_default=True, type=float, help="Seconds between alias checks."
)
@click.option("--trust-pickle", is_flag=True, help="Load a pickled model (it can run code).")
@click.option(
    "--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None
)
def serve_command(
    ref: str,
    host: str,
    port: int,
    handler: str | None,
    executor: str,
    workers: int,
    max_batch: int,
    no_batching: bool,
    target_p95: float | None,
    max_queue: int,
    max_body: int,
    watch: float,
    trust_pickle: bool,
    store_path: Path | None,
) -> None:
    """Serve the registered model REF (name, name:VERSION or name@ALIAS) over HTTP."""
    try:
        from conveyor.serve import Endpoint, Server
    except ImportError as exc:
        raise ServeError(
            f"conveyor serve needs the serve extra ({exc.name} is not installed): "
            "pip install 'conveyor[serve]'"
        ) from exc
    endpoint = Endpoint(
        ref,
        handler=handler,
        executor=executor,
        workers=workers,
        max_batch=max_batch,
        batching=not no_batching,
        target_p95=None if target_p95 is None else target_p95 / 1000,
        max_queue=max_queue,
        max_body=max_body,
        watch=watch,
        store=store_path,
        trust_pickle=trust_pickle,
    )
    server = Server(endpoint, host=host, port=port, log_level="warning")
    server.on_listen = lambda url: click.echo(
        f"serving {ref} ({server.version}) on {url}", err=True
    )
    server.on_stop = lambda: click.echo(server.report(), err=True)
    try:
        server.run()  # uvicorn drains on SIGINT/SIGTERM, then raises the signal again
    except KeyboardInterrupt:
        sys.exit(130)
