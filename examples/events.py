"""An event-processing service on conveyor: sensor readings replayed at a set rate,
anomalies flagged as they come, counts per time window, totals at the end.

The events are timestamped sensor readings in JSON lines (a file this example
writes once, from a seeded generator, with a few spikes injected), replayed at
``--rate`` events per second as a live feed would deliver them::

    parse    map, threads              a JSON line becomes an event
    score    class stage, threads      per sensor, a running mean and deviation (one
                                       detector, set up once): each event's z-score
    alerts   filter                    events far from their sensor's normal
    notify   batch of 16, max_wait     alerts go out in small batches, at most 50 ms
             50 ms                     after the first one waits (a quiet stream
                                       never holds an alert back)
    windows  class stage, flat_map     event counts per one-second window of event
                                       time, sent when the window closes
    totals   fold                      readings per sensor over the whole run: holds
                                       only the counts

The pipeline runs as a service (``Pipeline.start``): results arrive through a
callback while the feed goes on; Ctrl-C stops it by draining (nothing read is
lost). Run it::

    python examples/events.py                   # 20,000 events at 5,000 per second
    python examples/events.py --rate 20000 --events 100000
    conveyor run examples/events.py:pipeline    # the same, from the command line
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conveyor as cv

SENSORS = 12
SPIKE_EVERY = 997  # every 997th reading is a spike, far from its sensor's normal


def write_events(path: Path, n: int, *, seed: int = 7) -> None:
    """``n`` readings, one JSON object per line: ts (seconds), sensor, value."""
    rng = random.Random(seed)
    base = {s: rng.uniform(10, 50) for s in range(SENSORS)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        ts = 1_700_000_000.0
        for i in range(n):
            ts += rng.expovariate(1000)  # about 1,000 readings per second of event time
            sensor = rng.randrange(SENSORS)
            value = rng.gauss(base[sensor], 1.0)
            if i % SPIKE_EVERY == SPIKE_EVERY - 1:
                value += rng.choice((-1, 1)) * 25
            fh.write(json.dumps({"ts": round(ts, 6), "sensor": f"s{sensor:02d}", "value": value}))
            fh.write("\n")


def replay(path: Path, rate: float) -> Iterator[str]:
    """The file's lines, paced at ``rate`` per second (a live feed)."""
    start = time.monotonic()
    with path.open() as fh:
        for i, line in enumerate(fh):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield line


def parse(line: str) -> dict[str, Any]:
    return json.loads(line)


class Detector:
    """Per sensor, a running mean and variance (Welford); scores each reading. Set up
    once: a model loaded per worker would live here the same way."""

    def __init__(self) -> None:
        self.stats: dict[str, tuple[int, float, float]] = {}

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        n, mean, m2 = self.stats.get(event["sensor"], (0, 0.0, 0.0))
        x = event["value"]
        std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
        z = (x - mean) / std if std > 0 and n >= 30 else 0.0
        if abs(z) < 6:  # learn from normal readings only
            n += 1
            delta = x - mean
            mean += delta / n
            m2 += delta * (x - mean)
            self.stats[event["sensor"]] = (n, mean, m2)
        return {**event, "z": z}


def is_anomaly(event: dict[str, Any]) -> bool:
    return abs(event["z"]) >= 6


def notify(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Send a batch of alerts (here: hand them on, summarised)."""
    return {
        "kind": "alerts",
        "alerts": [(a["ts"], a["sensor"], round(a["value"], 1), round(a["z"], 1)) for a in alerts],
    }


class Windows:
    """Counts per one-second window of event time; a window is sent when a later one
    starts (events arrive in time order; the window still open when the stream ends is
    in the totals)."""

    def __init__(self) -> None:
        self.window: int | None = None
        self.counts: dict[str, int] = {}

    def __call__(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        window = int(event["ts"])
        closed = []
        if self.window is not None and window != self.window:
            closed.append({"kind": "window", "start": self.window, "counts": self.counts})
            self.counts = {}
        self.window = window
        self.counts[event["sensor"]] = self.counts.get(event["sensor"], 0) + 1
        return closed


def count(totals: dict[str, int], event: dict[str, Any]) -> dict[str, int]:
    totals[event["sensor"]] = totals.get(event["sensor"], 0) + 1
    return totals


def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    for sensor, n in b.items():
        a[sensor] = a.get(sensor, 0) + n
    return a


def wrap_totals(totals: dict[str, int]) -> dict[str, Any]:
    return {"kind": "totals", "counts": totals}


def build(source: Any = None) -> cv.Pipeline:
    stages = [
        cv.Stage(parse),  # one worker, so that events stay in time order
        cv.Stage(Detector),  # one instance: every sensor's history in one place
        cv.Stage(is_anomaly, name="alerts", kind="filter"),
        cv.Stage(notify, kind="batch", size=16, max_wait=0.05),
        cv.Stage(Windows, name="windows", kind="flat_map"),
        cv.Stage(count, name="totals", kind="fold", initial={}, combine=merge, workers=2),
        cv.Stage(wrap_totals),
    ]
    return cv.Pipeline(
        "events",
        stages,
        edges=[
            ("parse", "Detector"),
            ("Detector", "alerts"),
            ("alerts", "notify"),
            ("Detector", "windows"),
            ("parse", "totals"),
            ("totals", "wrap_totals"),
        ],
        source=source,
    )


DATA = Path(__file__).parent / "out" / "events" / "events.jsonl"
pipeline = build(lambda: replay(_events_file(20_000), 5_000))


def _events_file(n: int) -> Path:
    path = DATA.with_name(f"events-{n}.jsonl")
    if not path.exists():
        write_events(path, n)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Replay sensor events through a conveyor service.")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=5_000, help="events per second")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    path = _events_file(args.events)
    seen: dict[str, Any] = {"alerts": [], "windows": 0, "totals": None}

    def on_result(result: dict[str, Any]) -> None:
        if result["kind"] == "alerts":
            seen["alerts"].extend(result["alerts"])
            if not args.quiet:
                for ts, sensor, value, z in result["alerts"]:
                    print(f"ALERT  t={ts:.3f}  {sensor}  value={value}  z={z:+.1f}")
        elif result["kind"] == "window":
            seen["windows"] += 1
        else:
            seen["totals"] = result["counts"]

    service = build().start(replay(path, args.rate), on_result=on_result)
    # Ctrl-C (or SIGTERM) drains: stop reading, finish what was read, then end.
    previous = signal.signal(signal.SIGINT, lambda *_: service.run.stop(drain=True))
    try:
        state = service.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    stats = service.statistics()
    if not args.quiet:
        print(
            f"\n{state}: {stats.items_read:,} events read in {stats.elapsed_seconds:.1f} s, "
            f"{len(seen['alerts'])} alerts, {seen['windows']} windows closed, "
            f"totals for {len(seen['totals'] or {})} sensors"
        )
        for name, st in stats.stages.items():
            print(
                f"  {name:<12} {st.items_in:>8,} in {st.items_out:>8,} out  busy {st.busy_seconds:.2f} s"
            )
    return {**seen, "state": state, "read": stats.items_read}


if __name__ == "__main__":
    main()
