"""Stage functions that print and log, for process workers (tests/test_worker_output.py)."""

from __future__ import annotations

import logging

log = logging.getLogger("outputfns")


def noisy(x: int) -> int:
    print(f"printing {x}")
    log.info("info about %s", x)
    log.debug("debug about %s", x)
    return x


INITS: list[int] = []  # per process: the threads (or the process) whose init ran


def record_init() -> None:
    import threading

    INITS.append(threading.get_ident())


def after_init(x: int) -> tuple[int, int, int]:
    """(x, this process's pid, how many inits this process ran); fails if this thread's
    init has not run before its call."""
    import os
    import threading

    if threading.get_ident() not in INITS:
        raise AssertionError("called before its worker's init")
    return x, os.getpid(), len(INITS)


def failing_init() -> None:
    raise ValueError("the model file is missing")


def uses_fileno(x: int) -> int:
    """What faulthandler.enable() and the like do with sys.stderr in a worker."""
    import faulthandler
    import sys

    faulthandler.enable()  # needs sys.stderr.fileno()
    faulthandler.disable()
    return x + sys.stdout.fileno() * 0
