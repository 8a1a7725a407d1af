"""Each rank's batches, read step by step: nothing is built ahead, nothing kept behind.

A data factory returns either ``(inputs, targets)`` tensors, shuffled here with a
seeded permutation per epoch (the same order on every rank and every run), or an
iterable of ``(inputs, targets)`` batches (a ``DataLoader``, a generator, the
results of a conveyor pipeline), read in order. Only the ranks that need data
read it: the rank holding the first stage needs the inputs, the one holding the
last the targets, and the others never call the factory. With data parallelism
each replica takes its own slice of every global batch.

A run resumed at step k starts at the batch step k would have had: the tensor
source replays its permutations (cheap: one ``randperm`` per epoch), the iterable
source reads and drops k batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from conveyor.train._errors import TrainError

__all__ = ["batches", "sample_inputs", "split_rows"]

Batch = tuple[torch.Tensor, torch.Tensor]


def batches(
    source: Any, *, batch_size: int, steps: int, seed: int, start: int = 0
) -> Iterator[Batch]:
    """Global batches for steps ``start .. steps-1`` from what the data factory returned."""
    if _is_pair(source):
        return _shuffled(source[0], source[1], batch_size, steps, seed, start)
    if isinstance(source, Iterable):
        return _streamed(iter(source), batch_size, steps, start)
    raise TrainError(
        f"the data factory returned {type(source).__name__}; return (inputs, targets) "
        "tensors or an iterable of (inputs, targets) batches (a DataLoader, a generator)"
    )


def _is_pair(source: Any) -> bool:
    return (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and all(isinstance(t, torch.Tensor) for t in source)
    )


def _shuffled(
    inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, steps: int, seed: int, start: int
) -> Iterator[Batch]:
    n = int(inputs.shape[0])
    if int(targets.shape[0]) != n:
        raise TrainError(
            f"the data factory returned {n} inputs but {int(targets.shape[0])} targets; "
            "return one target per input row"
        )
    if n < batch_size:
        raise TrainError(f"the data has {n} rows, fewer than one batch of {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    order = torch.randperm(n, generator=gen)
    for _ in range(start // per_epoch):  # the permutations of the epochs already done
        order = torch.randperm(n, generator=gen)
    for step in range(start, steps):
        if step % per_epoch == 0 and step > start:
            order = torch.randperm(n, generator=gen)
        k = step % per_epoch
        idx = order[k * batch_size : (k + 1) * batch_size]
        yield inputs[idx], targets[idx]


def _streamed(source: Iterator[Any], batch_size: int, steps: int, start: int) -> Iterator[Batch]:
    for step in range(steps):
        try:
            item = next(source)
        except StopIteration:
            raise TrainError(
                f"the data ran out after {step} batches; the run needs {steps} "
                "(pass fewer steps, or make the iterable longer or endless)"
            ) from None
        if step < start:
            continue
        if not _is_pair(item):
            raise TrainError(
                f"batch {step} from the data is {type(item).__name__}; each batch must be "
                "(inputs, targets) tensors"
            )
        x, y = item
        if int(x.shape[0]) != batch_size or int(y.shape[0]) != batch_size:
            raise TrainError(
                f"batch {step} from the data has {int(x.shape[0])} inputs and "
                f"{int(y.shape[0])} targets; every batch must have batch_size={batch_size} "
                "rows (drop the last partial batch: DataLoader(..., drop_last=True))"
            )
        yield x, y


def split_rows(batch: Batch, replicas: int, replica: int) -> Batch:
    """This data-parallel replica's rows of a global batch."""
    if replicas == 1:
        return batch
    x, y = batch
    rows = int(x.shape[0]) // replicas
    part = slice(replica * rows, (replica + 1) * rows)
    return x[part], y[part]


def sample_inputs(source: Any) -> torch.Tensor:
    """Inputs to profile the model on: the tensors' inputs, or the first batch's."""
    if _is_pair(source):
        inputs: torch.Tensor = source[0]
        return inputs
    if isinstance(source, Iterable):
        for item in source:
            if _is_pair(item):
                first: torch.Tensor = item[0]
                return first
            break
    raise TrainError(
        "the data factory returned no (inputs, targets) to profile the model on; return "
        "(inputs, targets) tensors or an iterable of (inputs, targets) batches"
    )
