"""Server: an :class:`Endpoint` on uvicorn, its deployments, warm-up and hot swap.

Start-up answers ``/health`` at once and loads the model in the background; ``/ready``
turns 200 only when the first version is loaded and warm (a load probe, then the
example request in batches of 1, 2, 4 ... ``max_batch``, which also gives the batcher
its first service-time fit). A model that fails to load keeps ``/ready`` at 503 with
the error.

Hot swap: every ``watch`` seconds the alias is read again; when it points at another
version, that version is deployed beside the running one and warmed, then the
batcher sends new batches to it, and the old one drains (it answers every batch it
was sent) and stops. A version that fails to load is not swapped in: the old one
goes on serving and ``/ready`` carries the error as ``swap_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from conveyor.errors import ServeError
from conveyor.serve._batcher import Batcher, Deployment, format_report
from conveyor.serve._endpoint import Endpoint
from conveyor.serve._metrics import ServeMetrics
from conveyor.serve._monitor import Monitor
from conveyor.serve._rollout import Traffic
from conveyor.serve._stages import Failure

log = logging.getLogger("conveyor.serve")
WARM_TIMEOUT = 600.0
WARM_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # each twice; the fit keeps the faster


class Server:
    """Serves ``endpoint`` on ``host:port`` (127.0.0.1 by default; port 0 picks a free
    one). ``run()`` blocks until SIGINT/SIGTERM; ``start()`` serves from a thread of its
    own until ``stop()`` (also a context manager)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_level: str = "warning",
    ) -> None:
        self.endpoint = endpoint
        self.host, self.port, self.log_level = host, port, log_level
        self.metrics = ServeMetrics()
        self.version: str | None = None
        self.ready = False
        self.load_error: str | None = None
        self.swap_error: str | None = None
        self.batcher: Batcher = None  # type: ignore[assignment]  # made at start-up
        self.traffic: Traffic | None = None  # rollouts of name@alias (made at start-up)
        self.monitor: Monitor | None = None  # feedback and drift (made at start-up)
        self._failed_version: str | None = None
        if endpoint.model is not None:
            from conveyor.models import ModelRegistry

            with ModelRegistry(endpoint.store) as registry:
                first = registry.resolve(endpoint.model)  # a missing model fails here
            self.version = first.ref
            endpoint.describe(first.signature)
        self.warm_item: Any = endpoint.example
        from conveyor.serve._app import make_app

        self.app = make_app(self)
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self.on_listen: Callable[[str], None] | None = None  # told the URL once it listens
        self.on_stop: Callable[[], None] | None = None  # called once the last request is answered

    # --- state --------------------------------------------------------------------------

    def not_ready_reason(self) -> str:
        if self.load_error is not None:
            return f"the model failed to load: {self.load_error}"
        return "the model is loading and warming up"

    def report(self) -> str:
        """The batcher's figures: predicted against measured p95, batches, service time."""
        if self.batcher is None:
            return "no request was served"
        return format_report(self.batcher.report(), self.endpoint.target_p95)

    # --- deployments (on worker threads) ----------------------------------------------

    def _deploy(self, version: str | None) -> tuple[Deployment, list[tuple[int, float]]]:
        """Start ``version``'s pipeline, load it (a probe) and warm it; raise ServeError
        with the reason when it cannot serve."""
        service = self.endpoint.pipeline(version).start(record=False)
        try:
            probe = service.submit([]).result(WARM_TIMEOUT)
            failures = [r for r in probe if isinstance(r, Failure)]
            fits: list[tuple[int, float]] = []
            example = self.warm_item
            sizes = [1] + [n for n in WARM_SIZES if n <= self.endpoint.max_batch] * 2
            for n in sizes if example is not None and not failures else ():
                start = time.perf_counter()
                answers = service.submit([example] * n).result(WARM_TIMEOUT)
                fits.append((n, time.perf_counter() - start))
                failures = [r for r in answers if isinstance(r, Failure)]
                if failures:
                    break
            if failures:
                raise ServeError(f"{failures[0].message} (error id {failures[0].error_id})")
        except BaseException:
            service.stop(drain=False)
            raise
        return Deployment(version, service), fits

    async def _first_deploy(self) -> None:
        try:
            deployment, fits = await asyncio.to_thread(self._deploy, self.version)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("%s cannot serve: %s", self.version or self.endpoint.name, exc)
            return
        self._start_batcher(deployment, fits)
        self.ready = True

    def _start_batcher(self, deployment: Deployment, fits: list[tuple[int, float]]) -> None:
        e = self.endpoint
        self.batcher = Batcher(
            deployment,
            max_batch=e.max_batch,
            max_queue=e.max_queue,
            target=e.target_p95,
            workers=e.workers,
            metrics=self.metrics,
        )
        self.batcher.refit(fits)
        self.batcher.traffic = self.traffic
        self.batcher.start()
        self._set_version_gauge()

    def _set_version_gauge(self) -> None:
        if self.version is not None:
            self.metrics.version.set(int(self.version.rsplit(":", 1)[1]))

    async def _watch(self) -> None:
        from conveyor.models import ModelRegistry

        e = self.endpoint
        assert e.model is not None
        while True:
            await asyncio.sleep(e.watch)
            if not self.ready:
                continue
            try:
                if "@" in e.model:
                    await self.check_alias(ModelRegistry)
                if self.monitor is not None:
                    await asyncio.to_thread(self.monitor.flush, self._served_version())
                if self.traffic is not None:
                    await self.traffic.sync(self._served_version())
            except Exception as exc:  # the store unreadable for a moment: go on serving
                log.warning("could not read %s's alias or rollout: %s", e.model, exc)

    def _served_version(self) -> int | None:
        return None if self.version is None else int(self.version.rsplit(":", 1)[1])

    def arm_version(self, arm: str | None) -> int | None:
        """The version that answered a request served by ``arm`` of a canary."""
        route = None if self.traffic is None else self.traffic.route
        if arm == "candidate" and route is not None:
            return route.candidate
        return self._served_version()

    async def check_alias(self, registry_class: Any = None) -> bool:
        """Read the alias now; swap in the version it points at if that changed. Return
        whether a swap happened."""
        if registry_class is None:
            from conveyor.models import ModelRegistry as registry_class
        e = self.endpoint

        def resolve() -> str:
            with registry_class(e.store) as registry:
                return str(registry.resolve(e.model).ref)

        version = await asyncio.to_thread(resolve)
        if version == self.version or version == self._failed_version:
            return False
        warm = None if self.traffic is None else self.traffic.take(int(version.rsplit(":", 1)[1]))
        try:
            if warm is not None:  # the rollout's candidate, promoted: already warm
                deployment, fits = warm, list[tuple[int, float]]()
            else:
                deployment, fits = await asyncio.to_thread(self._deploy, version)
        except Exception as exc:
            self._failed_version, self.swap_error = version, f"{version}: {exc}"
            log.error("not swapping to %s, which cannot serve: %s", version, exc)
            return False
        self.batcher.swap(deployment)
        if fits:
            self.batcher.refit(fits)  # the new version's own service time
        log.info("swapped %s → %s", self.version, version)
        self.version, self.swap_error = version, None
        self.metrics.swaps.inc()
        self._set_version_gauge()
        return True

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        asyncio.get_running_loop().call_soon(self._listening)
        e = self.endpoint
        if e.model is not None and e.watch > 0:
            from conveyor.lifecycle import LifecycleLog
            from conveyor.models import parse_ref

            ref = parse_ref(e.model)
            store = await asyncio.to_thread(LifecycleLog, e.store)
            self.monitor = Monitor(
                ref.name,
                store=store,
                keep=e.feedback_window,
                drift_window=e.drift_window,
                drift_level=e.drift_level,
                features=e.features,
            )
            if e.rollouts and ref.alias is not None:
                self.traffic = Traffic(ref.name, ref.alias, store, self._deploy)
        # after the rollouts' state exists: the first batcher is made with it
        tasks = [asyncio.create_task(self._first_deploy())]
        if self.monitor is not None:
            tasks.append(asyncio.create_task(self._watch()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.batcher is not None:
                await self.batcher.close()
                deployment = self.batcher.deployment
                await asyncio.to_thread(deployment.service.stop, drain=True)
            if self.traffic is not None:
                await asyncio.to_thread(self.traffic.close)
            if self.monitor is not None:
                with contextlib.suppress(Exception):  # the last labels, if the store takes them
                    await asyncio.to_thread(self.monitor.flush, self._served_version())
                await asyncio.to_thread(self.monitor.store.close)
            self.ready = False
            if self.on_stop is not None:
                self.on_stop()

    # --- running ------------------------------------------------------------------------

    def _listening(self) -> None:
        if self._uvicorn is None or not self._uvicorn.started:
            asyncio.get_running_loop().call_later(0.01, self._listening)
            return
        self.port = int(self._uvicorn.servers[0].sockets[0].getsockname()[1])
        if self.on_listen is not None:
            self.on_listen(self.url)

    def _config(self) -> Any:
        try:
            import uvicorn
        except ImportError:
            raise ServeError(
                "serving needs the serve extra: pip install 'conveyor[serve]'"
            ) from None
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level=self.log_level,
            access_log=False,
            lifespan="on",
        )
        return uvicorn.Server(config)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (then drain and stop)."""
        self._uvicorn = self._config()
        self._uvicorn.run()
        if self._uvicorn.started is False and not self._uvicorn.should_exit:
            raise ServeError(f"could not serve on {self.host}:{self.port} (is the port in use?)")

    def start(self, *, timeout: float = 30.0) -> Server:
        """Serve from a thread of this process; return once the socket listens (not
        necessarily ready: see :meth:`wait_ready`)."""
        self._uvicorn = self._config()
        self._thread = threading.Thread(
            target=self._uvicorn.run, name="conveyor-serve-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeError(
                    f"the server did not start on {self.host}:{self.port} (a port in use?)"
                )
            time.sleep(0.005)
        sockets = self._uvicorn.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until ``/ready`` would say 200 (True), or the model failed to load, or
        ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.load_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.ready

    def stop(self, timeout: float = 60.0) -> None:
        """Stop serving: in-flight requests are answered, then every worker stops."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
