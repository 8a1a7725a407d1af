"""Release: the deployment pipeline as code, an ordinary conveyor pipeline.

::

    release = Release("digits", build=train, holdout=holdout, tests=["tests/model"],
                      gate={"metric": "accuracy", "min_effect": 0.0},
                      shadow=ShadowPolicy(fraction=0.2), canary=CanaryPolicy())
    candidate = release.run()          # or: conveyor deploy release.py:release

Its stages, in order, each a stage of a :class:`~conveyor.Pipeline` whose one item is
the :class:`Candidate`:

    build → test → validate → shadow → canary → promote → watch

- **build** calls ``build(candidate)``, which trains or packages the model and
  registers it (``conveyor.models.register``), returning the version; with
  ``reference=``, the drift reference of its training data is stored with it;
- **test** runs the user's tests (pytest on the given paths, with
  ``CONVEYOR_CANDIDATE=name:N`` and ``CONVEYOR_STORE`` set; or a function);
- **validate** is the gate (:func:`~conveyor.lifecycle.gate`): the candidate against
  the alias's version on ``holdout(candidate)``;
- **shadow**, **canary**: rollouts a server of ``name@alias`` follows (skipped when
  not configured); the canary moves the alias when its last step passes;
- **promote** moves the alias when there was no canary;
- **watch** counts the new champion's traffic for ``watch`` seconds and rolls back
  on a breach.

A stage that says no stops the release: the stages after it pass the candidate on
untouched, ``candidate.stopped`` says where and why, and every decision is an event
in the store whose ``parent`` is the one before it, back to ``cause`` (a drift alarm,
for a retraining).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle._lease import controlling
from conveyor.lifecycle._log import LifecycleLog
from conveyor.lifecycle._rollouts import canary, promote, rollback, shadow

STAGES = ("build", "test", "validate", "shadow", "canary", "promote", "watch")


@dataclass(frozen=True)
class Candidate:
    """The item a release carries from stage to stage."""

    name: str
    alias: str = "champion"
    version: int | None = None
    champion: int | None = None  # the alias's version when the release began
    cause: int | None = None  # the event that started the release (a drift alarm)
    window: tuple[float, float] | None = None  # the data window a retraining reads
    events: tuple[int, ...] = ()  # the events this release recorded, in order
    stopped: str | None = None  # "validate: ..." when a stage stopped the release
    promoted: bool = False
    run_id: str | None = None

    @property
    def parent(self) -> int | None:
        """The event the next decision follows from."""
        return self.events[-1] if self.events else self.cause

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def _version_of(built: Any) -> int:
    version = getattr(built, "version", built)
    if isinstance(version, bool) or not isinstance(version, int):
        raise LifecycleError(
            f"build returned {built!r}: return the registered version "
            "(what conveyor.models.register returns, or its number)"
        )
    return version


def _predictor(model: Any, predict: Callable[[Any, Any], Any] | None) -> Callable[[Any], Any]:
    if predict is not None:
        return lambda x: predict(model, x)
    if hasattr(model, "predict"):
        return model.predict
    if callable(model):
        return model
    raise LifecycleError(
        f"a {type(model).__name__} has no predict(): give Release(predict=lambda model, X: ...)"
    )


@dataclass
class Release:
    """The deployment pipeline of model ``name`` (see the module docstring)."""

    name: str
    build: Callable[[Candidate], Any]
    holdout: Callable[[Candidate], tuple[Any, Any]] | None = None
    gate: Mapping[str, Any] = field(default_factory=dict)
    tests: Sequence[str] | Callable[[Candidate], None] | None = None
    shadow: Any = None  # a ShadowPolicy
    canary: Any = None  # a CanaryPolicy
    watch: float = 0.0
    alias: str = "champion"
    reference: Callable[[Candidate], Any] | None = None
    predict: Callable[[Any, Any], Any] | None = None
    trust_pickle: bool = False
    store: str | Path | None = None
    serve_timeout: float = 120.0
    shadow_interval: float = 5.0

    def __call__(self) -> Any:
        """The release's pipeline (so ``conveyor run file.py:release`` runs it too)."""
        return self.pipeline()

    # --- the pipeline ----------------------------------------------------------------------

    def pipeline(
        self, *, cause: int | None = None, window: tuple[float, float] | None = None
    ) -> Any:
        import conveyor as cv

        first = Candidate(self.name, self.alias, cause=cause, window=window)
        steps = {
            "build": self._build,
            "test": self._test,
            "validate": self._validate,
            "shadow": self._shadow,
            "canary": self._canary,
            "promote": self._promote,
            "watch": self._watch,
        }
        stages = [
            cv.Stage(self._guarded(name, fn), name=name, executor="threads")
            for name, fn in steps.items()
        ]
        return cv.Pipeline(f"release-{self.name}", stages, source=[first])

    def run(
        self, *, cause: int | None = None, window: tuple[float, float] | None = None
    ) -> Candidate:
        """Run the release to its end, recorded in the run store; the candidate as it
        came out (``promoted``, or ``stopped`` with the reason)."""
        from conveyor.store import RunStore, StoreRecorder

        pipeline = self.pipeline(cause=cause, window=window)
        with RunStore(self.store) as store:
            recorder = StoreRecorder(store, pipeline=pipeline, target=f"release {self.name}")
            self._recorder = recorder
            run = pipeline.run(instruments=[recorder])
        (candidate,) = run.results
        assert isinstance(candidate, Candidate)
        return candidate

    def _guarded(self, stage: str, fn: Callable[[Candidate], Candidate]) -> Callable[..., Any]:
        def step(candidate: Candidate) -> Candidate:
            if candidate.stopped is not None:
                return candidate
            if candidate.run_id is None:
                recorder = getattr(self, "_recorder", None)
                run_id = getattr(recorder, "run_id", None)
                candidate = dataclasses.replace(candidate, run_id=run_id)
            return fn(candidate)

        step.__name__ = step.__qualname__ = stage
        return step

    def _record(self, c: Candidate, kind: str, **fields: Any) -> Candidate:
        with LifecycleLog(self.store) as log:
            event = log.record(self.name, kind, parent=c.parent, run_id=c.run_id, **fields)
        return dataclasses.replace(c, events=(*c.events, event.id))

    def _stop(self, c: Candidate, stage: str, reason: str) -> Candidate:
        return dataclasses.replace(c, stopped=f"{stage}: {reason}")

    # --- the stages ------------------------------------------------------------------------

    def _build(self, c: Candidate) -> Candidate:
        from conveyor.models import ModelNotFoundError, ModelRegistry

        with ModelRegistry(self.store) as registry:
            try:
                champion: int | None = registry.resolve(f"{self.name}@{self.alias}").version
            except ModelNotFoundError:
                champion = None  # the first release
        c = dataclasses.replace(c, champion=champion)
        version = _version_of(self.build(c))
        c = dataclasses.replace(c, version=version)
        with ModelRegistry(self.store) as registry:
            v = registry.resolve(c.ref)
        evidence = {
            "metrics": v.metrics,
            "format": v.format,
            "size": v.size,
            "data_fingerprint": v.data_fingerprint,
            "code_fingerprint": v.code_fingerprint,
            "replaces": champion,
            "window": list(c.window) if c.window else None,
        }
        if self.reference is not None:
            from conveyor.lifecycle import Reference

            ref = Reference.fit(self.reference(c))
            with LifecycleLog(self.store) as log:
                log.save_reference(self.name, version, ref.to_bytes())
            evidence["reference_columns"] = len(ref.columns)
        what = f"replacing v{champion}" if champion is not None else "the first version"
        return self._record(
            c,
            "build",
            version=version,
            passed=True,
            evidence=evidence,
            summary=f"{c.ref} built and registered, {what}",
        )

    def _test(self, c: Candidate) -> Candidate:
        if self.tests is None:
            return c
        if callable(self.tests):
            try:
                self.tests(c)
            except Exception as exc:
                reason = f"the tests raised {type(exc).__name__}: {exc}"
                c = self._record(c, "test", version=c.version, passed=False, summary=reason)
                return self._stop(c, "test", reason)
            return self._record(c, "test", version=c.version, passed=True, summary="tests passed")
        from conveyor.store import default_store_path

        store = str(default_store_path() if self.store is None else self.store)
        env = {**os.environ, "CONVEYOR_CANDIDATE": c.ref, "CONVEYOR_STORE": store}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.tests]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        passed = done.returncode == 0
        summary = f"pytest {' '.join(self.tests)}: " + (
            tail[-1] if tail else f"exit {done.returncode}"
        )
        c = self._record(
            c,
            "test",
            version=c.version,
            passed=passed,
            summary=summary,
            evidence={"command": command[1:], "exit": done.returncode, "output": tail},
        )
        return c if passed else self._stop(c, "test", summary)

    def _validate(self, c: Candidate) -> Candidate:
        if self.holdout is None:
            return c
        from conveyor.lifecycle import gate
        from conveyor.models import ModelRegistry

        x, y = self.holdout(c)
        with ModelRegistry(self.store) as registry:
            mine = registry.load(c.ref, trust_pickle=self.trust_pickle)
            theirs = None
            if c.champion is not None:
                theirs = registry.load(f"{self.name}:{c.champion}", trust_pickle=self.trust_pickle)
        options = dict(self.gate)
        options.setdefault("names", (f"v{c.version}", f"v{c.champion}"))
        verdict = gate(
            _predictor(mine, self.predict),
            None if theirs is None else _predictor(theirs, self.predict),
            x,
            y,
            **options,
        )
        c = self._record(
            c,
            "gate",
            version=c.version,
            passed=verdict.passed,
            summary=_gate_line(verdict) + "\n" + verdict.summary(),
            evidence=verdict.to_dict(),
        )
        if verdict.passed:
            return c
        return self._stop(c, "validate", "; ".join(verdict.reasons) or "the gate failed")

    def _shadow(self, c: Candidate) -> Candidate:
        if self.shadow is None or c.champion is None:
            return c
        assert c.version is not None
        result = shadow(
            self.name,
            c.version,
            alias=self.alias,
            policy=self.shadow,
            interval=self.shadow_interval,
            store=self.store,
            parent=c.parent,
            run_id=c.run_id,
            serve_timeout=self.serve_timeout,
        )
        c = dataclasses.replace(c, events=(*c.events, *(e.id for e in result.events)))
        return c if result.passed else self._stop(c, "shadow", result.reason)

    def _canary(self, c: Candidate) -> Candidate:
        if self.canary is None or c.champion is None:
            return c
        assert c.version is not None
        result = canary(
            self.name,
            c.version,
            alias=self.alias,
            policy=self.canary,
            store=self.store,
            parent=c.parent,
            run_id=c.run_id,
            serve_timeout=self.serve_timeout,
        )
        c = dataclasses.replace(c, events=(*c.events, *(e.id for e in result.events)))
        if not result.passed:
            return self._stop(c, "canary", result.reason)
        return dataclasses.replace(c, promoted=True)

    def _promote(self, c: Candidate) -> Candidate:
        if c.promoted:
            return c
        assert c.version is not None
        event = promote(
            self.name,
            c.version,
            alias=self.alias,
            store=self.store,
            parent=c.parent,
            run_id=c.run_id,
            reason=f"release of {c.ref} passed {'its gate' if self.holdout else 'its stages'}",
        )
        return dataclasses.replace(c, events=(*c.events, event.id), promoted=True)

    def _watch(self, c: Candidate) -> Candidate:
        if self.watch <= 0 or c.champion is None:
            return c
        from conveyor.lifecycle._canary import CanaryPolicy, judge_canary

        assert c.version is not None
        policy = self.canary or CanaryPolicy()
        with LifecycleLog(self.store) as log:
            baseline = _baseline(log, c)
            rollout = log.start_rollout(
                self.name,
                self.alias,
                mode="watch",
                champion=c.champion,
                candidate=c.version,
                share=1.0,
                parent=c.parent,
            )
            started = time.monotonic()
            judgement = None
            pause = min(policy.interval, self.watch)
            with controlling(log, rollout, pause, time.sleep) as wait:
                while time.monotonic() - started < self.watch:
                    wait(pause)
                    now = log.window(rollout.id, 0, "champion")
                    elapsed = time.monotonic() - started
                    judgement = judge_canary(policy, baseline, now, elapsed=elapsed)
                    if judgement.action == "rollback":
                        break
                log.finish_rollout(rollout.id, "passed", "watched")
        if judgement is not None and judgement.action == "rollback":
            event = rollback(
                self.name,
                alias=self.alias,
                to=c.champion,
                store=self.store,
                parent=c.parent,
                run_id=c.run_id,
                reason=f"after promotion: {judgement.reason}",
            )
            c = dataclasses.replace(c, events=(*c.events, event.id), promoted=False)
            return self._stop(c, "watch", judgement.reason)
        reason = judgement.reason if judgement is not None else "no traffic to judge"
        return self._record(
            c,
            "watch",
            version=c.version,
            passed=True,
            summary=f"{c.ref} watched for {self.watch:g} s: {reason}",
        )


def _baseline(log: LifecycleLog, c: Candidate) -> Any:
    """The old champion's counts from this release's canary (or empty)."""
    from conveyor.lifecycle._arms import ArmStats

    for id_ in reversed(c.events):
        event = log.event(id_)
        if event.kind == "promote" and "champion" in event.evidence:
            return ArmStats.from_dict(event.evidence["champion"])
    return ArmStats()


def _gate_line(v: Any) -> str:
    """The verdict in one line, with its numbers (the first line of the event)."""
    mine, theirs = v.names
    head = "passed" if v.passed else "FAILED"
    if v.difference is None:
        return (
            f"{head}: {v.metric} of {mine} {v.candidate_score:.3f} ({v.confidence:.0%} CI "
            f"{v.low:.3f} to {v.high:.3f}) on {v.rows:,} rows; minimum {v.minimum}"
        )
    return (
        f"{head}: {v.metric} {mine} - {theirs} = {v.difference:+.3f} ({v.confidence:.0%} CI "
        f"{v.low:+.3f} to {v.high:+.3f}) on {v.rows:,} rows; required {v.min_effect:+.3f}"
    )
