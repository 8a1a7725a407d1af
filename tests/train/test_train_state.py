"""Pipelined training is exact with state: BatchNorm statistics, tied weights, random
streams, tuples and dicts between stages, data parallelism, checkpoints, and the
training essentials (AdamW, schedules, clipping, accumulation, evaluation), each
against one process training on the same batches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conveyor.train import TrainError  # noqa: E402
from conveyor.train._data import batches  # noqa: E402
from conveyor.train._launch import launch  # noqa: E402
from conveyor.train._optim import make_lr_schedule, make_optimizer  # noqa: E402
from conveyor.train._runtime import RunSpec, build_model_layers, load_object  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

MODELS = Path(__file__).with_name("state_models.py")
TOY = Path(__file__).with_name("toy_model.py")


def spec(model: str, bounds: list[int], **kw: Any) -> RunSpec:
    base: dict[str, Any] = {
        "model": f"{MODELS}:{model}",
        "data": f"{MODELS}:make_data",
        "schedule": "1f1b",
        "microbatches": 4,
        "bounds": bounds,
        "batch_size": 32,
        "steps": 12,
        "lr": 0.1,
        "record_parameters": False,
    }
    base.update(kw)
    return RunSpec(**base)


def reference(s: RunSpec, loss: Any = None) -> tuple[list[float], dict[str, Any]]:
    """One process on the same batches, the micro-batches run one after another."""
    torch.set_num_threads(1)
    loss = loss or torch.nn.functional.cross_entropy
    model = torch.nn.Sequential(*build_model_layers(s))
    opt = make_optimizer(
        s.optimizer, list(model.parameters()), lr=s.lr, weight_decay=s.weight_decay
    )
    lr = make_lr_schedule(opt, schedule=s.lr_schedule, warmup=s.warmup_steps, total=s.steps)
    data = load_object(s.data)()
    chunks = s.dp * s.accumulate * s.microbatches
    losses = []
    for x, y in batches(data, batch_size=s.batch_size, steps=s.steps, seed=s.seed):
        opt.zero_grad()
        total = 0.0
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            value = loss(model(xc), yc) / chunks
            value.backward()
            total += float(value.detach())
        if s.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
        opt.step()
        lr.step()
        losses.append(total)
    return losses, {k: v.detach() for k, v in model.state_dict().items()}


def assert_same_state(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{what} {name}")
        else:
            assert torch.equal(got[name], value), f"{what} {name}: {got[name]} != {value}"


BATCHNORM = spec("make_batchnorm", [0, 3, 7])
TIED = spec(
    "make_tied",
    [0, 2, 4],
    data=f"{MODELS}:make_tokens",
    loss=f"{MODELS}:token_loss",
    schedule="gpipe",
    microbatches=2,
    clip_grad=0.05,  # clipped by the global norm, the tied weight counted once
)
TUPLE = spec("make_tuple", [0, 2, 4])
DICT = spec("make_dict", [0, 2, 4], schedule="gpipe")
DROPOUT = spec("make_dropout", [0, 3, 6], optimizer="adam", lr=0.01)
ESSENTIALS = RunSpec(
    model=f"{TOY}:make_model",
    data=f"{TOY}:make_data",
    schedule="1f1b",
    microbatches=2,
    bounds=[0, 8, 16],
    batch_size=32,
    steps=12,
    lr=0.05,
    optimizer="adamw",
    weight_decay=0.1,
    lr_schedule="cosine",
    warmup_steps=3,
    clip_grad=0.05,
    accumulate=2,
    eval_data=f"{MODELS}:make_eval_data",
    eval_every=6,
)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ckpt = tmp_path_factory.mktemp("checkpoints")
    resumable = replace(DROPOUT, steps=20, lr_schedule="cosine", checkpoint_dir=str(ckpt))
    runs = {
        "batchnorm": BATCHNORM,
        "tied": TIED,
        "tuple": TUPLE,
        "dict": DICT,
        "dropout": DROPOUT,
        "dropout-gpipe": replace(DROPOUT, schedule="gpipe"),
        "dropout-seed1": replace(DROPOUT, seed=1),
        "dropout-again": DROPOUT,
        "recompute": replace(DROPOUT, recompute=[True, True]),
        "bf16": replace(BATCHNORM, precision="bf16"),
        "batchnorm-recompute": replace(BATCHNORM, recompute=[True, True]),
        "essentials": ESSENTIALS,
        "straight": replace(resumable, checkpoint_dir=None),
        "first-half": replace(resumable, until=10, checkpoint_every=5),
        "resumed": replace(resumable, resume=True),
    }
    results = launch(list(runs.values()), 2, timeout=1200)
    return {"specs": runs, **dict(zip(runs, results, strict=True))}


@pytest.mark.timeout(1600)
def test_batchnorm_statistics_equal_one_process(two_ranks: dict[str, Any]) -> None:
    losses, state = reference(BATCHNORM)
    got = two_ranks["batchnorm"]
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    # running means, variances and num_batches_tracked (12 steps x 4 micro-batches = 48)
    assert int(got["final_state"]["1.num_batches_tracked"]) == 48
    assert_same_state(got["final_state"], state, "batchnorm")
    # recomputed in the backward, the forward does not count its batch twice
    assert_same_state(two_ranks["batchnorm-recompute"]["final_state"], state, "recomputed")


@pytest.mark.timeout(1600)
def test_tied_weights_stay_equal_and_match_one_process(two_ranks: dict[str, Any]) -> None:
    losses, state = reference(TIED, loss=load_object(TIED.loss))
    got = two_ranks["tied"]["final_state"]
    # stage 0 holds the embedding, stage 1 the head tied to it: each rank's own copy
    assert torch.equal(got["0.weight"], got["3.embedding.weight"])
    assert not torch.equal(got["0.weight"], build_model_layers(TIED)[0].weight)  # it trained
    assert max(two_ranks["tied"]["grad_norms"]) > TIED.clip_grad  # clipping took part
    assert two_ranks["tied"]["losses"] == pytest.approx(losses, rel=1e-5)
    assert_same_state(got, state, "tied")


@pytest.mark.timeout(1600)
@pytest.mark.parametrize("name", ["tuple", "dict"])
def test_tuples_and_dicts_cross_stages(two_ranks: dict[str, Any], name: str) -> None:
    losses, state = reference(two_ranks["specs"][name])
    assert two_ranks[name]["losses"] == pytest.approx(losses, rel=1e-5)
    assert_same_state(two_ranks[name]["final_state"], state, name)


@pytest.mark.timeout(1600)
def test_random_streams_differ_across_stages_and_repeat_across_runs(
    two_ranks: dict[str, Any],
) -> None:
    one, gpipe, other = (
        two_ranks[k]["final_state"] for k in ("dropout", "dropout-gpipe", "dropout-seed1")
    )
    # stage 0's draws and stage 1's draws are not the same stream
    assert not torch.equal(one["1.last"], one["4.last"])
    # the masks depend on (seed, step, stage, micro-batch), not on the schedule's order
    assert_same_state(gpipe, one, "gpipe against 1f1b")
    # the same seed again: the same weights, bit for bit
    again = two_ranks["dropout-again"]["final_state"]
    assert all(torch.equal(again[k], v) for k, v in one.items())
    # activations recomputed in the backward see the masks of their forward
    assert_same_state(two_ranks["recompute"]["final_state"], one, "recompute")
    # another seed, other masks, other weights
    assert not torch.equal(other["1.last"], one["1.last"])
    assert not torch.allclose(other["3.weight"], one["3.weight"])


@pytest.mark.timeout(1600)
def test_adamw_schedule_clipping_accumulation_and_evaluation_equal_one_process(
    two_ranks: dict[str, Any],
) -> None:
    losses, state = reference(ESSENTIALS)
    got = two_ranks["essentials"]
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    assert_same_state(got["final_state"], state, "essentials")
    assert max(got["grad_norms"]) > ESSENTIALS.clip_grad  # clipping took part
    assert got["lrs"][0] == pytest.approx(ESSENTIALS.lr / 3)  # warm-up
    assert [step for step, _ in got["eval"]] == [6, 12]
    model = torch.nn.Sequential(*build_model_layers(ESSENTIALS))
    model.load_state_dict(state)
    x, y = load_object(ESSENTIALS.eval_data)()
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(x), y)
    assert got["eval"][-1][1] == pytest.approx(float(want), rel=1e-5)


@pytest.mark.timeout(1600)
def test_ten_plus_ten_steps_equal_twenty(two_ranks: dict[str, Any]) -> None:
    straight, half, resumed = (two_ranks[k] for k in ("straight", "first-half", "resumed"))
    assert resumed["start"] == 10 and half["start"] == 0
    assert len(resumed["losses"]) == 20
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-5)
    assert_same_state(resumed["final_state"], straight["final_state"], "resumed")
    folder = Path(two_ranks["specs"]["resumed"].checkpoint_dir)
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-00000005",
        "step-00000010",
        "step-00000020",
    ]


@pytest.mark.timeout(1200)
def test_data_parallel_pipelines_on_four_ranks_equal_one_process() -> None:
    runs = [
        RunSpec(
            model=f"{TOY}:make_model",
            data=f"{TOY}:make_data",
            schedule="1f1b",
            microbatches=2,
            bounds=[0, 8, 16],
            batch_size=32,
            steps=10,
            lr=0.1,
            dp=2,
        ),
        replace(TIED, dp=2),
    ]
    results = launch(runs, 4, timeout=960)
    for s, got, loss in zip(runs, results, [None, load_object(TIED.loss)], strict=True):
        losses, state = reference(s, loss=loss)
        assert got["replicas"] == 2 and got["ranks"] == 2
        assert got["losses"] == pytest.approx(losses, rel=1e-5)
        assert_same_state(got["final_state"], state, s.model)


@pytest.mark.timeout(1200)
def test_memory_stays_flat_over_a_thousand_steps() -> None:
    table = RunSpec(
        model=f"{MODELS}:make_wide",
        data=f"{MODELS}:make_big_table",
        schedule="1f1b",
        microbatches=2,
        bounds=[0, 2, 3],
        batch_size=256,
        steps=100,
    )
    # an endless stream of batches made by a conveyor pipeline
    feed = replace(table, data=f"{MODELS}:make_conveyor_feed", batch_size=32)
    runs = [table, replace(table, steps=1000), feed, replace(feed, steps=1000)]
    short, long, short_feed, long_feed = launch(runs, 2, timeout=960)
    # 900 more steps of 256 rows x 256 floats would be 225 MiB if batches were kept
    for a, b in ((short, long), (short_feed, long_feed)):
        for rank, (before, after) in enumerate(zip(a["rss_mib"], b["rss_mib"], strict=True)):
            assert after - before < 12, f"rank {rank}: {before:.1f} -> {after:.1f} MiB"
    assert len(long["timelines"]) <= 64 and len(long["losses"]) == 1000


@pytest.mark.timeout(1200)
def test_an_error_in_a_layer_names_the_stage_the_layer_and_the_shapes() -> None:
    broken = spec("make_broken", [0, 2, 4], steps=2)
    with pytest.raises(
        TrainError, match=r"stage 1, layer 3 \(Linear\) failed on input tensor \(8, 8\)"
    ):
        launch([broken], 2, timeout=960)


@pytest.mark.timeout(1200)
def test_resuming_a_finished_run_or_another_cut_is_a_clear_error(tmp_path: Path) -> None:
    done = replace(TUPLE, steps=2, checkpoint_dir=str(tmp_path))
    launch([done], 2, timeout=960)
    with pytest.raises(TrainError, match="is at step 2 of 2; pass more steps to train further"):
        launch([replace(done, resume=True)], 2, timeout=960)
    recut = replace(done, resume=True, steps=4, bounds=[0, 3, 4])
    with pytest.raises(TrainError, match=r"was taken with .*bounds=\[0, 2, 4\].*this run has"):
        launch([recut], 2, timeout=960)


@pytest.mark.timeout(1600)
def test_bf16_autocast_matches_one_process_under_autocast(two_ranks: dict[str, Any]) -> None:
    s = two_ranks["specs"]["bf16"]
    model = torch.nn.Sequential(*build_model_layers(s))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    class Autocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forward(x)

    got = two_ranks["bf16"]
    x, y = next(batches(load_object(s.data)(), batch_size=s.batch_size, steps=1, seed=s.seed))
    with torch.no_grad():
        first = sum(
            float(torch.nn.functional.cross_entropy(forward(xc).float(), yc))
            for xc, yc in zip(x.chunk(4), y.chunk(4), strict=True)
        )
    assert got["losses"][0] == pytest.approx(first / 4, rel=1e-3)
    assert got["losses"][-1] < got["losses"][0]  # it trains


@pytest.mark.timeout(1200)
def test_a_plan_that_recomputes_activations_trains_like_one_that_keeps_them() -> None:
    from conveyor.train import train

    common: dict[str, Any] = {
        "stages": 2,
        "schedule": "gpipe",
        "microbatches": 8,
        "batch_size": 64,
        "steps": 3,
    }
    kept = train(f"{TOY}:make_model", **common)
    assert kept is not None and not any(kept.partition.checkpoint)
    # under a cap below what GPipe keeps for 8 micro-batches, the plan recomputes
    capped = train(f"{TOY}:make_model", memory_cap=kept.plan.best.peak_memory / 2, **common)
    assert capped is not None and all(capped.partition.checkpoint)
    assert capped.losses == pytest.approx(kept.losses, rel=1e-6)
    for name, value in kept.state_dict.items():
        torch.testing.assert_close(capped.state_dict[name], value, rtol=1e-6, atol=1e-7)
