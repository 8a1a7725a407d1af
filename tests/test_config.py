"""Config files: stage policies overridden by name from TOML, from Python and from the
command line, every mistake named; `conveyor analyze --write-config` writes the
report's advice as a file that `conveyor run --config` applies."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from stagefns import double, inc, slow


def chain() -> cv.Pipeline:
    return cv.Pipeline(
        "etl",
        [
            cv.Stage(inc, name="parse"),
            cv.Stage(double, name="embed", retry=cv.Retry(attempts=2, on=(ConnectionError,))),
            cv.Stage(slow, name="load", kind="map"),
        ],
        capacity=32,
        source=range(5),
    )


PROD = """
[pipeline]
capacity = 8
ordered = true

[stages.parse]
workers = 3
executor = "sync"

[stages.embed]
timeout = 5.0
on_error = "skip"

[stages.embed.retry]
attempts = 6
backoff = 0.25
"""


def test_a_toml_file_overrides_policies_by_stage_name_in_a_new_pipeline(tmp_path: Path) -> None:
    (tmp_path / "prod.toml").write_text(PROD)
    pipe = chain()
    new = pipe.with_config(tmp_path / "prod.toml")
    assert new is not pipe and new.stages["parse"].workers == 3
    assert new.stages["parse"].executor == "sync"
    embed = new.stages["embed"]
    assert (embed.timeout, embed.on_error) == (5.0, "skip")
    assert isinstance(embed.retry, cv.Retry)
    # fields not named keep the stage's own policy, exception filter included
    assert (embed.retry.attempts, embed.retry.backoff) == (6, 0.25)
    assert embed.retry.on == (ConnectionError,)
    assert new.stages["load"] == pipe.stages["load"]  # not named: untouched
    assert (new.capacity, new.ordered, new.source) == (8, True, pipe.source)
    # the original is left as it was
    assert pipe.stages["parse"].workers == 1 and pipe.capacity == 32 and not pipe.ordered
    assert sorted(new.run().results) == sorted(pipe.run().results)


def test_a_dict_config_keeps_a_dags_edges() -> None:
    dag = cv.Pipeline(
        "fan",
        [cv.Stage(inc, name="a"), cv.Stage(double, name="b"), cv.Stage(inc, name="c")],
        edges=[("a", "b"), ("a", "c")],
        source=[1, 2],
    )
    new = dag.with_config({"stages": {"c": {"workers": 2, "retry": 2}}})
    assert new.successors == dag.successors and new.sinks == ("b", "c")
    assert new.stages["c"].workers == 2
    assert isinstance(new.stages["c"].retry, cv.Retry) and new.stages["c"].retry.attempts == 3
    assert sorted(new.run().results) == [3, 4, 4, 6]  # b doubles, c adds one


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ({"stages": {"prase": {"workers": 2}}}, "stages.prase", "did you mean 'parse'?"),
        ({"stages": {"parse": {"worker": 2}}}, "stages.parse.worker", "did you mean 'workers'?"),
        ({"stages": {"parse": {"workers": "4"}}}, "stages.parse.workers", "give a whole number"),
        ({"stages": {"parse": {"workers": True}}}, "stages.parse.workers", "(bool)"),
        ({"stages": {"parse": {"workers": 0}}}, "stages.parse.workers", "stage 'parse' refuses"),
        ({"stages": {"parse": {"executor": "gpu"}}}, "stages.parse.executor", "refuses"),
        ({"stages": {"parse": 4}}, "stages.parse", "make it a table"),
        ({"stages": {"embed": {"retry": {"tries": 3}}}}, "stages.embed.retry.tries", "attempts"),
        ({"stages": {"embed": {"retry": {"jitter": 3.0}}}}, "stages.embed.retry", "jitter"),
        ({"stage": {}}, "stage", "did you mean 'stages'?"),
        ({"pipeline": {"capacity": 0}}, "pipeline", "capacity=0"),
        ({"pipeline": {"ordered": "yes"}}, "pipeline.ordered", "ordered = true"),
    ],
)
def test_every_mistake_names_its_key_and_the_fix(config: dict, key: str, words: str) -> None:
    with pytest.raises(cv.ConfigError) as info:
        chain().with_config(config)
    assert info.value.key == key
    message = str(info.value)
    assert key in message and words in message
    assert isinstance(info.value, cv.PipelineError)  # a definition error, raised before a run


def test_files_that_are_missing_or_not_toml_are_named(tmp_path: Path) -> None:
    with pytest.raises(cv.ConfigError, match="does not exist"):
        chain().with_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[stages.parse\nworkers = 2\n")
    with pytest.raises(cv.ConfigError, match=r"bad\.toml' is not valid TOML") as info:
        chain().with_config(bad)
    assert info.value.path == str(bad)
    bad.write_text("[stages.parse]\nworkers = 'x'\n")
    with pytest.raises(cv.ConfigError) as info:
        chain().with_config(bad)
    assert str(bad) in str(info.value) and info.value.key == "stages.parse.workers"


# --- the command line ------------------------------------------------------------------

PIPELINE_FILE = """
import time
import conveyor as cv

