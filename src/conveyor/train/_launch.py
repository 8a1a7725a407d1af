"""Start a pipelined run under torchrun and collect its result; no torch import until the end.

:func:`launch` writes the run specs to a JSON file, runs

    python -m torch.distributed.run --nproc-per-node P --master-addr 127.0.0.1 \\
        --master-port PORT -m conveyor.train._runtime SPECS.json RESULT.pt

on a free local port with one thread per rank, and loads what rank 0 saved.
A rank that fails makes torchrun exit non-zero; the error shows its stderr tail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.train._errors import TrainError, require_torch

if TYPE_CHECKING:
    from conveyor.train._runtime import RunSpec

__all__ = ["free_port", "launch"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    specs: Sequence[RunSpec],
    ranks: int,
    *,
    timeout: float = 600,
    device: str = "auto",
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Run ``specs`` one after another on ``ranks`` processes; the result of each, from rank 0.

    ``device`` "auto" uses NCCL on GPUs when CUDA is available, else gloo on CPU;
    "cpu" forces gloo. Raises TrainError if a rank fails or ``timeout`` passes.
    """
    require_torch()
    import torch

    with tempfile.TemporaryDirectory(prefix="conveyor-train-") as tmp:
        spec_path, result_path = Path(tmp, "specs.json"), Path(tmp, "result.pt")
        spec_path.write_text(json.dumps({"device": device, "specs": [asdict(s) for s in specs]}))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # the user's model file may sit next to the caller: keep the working directory importable
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "-m", "conveyor.train._runtime", str(spec_path), str(result_path),
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TrainError(
                f"the pipelined run on {ranks} ranks did not finish in {timeout:.0f} s; "
                f"stderr tail:\n{(exc.stderr or '')[-3000:] if isinstance(exc.stderr, str) else ''}"
            ) from None
        if proc.returncode != 0 or not result_path.exists():
            raise TrainError(
                f"a rank failed (torchrun exit code {proc.returncode}); stderr tail:\n"
                f"{proc.stderr[-4000:]}"
            )
        results: list[dict[str, Any]] = torch.load(result_path, weights_only=False)
        return results
