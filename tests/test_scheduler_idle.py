"""The scheduler waits, never spins: a retry (or a partial batch) that is due while its
stage has no free slot must not keep the driver's thread busy until a slot frees; the
outcome that frees it wakes the scheduler. Measured as the driver thread's CPU time
while a call holds the stage's only worker for a second."""

from __future__ import annotations

import threading
import time

import conveyor as cv

HOLD = 1.0  # seconds the blocking call holds the worker


def test_a_retry_due_while_the_stage_is_full_does_not_spin() -> None:
    release = threading.Event()
    failed_once = threading.Event()

    def call(x: int) -> int:
        if x == 0 and not failed_once.is_set():
            failed_once.set()
            threading.Timer(HOLD, release.set).start()
            raise ConnectionError("try again")  # its retry is due at once
        if x in (1, 2):
            release.wait(30)  # the worker is held; the stage's other slot is taken too
        return x

    # due 50 ms later, when items 1 and 2 fill both of the stage's slots
    stage = cv.stage(call, workers=1, retry=cv.Retry(attempts=2, backoff=0.05, jitter=0))
    pipe = cv.Pipeline("idle", [stage])
    cpu = time.thread_time()
    wall = time.perf_counter()
    assert sorted(pipe.run([0, 1, 2], record=False).results) == [0, 1, 2]
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert wall >= HOLD * 0.9
    # A spinning scheduler burns about the whole hold (or its share of a busy core).
    assert cpu < 0.15 * HOLD, f"the driver used {cpu:.2f} s of CPU over {wall:.2f} s"
