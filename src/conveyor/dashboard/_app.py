"""The dashboard's web app (Starlette): read-only pages over one run store.

Routes (every one a GET; anything else is 405)::

    /                              runs: filter by pipeline, state and date; a page of 50
    /runs/{id}                     a run: stages, the limiting stage and its evidence,
                                   model against measurement, advice, timeline, dead
                                   letters, the ledger
    /runs/{id}/live                a live run: counts, rates and queue depths over SSE
    /runs/{id}/events              the server-sent events behind it
    /api/runs/{id}/timeline        the timeline's data (lanes per worker, queue depths)
    /pipeline?name=NAME            a pipeline over time: throughput, latency, bottleneck
    /models                        the model registry: each model, its versions, aliases
    /models/{name}                 a model: versions with metrics and runs, alias history,
                                   its deployments: rollouts, traffic, lifecycle events
    /models/{name}/events/{id}     a lifecycle event: its evidence, causes and effects
    /static/{name}                 the five files of ASSETS, from memory

A run id in a URL must look like one (letters, digits, ``-``, ``_``, at most 64), an
event id is digits; a pipeline's or a model's name is only ever an SQL parameter.
Pages are rendered by Jinja2 with autoescape, and sent with a Content-Security-Policy
that runs scripts from ``/static`` only, so a stage named ``<script>`` is text, twice
over.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.dashboard._assets import load_assets, templates
from conveyor.dashboard._deployments import deployments_view, event_view
from conveyor.dashboard._models import model_view, models_view
from conveyor.dashboard._timeline import timeline_data
from conveyor.dashboard._views import (
    TERMINAL,
    RecordingCache,
    pipeline_view,
    run_view,
    runs_view,
    snapshot_view,
)
from conveyor.errors import RunNotFoundError, StoreError
from conveyor.store import RunStore

__all__ = ["create_app"]

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_ID = re.compile(r"[0-9]{1,18}")
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SSE_POLL_SECONDS = 0.25


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def missing_extra(exc: ImportError) -> ImportError:
    """The one-line error for a dashboard extra's package that is not installed."""
    return ImportError(
        f"the dashboard needs the dashboard extra ({exc.name} is not installed): "
        "pip install 'conveyor[dashboard]'"
    )


