"""``conveyor train``: profile, cut, plan and train a model pipelined, then print what happened.

    conveyor train examples/train_digits.py:make_model --stages 2 --schedule auto --microbatches 8

The command runs in the user's process and starts torchrun itself; a click
command object, :data:`train`, for the main ``conveyor`` group to register, and
runnable alone as ``python -m conveyor.train.cli``.
"""

from __future__ import annotations

import click

from conveyor.train._errors import TrainError
from conveyor.train._schedules import SCHEDULES


def _microbatches(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or auto, got {value!r}") from None


def _speeds(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected numbers separated by commas, one per rank, got {value!r}",
            param_hint="--speeds",
        ) from None


@click.command("train")
@click.argument("model")
@click.option(
    "--data",
    default=None,
    help="Data factory 'file.py:name' returning (inputs, targets); default: make_data beside MODEL.",
)
@click.option(
    "--stages", type=int, required=True, help="Pipeline ranks (processes) p, over all nodes."
)
@click.option(
    "--schedule", type=click.Choice([*SCHEDULES, "auto"]), default="auto", show_default=True
)
@click.option(
    "--microbatches", default="auto", show_default=True, help="Micro-batches per step m, or auto."
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option(
    "--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True
)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "cosine", "linear"]),
    default="constant",
    show_default=True,
    help="Learning rate after the warm-up.",
)
@click.option(
    "--warmup-steps", type=int, default=0, show_default=True, help="Linear warm-up steps."
)
@click.option(
    "--clip-grad", type=float, default=None, help="Clip the global gradient norm to this."
)
@click.option(
    "--dp",
    type=int,
    default=1,
    show_default=True,
    help="Data-parallel replicas of the pipeline: stages x dp processes.",
)
@click.option(
    "--accumulate",
    type=int,
    default=1,
    show_default=True,
    help="Pipeline passes per optimizer step (gradient accumulation).",
)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Save weights, optimizer, schedule, data position and RNG here.",
)
@click.option(
    "--checkpoint-every", type=int, default=0, show_default=True, help="Steps between checkpoints."
)
@click.option(
    "--resume", is_flag=True, help="Continue from the newest checkpoint in --checkpoint-dir."
)
@click.option("--until", type=int, default=None, help="Stop after this step (resume later).")
@click.option(
    "--eval-data", default=None, help="Held-out data factory 'file.py:name' -> (inputs, targets)."
)
@click.option("--eval-every", type=int, default=0, show_default=True)
@click.option(
    "--log-every", type=int, default=0, show_default=True, help="Print a progress line this often."
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the trained weights here (torch.save of the model's state dict).",
)
@click.option(
    "--loss",
    default="cross_entropy",
    show_default=True,
    help="cross_entropy, mse, or 'file.py:fn'.",
)
@click.option(
    "--partition",
    type=click.Choice(["optimal", "uniform", "parameters"]),
    default="optimal",
    show_default=True,
)
@click.option(
    "--stages-per-rank",
    type=int,
    default=2,
    show_default=True,
    help="v for the interleaved schedule.",
)
@click.option("--memory-cap", type=float, default=None, help="MiB per rank the plan must fit.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu"]),
    default="auto",
    show_default=True,
    help="auto: NCCL on GPUs when CUDA is available, else gloo.",
)
@click.option(
    "--svg",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the measured timeline here (and the predicted one beside it).",
)
@click.option(
    "--comm-gbps",
    type=float,
    default=1.0,
    show_default=True,
    help="Bandwidth between ranks the plan assumes, GB/s (also data parallelism's all-reduce).",
)
@click.option(
    "--speeds",
    default=None,
    help="Each rank's device speed relative to the profiling device, e.g. 1,1,0.5,0.5.",
)
@click.option(
    "--checkpointing/--no-checkpointing",
    default=True,
    show_default=True,
    help="Let a stage recompute its activations when that is what fits --memory-cap.",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Use this saved profile (ModelProfile.save) instead of measuring.",
)
@click.option(
    "--profile-cache",
    default=None,
    help="Folder of cached profiles (default: your cache folder); 'off' to always measure.",
)
@click.option(
    "--comm-ms",
    type=float,
    default=0.3,
    show_default=True,
    help="Send latency between ranks the plan assumes.",
)
@click.option(
    "--overhead-ms",
    type=float,
    default=0.3,
    show_default=True,
    help="Runtime time around each action the plan assumes.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds before the run and all its processes are stopped; default: no limit.",
)
@click.option(
    "--nnodes",
    type=int,
    default=1,
    show_default=True,
    help="Machines the run spans; start the same command on each, with its --node-rank.",
)
@click.option(
    "--node-rank",
    type=int,
    default=0,
    show_default=True,
    help="This machine's index, 0..nnodes-1; node 0 prints the report.",
)
@click.option(
    "--master-addr",
    default="127.0.0.1",
    show_default=True,
    help="Node 0's address, which every node reaches; the default keeps one node on loopback.",
)
@click.option(
    "--master-port",
    type=int,
    default=None,
    help="Node 0's rendezvous port, the same on every node (needed with --nnodes > 1); "
    "default: a free port.",
)
def train(
    model: str,
    data: str | None,
    stages: int,
    schedule: str,
    microbatches: str,
    batch_size: int,
    steps: int,
    lr: float,
    optimizer: str,
    loss: str,
    partition: str,
    stages_per_rank: int,
    memory_cap: float | None,
    device: str,
    svg: str | None,
    comm_ms: float,
    overhead_ms: float,
    seed: int,
    timeout: float | None,
    comm_gbps: float,
    speeds: str | None,
    checkpointing: bool,
    profile_path: str | None,
    profile_cache: str | None,
    weight_decay: float,
    lr_schedule: str,
    warmup_steps: int,
    clip_grad: float | None,
    dp: int,
    accumulate: int,
    precision: str,
    checkpoint_dir: str | None,
    checkpoint_every: int,
    resume: bool,
    until: int | None,
    eval_data: str | None,
    eval_every: int,
    log_every: int,
    save: str | None,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int | None,
) -> None:
    """Train MODEL ('file.py:make_model', an nn.Sequential factory) pipelined over --stages ranks.

    On several machines (--nnodes), run the same command on each with its own
    --node-rank and node 0's --master-addr and --master-port; every machine runs
    --stages x --dp / --nnodes ranks, and node 0 prints the report.
    """
    from conveyor.train._api import save_weights, write_svg
    from conveyor.train._api import train as run_training

    try:
        report = run_training(
            model,
            data,
            stages=stages,
            schedule=schedule,
            microbatches=_microbatches(microbatches),
            batch_size=batch_size,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            loss=loss,
            partition=partition,
            stages_per_rank=stages_per_rank,
            memory_cap=None if memory_cap is None else memory_cap * 2**20,
            seed=seed,
            device=device,
            comm_latency=comm_ms / 1e3,
            action_overhead=overhead_ms / 1e3,
            timeout=timeout,
            comm_bandwidth=comm_gbps * 1e9,
            speeds=_speeds(speeds),
            checkpointing=checkpointing,
            profile=profile_path,
            profile_cache=True
            if profile_cache is None
            else (profile_cache != "off" and profile_cache),
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            warmup_steps=warmup_steps,
            clip_grad=clip_grad,
            dp=dp,
            accumulate=accumulate,
            precision=precision,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            until=until,
            eval_data=eval_data,
            eval_every=eval_every,
            log_every=log_every,
            nnodes=nnodes,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
        )
    except TrainError as exc:
        raise click.ClickException(str(exc)) from exc
    if report is None:
        click.echo(f"node {node_rank} of {nnodes} done; node 0 prints the report")
        return
    click.echo(report.summary())
    if save:
        click.echo(f"\nweights: {save_weights(save, report.state_dict)}")
    if svg:
        measured = write_svg(svg, report.svg("measured"))
        predicted = write_svg(
            measured.with_name(measured.stem + "-predicted.svg"), report.svg("predicted")
        )
        click.echo(f"\ntimelines: {measured} (measured), {predicted} (predicted)")


if __name__ == "__main__":
    train()
