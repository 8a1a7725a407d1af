"""The bytes a Ray stage keeps in the object store, and the cap (no Ray needed: the
accounting sees refs as opaque objects)."""

from __future__ import annotations

import gc
import pickle

import pytest

from conveyor.executors.ray.budget import KeptBytes
from conveyor.executors.ray.handles import Kept, encode_task, handles, total_bytes

MiB = 1 << 20


def test_past_the_cap_a_task_waits_until_consumers_free_bytes() -> None:
    woken: list[int] = []
    b = KeptBytes(10 * MiB, lambda: woken.append(1))
    assert b.admits(1)  # nothing held, nothing in flight: always one task
    b.sent(1)
    assert not b.admits(1)  # no size measured yet: one task at a time
    first = b.keep(object(), 4 * MiB, 1, "make")
    b.returned(1)
    assert b.admits(1)  # 4 held + 4 expected <= 10
    b.sent(1)
    assert not b.admits(1)  # 4 held + 2 x 4 expected > 10
    second = b.keep(object(), 4 * MiB, 1, "make")
    b.returned(1)
    assert b.statistics().held == 8 * MiB and not b.admits(1)
    del first  # its last handle dropped: the consumer ran on it
    assert b.statistics().held == 4 * MiB and woken == [1] and b.admits(1)
    del second
    stats = b.statistics()
    assert (stats.held, stats.peak, stats.objects, stats.cap) == (0, 8 * MiB, 0, 10 * MiB)
    assert stats.waits == 3


def test_without_a_cap_every_task_goes() -> None:
    b = KeptBytes(None, lambda: None)
    b.sent(100)
    assert b.admits(100)


def test_an_object_is_counted_until_its_last_handle_is_dropped() -> None:
    b = KeptBytes(None, lambda: None)
    shapes = [3, None, [1, 2]]  # a result, a failed unit, a flat_map's two children
    kept = handles(b.keep(object(), total_bytes(shapes), 2, "s"), shapes)
    assert kept[1] is None and [k.nbytes for k in kept[2]] == [1, 2]
    assert b.statistics().held == 6
    one = kept[2][1]
    del kept, shapes
    gc.collect()
    assert b.statistics().held == 6  # one handle still holds the object
    assert "kept in Ray's object store, 2 bytes" in repr(one)
    del one
    assert b.statistics().held == 0


def test_a_handle_never_leaves_by_plain_pickling() -> None:
    b = KeptBytes(None, lambda: None)
    [k] = handles(b.keep(object(), 5, 1, "make"), [5])
    with pytest.raises(TypeError, match=r"stage 'make'.*cannot be pickled"):
        pickle.dumps(k)


def test_a_task_with_handles_names_each_object_once() -> None:
    b = KeptBytes(None, lambda: None)
    ref_a, ref_b = "ref-a", "ref-b"  # opaque to the encoding
    ka = handles(b.keep(ref_a, 2, 2, "a"), [1, 1])
    kb = handles(b.keep(ref_b, 1, 1, "b"), [1])
    data, objects = encode_task(7, [ka[0], {"x": kb[0], "y": ka[1]}, 3])
    assert [o.ref for o in objects] == [ref_a, ref_b]  # their refs are read when sent
    task_id, pieces, uses = pickle.loads(data)
    assert task_id == 7 and uses == [[0], [0, 1], []] and len(pieces) == 3
    plain, none = encode_task(8, [1, 2])
    assert none == [] and pickle.loads(plain) == (8, [1, 2])
    assert all(isinstance(k, Kept) for k in ka)


def test_small_results_stop_the_offer_to_keep_but_one_task_in_sixteen() -> None:
    b = KeptBytes(None, lambda: None)
    for _ in range(8):
        assert b.probe()
        b.answered(kept=False)
    offers = [b.probe() for _ in range(32)]
    assert offers.count(True) == 2  # one in sixteen notices results that grow
    b.answered(kept=True)
    assert all(b.probe() for _ in range(5))  # they grew: offer every task again
