"""Every observer of a run holds the same memory after 10^4 and 10^5 units."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor.core.events import Instrument
from conveyor.observe.progress import Progress
from conveyor.observe.rebalance import Rebalancer
from pipesim import SimStage, simulate
from retained import walk


def lengths(make: Callable[[], Instrument], units: int) -> dict[str, int]:
    ins = make()
    simulate(
        [SimStage("a", 1, workers=2, capacity=8), SimStage("b", 2, capacity=8)],
        items=units // 2,
        instrument=ins,
        read_burst=3,
    )
    if isinstance(ins, Progress):
        ins.table()  # a render samples the rate
    out: dict[str, tuple[int, int]] = {}
    walk(ins, "observer", set(), out)
    return {k: n for k, (n, _) in out.items()}


def metrics() -> Instrument:
    pytest.importorskip("prometheus_client")
    from conveyor.observe.metrics import Metrics

    return Metrics()


@pytest.mark.parametrize("make", [Progress, lambda: Rebalancer(4), metrics])
def test_an_observer_keeps_nothing_per_item(make: Callable[[], Instrument]) -> None:
    small, big = lengths(make, 10**4), lengths(make, 10**5)
    assert small and small == big
