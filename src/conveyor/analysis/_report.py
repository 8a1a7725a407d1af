"""The report: a run explained in numbers and plain words.

:func:`build_report` turns a recording into a :class:`Report`: every figure (measures,
the model's prediction, Little's law, the bottleneck and its evidence, the balanced
allocation) and advice in words (an idle GPU's too). ``render()`` gives text::

    report = run.report(budget=8)
    print(report.render())
    report.recommendations  # ("give `embed` 3 workers of the 8: predicted 2.4x throughput ...", ...)
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any

from conveyor.analysis._advice import (
    ENGINE_ADVICE,
    allowed,
    cpu_workers,
    engine_bound,
    needs_core,
    sync_stages,
)
from conveyor.analysis._balance import Allocation, balance
from conveyor.analysis._bottleneck import Bottleneck, WindowVerdict, find_bottleneck
from conveyor.analysis._gpu import gpu_idle_lines
from conveyor.analysis._measure import RunMeasure, measure
from conveyor.analysis._model import Little, Model, Prediction, little, model_of, predict
from conveyor.observe.recording import Recording

__all__ = ["Comparison", "Report", "build_report"]

TIMES = "\u00d7"
SPEEDUP_WORTH_SAYING = 1.05  # recommend a change only if it predicts 5% more throughput
SOURCE_PACED_WAITING = 0.5  # entry stages waiting for input at least this share of the run
SOURCE_PACED_BUSY = 0.5  # and no stage busier than this: the source set the pace


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One figure as the model predicts it and as the run measured it."""

    name: str
    formula: str
    predicted: float
    measured: float
    unit: str

    @property
    def error(self) -> float:
        """(measured - predicted) / predicted."""
        return (self.measured - self.predicted) / self.predicted if self.predicted else math.nan


