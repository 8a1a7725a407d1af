"""The server's Prometheus metrics, in a registry of its own (two servers in one
process never share counters)."""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests by status code, latency and batch-size histograms, queue depth,
    batches in flight, the version served and the swaps made."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            from conveyor.errors import ServeError

            raise ServeError(
                "serving needs the serve extra: pip install 'conveyor[serve]'"
            ) from None
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "conveyor_serve_requests", "Requests answered, by HTTP status", ["code"], registry=r
        )
        self.latency = prom.Histogram(
            "conveyor_serve_request_seconds",
            "Time from a request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "conveyor_serve_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = prom.Histogram(
            "conveyor_serve_batch_seconds",
            "Service time of a batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = prom.Gauge(
            "conveyor_serve_queue_depth", "Requests waiting for a batch", registry=r
        )
        self.in_flight = prom.Gauge(
            "conveyor_serve_batches_in_flight", "Batches running in the pipeline", registry=r
        )
        self.version = prom.Gauge(
            "conveyor_serve_model_version", "The model version served", registry=r
        )
        self.swaps = prom.Counter(
            "conveyor_serve_swaps", "Versions swapped in after an alias moved", registry=r
        )

    def exposition(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def sample(self, name: str, labels: dict[str, str] | None = None) -> Any:
        return self.registry.get_sample_value(name, labels or {})
