"""Start a pipelined run under torchrun, collect its result, and leave no process behind.

:func:`launch` writes the run specs to a JSON file in a fresh run directory and runs

    python -m torch.distributed.run --nnodes N --node-rank K --nproc-per-node P/N \\
        --master-addr ADDR --master-port PORT -m conveyor.train._runtime SPECS.json RESULT.pt

(torchrun's static rendezvous: node 0's torchrun serves it on PORT) with one
thread per rank, and loads what global rank 0 saved, on the node that holds it.

No process outlives a run. torchrun starts in a session of its own, and every rank
it starts inherits ``CONVEYOR_TRAIN_RUN_DIR``, the run directory; torchrun starts
each rank in yet another session, so a signal to torchrun's group does not reach
them, and if torchrun dies first they go on, parented to init. Whichever way
:func:`launch` ends (done, a rank failed, the timeout, KeyboardInterrupt or any
other exception in the caller), it stops torchrun's process group and every
process whose environment carries the run directory (found in ``/proc``, on
Linux): SIGTERM, a grace period, SIGKILL, and it waits until none is left.

A failing rank makes torchrun stop the others and exit non-zero; the error raised
is the first rank's own (see :mod:`conveyor.train._rank_errors`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.train._errors import TrainError, require_torch
from conveyor.train._rank_errors import PROGRESS_FILE, RUN_DIR_VAR, earliest_rank_error

if TYPE_CHECKING:
    from conveyor.train._runtime import RunSpec

__all__ = ["free_port", "launch", "stop_run"]

GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_REAP = 10.0  # seconds to wait for SIGKILLed processes to go


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_interface() -> str | None:
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else ()
    return next((n for n in ("lo", "lo0") if n in names), None)


def _check_nodes(ranks: int, nnodes: int, node_rank: int, master_port: int | None) -> None:
    if nnodes < 1 or ranks % nnodes:
        raise TrainError(
            f"{ranks} ranks cannot be spread evenly over {nnodes} nodes: every node runs "
            f"the same number of ranks. Use a number of ranks that {nnodes} divides."
        )
    if not 0 <= node_rank < nnodes:
        raise TrainError(f"node_rank {node_rank} is not one of 0..{nnodes - 1} (nnodes={nnodes})")
    if nnodes > 1 and master_port is None:
        raise TrainError(
            f"a run on {nnodes} nodes needs master_port (--master-port): every node must "
            f"name the same port, where node 0 serves the rendezvous, e.g. 29500"
        )


def launch(
    specs: Sequence[RunSpec],
    ranks: int,
    *,
    timeout: float | None = None,
    device: str = "auto",
    threads: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``specs`` one after another on ``ranks`` processes; the result of each, from rank 0.

    ``ranks`` counts every rank of the run, over all nodes; this node runs
    ``ranks // nnodes`` of them, global ranks ``node_rank * ranks // nnodes`` on.
    Run the same call on every node, each with its ``node_rank`` and the same
    ``master_addr`` and ``master_port`` (node 0's address; required when
    ``nnodes > 1``, else a free port). The node holding global rank 0 returns the
    results; the others return an empty list. The default master address,
    127.0.0.1, keeps a one-node run on loopback (gloo is pointed at the loopback
    interface too); several nodes need an address they all reach.

    ``device`` "auto" uses NCCL on GPUs when CUDA is available, else gloo on CPU;
    "cpu" forces gloo. ``timeout`` is in seconds, None for none. Raises
    TrainError if a rank fails (the first failing rank's error, with ``rank``
    set) or the timeout passes; on any way out every process of the run on this
    node is stopped before launch returns or raises.
    """
    require_torch()
    _check_nodes(ranks, nnodes, node_rank, master_port)
    import torch

    with tempfile.TemporaryDirectory(prefix="conveyor-train-") as run_dir:
        spec_path, result_path = Path(run_dir, "specs.json"), Path(run_dir, "result.pt")
        spec_path.write_text(json.dumps({"device": device, "specs": [asdict(s) for s in specs]}))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env[RUN_DIR_VAR] = run_dir  # where ranks record errors, and how their processes are found
        # the user's model file may sit next to the caller: keep the working directory importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        loopback = _loopback_interface()
        if _is_loopback(master_addr) and loopback and "GLOO_SOCKET_IFNAME" not in env:
            env["GLOO_SOCKET_IFNAME"] = loopback
        port = free_port(master_addr) if master_port is None else master_port
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(ranks // nnodes),
            "--master-addr", master_addr, "--master-port", str(port),
            "-m", "conveyor.train._runtime", str(spec_path), str(result_path),
        ]  # fmt: skip
        log_path = Path(run_dir, "torchrun.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        relay = _Relay(Path(run_dir, PROGRESS_FILE))
        try:
            returncode = _wait(proc, timeout, relay)
        except subprocess.TimeoutExpired:
            raise TrainError(
                f"the pipelined run on {ranks} ranks did not finish in {timeout:g} s; every "
                f"process of it on this node was stopped. Give a longer timeout, or none, "
                f"if the run needs longer.{_tail(log_path)}"
            ) from None
        finally:
            survivors = stop_run(proc, run_dir)
            relay()
        if returncode != 0:
            error = earliest_rank_error(run_dir)
            if error is not None:
                raise error
            raise TrainError(
                f"the pipelined run failed (torchrun exit code {returncode}) and no rank "
                f"recorded an error (killed, or failed before starting).{_tail(log_path)}"
            )
        if survivors:
            raise TrainError(
                f"processes {survivors} of the run are still there {_REAP:g} s after SIGKILL "
                f"(in uninterruptible sleep?)"
            )
        if node_rank != 0:
            return []
        if not result_path.exists():
            raise TrainError(f"torchrun exited 0 but rank 0 saved no result.{_tail(log_path)}")
        results: list[dict[str, Any]] = torch.load(result_path, weights_only=False)
        return results


class _Relay:
    """Copies the progress lines ranks append to a file onto the caller's stderr."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return  # no progress yet
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for its end
        if whole:
            self.offset += len(whole)
            sys.stderr.write(whole.decode(errors="replace"))
            sys.stderr.flush()


def _wait(proc: subprocess.Popen[bytes], timeout: float | None, tick: Callable[[], None]) -> int:
    """torchrun's exit code; waits in short slices so that KeyboardInterrupt comes at once
    and progress lines pass on (``tick`` after each slice)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
        try:
            return proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            tick()


def _tail(path: Path, chars: int = 3000) -> str:
    """The end of torchrun's output, as a paragraph to append to a message, or ""."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f" torchrun's last output:\n{text[-chars:]}" if text else ""


def _marked(run_dir: str) -> list[int]:
    """Pids of running processes whose environment names this run directory (Linux only;
    a zombie's environment reads empty, so zombies do not count)."""
    needle = f"{RUN_DIR_VAR}={run_dir}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone, or not ours
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def _signal(proc: subprocess.Popen[bytes], pids: list[int], sig: signal.Signals) -> None:
    if proc.returncode is None:  # not reaped yet: its process group id cannot be reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_run(proc: subprocess.Popen[bytes], run_dir: str, *, grace: float = GRACE) -> list[int]:
    """Stop torchrun (``proc``) and every process of its run; the pids that would not go.

    SIGTERM to torchrun's process group and to each marked process, up to ``grace``
    seconds for them to exit, then SIGKILL, and wait until none is left. Returns at
    once when nothing is running.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _REAP)):
        pids = _marked(run_dir)
        if proc.poll() is not None and not pids:
            return []
        _signal(proc, pids, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _marked(run_dir):
                return []
            time.sleep(0.02)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    return _marked(run_dir) + ([proc.pid] if proc.returncode is None else [])