@dataclasses.dataclass(frozen=True)
class Report:
    """Every figure of one run's explanation, and the recommendations in words."""

    measure: RunMeasure
    model: Model
    prediction: Prediction
    comparisons: tuple[Comparison, ...]
    little: Little | None
    bottleneck: Bottleneck | None
    budget: int
    allocation: Allocation | None
    recommendations: tuple[str, ...]
    # Set when the source, not a stage, set the run's pace: the evidence, in words.
    source_paced: str | None = None
    # Set when conveyor's own overhead, not a stage, limited the run: the evidence.
    engine_bound: str | None = None

    def limiting_line(self) -> str | None:
        """``"limiting stage: render (busy 97% of its workers' time; ...)"``, or
        ``"limiting: the source (...)"`` when no stage held the run back."""
        if self.source_paced is not None:
            return f"limiting: the source ({self.source_paced})"
        if self.engine_bound is not None:
            return f"limiting: conveyor's own overhead ({self.engine_bound})"
        b = self.bottleneck
        if b is None:
            return None
        return f"limiting stage: {b.stage} ({'; '.join(b.evidence())})"

    def to_dict(self) -> dict[str, Any]:
        """Every figure as JSON-ready data (NaN and infinity become None)."""
        return _clean(dataclasses.asdict(self))

    @property
    def advised_workers(self) -> dict[str, int] | None:
        """The workers per stage the report advises, or None when it advises no move
        (the allocation predicts less than 5% more throughput, or there is none)."""
        a, now = self.allocation, self.prediction.throughput
        if a is None or a.workers == self.model.workers:
            return None
        return dict(a.workers) if a.throughput > now * SPEEDUP_WORTH_SAYING else None

    def to_config(self) -> str:
        """The advice as a config file (TOML) for ``Pipeline.with_config`` and
        ``conveyor run --config``: each stage's advised workers, with the prediction
        in a comment. With no advice, the run's own workers, saying so."""
        advised = self.advised_workers
        now = self.prediction.throughput
        if advised is None:
            head = "# the report advises no change of workers: these are the run's own"
            workers = self.model.workers
        else:
            assert self.allocation is not None
            gain = self.allocation.throughput / now if now else math.inf
            head = (
                f"# advised by conveyor analyze: {sum(advised.values())} workers, predicted "
                f"{gain:.2f}x throughput ({now:.1f} -> {self.allocation.throughput:.1f} items/s)"
            )
            workers = advised
        lines = [head]
        for name, w in workers.items():
            lines += ["", f"[stages.{_toml_key(name)}]", f"workers = {w}"]
        return "\n".join(lines) + "\n"

    def render(self, *, width: int = 120) -> str:
        """The report as plain text (no colour)."""
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None, force_terminal=False).print(self)
        return buf.getvalue()

    def table(self) -> Any:
        """The per-stage table (a rich Table): stage, executor×workers, items in and out,
        items/s, mean and p95 ms per unit, mean queue wait, busy share, starved and
        blocked shares, peak queue over its bound."""
        from rich.table import Table

        m = self.measure
        t = Table(title=f"{m.pipeline}: {m.state}", title_justify="left", show_edge=False)
        for col in ("stage", "executor"):
            t.add_column(col, no_wrap=True)
        for col in (
            "in",
            "out",
            "items/s",
            "ms/unit",
            "p95 ms",
            "wait ms",
            "busy",
            "starved",
            "blocked",
            "peak queue",
        ):
            t.add_column(col, justify="right", no_wrap=True)
        limiting = self.bottleneck.stage if self.bottleneck else None
        for s in m.stages.values():
            workers = (
                f"{s.workers}" if s.final_workers == s.workers else f"{s.workers}→{s.final_workers}"
            )
            t.add_row(
                f"[bold]{s.name}[/bold]" if s.name == limiting else s.name,
                f"{s.executor}{TIMES}{workers}{' fused' if s.fused else ''}",
                str(s.items_in),
                "-" if s.items_out is None else str(s.items_out),
                f"{(s.items_out or s.items_in) / m.makespan_s:.1f}" if m.makespan_s > 0 else "-",
                _ms(s.service.mean),
                _ms(s.service.p95),
                _ms(s.queue_wait.mean),
                f"{s.utilisation:.0%}",
                f"{s.starved_share:.0%}",
                f"{s.blocked_share:.0%}",
                f"{s.peak_queue_depth} / {'∞' if s.bound is None else s.bound}",
            )
        return t

    def lines(self) -> list[str]:
        """The words below the table, one line each."""
        m = self.measure
        out = [
            f"{m.pipeline}: {m.state}, {m.done} of {m.items} items in {m.makespan_s:.2f} s "
            f"({m.throughput:.1f} items/s); latency p50 {_dur(m.latency.p50)}, "
            f"p95 {_dur(m.latency.p95)}, p99 {_dur(m.latency.p99)}"
        ]
        line = self.limiting_line()
        if line:
            out.append(line)
        b = self.bottleneck
        if b is not None and b.drifted:
            spans = ", ".join(f"{a:.1f}-{z:.1f} s: {name}" for a, z, name in _merge_spans(b.moves))
            out.append(f"the bottleneck moved during the run ({spans}; {b.stage} elsewhere)")
        if m.startup_s > 0.01 and m.startup_s >= 0.05 * (m.makespan_s + m.startup_s):
            out.append(
                f"start-up: {m.startup_s:.2f} s passed before the first unit started (process "
                "workers importing their modules); the figures below leave it out"
            )
        failed = [f"{s.name} {s.errors}" for s in m.stages.values() if s.errors]
        if failed:
            out.append(f"errors (units that raised): {', '.join(failed)}")
        out.extend(_caveats(m))
        out.append("model against measurement:")
        for c in self.comparisons:
            err = "" if math.isnan(c.error) else f" ({c.error:+.0%})"
            out.append(
                f"  {c.name:<24} {c.formula:<22} predicted {_num(c.predicted)} {c.unit}, "
                f"measured {_num(c.measured)} {c.unit}{err}"
            )
        if self.little is not None:
            lt = self.little
            out.append(
                f"  {'Little: items in system':<24} {'L = λ·W':<22} λ·W = {lt.throughput:.1f}/s × "
                f"{_dur(lt.mean_latency_s)} = {lt.predicted:.2f}, measured in queues and "
                f"workers {lt.items_in_system:.2f} ({lt.error:+.0%})"
            )
        out.append(
            f"  {'bubble (idle workers)':<24} {'1 - Σbusy/Σ(w·T)':<22} {m.bubble:.0%} of the "
            "workers' time"
        )
        if self.recommendations:
            out.append("recommendations:")
            out.extend(f"  - {r}" for r in self.recommendations)
        return out

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        return Group(self.table(), *(Text(line) for line in self.lines()))


