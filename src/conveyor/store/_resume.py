"""Resume: finish an interrupted run, computing only what is missing.

The run's pipeline runs again over the same source (checked against the fingerprint
the run stored: :mod:`conveyor.store._source`), less the source items the run
finished (done, filtered or dead-lettered, from its ledger), so no sink sees an item
twice. Of the items left, cached stages answer from the cache those they finished
before the interruption (the key is the stage, its code and the input), so only the
missing work is computed. A run is resumed once: its resume is linked to it
(``resumed_from``), and resuming it again needs ``force``.

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
from conveyor.store._source import (
    ResumeSource,
    file_changes,
    file_fingerprint,
    merge,
    skipped_count,
    subtract,
    to_source_positions,
)
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
    # source positions the run finished (done, filtered, dead-lettered): not read again
    finished: tuple[tuple[int, int], ...] = ()
    # the run's running fingerprint of its items ({"items": n, "digest": d}), if kept
    expect: dict[str, Any] | None = None
    _reader: list[ResumeSource] = dataclasses.field(default_factory=list, repr=False)

    @property
    def skipped(self) -> int:
        """How many source items the run finished, which the resumed run skips."""
        return skipped_count(self.finished)

    def source(self) -> Any:
        """The same source as the original run, read the same way (its --source file,
        or the pipeline's own), less the items it finished, checked as it is read."""
        if self.source_path is None:
            source: Any = self.pipeline.source
            if source is None:
                raise StoreError(
                    f"pipeline {self.pipeline.name!r} has no source now; run {self.record.id} "
                    "read the pipeline's own source, so resume needs it back"
                )
            if callable(source) and not hasattr(source, "__iter__"):
                source = source()
        else:
            from conveyor.sources import read

            source = read(self.source_path, self.source_format)
        reader = ResumeSource(source, self.finished, self.expect, self.record.id)
        reader.check()  # a source that can be read twice is compared before any work
        self._reader[:] = [reader]
        return reader.runnable()

    def source_items(self) -> dict[str, Any] | None:
        """The running fingerprint of what the resumed run read (from position 0,
        skipped items included): what a resume of the resumed run checks against."""
        return self._reader[0].digest.state() if self._reader else None

    def params(self) -> dict[str, Any]:
        """The parameters to record for the resumed run: the original's, the run it
        resumes, and the source positions it skips."""
        params = {**self.record.params, "resumed_from": self.record.id}
        params["skipped"] = [list(r) for r in self.finished]
        params.pop("source_items", None)  # the resumed run's own is written at its end
        return params


def plan_resume(
    store: RunStore,
    run: str,
    load_pipeline: Callable[[str], Pipeline],
    *,
    force: bool = False,
) -> ResumePlan:
    """Check that run ``run`` (an id or a unique prefix) can be resumed, and plan it.

    Raises StoreError (RunNotFoundError, PipelineChangedError) with a message that
    names the run and the fix: unknown run, a run that succeeded, a run resumed
    already, a run not started from ``conveyor run`` (no target to load), a
    ``--source`` file that changed since, or a pipeline whose code changed since the
    run (``force=True`` resumes anyway: changed stages miss the cache). The plan's
    :meth:`~ResumePlan.source` skips the items the run finished and compares the
    pipeline's own source with the run's fingerprint of it (SourceError).
    """
    record = store.get_run(run)
    if record.state == "succeeded" and not force:
        raise StoreError(
            f"run {record.id} succeeded; there is nothing to resume (pass --force to run "
            "it again, cached stages answering from the cache)"
        )
    resumed = store.resumes_of(record.id)
    if resumed and not force:
        raise StoreError(
            f"run {record.id} was resumed already, by run {', '.join(resumed)}; resume "
            f"that run instead (conveyor resume {resumed[-1][:8]}), or pass --force to "
            f"resume {record.id} again"
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
    source_path = record.params.get("source")
    stored_files = record.params.get("source_fingerprint")
    if source_path is not None and stored_files and not force:
        try:
            now = file_fingerprint(source_path)
        except OSError as exc:
            raise StoreError(
                f"cannot read the source of run {record.id}, {source_path}: "
                f"{exc.strerror or exc}; put it back, or pass --force"
            ) from None
        change = file_changes(stored_files, now)
        if change is not None:
            raise StoreError(
                f"the source of run {record.id} changed since it ran: {change}; resume it "
                "over the same file, or pass --force to run over this one"
            )
    finished: list[tuple[int, int]] = []
    if record.state != "succeeded":  # --force on a succeeded run runs it again
        skipped = [(int(a), int(b)) for a, b in record.params.get("skipped") or []]
        own = [(a, b) for a, b, state in store.root_ranges(record.id) if state != "pending"]
        # results that reached the output but not the consumer (the run ended first)
        dropped = [(int(a), int(b)) for a, b in record.params.get("undelivered") or []]
        own = subtract(own, dropped)
        finished = merge(skipped + to_source_positions(own, skipped))
    return ResumePlan(
        record=record,
        pipeline=pipeline,
        source_path=source_path,
        source_format=record.params.get("source_format", "lines"),
        ordered=bool(record.params.get("ordered", pipeline.ordered)),
        cached_stages=cached,
        finished=tuple(finished),
        expect=None if force else record.params.get("source_items"),
    )


def resume_report(plan: ResumePlan, stats: RunStatistics) -> list[str]:
    """One line per stage saying how much of its work came from the cache, and why
    the rest ran again."""
    was = plan.record.id
    lines = []
    if plan.skipped:
        lines.append(f"{plan.skipped} source item(s) skipped: finished by run {was}")
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
            lines.append(f"{name}: {s.items_in} computed (the stage is not cached)")
    if not plan.cached_stages:
        lines.append(
            "no stage is cached, so every item the run had not finished was computed from "
            "the start: give the expensive stages cache=True"
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
            capacity=pipeline.capacity_given,
            fuse=pipeline.fuse,
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
