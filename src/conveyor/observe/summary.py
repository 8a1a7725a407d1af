"""Reports: a finished (or running) run's statistics as rich tables and sentences.

Pure functions of a :class:`~conveyor.RunStatistics` snapshot, so the CLI, the
examples and tests all show the same figures::

    from rich.console import Console
    from conveyor.observe.summary import limiting_line, stage_table

    run = pipeline.run()
    stats = run.statistics()
    Console().print(stage_table(stats))
    print(limiting_line(stats))   # limiting stage: render (busy 97% of its workers' time)

The limiting stage is the one whose workers were busiest (busy seconds over
workers * elapsed): in a pipeline on bounded queues it sets the pace, and every
other stage waits on it some of the time. This module imports rich; the core
does not import this module.
"""

from __future__ import annotations

from rich.table import Table

from conveyor.core.statistics import RunStatistics, StageStatistics

__all__ = ["limiting_line", "limiting_stage", "run_summary", "stage_table"]

TIMES = "\u00d7"  # the multiplication sign, as in "processes\u00d72"


def stage_table(stats: RunStatistics, *, title: str | None = None) -> Table:
    """One row per stage: executor and workers, items in and out, throughput, mean service
    time, busy share of its workers, and peak queue depth over the queue's bound.

    Throughput is ``items_out / elapsed``; service time ``busy_seconds / items_in``;
    busy share ``busy_seconds / (workers * elapsed)``. The limiting stage's name is bold.
    """
    elapsed = stats.elapsed_seconds
    limiting = limiting_stage(stats)
    table = Table(
        title=title if title is not None else f"{stats.pipeline}: {stats.state}",
        title_justify="left",
        show_edge=False,  # fits 80 columns
    )
    table.add_column("stage")
    table.add_column("executor", no_wrap=True)  # e.g. processes\u00d72: executor, workers
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("items/s", justify="right")
    table.add_column("ms/item", justify="right")
    table.add_column("busy", justify="right")
    table.add_column("peak queue", justify="right", no_wrap=True)
    for s in stats.stages.values():
        name = f"[bold]{s.name}[/bold]" if s.name == limiting else s.name
        table.add_row(
            name,
            f"{s.executor}{TIMES}{s.workers}",
            str(s.items_in),
            str(s.items_out),
            f"{s.items_out / elapsed:.1f}" if elapsed > 0 else "-",
            _service_ms(s),
            f"{s.busy_share(elapsed):.0%}",
            f"{s.queue.peak_depth} / {_bound(s.queue.bound)}",
        )
    return table


def limiting_stage(stats: RunStatistics) -> str | None:
    """The name of the stage with the highest busy share: the one that limits throughput.

    ``None`` when no stage has done any work yet (nothing to explain).
    """
    elapsed = stats.elapsed_seconds
    best: tuple[float, str] | None = None
    for s in stats.stages.values():
        share = s.busy_share(elapsed)
        if share > 0 and (best is None or share > best[0]):
            best = (share, s.name)
    return best[1] if best else None


def limiting_line(stats: RunStatistics) -> str | None:
    """``"limiting stage: render (busy 97% of its workers' time)"``, or ``None``."""
    name = limiting_stage(stats)
    if name is None:
        return None
    share = stats.stages[name].busy_share(stats.elapsed_seconds)
    return f"limiting stage: {name} (busy {share:.0%} of its workers' time)"


def run_summary(stats: RunStatistics) -> str:
    """``"science: succeeded, 300 items read, 300 results in 12.3 s (24.4 results/s)"``."""
    return (
        f"{stats.pipeline}: {stats.state}, {stats.items_read} items read, "
        f"{stats.items_emitted} results in {stats.elapsed_seconds:.2f} s "
        f"({stats.throughput:.1f} results/s)"
    )


def _service_ms(s: StageStatistics) -> str:
    mean = s.mean_service_seconds
    return "-" if mean is None else f"{mean * 1e3:.3g}"


def _bound(bound: int | None) -> str:
    return "∞" if bound is None else str(bound)