def build_report(
    rec: Recording, *, budget: int | None = None, source_seconds: float | None = None
) -> Report:
    """Explain the run in ``rec``. ``budget``: workers to balance over (default: the
    run's own total, so the advice moves workers rather than adding them).
    ``source_seconds``: the time spent inside the run's source producing items
    (default: the recording's ``source_ns``), which tells a run its source paced."""
    m = measure(rec)
    model = model_of(m)
    n = m.items
    pred = predict(model, items=n)
    comparisons = _comparisons(m, pred)
    bn = find_bottleneck(rec, m)
    sync = sync_stages(m)
    # Sync stages run in the caller: no workers, so no part of the budget.
    sync_w = model.pools({s.name: s.workers for s in model.stages if s.name in sync})
    total = model.pools(model.workers) - sync_w  # a fused chain's pool counts once
    budget = total if budget is None else budget
    alloc = None
    fixed = {s.name: s.workers for s in model.stages if not s.resizable}
    demands = model.demands
    if (
        bn is not None
        and budget + sync_w >= model.pools(dict.fromkeys(demands, 1))
        and budget + sync_w >= model.pools({**dict.fromkeys(demands, 1), **fixed})
    ):
        alloc = _allowed_balance(m, model, budget + sync_w, fixed)
    lt = little(rec)
    paced = _source_paced(m, pred, rec.source_seconds if source_seconds is None else source_seconds)
    engine = None if paced is not None else engine_bound(m, pred, rec.driver_ns)
    if paced is not None:
        recs = [
            "the source sets the pace: more workers or faster stages would not raise "
            "throughput; only a faster source would"
        ]
    elif engine is not None:
        recs = [ENGINE_ADVICE]
        alloc = None  # no worker advice: the stages are not the limit
    else:
        recs = _recommend(m, model, pred, bn, alloc, budget, lt) if bn is not None else []
    recs += gpu_idle_lines(rec, m, bn)
    return Report(
        m, model, pred, tuple(comparisons), lt, bn, budget, alloc, tuple(recs), paced, engine
    )


def _allowed_balance(
    m: RunMeasure, model: Model, budget: int, fixed: dict[str, int]
) -> Allocation | None:
    """The balanced allocation of ``budget`` workers, or of the largest smaller budget
    whose allocation keeps the process workers within the machine's cores (see
    ``_advice``); None when none does."""
    least = model.pools({**dict.fromkeys(model.demands, 1), **fixed})
    for b in range(budget, max(least, 1) - 1, -1):
        a = balance(model.demands, b, fixed=fixed, fused=model.fused)
        if allowed(m, model.workers, a.workers):
            return a
    return None


def _source_paced(m: RunMeasure, pred: Prediction, source_s: float | None) -> str | None:
    """The evidence that the source set the run's pace (a stream that delivers items
    slower than the stages could take them), or None. All must hold: no stage was busy
    half of its workers' time; the stages alone could go at least twice the rate
    items were read; and the source was busy producing items at least half the run
    (``source_s``; when unknown, every entry stage waited for input that long). Then
    advice about workers would be wrong, however the stages compare."""
    entries = [s for s in m.stages.values() if not s.predecessors]
    if not entries or m.items < 2 or m.makespan_s <= 0:
        return None
    read_rate = m.items / m.makespan_s
    busiest = max(m.stages.values(), key=lambda s: s.utilisation)
    if busiest.utilisation >= SOURCE_PACED_BUSY or pred.throughput < 2 * read_rate:
        return None
    if source_s is not None and source_s > 0:
        share = min(1.0, source_s / m.makespan_s)
        if share < SOURCE_PACED_WAITING:
            return None
        evidence = f"producing its items took {share:.0%} of the run"
    else:
        waiting = min(s.starved_share for s in entries)
        if waiting < SOURCE_PACED_WAITING:
            return None
        evidence = f"the first stages waited for input {waiting:.0%} of the time"
    return (
        f"it delivered {_num(read_rate)} items/s; {evidence}, and the busiest stage, "
        f"{busiest.name}, was busy {busiest.utilisation:.0%} of its workers' time"
    )


def _comparisons(m: RunMeasure, pred: Prediction) -> list[Comparison]:
    if m.done < 2 or m.first_latency_s is None:
        return []
    if any(s.kind == "collect" for s in m.stages.values()):
        # A collect stage is a barrier: every item waits for the last, so there is
        # no steady period to compare; the convoy formula applies up to it.
        return []
    measured_period = (m.makespan_s - m.first_latency_s) / (m.done - 1)
    if measured_period <= 0:
        return []  # every item finished at once (one task): no period to measure
    assert pred.makespan_s is not None
    return [
        Comparison("period P", "max d_i/w_i", pred.period_s * 1e3, measured_period * 1e3, "ms"),
        # Steady throughput: the run's fill (the first item's latency) left out.
        Comparison("steady throughput λ", "1/P", pred.throughput, 1 / measured_period, "items/s"),
        Comparison(
            "first-item latency L",
            "Σ u_i (longest path)",
            pred.latency_s * 1e3,
            m.first_latency_s * 1e3,
            "ms",
        ),
        Comparison(f"makespan T_N, N={m.items}", "L + (N-1)·P", pred.makespan_s, m.makespan_s, "s"),
    ]


