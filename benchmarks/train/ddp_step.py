"""p-way data parallelism with torch's DDP (gloo, one thread per rank), for bench_pipeline_pays.py.

    python -m torch.distributed.run --nproc-per-node 2 ddp_step.py MODEL_FILE BATCH STEPS OUT.json

Each rank trains the model on its batch / p rows of every batch with SGD; rank 0
writes, per step, the slowest rank's forward + backward seconds (DDP's gradient
all-reduce runs inside the backward) and its whole step with the optimizer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    file, batch, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("model", file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = DistributedDataParallel(mod.make_model())
    x, y = mod.make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    share = batch // world
    times = []
    for step in range(steps):
        start = (step % (x.shape[0] // batch)) * batch + rank * share
        xb, yb = x[start : start + share], y[start : start + share]
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        slowest = torch.tensor([t1 - t0, t2 - t0])
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times.append(slowest.tolist())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
