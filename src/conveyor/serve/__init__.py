"""HTTP serving of models, with adaptive micro-batching (needs ``conveyor[serve]``).

::

    from conveyor.serve import Endpoint, Server

    endpoint = Endpoint("digits@champion", max_batch=32, target_p95=0.05)
    with Server(endpoint, port=8000) as server:     # 127.0.0.1 unless told otherwise
        ...                                         # POST /predict, /ready, /metrics
    Server(endpoint).run()                          # or block until Ctrl-C / SIGTERM

``conveyor serve digits@champion`` does the same from the shell. The model runs in a
conveyor pipeline (:meth:`Endpoint.pipeline`, the same one a batch job runs); the
batcher waits for more requests only when that is predicted to lower latency
(:mod:`conveyor.serve._policy`); moving the alias swaps the served version with no
failed request.
"""

from conveyor.errors import ServeError
from conveyor.serve._endpoint import Endpoint, Predict
from conveyor.serve._policy import Decision, decide
from conveyor.serve._server import Server

__all__ = ["Decision", "Endpoint", "Predict", "ServeError", "Server", "decide", "serve"]


def serve(endpoint: Endpoint, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``endpoint`` until SIGINT or SIGTERM."""
    Server(endpoint, host=host, port=port).run()
