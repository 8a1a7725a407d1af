"""The shared-memory pickling layer: round trips, zero copy, ownership, no leaked names."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from conveyor.executors.processes import shm as _shm  # noqa: E402
from conveyor.executors.processes.shm import Segment, SegmentRegistry, dumps, loads  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (_shm.shm_available() and os.path.isdir("/dev/shm")),
    reason="needs POSIX shared memory exposed under /dev/shm (Linux)",
)

MB8 = 1 << 20  # float64 elements in 8 MB


def _names(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix + "_"))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"cvt{os.getpid()}x{secrets.token_hex(3)}"
    yield p
    SegmentRegistry(p, owner=True).cleanup()  # even if the test failed half-way
    assert _names(p) == []


@pytest.fixture
def driver(prefix: str) -> SegmentRegistry:
    return SegmentRegistry(prefix, owner=True)


@pytest.fixture
def worker(prefix: str) -> SegmentRegistry:
    return SegmentRegistry(prefix, owner=False)


def _transfer(obj: Any, sender: SegmentRegistry, receiver: SegmentRegistry) -> Any:
    """Send ``obj`` from one registry to another, as between two processes."""
    data, pinned = dumps(obj, sender)
    out = loads(data, receiver)
    del pinned
    return out


def _kinds() -> dict[str, Any]:
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    rec = np.dtype([("x", "<f8"), ("n", ">i4"), ("tag", "S3")])
    structured = np.zeros(5, dtype=rec)
    structured["x"] = np.linspace(0, 1, 5)
    structured["n"] = [1, -2, 3, -4, 5]
    structured["tag"] = [b"a", b"bb", b"ccc", b"d", b"e"]
    readonly = np.arange(10.0)
    readonly.flags.writeable = False
    return {
        "c": base.copy(),
        "f": np.asfortranarray(base),
        "strided": base[:, ::2],
        "transposed_view": base.T[1:],
        "zero_d": np.array(3.5),
        "structured": structured,
        "bool": np.array([True, False, True]),
        "complex_be": np.arange(6, dtype=">c16").reshape(2, 3),
        "readonly": readonly,
        "empty": np.zeros((0, 3)),
        "datetime": np.arange("2020-01-01", "2020-01-10", dtype="datetime64[D]"),
        "float16_3d": np.arange(60, dtype=np.float16).reshape(3, 4, 5)[:, 1:3, ::-1],
    }


@pytest.mark.parametrize("kind", sorted(_kinds()))
def test_round_trip_by_reference(kind: str, prefix: str) -> None:
    arr = _kinds()[kind]
    receiver = SegmentRegistry(prefix, owner=True, threshold=1)  # everything non-empty shares
    sender = SegmentRegistry(prefix, owner=False, threshold=1)
    data, pinned = dumps({"k": arr}, sender)
    out = loads(data, receiver)["k"]
    del pinned
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable == arr.flags.writeable
    if arr.nbytes:
        assert isinstance(out.base, Segment)  # built over the mapping, not a copy
        if arr.flags.f_contiguous and not arr.flags.c_contiguous:
            assert out.flags.f_contiguous  # order kept
        else:
            assert out.flags.c_contiguous  # non-contiguous input is made contiguous
    else:
        assert out.base is None or not isinstance(out.base, Segment)  # nothing to share


def test_small_object_and_scalar_values_stay_in_band(
    driver: SegmentRegistry, worker: SegmentRegistry, prefix: str
) -> None:
    objects = np.empty(300_000, dtype=object)  # >= threshold in pointer bytes, never shared
    objects[:] = [{"i": i} for i in range(3)] * 100_000
    msg = {
        "small": np.arange(100),
        "scalar": np.float32(1.5),
        "objects": objects,
        "plain": [1, "two", (3.0, None)],
    }
    data, pinned = dumps(msg, worker)
    assert pinned == []
    assert _names(prefix) == []
    out = loads(data, driver)
    np.testing.assert_array_equal(out["small"], msg["small"])
    assert out["scalar"] == np.float32(1.5) and type(out["scalar"]) is np.float32
    assert out["objects"].dtype == object and out["objects"][4] == {"i": 1}
    assert out["plain"] == msg["plain"]


def test_receive_is_zero_copy(prefix: str, worker: SegmentRegistry) -> None:
    arr = np.arange(MB8, dtype=np.float64)
    data, pinned = dumps(arr, worker)
    first_driver = SegmentRegistry(prefix, owner=True)
    other = SegmentRegistry(prefix, owner=False)  # stands for another process's mapping
    a = loads(data, first_driver)
    b = loads(data, first_driver)
    c = loads(data, other)
    assert isinstance(a.base, Segment) and a.base is b.base  # one mapping per process
    assert np.shares_memory(a, b)
    assert a.flags.writeable
    a[123] = -1.0  # visible through the other mapping of the same pages: no copy anywhere
    assert c[123] == -1.0
    assert len(_names(prefix)) == 1
    del pinned, a, b, c


def test_forwarding_by_reference_creates_no_segment(
    prefix: str, driver: SegmentRegistry, worker: SegmentRegistry
) -> None:
    arr = np.arange(MB8, dtype=np.float64).reshape(1024, 1024)
    received = _transfer(arr, worker, driver)
    assert len(_names(prefix)) == 1
    seg = received.base
    for view in (received, received[100:], received.T, received.reshape(-1)[7:]):  # contiguous
        data, pinned = dumps({"v": view}, driver)
        assert pinned == [seg]
        assert len(_names(prefix)) == 1
        back = loads(data, SegmentRegistry(prefix, owner=False))["v"]
        np.testing.assert_array_equal(back, view)
        del pinned
    # A strided view cannot be sent by reference: it is copied into a new segment.
    data, pinned = dumps(received[:, ::2], driver)
    assert pinned != [seg] and len(_names(prefix)) == 2


def test_owner_unlinks_when_last_array_dies(
    prefix: str, driver: SegmentRegistry, worker: SegmentRegistry
) -> None:
    received = _transfer(np.ones(MB8), worker, driver)
    view = received[100:]
    del received
    gc.collect()
    assert len(_names(prefix)) == 1  # a view still maps it
    assert view.sum() == MB8 - 100
    del view
    gc.collect()
    assert _names(prefix) == []
    # The driver's own outgoing copy is unlinked once the pin list goes.
    _data, pinned = dumps(np.ones(MB8), driver)
    assert len(_names(prefix)) == 1
    del pinned
    gc.collect()
    assert _names(prefix) == []


def test_worker_never_unlinks_and_cleanup_is_idempotent(
    prefix: str, driver: SegmentRegistry, worker: SegmentRegistry
) -> None:
    data, pinned = dumps([np.ones(MB8), np.zeros(MB8)], worker)
    del pinned
    gc.collect()
    assert len(_names(prefix)) == 2  # the driver owns them now; they wait for it
    first, second = loads(data, driver)
    with pytest.raises(RuntimeError):
        worker.cleanup()
    driver.cleanup()
    assert _names(prefix) == []
    assert first.sum() == MB8 and second.sum() == 0  # mappings outlive the names
    # After cleanup a mapped array can no longer go by reference: it is copied instead.
    data, pinned = dumps(first, driver)
    assert pinned[0] is not first.base
    driver.cleanup()
    driver.cleanup()
    assert _names(prefix) == []
    del first, second, pinned
    gc.collect()  # finalizers were detached: nothing to unlink, nothing raised


def test_worker_resends_only_what_the_current_message_brought(
    prefix: str, driver: SegmentRegistry, worker: SegmentRegistry
) -> None:
    data, pinned = dumps(np.ones(MB8), driver)
    kept = loads(data, worker)
    out, out_pins = dumps(kept, worker)  # the answer to that message: by reference
    assert [s.name for s in out_pins] == [s.name for s in pinned]
    loads(dumps("next task", driver)[0], worker)  # the driver may since have dropped it
    out, out_pins = dumps(kept, worker)
    assert [s.name for s in out_pins] != [s.name for s in pinned]  # copied: safe
    del pinned, out_pins, kept
    gc.collect()
    assert len(_names(prefix)) == 1  # only the copy, which the driver now receives
    np.testing.assert_array_equal(loads(out, driver), np.ones(MB8))


def test_concurrent_threads(prefix: str, driver: SegmentRegistry) -> None:
    """The driver's proxy threads share one registry."""
    worker = SegmentRegistry(prefix, owner=False, threshold=1024)
    driver = SegmentRegistry(prefix, owner=True, threshold=1024)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(30):
                arr = np.full(4096, t * 1000 + i, dtype=np.int64)
                got = _transfer(arr, worker, driver)
                back = _transfer(got[1:], driver, worker)  # forwarded by reference
                assert back.base.name == got.base.name
                assert (back == t * 1000 + i).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    gc.collect()
    assert _names(prefix) == []


