"""What is served: a model (from the registry, or given), a handler that runs it on a
batch, the request's declared type, and the batcher's limits.

::

    endpoint = Endpoint("digits@champion", handler=Classify, input_type=Digits,
                        max_batch=32, target_p95=0.050)
    endpoint.pipeline(version)     # the conveyor pipeline a batch job runs too
    serve(endpoint, port=8000)     # or: conveyor serve digits@champion

A *handler* is a class: ``Handler(model)`` once per worker, then
``handler(requests) -> results``, one result per request, in order. Without one,
the model's format chooses (:class:`Predict`): scikit-learn's ``predict``, a torch
module's forward pass, an ONNX session's ``run``, on ``{"inputs": [...]}`` requests.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import ServeError
from conveyor.serve._stages import EachRequest, ModelSource, ModelStage


class Predict:
    """The default handler: ``{"inputs": [...]}`` requests stacked into one array and run
    through the model in one call (scikit-learn ``predict``, a torch module, or an ONNX
    session), answered ``{"outputs": ...}`` per request."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, requests: list[Any]) -> list[Any]:
        import numpy as np

        rows = [r["inputs"] if isinstance(r, dict) else r.inputs for r in requests]
        x = np.asarray(rows, dtype=np.float32)
        model = self.model
        if hasattr(model, "get_inputs") and hasattr(model, "run"):  # onnxruntime session
            y = model.run(None, {model.get_inputs()[0].name: x})[0]
        elif hasattr(model, "predict"):
            y = model.predict(x)
        elif callable(model):
            import torch

            with torch.inference_mode():
                y = model(torch.from_numpy(x)).numpy()
        else:
            raise ServeError(
                f"the default handler cannot run a {type(model).__name__} (a state dict "
                "needs its builder at registration); give a handler class"
            )
        return [{"outputs": np.asarray(row).tolist()} for row in y]


def default_input_type(signature: dict[str, Any] | None) -> Any:
    """A pydantic model of ``{"inputs": [...]}`` from a registered signature
    (``{"shape": [4]}`` → a list of exactly 4 numbers)."""
    from pydantic import Field, create_model

    shape = (signature or {}).get("shape")
    if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int):
        inputs: Any = (list[float], Field(min_length=shape[0], max_length=shape[0]))
    else:
        inputs = (list[Any], ...)
    return create_model("Inputs", inputs=inputs)


def import_handler(handler: type | str) -> type:
    if isinstance(handler, str):
        module, _, attr = handler.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ServeError(
                f"handler {handler!r} cannot be imported ({exc}); write module:Class"
            ) from exc
        handler = obj
    if not isinstance(handler, type):
        raise ServeError(
            f"the handler must be a class (made once per worker with the model, then called "
            f"with each batch), not {handler!r}"
        )
    return handler


