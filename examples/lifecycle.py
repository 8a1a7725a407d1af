"""The model lifecycle end to end, on scikit-learn's handwritten digits.

    python examples/lifecycle.py          # or: scripts/demo lifecycle

1. **Ingest**: a conveyor pipeline scales the 1,797 images to [0, 1].
2. **Release v1**: trained, gated against a minimum accuracy, promoted to
   ``digits@champion``; its training data's drift reference is stored with it.
3. **Serve** ``digits@champion``; a client sends live images and, a moment later,
   their labels (``POST /feedback``).
4. **The camera moves**: mid-run the images arrive shifted one pixel right. The
   server's drift window raises an alarm; v1's live accuracy falls.
5. **Retrain**: the alarm starts the same release over the alarm's window of
   labeled requests: v2 is trained, gated against v1 on held-out shifted rows,
   mirrored in shadow, moved to 10% then 50% of traffic by a canary judged by
   sequential tests, and promoted: the server swaps to it with no failed request.
6. **Lineage**: from the promotion back to the alarm, every decision with its evidence.

Everything is recorded in a run store of its own (a temporary folder, or the
``--store`` given), so ``conveyor deployments digits --store ...`` shows it again.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import conveyor as cv
from conveyor.lifecycle import (
    CanaryPolicy,
    Candidate,
    LifecycleLog,
    Release,
    ShadowPolicy,
    retrain_on_drift,
)
from conveyor.serve import Endpoint, Server

NAME = "digits"
WINDOW = 300  # requests per drift check


@cv.stage(kind="batch", size=256, split=True)
def preprocess(rows: list[tuple[list[float], int]]) -> list[tuple[np.ndarray, int]]:
    """Pixels 0..16 to 0..1."""
    return [(np.asarray(pixels, dtype=np.float64) / 16.0, label) for pixels, label in rows]


def ingest() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    rows = [(list(map(float, x)), int(t)) for x, t in zip(digits.data, digits.target, strict=True)]
    run = cv.Pipeline("ingest-digits", [preprocess]).run(rows, ordered=True, record=False)
    return np.stack([x for x, _ in run.results]), np.array([t for _, t in run.results])


def moved(images: np.ndarray) -> np.ndarray:
    """The camera moved: every image one pixel to the right."""
    return np.roll(images.reshape(-1, 8, 8), 1, axis=2).reshape(-1, 64)


class Lifecycle:
    """The data, the release, the server and the client of the example."""

    def __init__(self, store: Path) -> None:
        self.store = store
        x, y = ingest()
        order = np.random.default_rng(0).permutation(len(y))
        self.train = x[order[:900]], y[order[:900]]
        self.holdout = x[order[900:1300]], y[order[900:1300]]
        self.live = x[order[1300:]], y[order[1300:]]
        self.release = Release(
            NAME,
            build=self.build,
            holdout=self.held_out,
            # better than the champion by 2 points at least, and never under 70%: the
            # held-out third of a retraining window is small (a few hundred rows), so
            # a floor nearer the candidate's accuracy there would fail it by chance
            gate={"metric": "accuracy", "min_effect": 0.02, "minimum": 0.7},
            reference=lambda c: self.train[0],
            # after a shift the champion's answers are the wrong ones: a low bar for
            # agreement; the shadow checks the candidate's errors and latency
            shadow=ShadowPolicy(
                fraction=0.5, min_requests=100, min_agreement=0.2, max_error_increase=0.05
            ),
            shadow_interval=0.5,
            canary=CanaryPolicy(
                steps=(0.1, 0.5),
                interval=0.5,
                max_error_increase=0.05,
                max_prediction_shift=1.0,  # after drift it is the champion's answers that moved
                min_requests=30,
            ),
            store=store,
        )
        self.shifted = threading.Event()
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}

    # --- the release's steps -----------------------------------------------------------

    def window_rows(self, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
        """The labeled requests from the start of the alarm's window until now, oldest
        first (rows only append, so each keeps its place in the thirds below)."""
        assert c.window is not None
        with LifecycleLog(self.store) as log:
            rows = log.labeled(NAME, since=c.window[0])
        x = np.array([r["inputs"] for r, _, _ in rows])
        return x, np.array([label for _, label, _ in rows])

    def build(self, c: Candidate) -> Any:
        x, y = self.train
        data = "the original 900 images"
        if c.window is not None:  # a retraining: add two thirds of the new rows
            wx, wy = self.window_rows(c)
            x, y = np.vstack([x, wx[::3], wx[1::3]]), np.concatenate([y, wy[::3], wy[1::3]])
            data = f"the original 900 images and {2 * len(wy) // 3} labeled requests"
        model = LogisticRegression(max_iter=300).fit(x, y)
        return cv.models.register(
            NAME,
            model,
            metrics={"train_accuracy": float(model.score(x, y))},
            description=f"logistic regression on {data}",
            signature={"shape": [64]},
        )

    def held_out(self, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
        if c.window is None:
            return self.holdout
        wx, wy = self.window_rows(c)
        return wx[2::3], wy[2::3]  # the third the candidate did not train on

    # --- the client ----------------------------------------------------------------------

    def client(self, url: str) -> None:
        """Send live images one by one; post their labels in batches of 20."""
        import httpx

        x, y = self.live
        labels: list[dict[str, Any]] = []
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                image = moved(x[i : i + 1])[0] if self.shifted.is_set() else x[i]
                answer = http.post("/predict", json={"inputs": image.tolist()})
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                if answer.status_code == 200:
                    labels.append(
                        {"request_id": answer.headers["x-request-id"], "label": int(y[i])}
                    )
                if len(labels) >= 20:
                    http.post("/feedback", json=labels)
                    labels = []
                i = (i + 1) % len(y)


def accuracy_line(store: Path, since: float) -> str:
    with LifecycleLog(store) as log:
        live = log.live_performance(NAME, since=since)
    return ", ".join(f"v{v} {k / n:.0%} of {n}" for v, (n, k) in sorted(live.items())) or "-"


def main(store: Path, *, kept: bool) -> None:
    os.environ["CONVEYOR_STORE"] = str(store)  # the registry, the runs and the decisions
    started = time.perf_counter()
    life = Lifecycle(store)
    first = life.release.run()
    print(f"release 1: {first.ref} {'promoted' if first.promoted else first.stopped}")
    endpoint = Endpoint(f"{NAME}@champion", watch=0.2, drift_window=WINDOW, store=store)
    with Server(endpoint, port=0) as server:
        if not server.wait_ready(120):
            raise SystemExit(f"the server did not get ready: {server.not_ready_reason()}")
        client = threading.Thread(target=life.client, args=(server.url,), daemon=True)
        client.start()
        with LifecycleLog(store) as log:  # one clean window, then the camera moves
            while not log.events(NAME, kinds=["drift_check", "drift_alarm"]):
                time.sleep(0.1)
            shift_at = time.time()
            print(
                f"drift checks before the shift: {log.events(NAME, kinds=['drift_check'])[-1].summary}"
            )
        life.shifted.set()
        print("the camera moved: images now arrive one pixel to the right")
        second = retrain_on_drift(life.release, poll=0.2, once=True, timeout=300)
        deadline = time.monotonic() + 10  # the swap follows the alias within the watch
        while second and server.version != second[0].ref and time.monotonic() < deadline:
            time.sleep(0.1)
        life.stop.set()
        client.join(30)
        print(f"live accuracy since the shift: {accuracy_line(store, shift_at)}")
        print(f"served by {server.version}; answers by status: {life.statuses}")
    if not second or not second[0].promoted:
        raise SystemExit(
            f"the retraining was not promoted: {second[0].stopped if second else 'no alarm'}"
        )
    with LifecycleLog(store) as log:
        print("\nlineage of the promotion, from the alarm:")
        for event in log.lineage(second[0].events[-1]):
            line = event.summary.splitlines()[0]
            line = line if len(line) <= 150 else line[:147] + "..."
            print(f"  {event.kind:<12} v{event.version}  {line}")
    took = f"\ndone in {time.perf_counter() - started:.1f} s"
    if kept:
        print(f"{took}; the record: conveyor deployments {NAME} --store {store}")
    else:
        print(f"{took}; --store FILE keeps the record for conveyor deployments and the dashboard")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="a run store file to keep")
    args = parser.parse_args()
    if args.store is not None:
        main(args.store, kept=True)
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder) / "runs.db", kept=False)
