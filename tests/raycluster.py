"""Ray for the tests: a local instance per module, and a two-node cluster on loopback.

Both keep to themselves on a shared machine: their own temp dir (short, for Ray's
socket paths), token auth off on every node and the driver, no usage stats, and
teardown that ends only the processes they started, by pid (never ``ray stop``,
which kills every Ray process of the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def tests_path(*first: str) -> str:
    """PYTHONPATH for Ray's workers: ``first``, the tests' helper modules and the source."""
    here = Path(__file__).resolve().parent
    return os.pathsep.join([*first, str(here), str(here.parent / "src")])


@contextlib.contextmanager
def local_ray(num_cpus: int = 4, num_gpus: int = 0, *, path: tuple[str, ...] = ()) -> Iterator[Any]:
    """A fresh local Ray instance for this process; shut down (its own children only).
    ``num_gpus`` are Ray's to hand out (none need exist); ``path`` goes first on its
    workers' PYTHONPATH (``tests/fakes``: the scripted ``pynvml``)."""
    import ray

    os.environ.update(ENV)
    temp = tempfile.mkdtemp(prefix="cvr", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _temp_dir=temp,
        runtime_env={"env_vars": {"PYTHONPATH": tests_path(*path), **ENV}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren... (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and every process under it, then reap it."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


class Node:
    """One ``ray start --block`` node of a loopback cluster, its output in ``log``."""

    def __init__(self, args: list[str], temp: str, env: dict[str, str]) -> None:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        fd, self.log = tempfile.mkstemp(prefix="node-", suffix=".log", dir=temp)
        with os.fdopen(fd, "wb") as out:
            self.proc = subprocess.Popen(
                [ray_cli, "start", "--block", f"--temp-dir={temp}", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        kill_tree(self.proc)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
        return ""


class LoopbackCluster:
    """A head on 127.0.0.2 and a worker node on 127.0.0.3 (with resource ``node2``),
    fast failure detection, every port its own; ``gpus`` (fake) GPUs on each node, and
    ``path`` first on their workers' PYTHONPATH (as :func:`local_ray`'s)."""

    HEAD, WORKER = "127.0.0.2", "127.0.0.3"

    def __init__(self, gpus: int = 0, path: tuple[str, ...] = ()) -> None:
        self.temp = tempfile.mkdtemp(prefix="cvr2", dir="/tmp")
        self.env = {**os.environ, **ENV, "PYTHONPATH": tests_path(*path)}
        self.gpus = [f"--num-gpus={gpus}"] if gpus else []
        self.port = free_port(self.HEAD)
        self.address = f"{self.HEAD}:{self.port}"
        self.nodes: list[Node] = []

    def start(self, ray: Any, attempts: int = 3) -> None:
        """Head, driver connected, worker node joined. A head that dies or never
        listens (a port taken between choosing and binding it, on a shared machine)
        is killed and started again on fresh ports."""
        for attempt in range(1, attempts + 1):
            self.start_head()
            try:
                self.connect(ray)
                break
            except Exception as e:
                head = self.nodes.pop()
                head.kill()
                if attempt == attempts:
                    raise RuntimeError(f"the Ray head never listened:\n{head.tail()}") from e
                self.port = free_port(self.HEAD)
                self.address = f"{self.HEAD}:{self.port}"
        worker = self.add_worker()
        if not self.wait_nodes(ray, 2):
            raise RuntimeError(f"the worker node did not join:\n{worker.tail()}")

    def _ports(self, host: str) -> list[str]:
        low = free_port(host)
        workers = range(low, low + 41)
        taken = {self.port}

        def port() -> int:  # free, distinct, and outside the workers' range
            while (p := free_port(host)) in workers or p in taken:
                pass
            taken.add(p)
            return p

        return [
            f"--node-manager-port={port()}",
            f"--object-manager-port={port()}",
            f"--runtime-env-agent-port={port()}",
            f"--dashboard-agent-grpc-port={port()}",
            f"--dashboard-agent-listen-port={port()}",
            f"--metrics-export-port={port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 40}",
        ]

    def start_head(self) -> None:
        config = '{"health_check_period_ms": 500, "health_check_failure_threshold": 2}'
        self.nodes.append(
            Node(
                [
                    "--head",
                    f"--node-ip-address={self.HEAD}",
                    f"--port={self.port}",
                    "--num-cpus=4",
                    *self.gpus,
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port(self.HEAD)}",
                    f"--system-config={config}",
                    *self._ports(self.HEAD),
                ],
                self.temp,
                self.env,
            )
        )

    def add_worker(self) -> Node:
        node = Node(
            [
                f"--address={self.address}",
                f"--node-ip-address={self.WORKER}",
                "--num-cpus=2",
                *self.gpus,
                '--resources={"node2": 4}',
                *self._ports(self.WORKER),
            ],
            self.temp,
            self.env,
        )
        self.nodes.append(node)
        return node

    def connect(self, ray: Any, timeout: float = 90) -> None:
        """Connect this process's driver to the head, once its GCS listens (seconds);
        give up at once if the head has exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.nodes[0].proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited:\n{self.nodes[0].tail()}")
            try:
                ray.init(
                    address=self.address,
                    _node_ip_address=self.HEAD,
                    logging_level="WARNING",
                    log_to_driver=False,
                )
                return
            except Exception:
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def alive_nodes(self, ray: Any) -> list[dict[str, Any]]:
        return [n for n in ray.nodes() if n["Alive"]]

    def wait_nodes(self, ray: Any, n: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.alive_nodes(ray)) == n:
                return True
            time.sleep(0.1)
        return False

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.temp, ignore_errors=True)