def parse(x):
    time.sleep(0.003)
    return x

def embed(x):
    time.sleep(0.009)
    return x

pipeline = cv.Pipeline(
    "cli", [cv.Stage(parse), cv.Stage(embed, workers=2)], source=lambda: range(30)
)
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "cfgpipe.py").write_text(PIPELINE_FILE)
    path, modules = sys.path[:], set(sys.modules)
    yield f"{tmp_path}/cfgpipe.py:pipeline"
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def run_workers(target: str, tmp_path: Path, *extra: str) -> dict[str, int]:
    stats = tmp_path / "stats.json"
    result = CliRunner().invoke(
        cli, ["run", target, "--no-progress", "--no-store", "--json", str(stats), *extra]
    )
    assert result.exit_code == 0, result.output
    return {n: s["workers"] for n, s in json.loads(stats.read_text())["stages"].items()}


def test_run_config_overrides_workers_and_a_bad_one_is_one_line(
    target: str, tmp_path: Path
) -> None:
    assert run_workers(target, tmp_path) == {"parse": 1, "embed": 2}
    (tmp_path / "c.toml").write_text("[stages.parse]\nworkers = 3\n")
    assert run_workers(target, tmp_path, "--config", str(tmp_path / "c.toml")) == {
        "parse": 3,
        "embed": 2,
    }
    (tmp_path / "c.toml").write_text("[stages.parse]\nworkres = 3\n")
    bad = CliRunner().invoke(
        cli, ["run", target, "--no-store", "--config", str(tmp_path / "c.toml")]
    )
    assert bad.exit_code == 1
    assert "stages.parse.workres: unknown key; did you mean 'workers'?" in bad.output
    assert "Traceback" not in bad.output


def test_analyze_writes_the_advice_as_a_config_that_run_applies(
    target: str, tmp_path: Path
) -> None:
    rec = tmp_path / "r.cvrec"
    run_workers(target, tmp_path, "--record", str(rec))
    advice = tmp_path / "advice.toml"
    analyzed = CliRunner().invoke(
        cli, ["analyze", str(rec), "--budget", "4", "--write-config", str(advice)]
    )
    assert analyzed.exit_code == 0, analyzed.output
    # parse 3 ms, embed 9 ms on 2 workers: the report gives embed 3 of 4 workers
    assert "give `embed` 3 workers of the 4 (parse 1)" in analyzed.stdout
    assert "config (the advice) written to" in analyzed.stderr
    assert "workers = 3" in advice.read_text()
    assert run_workers(target, tmp_path, "--config", str(advice)) == {"parse": 1, "embed": 3}


def test_a_report_with_no_advice_writes_the_runs_own_workers(tmp_path: Path) -> None:
    pipe = cv.Pipeline("odd name", [cv.Stage(inc, name='a "quoted" stage')], source=range(3))
    report = pipe.run().report()
    assert report.advised_workers is None
    text = report.to_config()
    assert text.startswith("# the report advises no change")
    (tmp_path / "same.toml").write_text(text)
    new = pipe.with_config(tmp_path / "same.toml")  # the quoted name reads back as itself
    assert new.stages['a "quoted" stage'].workers == 1


def test_a_retry_count_in_a_config_replaces_the_stages_either_way() -> None:
    stage = cv.Stage(inc, retry=cv.Retry(attempts=5, on=(ConnectionError,)))
    pipe = cv.Pipeline("p", [stage])
    by_retries = pipe.with_config({"stages": {"inc": {"retry": {"retries": 1}}}})
    by_attempts = pipe.with_config({"stages": {"inc": {"retry": {"attempts": 3}}}})
    r1, r3 = by_retries.stages["inc"].retry, by_attempts.stages["inc"].retry
    assert isinstance(r1, cv.Retry) and (r1.attempts, r1.retries) == (2, 1)
    assert isinstance(r3, cv.Retry) and (r3.attempts, r3.retries) == (3, 2)
    assert r1.on == r3.on == (ConnectionError,)  # the stage's own filter is kept
