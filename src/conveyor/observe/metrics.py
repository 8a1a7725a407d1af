"""Prometheus metrics of a running pipeline (the ``metrics`` extra: prometheus_client).

:class:`Metrics` is an instrument that counts a run's events; its registry
exposes them in the Prometheus format, on an HTTP endpoint bound to 127.0.0.1
by default::

    metrics = Metrics()
    port = metrics.serve(9464)              # http://127.0.0.1:9464/metrics
    pipeline.run(instruments=[metrics])
    metrics.close()

Every series carries ``pipeline`` and, per stage, ``stage`` labels:

    conveyor_run_up                          1 while the run goes on, 0 after
    conveyor_items_read_total                source items read
    conveyor_items_finished_total{state}     source items done / filtered / dead_lettered
    conveyor_stage_items_enqueued_total      items that entered the stage's input queue
    conveyor_stage_units_total               units (items, or batches) the stage ran
    conveyor_stage_errors_total              units that raised
    conveyor_stage_busy_seconds_total        time inside the stage's function
    conveyor_stage_service_seconds           a summary of unit service times
    conveyor_stage_queue_depth               the input queue's depth now
    conveyor_stage_workers                   the stage's pool size now
    conveyor_stage_busy_workers              tasks running now

The scheduler's thread writes the counters; the server's thread reads them at
each scrape (a figure at most one event old; ints are replaced whole, never torn).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from conveyor.core.events import Instrument, Key, RunInfo

__all__ = ["Metrics"]


def _client() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core  # the *MetricFamily classes
    except ImportError:
        raise ImportError(
            "Prometheus metrics need prometheus_client: pip install 'conveyor[metrics]'"
        ) from None
    return prometheus_client


class _Stage:
    __slots__ = ("busy", "busy_ns", "depth", "enqueued", "errors", "units", "workers")

    def __init__(self, workers: int) -> None:
        self.enqueued = 0
        self.units = 0
        self.errors = 0
        self.busy_ns = 0
        self.depth = 0
        self.workers = workers
        self.busy = 0


class Metrics(Instrument):
    """Counts one run's events for Prometheus (module docstring). Import of
    prometheus_client happens here, so the core never needs it."""

    def __init__(self) -> None:
        client = _client()
        self._client = client
        self.registry = client.CollectorRegistry()
        self.registry.register(self)
        self._pipeline = ""
        self._up = 0
        self._read = 0
        self._finished: dict[str, int] = {"done": 0, "filtered": 0, "dead_lettered": 0}
        self._stages: dict[str, _Stage] = {}
        self._server: Any = None
        self._thread: Any = None

    # --- serving -----------------------------------------------------------------------

    def serve(self, port: int = 0, *, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0: any free port); returns the port."""
        if self._server is not None:
            raise RuntimeError("these metrics are already served; call close() first")
        try:
            server, thread = self._client.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another port "
                "(or 0 for any free one)"
            ) from exc
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP server, if one was started. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def text(self) -> str:
        """The metrics in the Prometheus text format, as a scrape would see them."""
        return bytes(self._client.generate_latest(self.registry)).decode("utf-8")

    # --- the collector protocol of prometheus_client ---------------------------------

    def describe(self) -> list[Any]:
        return []  # describe nothing: families are built at collect time

    def collect(self) -> Iterator[Any]:
        core = self._client.core
        p = self._pipeline
        up = core.GaugeMetricFamily(
            "conveyor_run_up", "1 while the run goes on", labels=["pipeline"]
        )
        up.add_metric([p], self._up)
        yield up
        read = core.CounterMetricFamily(
            "conveyor_items_read", "Source items read", labels=["pipeline"]
        )
        read.add_metric([p], self._read)
        yield read
        fin = core.CounterMetricFamily(
            "conveyor_items_finished",
            "Source items finished, by state",
            labels=["pipeline", "state"],
        )
        for state, n in list(self._finished.items()):
            fin.add_metric([p, state], n)
        yield fin
        stages = list(self._stages.items())
        labels = ["pipeline", "stage"]
        families = {
            "enqueued": core.CounterMetricFamily(
                "conveyor_stage_items_enqueued",
                "Items that entered the stage's queue",
                labels=labels,
            ),
            "units": core.CounterMetricFamily(
                "conveyor_stage_units", "Units (items or batches) the stage ran", labels=labels
            ),
            "errors": core.CounterMetricFamily(
                "conveyor_stage_errors", "Units that raised", labels=labels
            ),
            "busy_s": core.CounterMetricFamily(
                "conveyor_stage_busy_seconds", "Time inside the stage's function", labels=labels
            ),
            "depth": core.GaugeMetricFamily(
                "conveyor_stage_queue_depth", "The input queue's depth", labels=labels
            ),
            "workers": core.GaugeMetricFamily(
                "conveyor_stage_workers", "The stage's pool size", labels=labels
            ),
            "busy": core.GaugeMetricFamily(
                "conveyor_stage_busy_workers", "Tasks running now", labels=labels
            ),
        }
        service = core.SummaryMetricFamily(
            "conveyor_stage_service_seconds", "Service time of the stage's units", labels=labels
        )
        for name, s in stages:
            lv = [p, name]
            families["enqueued"].add_metric(lv, s.enqueued)
            families["units"].add_metric(lv, s.units)
            families["errors"].add_metric(lv, s.errors)
            families["busy_s"].add_metric(lv, s.busy_ns / 1e9)
            families["depth"].add_metric(lv, s.depth)
            families["workers"].add_metric(lv, s.workers)
            families["busy"].add_metric(lv, s.busy)
            service.add_metric(lv, count_value=s.units, sum_value=s.busy_ns / 1e9)
        yield from families.values()
        yield service

    # --- hooks ---------------------------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        self._pipeline = run.pipeline
        self._stages = {s.name: _Stage(s.workers) for s in run.stages}
        self._up = 1

    def items_read(self, keys: Sequence[Key], t_ns: int) -> None:
        self._read += len(keys)

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        s = self._stages.get(stage)
        if s is not None:
            s.enqueued += len(keys)
            s.depth = depth

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        s = self._stages[stage]
        s.depth = depth
        s.busy += 1

    def task_finished(
        self,
        stage: str,
        task: int,
        worker: int,
        keys: Sequence[Key],
        starts_ns: Sequence[int],
        ends_ns: Sequence[int],
        error: BaseException | None,
    ) -> None:
        s = self._stages[stage]
        s.busy -= 1
        s.units += len(keys)
        if ends_ns:
            s.busy_ns += sum(ends_ns) - sum(starts_ns)
        if error is not None:
            s.errors += 1

    def roots_finished(self, roots: Sequence[int], state: str, t_ns: int) -> None:
        self._finished[state] = self._finished.get(state, 0) + len(roots)

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        self._stages[stage].workers = workers

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        self._up = 0
        for s in self._stages.values():
            s.busy = 0