def create_app(
    store: RunStore | str | Path | None = None, *, allowed_hosts: Sequence[str] | None = None
) -> Any:
    """The dashboard as an ASGI app over the run store ``store`` (a path, or an open
    RunStore; default: as ``RunStore()`` finds it), opened read-only.

    ``allowed_hosts``: the names a request's ``Host`` header may give (default: the
    loopback names); any other is refused (400), so a web page elsewhere cannot
    reach a dashboard on 127.0.0.1 through a DNS name it rebinds. ``["*"]`` allows
    any, for a dashboard served to the network.

    Raises StoreError when there is no store there; ImportError naming the
    ``dashboard`` extra when Starlette or Jinja2 is missing."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError as exc:
        raise missing_extra(exc) from exc
    if not isinstance(store, RunStore):
        store = RunStore(store, create=False, readonly=True)
    db = store
    env = templates()
    assets = load_assets()
    cache = RecordingCache()

    def page(template: str, status: int = 200, **context: Any) -> Any:
        html = env.get_template(template).render(store=str(db.path.name), **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def problem(status: int, message: str) -> Any:
        return page("problem.html", status=status, status_code=status, message=message)

    def find_run(request: Any) -> Any:
        run_id = request.path_params["run_id"]
        if not RUN_ID.fullmatch(run_id):
            return None
        try:
            return db.get_run(run_id)
        except RunNotFoundError:
            return None

    def runs(request: Any) -> Any:
        q = request.query_params
        try:
            number = int(q.get("page") or 1)
            if number < 1:
                raise ValueError(f"page={number}: pages count from 1")
            view = runs_view(
                db,
                pipeline=q.get("pipeline"),
                state=q.get("state"),
                since=q.get("since"),
                until=q.get("until"),
                page=number,
            )
        except ValueError as exc:
            return problem(400, str(exc))
        return page("runs.html", **view)

    def run(request: Any) -> Any:
        record = find_run(request)
        if record is None:
            return problem(404, f"no run {request.path_params['run_id']!r} in this store")
        return page("run.html", **run_view(db, record, cache))

    def live(request: Any) -> Any:
        record = find_run(request)
        if record is None:
            return problem(404, f"no run {request.path_params['run_id']!r} in this store")
        return page("live.html", run=record, live=record.state not in TERMINAL)

    def timeline(request: Any) -> Any:
        record = find_run(request)
        if record is None:
            return JSONResponse({"error": "no such run"}, status_code=404, headers=HEADERS)
        rec = cache.get(db, record.id)
        if rec is None:
            return JSONResponse({"error": "no recording"}, status_code=404, headers=HEADERS)
        try:
            width = int(request.query_params.get("width") or 1000)
        except ValueError:
            return JSONResponse({"error": "width: give a number of pixels"}, 400, headers=HEADERS)
        return JSONResponse(timeline_data(rec, width=width), headers=HEADERS)

    async def events(request: Any) -> Any:
        record = find_run(request)
        if record is None:
            return JSONResponse({"error": "no such run"}, status_code=404, headers=HEADERS)
        return StreamingResponse(
            _stream(request, db, record.id),
            media_type="text/event-stream",
            headers={**HEADERS, "X-Accel-Buffering": "no"},
        )

    def pipeline(request: Any) -> Any:
        name = request.query_params.get("name") or ""
        view = pipeline_view(db, name, cache)
        if not view["total"]:
            return problem(404, f"no runs of a pipeline named {name!r} in this store")
        return page("pipeline.html", **view)

    def models(request: Any) -> Any:
        return page("models.html", **models_view(db))

    def model(request: Any) -> Any:
        name = request.path_params["name"]
        view = model_view(db, name)
        if view is None:
            return problem(404, f"no model named {name!r} in this store")
        return page("model.html", **view, deployments=deployments_view(db, name))

    def event(request: Any) -> Any:
        name, id_ = request.path_params["name"], request.path_params["event_id"]
        view = event_view(db, name, int(id_)) if EVENT_ID.fullmatch(id_) else None
        if view is None:
            return problem(404, f"no lifecycle event {id_!r} of model {name!r} in this store")
        return page("event.html", name=name, **view)

    def static(request: Any) -> Any:
        asset = assets.get(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(
            asset.body,
            media_type=asset.media_type,
            headers={**HEADERS, "Cache-Control": "max-age=3600", "ETag": asset.etag},
        )

    async def not_found(request: Any, exc: Exception) -> Any:
        status = getattr(exc, "status_code", 404)
        return problem(status, "no such page" if status == 404 else "this dashboard is read-only")

    async def store_failed(request: Any, exc: Exception) -> Any:
        return problem(503, f"the run store cannot be read: {exc}")

    routes = [
        Route("/", runs),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/live", live),
        Route("/runs/{run_id}/events", events),
        Route("/api/runs/{run_id}/timeline", timeline),
        Route("/pipeline", pipeline),
        Route("/models", models),
        Route("/models/{name}", model),
        Route("/models/{name}/events/{event_id}", event),
        Route("/static/{name}", static),
    ]
    hosts = list(LOOPBACK_NAMES if allowed_hosts is None else allowed_hosts)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={404: not_found, 405: not_found, StoreError: store_failed},
    )
    app.state.store = db
    return app


async def _stream(request: Any, store: RunStore, run_id: str) -> Any:
    """Server-sent events: each new snapshot as ``snapshot``; ``end`` once the run
    has ended (the page then shows the run's own page)."""
    from starlette.concurrency import run_in_threadpool

    after: float | None = None
    yield "retry: 1000\n\n"
    while True:
        # the state first: a run seen ended has written its last snapshot already
        state = (await run_in_threadpool(store.get_run, run_id)).state
        rows = await run_in_threadpool(snapshot_view, store, run_id, after)
        for row in rows:
            after = row["at"]
            yield f"event: snapshot\ndata: {json.dumps(row, separators=(',', ':'))}\n\n"
        if state in TERMINAL:
            yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(SSE_POLL_SECONDS)
