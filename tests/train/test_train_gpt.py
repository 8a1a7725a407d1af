"""A real model: the GPT example pipelined equals one process, its loss falls, and the
same network as one module with its own forward, cut by torch's tracer (Traced),
trains pipelined equal to one process too."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conveyor.train import Traced, TrainError  # noqa: E402
from conveyor.train._data import batches  # noqa: E402
from conveyor.train._launch import launch  # noqa: E402
from conveyor.train._optim import make_optimizer  # noqa: E402
from conveyor.train._profile import as_layers  # noqa: E402
from conveyor.train._runtime import RunSpec, load_object  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "examples" / "train_gpt.py"

LAYERED = RunSpec(
    model=f"{EXAMPLE}:make_model",
    data=f"{EXAMPLE}:make_data",
    loss=f"{EXAMPLE}:lm_loss",
    schedule="1f1b",
    microbatches=2,
    bounds=[0, 3, 6],  # embedding + 2 blocks | 2 blocks + head: the tied weight crosses the cut
    batch_size=16,
    steps=6,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.1,
)
TRACED = replace(LAYERED, model=f"{EXAMPLE}:make_traced", bounds=[0, 1, 2], schedule="zbh1")
FALLING = replace(LAYERED, steps=60, batch_size=32, microbatches=4)


def one_process(s: RunSpec) -> tuple[list[float], Any, Any]:
    """One process on the same batches, micro-batches one after another: (losses, model, built)."""
    torch.set_num_threads(1)
    torch.manual_seed(s.seed)
    built = load_object(s.model)(**s.model_kwargs)
    model = built.model if isinstance(built, Traced) else built
    loss_fn = load_object(s.loss)
    opt = make_optimizer(
        s.optimizer, list(model.parameters()), lr=s.lr, weight_decay=s.weight_decay
    )
    losses = []
    for x, y in batches(load_object(s.data)(), batch_size=s.batch_size, steps=s.steps, seed=s.seed):
        opt.zero_grad()
        total = 0.0
        for xc, yc in zip(x.chunk(s.microbatches), y.chunk(s.microbatches), strict=True):
            value = loss_fn(model(xc), yc) / s.microbatches
            value.backward()
            total += float(value.detach())
        opt.step()
        losses.append(total)
    return losses, model, built


def assert_same_weights(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{what} {name}")


@pytest.fixture(scope="module")
def two_ranks() -> dict[str, Any]:
    runs = {"layered": LAYERED, "traced": TRACED, "falling": FALLING}
    return dict(zip(runs, launch(list(runs.values()), 2, timeout=1200), strict=True))


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_gpt_pipelined_equals_one_process(two_ranks: dict[str, Any]) -> None:
    losses, model, _ = one_process(LAYERED)
    got = two_ranks["layered"]
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    assert_same_weights(got["final_state"], model.state_dict(), "layered")
    # the head on stage 1 and the embedding on stage 0 share one weight, and it trained
    state = got["final_state"]
    assert torch.equal(state["0.tok.weight"], state["5.weight"])
    torch.manual_seed(LAYERED.seed)
    assert not torch.equal(state["0.tok.weight"], load_object(LAYERED.model)()[0].tok.weight)


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_gpt_loss_falls(two_ranks: dict[str, Any]) -> None:
    losses = two_ranks["falling"]["losses"]
    text = load_object(f"{EXAMPLE}:TEXT")
    counts = Counter(text).values()
    # the entropy of the characters' frequencies: what a model blind to context can reach
    unigram = -sum(c / len(text) * math.log(c / len(text)) for c in counts)
    assert losses[0] == pytest.approx(math.log(len(counts)), abs=0.05)  # uniform odds at first
    assert max(losses[-5:]) < unigram - 0.3, (unigram, losses)


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_traced_gpt_pipelined_equals_one_process(two_ranks: dict[str, Any]) -> None:
    losses, model, traced = one_process(TRACED)
    got = two_ranks["traced"]
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    # piece 0 holds the embedding, piece 1 the head tied to it (under its own name)
    state = got["final_state"]
    assert torch.equal(state["0.embed.tok.weight"], state["1.head.weight"])
    assert_same_weights(traced.model_state(state), model.state_dict(), "traced")


@pytest.mark.train
def test_traced_pieces_compute_what_the_model_computes() -> None:
    gpt = load_object(f"{EXAMPLE}:GPT")(layers=3)
    x, y = load_object(LAYERED.data)()
    traced = Traced(gpt, split_points=["blocks.1", "head"], sample=x[:4])
    pieces = as_layers(traced)
    assert [type(p).__name__ for p in pieces] == ["TracedPiece"] * 3
    tied = gpt.embed.tok.weight
    assert pieces[0].get_parameter("embed.tok.weight") is tied
    assert pieces[2].get_parameter("head.weight") is tied  # one tensor, not pipeline()'s copy
    # the model is left as it was: no split marker in place of a forward
    assert "forward" not in vars(gpt.blocks[1]) and "forward" not in vars(gpt.head)
    loss_fn = load_object(LAYERED.loss)
    for rows in (4, 3):  # the sample's rows, then others: traced again on the same tensors
        value: Any = x[:rows]
        for piece in pieces:
            value = piece(value)
        gpt.zero_grad()
        loss_fn(value, y[:rows]).backward()
        grads = {n: p.grad.clone() for n, p in gpt.named_parameters()}
        gpt.zero_grad()
        want = gpt(x[:rows])
        loss_fn(want, y[:rows]).backward()
        torch.testing.assert_close(value, want, rtol=0, atol=0)
        for name, p in gpt.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.train
def test_traced_pieces_traced_for_fixed_rows_refuse_others() -> None:
    pieces = as_layers(load_object(TRACED.model)(layers=2, split="blocks.1"), rows=2)
    x, _ = load_object(LAYERED.data)()
    assert pieces[0](x[:2]).shape == (2, 32, 48)
    with pytest.raises(TrainError, match="traced for inputs of 2 rows and got 3"):
        pieces[0](x[:3])


@pytest.mark.train
@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("blocks.9", r"split point 'blocks.9' is not a submodule of GPT \(did you mean "
                     r"'blocks.1'\?\).*the outer ones are embed, embed.tok, blocks, blocks.0"),
        ("embed", r"did not cut it into 2 pieces \(torch made 1\): each split point must name "
                  "a submodule that forward runs exactly once, and not the first one it runs"),
    ],
)  # fmt: skip
def test_bad_split_point_is_a_clear_error(split: str, message: str) -> None:
    with pytest.raises(TrainError, match=message):
        as_layers(load_object(TRACED.model)(layers=2, split=split))
