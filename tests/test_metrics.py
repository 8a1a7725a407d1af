"""Prometheus metrics of a run: parsed with prometheus_client's own parser."""

from __future__ import annotations

import threading
import urllib.request

import pytest

import conveyor as cv

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from conveyor.observe.metrics import Metrics


def inc(x: int) -> int:
    return x + 1


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_of_a_finished_run_parse_and_add_up() -> None:
    metrics = Metrics()
    pipe = cv.Pipeline("m", [cv.Stage(inc, workers=2), cv.Stage(inc, name="again")])
    pipe.run(range(100), instruments=[metrics])
    s = parse(metrics.text())
    p = ("pipeline", "m")
    assert s[("conveyor_run_up", (p,))] == 0
    assert s[("conveyor_items_read_total", (p,))] == 100
    assert s[("conveyor_items_finished_total", (p, ("state", "done")))] == 100
    for stage, workers in (("inc", 2), ("again", 1)):
        labels = (p, ("stage", stage))
        assert s[("conveyor_stage_items_enqueued_total", labels)] == 100
        assert s[("conveyor_stage_units_total", labels)] == 100
        assert s[("conveyor_stage_errors_total", labels)] == 0
        assert s[("conveyor_stage_workers", labels)] == workers
        assert s[("conveyor_stage_queue_depth", labels)] == 0
        assert s[("conveyor_stage_service_seconds_count", labels)] == 100
        assert s[("conveyor_stage_service_seconds_sum", labels)] == pytest.approx(
            s[("conveyor_stage_busy_seconds_total", labels)]
        )


def test_live_endpoint_on_localhost_during_a_run() -> None:
    metrics = Metrics()
    port = metrics.serve(0)
    try:
        release = threading.Event()

        def gate(x: int) -> int:
            release.wait(5)
            return x

        pipe = cv.Pipeline("live", [cv.Stage(gate, workers=2)])
        with pipe.stream(range(10), instruments=[metrics]) as run:
            # The run is driven by the thread that iterates it: here, a second thread.
            t = threading.Thread(target=run.wait)
            t.start()
            deadline = 50
            text = ""
            while deadline and 'conveyor_run_up{pipeline="live"} 1.0' not in text:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
                deadline -= 1
                release.wait(0.05)
            s = parse(text)
            assert s[("conveyor_run_up", (("pipeline", "live"),))] == 1
            assert (
                s[("conveyor_stage_busy_workers", (("pipeline", "live"), ("stage", "gate")))] >= 1
            )
            release.set()
            t.join(10)
        after = parse(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
        assert (
            after[("conveyor_items_finished_total", (("pipeline", "live"), ("state", "done")))]
            == 10
        )
    finally:
        metrics.close()
    assert metrics._server is None


def test_serving_on_a_taken_port_says_so() -> None:
    first = Metrics()
    port = first.serve(0)
    try:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            Metrics().serve(port)
    finally:
        first.close()
