"""Resume: finish an interrupted run, computing only what is missing.

Resume is decided by content, not by graph position: the run's pipeline runs again
over the same source, and its cached stages answer every item they finished before
the interruption from the cache (the key is the stage, its code and the input), so
only the missing items are computed. What was interrupted (Ctrl-C, an exception, the
driver killed, the machine rebooted) does not matter; what is in the cache does.
Stages without ``cache=True`` run again in full, and the report says so.

    plan = plan_resume(store, "7f3a", load_pipeline)     # checks, then what to run
    run = plan.pipeline.stream(plan.source(), ordered=plan.ordered, instruments=[...])
    ...
    print("\\n".join(resume_report(plan, run.statistics())))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from conveyor.core.pipeline import Pipeline
from conveyor.core.statistics import RunStatistics
from conveyor.errors import StoreError
from conveyor.store._records import RunRecord
from conveyor.store._store import RunStore


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """What resuming a run means: the pipeline, where its items come from, and why."""

    record: RunRecord  # the run being resumed
    pipeline: Pipeline
    source_path: str | None  # the --source file of the original run, if any
    ordered: bool
    cached_stages: tuple[str, ...]
    # How --source was read: a format of conveyor.sources, or None for the one its name
    # says. Runs recorded before --source-format existed read it as lines.
    source_format: str | None = "lines"

    def source(self) -> Any:
        """The same source as the original run, read the same way: its --source file,
        or the pipeline's own."""
        if self.source_path is None:
            return None  # the pipeline's own source=
        from conveyor.sources import read

        return read(self.source_path, self.source_format)

    def params(self) -> dict[str, Any]:
        """The parameters to record for the resumed run."""
        return {**self.record.params, "resumed_from": self.record.id}


def plan_resume(
    store: RunStore,
    run: str,
    load_pipeline: Callable[[str], Pipeline],
    *,
    force: bool = False,
) -> ResumePlan:
    """Check that run ``run`` (an id or a unique prefix) can be resumed, and plan it.

    Raises StoreError (RunNotFoundError, PipelineChangedError) with a message that
    names the run and the fix: unknown run, a run that succeeded, a run not started
    from ``conveyor run`` (no target to load), or a pipeline whose code changed
    since the run (``force=True`` resumes anyway: changed stages miss the cache).
    """
    record = store.get_run(run)
    if record.state == "succeeded" and not force:
        raise StoreError(
            f"run {record.id} succeeded; there is nothing to resume (pass --force to run "
            "it again, cached stages answering from the cache)"
        )
    if not record.target:
        raise StoreError(
            f"run {record.id} was not started by `conveyor run`, so the store does not "
            "know how to load its pipeline; resume it from Python by running the pipeline "
            "again over the same source: its cached stages skip the finished work"
        )
    pipeline = load_pipeline(record.target)
    if not force and record.fingerprint is not None:
        from conveyor.cache import FingerprintError, fingerprint_pipeline

        try:
            fingerprint = fingerprint_pipeline(pipeline)
        except FingerprintError:
            fingerprint = None
        if fingerprint is not None:
            store.check_fingerprint(record.id, fingerprint)
    cached = tuple(n for n in pipeline.order if pipeline.stages[n].cache)
    return ResumePlan(
        record=record,
        pipeline=pipeline,
        source_path=record.params.get("source"),
        source_format=record.params.get("source_format", "lines"),
        ordered=bool(record.params.get("ordered", pipeline.ordered)),
        cached_stages=cached,
    )


def resume_report(plan: ResumePlan, stats: RunStatistics) -> list[str]:
    """One line per stage saying how much of its work came from the cache, and why
    the rest ran again."""
    was = plan.record.id
    lines = []
    for name in plan.pipeline.order:
        s = stats.stages.get(name)
        if s is None:
            continue
        if name in plan.cached_stages:
            computed = max(0, s.items_in - s.cache_hits)
            if computed == 0:
                lines.append(f"{name}: all {s.cache_hits} from the cache (finished by run {was})")
            else:
                lines.append(
                    f"{name}: {s.cache_hits} from the cache, {computed} computed (missing from "
                    f"the cache: not finished by run {was}, or their input changed)"
                )
        else:
            lines.append(f"{name}: {s.items_in} computed again (the stage is not cached)")
    if not plan.cached_stages:
        lines.append(
            "no stage is cached, so resuming recomputed everything: give the expensive "
            "stages cache=True"
        )
    return lines


def redrive_plan(pipeline: Pipeline, letters: list[Any]) -> list[tuple[Pipeline, list[Any]]]:
    """For each stage with dead letters: the sub-pipeline of that stage and every stage
    after it, and the inputs to feed it (the dead letters' values, in key order)."""
    from conveyor.errors import PipelineError

    by_stage: dict[str, list[Any]] = {}
    for letter in letters:
        by_stage.setdefault(letter.stage, []).append(letter)
    plans = []
    for stage, group in by_stage.items():
        if stage not in pipeline.stages:
            raise PipelineError(
                f"the dead letters are from stage {stage!r}, which pipeline "
                f"{pipeline.name!r} no longer has; re-drive them from Python",
                stage=stage,
            )
        keep = _downstream(pipeline, stage)
        edges = [(a, b) for a in keep for b in pipeline.successors[a] if b in keep]
        sub = Pipeline(
            f"{pipeline.name}:redrive-{stage}",
            [pipeline.stages[n] for n in pipeline.order if n in keep],
            edges=edges,
            capacity=pipeline.capacity,
        )
        plans.append((sub, [letter.load_value() for letter in group]))
    return plans


def _downstream(pipeline: Pipeline, stage: str) -> set[str]:
    seen, todo = {stage}, [stage]
    while todo:
        for nxt in pipeline.successors[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
