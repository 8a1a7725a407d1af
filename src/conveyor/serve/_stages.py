"""The served model as conveyor stages, over batches of requests.

One item of the serving pipeline is a *batch*: a list of requests. The stages are

    pre (per request)  →  model (the handler, on the whole batch)  →  post (per request)

and the model stage is a class stage, so each worker loads the model once
(:class:`ModelStage`). No exception ever leaves a stage: a batch whose handler
raises is run again one request at a time, so that only the request that fails
gets a :class:`Failure` (with an error id, logged with its traceback), and the
pipeline, the service and the server go on. The same pipeline runs a batch job:
``endpoint.pipeline().run(batches)``.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("conveyor.serve")


@dataclass(frozen=True)
class Failure:
    """A request that failed inside the pipeline: ``error_id`` is in the log with the
    traceback; ``load`` is True when the model itself could not be loaded."""

    error_id: str
    message: str
    load: bool = False


def _fail(exc: BaseException, what: str, *, load: bool = False) -> Failure:
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "error %s: %s raised %s: %s\n%s",
        error_id,
        what,
        type(exc).__name__,
        exc,
        "".join(traceback.format_exception(exc)),
    )
    return Failure(error_id, f"{type(exc).__name__}: {exc}", load)


@dataclass(frozen=True)
class ModelSource:
    """Where a worker gets its model: a registry reference (resolved to one version
    before the workers start), or an object given as it is (None: the handler needs no
    model)."""

    store: str | None = None
    version: str | None = None  # "name:3"
    trust_pickle: bool = False
    obj: Any = None

    def load(self) -> Any:
        if self.version is None:
            return self.obj
        from conveyor.models import ModelRegistry

        with ModelRegistry(self.store) as registry:
            return registry.load(self.version, trust_pickle=self.trust_pickle)


class ModelStage:
    """The model as a class stage: ``handler(model)`` is made once per worker, then
    called with each batch. An empty batch is a load probe (warm-up)."""

    def __init__(self, source: ModelSource, handler: Callable[[Any], Any]) -> None:
        self.load_error: Failure | None = None
        try:
            self.instance = handler(source.load())
        except Exception as exc:
            self.load_error = _fail(exc, f"loading model {source.version or ''}".strip(), load=True)

    def __call__(self, batch: list[Any]) -> list[Any]:
        if self.load_error is not None:
            return [self.load_error] * max(1, len(batch))
        if not batch:
            return []
        live = [i for i, r in enumerate(batch) if not isinstance(r, Failure)]
        out = list(batch)
        results = self._call([batch[i] for i in live])
        for i, result in zip(live, results, strict=False):
            out[i] = result
        return out

    def _call(self, requests: list[Any]) -> list[Any]:
        if not requests:
            return []
        try:
            results = list(self.instance(requests))
            if len(results) != len(requests):
                raise ValueError(
                    f"the handler returned {len(results)} results for a batch of "
                    f"{len(requests)} requests; return one per request, in order"
                )
            return results
        except Exception as exc:
            if len(requests) == 1:
                return [_fail(exc, "the model")]
        return [self._call([r])[0] for r in requests]  # find the one that fails

    def close(self) -> None:
        close = getattr(getattr(self, "instance", None), "close", None)
        if close is not None:
            close()


class EachRequest:
    """A per-request function over a batch (pre- or post-processing); a request it
    raises on becomes a Failure, the others go on."""

    def __init__(self, fn: Callable[[Any], Any], what: str) -> None:
        self.fn = fn
        self.what = what

    def __call__(self, batch: list[Any]) -> list[Any]:
        out = []
        for request in batch:
            if isinstance(request, Failure):
                out.append(request)
                continue
            try:
                out.append(self.fn(request))
            except Exception as exc:
                out.append(_fail(exc, self.what))
        return out
