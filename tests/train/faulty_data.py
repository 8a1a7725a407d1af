"""Data factories that misbehave on rank 1 only (torchrun's RANK), for the launch tests.

Loaded by path like toy_model.py; every other rank gets the toy model's data.
"""

import os
import signal
import time
from pathlib import Path

from conveyor.train import TrainError
from conveyor.train._runtime import load_object

TOY_DATA = f"{Path(__file__).with_name('toy_model.py')}:make_data"


def _on_rank_1() -> bool:
    return os.environ.get("RANK") == "1"


def hang_on_rank_1():
    """Rank 1 never returns; it touches $CONVEYOR_TEST_HANG_FLAG first, if set."""
    if _on_rank_1():
        flag = os.environ.get("CONVEYOR_TEST_HANG_FLAG")
        if flag:
            Path(flag).touch()
        while True:
            time.sleep(3600)
    return load_object(TOY_DATA)()


def hang_on_rank_1_deaf_to_sigterm():
    """Rank 1 ignores SIGTERM, then never returns: only SIGKILL ends it."""
    if _on_rank_1():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return hang_on_rank_1()


def train_error_on_rank_1():
    if _on_rank_1():
        raise TrainError("the shard for rank 1 has 0 rows; regenerate it with --shards 2")
    return load_object(TOY_DATA)()


def _parse_row(text: str) -> int:
    return int(text)


def value_error_on_rank_1():
    if _on_rank_1():
        _parse_row("row 17")
    return load_object(TOY_DATA)()