def test_failed_dumps_leaves_no_segment(prefix: str, worker: SegmentRegistry) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        dumps([np.ones(MB8), lambda: None], worker)
    assert _names(prefix) == []


def test_plain_pickle_refuses_a_shared_payload(
    driver: SegmentRegistry, worker: SegmentRegistry
) -> None:
    data, pinned = dumps(np.ones(MB8), worker)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    loads(data, driver)
    del pinned


def test_full_dev_shm_falls_back_to_in_band(
    monkeypatch: pytest.MonkeyPatch, prefix: str, driver: SegmentRegistry
) -> None:
    monkeypatch.setattr(_shm, "_write_all", lambda fd, data: False)  # as on ENOSPC
    monkeypatch.setattr(_shm, "_reserve", lambda fd, size: False)
    msg = [np.arange(MB8, dtype=np.float64), np.ones((1024, 2048))[:, ::2]]
    data, pinned = dumps(msg, driver)
    assert pinned == [] and _names(prefix) == []
    out = loads(data, driver)
    np.testing.assert_array_equal(out[0], msg[0])
    np.testing.assert_array_equal(out[1], msg[1])


def test_without_posix_shm_pickles_in_band(
    monkeypatch: pytest.MonkeyPatch, prefix: str, driver: SegmentRegistry
) -> None:
    monkeypatch.setattr(_shm, "_posixshmem", None)
    arr = np.arange(MB8, dtype=np.float64)
    data, pinned = dumps(arr, driver)
    assert pinned == [] and _names(prefix) == []
    np.testing.assert_array_equal(loads(data, driver), arr)
    driver.cleanup()