def _recommend(
    m: RunMeasure,
    model: Model,
    pred: Prediction,
    bn: Bottleneck,
    alloc: Allocation | None,
    budget: int,
    lt: Little | None,
) -> list[str]:
    out: list[str] = []
    now = pred.throughput
    current = model.workers
    b = bn.stage
    if (
        alloc is not None
        and alloc.workers != current
        and alloc.throughput > now * SPEEDUP_WORTH_SAYING
    ):
        changed = [n for n in alloc.workers if alloc.workers[n] != current[n]]
        lead = b if b in changed else changed[0]
        sync = sync_stages(m)
        rest = ", ".join(
            f"{n} {alloc.workers[n]}" for n in alloc.workers if n != lead and n not in sync
        )
        out.append(
            f"give `{lead}` {alloc.workers[lead]} workers of the {budget} ({rest}): predicted "
            f"{alloc.throughput / now:.1f}{TIMES} throughput ({now:.1f} → {alloc.throughput:.1f} "
            "items/s)"
        )
    elif alloc is not None:
        fixed = {st.name: st.workers for st in model.stages if not st.resizable}
        sync = sync_stages(m)
        sync_w = model.pools({n: current[n] for n in sync})
        for extra in range(1, budget + 1):
            more = balance(model.demands, budget + sync_w + extra, fixed=fixed, fused=model.fused)
            if not allowed(m, current, more.workers):
                continue
            if more.throughput >= now * SPEEDUP_WORTH_SAYING:
                plan = ", ".join(f"{n} {w}" for n, w in more.workers.items() if n not in sync)
                out.append(
                    f"the {budget} workers are already balanced; with {extra} more "
                    f"({budget + extra}: {plan}) the model predicts "
                    f"{more.throughput / now:.2f}{TIMES} throughput"
                )
                break
    procs = cpu_workers(m, current)
    if m.cpus and procs >= m.cpus and needs_core(m.stages[b].executor):
        out.append(
            f"the cores are the limit: {procs} process workers already use the machine's "
            f"{m.cpus} CPU cores, so more process workers would only share them; make `{b}` "
            "faster or run on more cores"
        )
    fast = predict(model, faster={b: 2.0})
    out.append(
        f"making `{b}` 2{TIMES} faster: predicted {fast.throughput / now:.2f}{TIMES} throughput"
        + (f" (then `{fast.bottleneck}` limits)" if fast.bottleneck != b else "")
    )
    others = [s for s in model.stages if s.name != b and s.demand_s > 0]
    if others:
        o = max(others, key=lambda s: s.demand_s / s.workers)
        same = predict(model, faster={o.name: 2.0})
        gain = same.throughput / now
        effect = "changes nothing" if gain < 1.01 else f"gives only {gain:.2f}{TIMES}"
        out.append(
            f"making `{o.name}` 2{TIMES} faster {effect}: it is not the bottleneck "
            f"(predicted {same.throughput:.1f} items/s, now {now:.1f})"
        )
    if pred.makespan_s and pred.latency_s > 0.2 * pred.makespan_s:
        out.append(
            f"the run is short: filling and draining the pipeline take about "
            f"{pred.latency_s / pred.makespan_s:.0%} of it; more items amortise that"
        )
    workers = sum(current.values())
    if lt is not None and lt.items_in_system > 4 * workers:
        out.append(
            f"about {lt.items_in_system:.0f} items wait in the system for {workers} workers "
            f"(Little: W = L/λ = {_dur(lt.mean_latency_s)}); a smaller queue capacity would "
            "cut latency without costing throughput"
        )
    return out


def _merge_spans(windows: list[WindowVerdict]) -> list[tuple[float, float, str]]:
    """Adjacent windows with the same bottleneck, as one span."""
    spans: list[tuple[float, float, str]] = []
    for w in windows:
        name = w.bottleneck or ""
        if spans and spans[-1][2] == name and abs(spans[-1][1] - w.start_s) < 1e-9:
            spans[-1] = (spans[-1][0], w.end_s, name)
        else:
            spans.append((w.start_s, w.end_s, name))
    return spans


def _caveats(m: RunMeasure) -> list[str]:
    """What makes the measurement stray from the model: cold first units, shared cores."""
    out = []
    cold = [
        f"{s.name} {_dur(s.first_service_s)} ({s.first_service_s / s.service.p50:.1f}{TIMES})"
        for s in m.stages.values()
        if s.first_service_s is not None
        and s.service.count > 2
        and s.first_service_s > 2 * s.service.p50
        and s.first_service_s > 0.001
    ]
    if cold:
        out.append(
            "warm-up: the first unit ran slower than the median in "
            + ", ".join(cold)
            + "; the first item's latency includes it"
        )
    procs = sum(s.mean_workers for s in m.stages.values() if needs_core(s.executor))
    if m.cpus and procs > m.cpus:
        out.append(
            f"{procs:.0f} process workers shared {m.cpus} CPU cores: busy time includes waiting "
            "for a core, and the model assumes each worker has one"
        )
    return out


def _toml_key(name: str) -> str:
    """A stage name as a TOML key: bare where TOML allows, else a quoted string (JSON's
    escapes are TOML's too)."""
    if name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        return name
    return json.dumps(name, ensure_ascii=False).replace("\x7f", "\\u007f")


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.3g}"


def _dur(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x
