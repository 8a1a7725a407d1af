"""The HTTP face of a :class:`~conveyor.serve.Server`: a FastAPI app.

==========================  ===========================================================
``POST /predict``           one request: JSON of the endpoint's input type, or a binary
                            body (``application/octet-stream``) when the type is bytes
``GET /health``             200 while the process answers
``GET /ready``              200 once the model is loaded and warm; 503 with the error
``GET /metrics``            Prometheus text
``POST /feedback``          labels for served requests, joined by ``X-Request-Id``
``GET /openapi.json``       the schema, with the request body from the input type
==========================  ===========================================================

Every bad request gets an answer that names the problem: 422 for malformed JSON or a
wrong field (the field's path, what was expected), 413 for a body over ``max_body``,
415 for a media type the endpoint does not take, 503 with ``Retry-After`` when the
queue is full, 500 with an ``error_id`` (logged with its traceback) when the model
raised. Nothing a client sends can stop the server.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.
import json
from typing import TYPE_CHECKING, Any

from conveyor.serve._batcher import Overloaded
from conveyor.serve._stages import Failure

if TYPE_CHECKING:
    from conveyor.serve._server import Server


def _encode(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def make_app(server: "Server") -> Any:
    try:
        import fastapi  # noqa: F401
    except ImportError:
        from conveyor.errors import ServeError

        raise ServeError("serving needs the serve extra: pip install 'conveyor[serve]'") from None
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import TypeAdapter, ValidationError

    endpoint = server.endpoint
    binary = endpoint.input_type is bytes
    adapter = None if binary else TypeAdapter(endpoint.input_type or Any)
    schema = {"type": "string", "format": "binary"} if binary else adapter.json_schema()  # type: ignore[union-attr]
    media = "application/octet-stream" if binary else "application/json"
    if endpoint.example is not None and adapter is not None:  # warm up on what requests are
        server.warm_item = adapter.validate_python(endpoint.example)
    app = FastAPI(
        title=f"conveyor serve {endpoint.model or endpoint.name}", lifespan=server.lifespan
    )

    answered = server.metrics.requests.labels("200")

    def problem(status: int, detail: Any, **headers: str) -> Response:
        server.metrics.requests.labels(str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)

    async def body_of(request: Request) -> bytes | Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > endpoint.max_body:
            return problem(413, f"the body is {length} bytes; the limit is {endpoint.max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > endpoint.max_body:
                return problem(413, f"the body passed the limit of {endpoint.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        "/predict",
        openapi_extra={"requestBody": {"required": True, "content": {media: {"schema": schema}}}},
    )
    async def predict(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        kind = request.headers.get("content-type", media).split(";")[0].strip().lower()
        if binary:
            item: Any = body
        elif kind not in ("application/json", "") and not kind.endswith("+json"):
            return problem(415, f"send {media} (this endpoint's input is JSON), not {kind}")
        else:
            try:
                item = adapter.validate_json(body)  # type: ignore[union-attr]
            except ValidationError as exc:
                return problem(422, _errors(exc))
        if not server.ready:
            return problem(
                503, f"the model is not ready: {server.not_ready_reason()}", **{"Retry-After": "1"}
            )
        try:
            result, arm = await server.batcher.answer(item)
        except Overloaded as exc:
            return problem(503, str(exc), **{"Retry-After": str(exc.retry_after)})
        if isinstance(result, Failure):
            status = 503 if result.load else 500
            return problem(status, {"error": result.message, "error_id": result.error_id})
        answered.inc()
        headers = {}
        if server.monitor is not None:
            version = server.arm_version(arm)
            request_id = server.monitor.served_request(
                (request.headers.get("x-request-id") or "")[:128], item, result, version
            )
            headers = {"X-Request-Id": request_id, "X-Model-Version": str(version)}
        if isinstance(result, (bytes, bytearray)):
            return Response(bytes(result), media_type="application/octet-stream", headers=headers)
        try:
            text = json.dumps(result, default=_encode)
        except (TypeError, ValueError) as exc:
            return problem(
                500, {"error": f"the result cannot be sent as JSON: {exc}", "error_id": "-"}
            )
        return Response(text, media_type="application/json", headers=headers)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """Labels for served requests: ``{"request_id": ..., "label": ...}`` or a list."""
        if server.monitor is None:
            return problem(404, "this server keeps no requests for feedback (no registry model)")
        raw = await body_of(request)
        if isinstance(raw, Response):
            return raw
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            return problem(422, f"the body is not JSON: {exc}")
        entries = body if isinstance(body, list) else [body]
        unknown = []
        for entry in entries:
            if not isinstance(entry, dict) or "request_id" not in entry or "label" not in entry:
                return problem(422, 'send {"request_id": "...", "label": ...} or a list of them')
            reason = server.monitor.feedback(str(entry["request_id"]), entry["label"])
            if reason is not None:
                unknown.append(reason)
        if unknown and len(unknown) == len(entries):
            return problem(404, unknown[0])
        return JSONResponse({"joined": len(entries) - len(unknown), "unknown": unknown})

    # Requests reach `predict` through a plain Starlette route, ahead of FastAPI's: the
    # same function, without FastAPI's per-request dependency solving (it validates
    # nothing here); FastAPI's route stays for the OpenAPI schema and /docs.
    from starlette.routing import Route

    app.router.routes.insert(0, Route("/predict", predict, methods=["POST"]))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if server.ready:
            answer = {"ready": True, "version": server.version}
            if server.swap_error is not None:
                answer["swap_error"] = server.swap_error
            return JSONResponse(answer)
        return JSONResponse({"ready": False, "error": server.not_ready_reason()}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, content_type = server.metrics.exposition()
        return Response(data, media_type=content_type)

    return app


def _errors(exc: Any) -> list[dict[str, Any]]:
    """pydantic's errors, each with the field's path (``body.inputs.3``) and message."""
    out = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in ("body", *e.get("loc", ())))
        out.append({"field": loc, "message": e.get("msg", ""), "type": e.get("type", "")})
    return out