def test_module_does_not_import_numpy() -> None:
    code = (
        "import sys; from conveyor.executors.processes.shm import SegmentRegistry, dumps, loads;"
        "r = SegmentRegistry('cvnonp', owner=True);"
        "assert loads(dumps({'a': [1, 2]}, r)[0], r) == {'a': [1, 2]};"
        "assert 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_child_env(), timeout=60)


# -- across real processes ------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _echo_worker(conn: Any, prefix: str) -> None:
    """Adds 1 in place to the array it gets and answers with it plus a new array."""
    registry = SegmentRegistry(prefix, owner=False)
    while True:
        data = conn.recv_bytes()
        if data == b"stop":
            return
        arr = loads(data, registry)
        arr += 1
        conn.send_bytes(dumps({"same": arr, "new": arr * 2}, registry)[0])


def _dying_worker(conn: Any, prefix: str) -> None:
    registry = SegmentRegistry(prefix, owner=False)
    _payload, pinned = dumps(np.ones(MB8), registry)
    conn.send([seg.name for seg in pinned])  # tell the test, then "crash" before sending
    signal.pause()


def _spawn(target: Any, prefix: str) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, prefix), daemon=True)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _child_env()["PYTHONPATH"]
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    child.close()
    return proc, parent


def test_cross_process_round_trip(prefix: str, driver: SegmentRegistry) -> None:
    proc, conn = _spawn(_echo_worker, prefix)
    try:
        arr = np.arange(MB8, dtype=np.float64)  # 8 MB
        data, pinned = dumps(arr, driver)
        assert len(_names(prefix)) == 1
        conn.send_bytes(data)
        assert conn.poll(60)
        reply = loads(conn.recv_bytes(), driver)
        # Modified in place by the worker, in the very segment the driver sent: no copy.
        assert reply["same"].base is pinned[0]
        np.testing.assert_array_equal(reply["same"], arr + 1)
        np.testing.assert_array_equal(reply["new"], (arr + 1) * 2)
        assert len(_names(prefix)) == 2  # only the worker's new result was created
        del pinned

        # Forward the worker's result back by reference: no new segment.
        data, pinned = dumps(reply["new"], driver)
        assert pinned == [reply["new"].base]
        conn.send_bytes(data)
        assert conn.poll(60)
        again = loads(conn.recv_bytes(), driver)
        del pinned
        assert again["same"].base is reply["new"].base
        np.testing.assert_array_equal(reply["new"], (arr + 1) * 2 + 1)
        assert len(_names(prefix)) == 3
        conn.send_bytes(b"stop")
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        conn.close()
    del reply, again
    gc.collect()
    assert _names(prefix) == []  # every name went with its last array
    driver.cleanup()
    assert _names(prefix) == []


def test_cleanup_removes_strays_of_a_killed_worker(prefix: str, driver: SegmentRegistry) -> None:
    proc, conn = _spawn(_dying_worker, prefix)
    try:
        assert conn.poll(60)
        names = conn.recv()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        conn.close()
    assert _names(prefix) == names  # the stray the driver never heard of
    driver.cleanup()
    assert _names(prefix) == []