@dataclass
class Endpoint:
    """A model served over HTTP (see the module docstring for the handler).

    Args:
        model: a registry reference (``"name@alias"`` follows the alias: moving it swaps
            the served version), or None with ``obj``.
        handler: the class that runs the model on a batch, or ``"module:Class"``.
        input_type: what one request is: a pydantic model, any type pydantic reads
            (``dict[str, float]``), or ``bytes`` for binary bodies; it makes the
            OpenAPI schema and the 422 answers. Default: from the registered signature.
        obj: a model object to serve as it is (threads only), instead of ``model``.
        pre, post: per-request functions before and after the model.
        executor, workers: where the model runs (``"threads"`` or ``"processes"``), and
            how many copies of it.
        max_batch: the largest batch; ``batching=False`` sends every request alone.
        target_p95: seconds; no request is held past it for a batch to fill.
        max_queue: requests that may wait; past it, 503 with ``Retry-After``.
        max_body: bytes of a request body; past it, 413.
        example: one valid request, run at warm-up in batches of 1 to ``max_batch``
            (the batcher's first service-time fit); default from the signature.
        watch: seconds between checks of the alias (0: never), and of the rollouts
            (shadow, canary) of ``name@alias`` recorded in the store.
        rollouts: follow the store's rollouts of ``name@alias`` (False: serve the alias
            only).
        feedback_window: requests kept for ``POST /feedback`` to join labels to (0: none).
        drift_window, drift_level: requests per drift check against the served version's
            stored reference, and the check's false-alarm rate.
        features: request -> a mapping of feature columns for the drift window (default:
            ``{"inputs": [...]}`` as x0, x1, ...).
    """

    model: str | None = None
    handler: type | str | None = None
    input_type: Any = None
    obj: Any = None
    pre: Callable[[Any], Any] | None = None
    post: Callable[[Any], Any] | None = None
    executor: str = "threads"
    workers: int = 1
    max_batch: int = 32
    batching: bool = True
    target_p95: float | None = None
    max_queue: int = 1024
    max_body: int = 1 << 20
    example: Any = None
    watch: float = 1.0
    rollouts: bool = True
    feedback_window: int = 10_000
    drift_window: int = 1_000
    drift_level: float = 0.01
    features: Callable[[Any], Any] | None = None
    store: str | Path | None = None
    trust_pickle: bool = False
    name: str = ""
    _signature: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for label, value, low in (
            ("max_batch", self.max_batch, 1),
            ("max_queue", self.max_queue, 1),
            ("max_body", self.max_body, 1),
            ("workers", self.workers, 1),
            ("drift_window", self.drift_window, 1),
            ("feedback_window", self.feedback_window, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ServeError(f"{label}={value!r}: give a whole number ≥ {low}")
        if self.target_p95 is not None and not self.target_p95 > 0:
            raise ServeError(f"target_p95={self.target_p95!r}: give seconds > 0, e.g. 0.05")
        if not 0 < self.drift_level < 1:
            raise ServeError(f"drift_level={self.drift_level!r}: give a rate in (0, 1), e.g. 0.01")
        if self.executor not in ("threads", "processes"):
            raise ServeError(f"executor={self.executor!r}: serve on 'threads' or 'processes'")
        if self.model is None and self.obj is None and self.handler is None:
            raise ServeError("nothing to serve: give a registry reference, obj= or handler=")
        if self.model is not None:
            from conveyor.models import parse_ref

            parse_ref(self.model)  # a bad reference fails here, naming it
        self.name = self.name or (self.model or "model").replace("@", "-").replace(":", "-")
        self.handler = import_handler(self.handler) if self.handler is not None else Predict
        if not self.batching:
            self.max_batch = 1

    def describe(self, signature: dict[str, Any] | None) -> None:
        """Take what the registered version declares (its input signature)."""
        self._signature = signature
        if self.input_type is None and self.handler is Predict:
            self.input_type = default_input_type(signature)
        if self.example is None and signature and isinstance(signature.get("shape"), list):
            shape = signature["shape"]
            if len(shape) == 1 and isinstance(shape[0], int):
                self.example = {"inputs": [0.0] * shape[0]}

    def pipeline(self, version: str | None = None) -> Any:
        """The conveyor pipeline that serves ``version`` (``"name:3"``): items are batches
        (lists of requests), results lists of answers, one per request. A batch job
        runs the same pipeline: ``endpoint.pipeline("digits:3").run(batches)``."""
        import conveyor as cv

        source = ModelSource(
            store=None if self.store is None else str(self.store),
            version=version,
            trust_pickle=self.trust_pickle,
            obj=self.obj,
        )
        assert isinstance(self.handler, type)
        policy: dict[str, Any] = {"executor": self.executor, "workers": self.workers}
        stages = []
        if self.pre is not None:
            stages.append(cv.Stage(EachRequest(self.pre, "pre"), name="pre", **policy))
        model = functools.partial(ModelStage, source, self.handler)
        stages.append(cv.Stage(model, name="model", **policy))
        if self.post is not None:
            stages.append(cv.Stage(EachRequest(self.post, "post"), name="post", **policy))
        return cv.Pipeline(f"serve-{self.name}", stages)
