"""Safe resume from the command line: the same source or a refusal, finished items
skipped so that no sink sees an item twice, a resume linked to its run and done once."""

from __future__ import annotations

import collections
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import stagefns as f
from conveyor.cli import cli
from conveyor.store import RunStore

PIPE = textwrap.dedent(
    """
    import os

    import conveyor as cv

    FLAG, SEEN, COUNT = {flag!r}, {seen!r}, {count!r}

    def parse(x):
        x = int(x)
        if x == 60 and os.path.exists(FLAG):  # the bug, until the flag is removed
            raise ValueError("cannot parse 60")
        return x

    def sink(x):  # not cached: it writes down every item it is given
        with open(SEEN, "a") as fh:
            fh.write(f"{{x}}\\n")
        return x * 10

    stages = [cv.stage(parse, executor="sync"), cv.stage(sink, executor="sync")]
    # small queues: short tasks, so the sink gets items before parse meets item 60
    from_file = cv.Pipeline("from-file", stages, ordered=True, capacity=4)

    def numbers():
        with open(COUNT) as fh:
            n, shift = map(int, fh.read().split())
        return range(shift, n + shift)

    from_code = cv.Pipeline("from-code", stages, source=numbers, ordered=True, capacity=4)
    """
)


@pytest.fixture
def pipe(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "safe_pipe.py"
    path.write_text(
        PIPE.format(
            flag=str(tmp_path / "bug"), seen=str(tmp_path / "seen"), count=str(tmp_path / "n")
        )
    )
    (tmp_path / "bug").touch()
    (tmp_path / "n").write_text("100 0")
    yield path
    sys.modules.pop("safe_pipe", None)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def seen(tmp_path: Path) -> list[int]:
    return [int(x) for x in (tmp_path / "seen").read_text().split()]


def undelivered(store: str, run_id: str) -> set[int]:
    """Items whose results reached the output but not the consumer when the run
    failed: the sink saw them, and sees them again on resume (nothing else repeats)."""
    with RunStore(store, readonly=True) as rs:
        ranges = rs.get_run(run_id).params.get("undelivered", [])
    return {i for a, b in ranges for i in range(a, b + 1)}


def outputs(path: Path) -> list[int]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def repeated(tmp_path: Path) -> set[int]:
    """The items the sink saw more than once; every item must have been seen."""
    counts = collections.Counter(seen(tmp_path))
    assert sorted(counts) == list(range(100))
    return {x for x, n in counts.items() if n > 1}


def failed_run(tmp_path: Path, *args: str) -> str:
    result = invoke("run", *args, "--store", str(tmp_path / "runs.db"), "--no-progress")
    assert result.exit_code == 1, result.output
    assert "cannot parse 60" in result.output
    assert seen(tmp_path) == list(range(60))
    return re.search(r"run ([0-9a-f]{12}) recorded", result.output).group(1)  # type: ignore[union-attr]


def test_a_resumed_sink_sees_each_item_once_and_the_resume_is_linked(
    pipe: Path, tmp_path: Path
) -> None:
    source = tmp_path / "numbers.txt"
    source.write_text("".join(f"{i}\n" for i in range(100)))
    first = tmp_path / "first.jsonl"
    run_id = failed_run(
        tmp_path, f"{pipe}:from_file", "--source", str(source), "--output", str(first)
    )
    (tmp_path / "bug").unlink()  # the fix
    out = tmp_path / "rest.jsonl"
    store = str(tmp_path / "runs.db")
    resumed = invoke("resume", run_id[:8], "--store", store, "--output", str(out))
    assert resumed.exit_code == 0, resumed.output
    delivered = len(outputs(first))
    assert delivered >= 50 and undelivered(store, run_id) == set(range(delivered, 60))
    assert f"{delivered} source item(s) skipped: finished by run {run_id}" in resumed.output
    # every result reached the consumer once over the two runs: none twice, none lost
    assert outputs(first) + outputs(out) == [x * 10 for x in range(100)]
    # the sink (not cached) saw again only the items whose results never came out
    assert repeated(tmp_path) == undelivered(store, run_id)
    with RunStore(store, readonly=True) as rs:
        latest = rs.runs()[0]
        assert latest.params["resumed_from"] == run_id and latest.state == "succeeded"
        assert rs.ledger(latest.id).balanced and rs.ledger(latest.id).done == 100 - delivered
    listed = invoke("runs", "--store", store)
    assert re.search(rf"{latest.id}.*resume of {run_id[:8]}", listed.output, re.S), listed.output

    # resuming the same run again is refused, and runs nothing
    calls = len(seen(tmp_path))
    again = invoke("resume", run_id[:8], "--store", store)
    assert again.exit_code == 1, again.output
    assert f"was resumed already, by run {latest.id}" in again.output
    assert "--force" in again.output and len(seen(tmp_path)) == calls


def test_resume_over_a_changed_source_file_is_refused_unless_forced(
    pipe: Path, tmp_path: Path
) -> None:
    source = tmp_path / "numbers.txt"
    source.write_text("".join(f"{i}\n" for i in range(100)))
    run_id = failed_run(tmp_path, f"{pipe}:from_file", "--source", str(source))
    (tmp_path / "bug").unlink()
    source.write_text("".join(f"{i}\n" for i in range(30)))  # another file under its name
    store = str(tmp_path / "runs.db")
    refused = invoke("resume", run_id, "--store", store)
    assert refused.exit_code == 1, refused.output
    assert f"the source of run {run_id} changed since it ran" in refused.output
    assert "--force" in refused.output
    assert seen(tmp_path) == list(range(60))  # nothing ran
    forced = invoke("resume", run_id, "--store", store, "--force")
    assert forced.exit_code == 0, forced.output
    assert seen(tmp_path) == list(range(60))  # the 30 items of the new file were finished


@pytest.mark.parametrize(
    ("now", "why"),
    [("30 0", "it ended after 30 items"), ("100 1", r"its first \d+ items are not the same")],
)
def test_resume_over_a_changed_code_source_is_refused(
    pipe: Path, tmp_path: Path, now: str, why: str
) -> None:
    run_id = failed_run(tmp_path, f"{pipe}:from_code")
    (tmp_path / "bug").unlink()
    (tmp_path / "n").write_text(now)  # the pipeline's own source yields other items now
    store = str(tmp_path / "runs.db")
    refused = invoke("resume", run_id, "--store", store)
    assert refused.exit_code == 1, refused.output
    assert re.search(f"the source differs from the one run {run_id} read: {why}", refused.output)
    assert seen(tmp_path) == list(range(60))  # checked before anything ran
    (tmp_path / "n").write_text("100 0")  # the same source again: resumed
    resumed = invoke("resume", run_id, "--store", store)
    assert resumed.exit_code == 0, resumed.output
    assert repeated(tmp_path) == undelivered(store, run_id)


def test_positions_of_a_resumed_run_map_back_to_the_source() -> None:
    """A resume of a resume: the second run's item i is the i-th source position the
    first skipped not; checked against brute force on random ranges."""
    import random

    from conveyor.store._source import merge, subtract, to_source_positions

    rng = random.Random(7)

    def points(ranges: list[tuple[int, int]]) -> set[int]:
        return {i for a, b in ranges for i in range(a, b + 1)}

    def random_ranges(limit: int) -> list[tuple[int, int]]:
        return merge((a, a + rng.randrange(4)) for a in rng.sample(range(limit), rng.randrange(6)))

    for _ in range(300):
        skipped, own, holes = random_ranges(40), random_ranges(30), random_ranges(30)
        kept = [p for p in range(200) if p not in points(skipped)]
        mapped = to_source_positions(own, skipped)
        assert points(mapped) == {kept[i] for i in points(own)}
        assert mapped == merge(mapped)  # sorted, disjoint, adjacent ones joined
        assert points(subtract(own, holes)) == points(own) - points(holes)


def test_async_sources_are_fingerprinted_and_resumed() -> None:
    import asyncio

    import conveyor as cv
    from conveyor.store import DigestingSource, ItemDigest, ResumeSource

    async def numbers(shift: int = 0):  # type: ignore[no-untyped-def]
        for i in range(5):
            await asyncio.sleep(0)
            yield i + shift

    pipe = cv.Pipeline("a", [cv.stage(f.double, executor="sync")], ordered=True)
    digest = ItemDigest()
    assert pipe.run(DigestingSource(numbers(), digest).runnable()).results == [0, 2, 4, 6, 8]
    read = digest.state()
    assert read["items"] == 5
    again = ResumeSource(numbers(), [(0, 1)], read, "r1").runnable()
    assert pipe.run(again).results == [4, 6, 8]  # the two finished items skipped
    changed = ResumeSource(numbers(shift=1), [(0, 1)], read, "r1").runnable()
    with pytest.raises(cv.RunError) as failed:
        pipe.run(changed)
    assert "differs from the one run r1 read" in str(failed.value.__cause__)
