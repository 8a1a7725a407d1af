"""The dashboard over HTTP: a real server on 127.0.0.1 over a store filled by real runs.
Pages, filters, escaping, paths that try to leave the app, read-only, the timeline's
lanes, the live run's event stream, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from conveyor.errors import StoreError
from conveyor.store import RunStore, dead_letter_page, find_runs
from dashboard_support import XSS, XSS_VALUE, fill, get, serving


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("dash") / "runs.db"
    return path, fill(path)


@pytest.fixture(scope="module")
def base(filled: tuple[Path, dict[str, str]]) -> Iterator[str]:
    with serving(filled[0]) as url:
        yield url


def test_every_page_answers(base: str, filled: tuple[Path, dict[str, str]]) -> None:
    ids = filled[1]
    for url in (
        "/",
        f"/runs/{ids['numbers']}",
        f"/runs/{ids['numbers'][:8]}",  # a prefix, as the CLI takes
        f"/runs/{ids['numbers']}/live",
        f"/runs/{ids['broken']}",
        "/pipeline?name=numbers",
        f"/api/runs/{ids['numbers']}/timeline",
        "/static/uPlot.iife.min.js",
    ):
        status, headers, _ = get(base + url)
        assert status == 200, url
        assert "default-src 'none'" in headers["content-security-policy"]
    status, _, text = get(f"{base}/runs/{ids['numbers']}")
    assert "limiting" in text and "Model against measurement" in text
    assert "read 300 = done <b>300</b>" in " ".join(text.split())  # the ledger


def test_a_script_named_stage_and_html_values_render_as_text(
    base: str, filled: tuple[Path, dict[str, str]]
) -> None:
    ids = filled[1]
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    value = "&lt;img src=x onerror=alert(2)&gt;"
    for url, shown in (
        ("/", escaped),
        (f"/runs/{ids['evil']}", escaped),
        (f"/runs/{ids['evil']}/live", escaped),
        ("/pipeline?name=" + urllib.parse.quote(XSS), escaped),
        (f"/runs/{ids['broken']}", value),  # the error that failed it names the value
        ("/?pipeline=" + urllib.parse.quote(XSS), escaped),
        ("/runs/" + urllib.parse.quote(XSS, safe=""), None),
    ):
        status, _, text = get(base + url)
        assert XSS not in text and XSS_VALUE not in text and "<b>x" not in text, url
        assert shown is None or (status == 200 and shown in text), url
    _, _, text = get(f"{base}/runs/{ids['evil']}")
    assert "&lt;img src=x onerror=alert(2)&gt;" in text  # the dead letter's value
    assert "refused &lt;b&gt;" in text  # and its error


@pytest.mark.parametrize(
    "attack",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..\\..\\etc\\passwd",
    ],
)
def test_paths_never_reach_the_filesystem(base: str, attack: str) -> None:
    for url in (
        f"/{attack}",
        f"/runs/{attack}",
        f"/runs/{attack}/live",
        f"/runs/{attack}/events",
        f"/api/runs/{attack}/timeline",
        f"/pipeline?name={attack}",
        f"/static/{attack}",
        "/static/..%2F__init__.py",
        f"/?pipeline={attack}&state=",
    ):
        status, _, text = get(base + url)
        assert status in (200, 404), url  # 200: the runs page, filtered to no run
        assert "root:" not in text and "import" not in text, url


def test_other_host_names_are_refused_on_loopback(base: str) -> None:
    """A page elsewhere that rebinds its own DNS name to 127.0.0.1 gets nothing."""
    import http.client

    port = int(base.rsplit(":", 1)[1])
    for host, status in (("evil.example", 400), (f"localhost:{port}", 200), ("127.0.0.1", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": host})
            assert conn.getresponse().status == status, host
        finally:
            conn.close()


def test_it_is_read_only(base: str, filled: tuple[Path, dict[str, str]]) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, text = get(f"{base}/runs/{filled[1]['numbers']}", method)
        assert status == 405 and "read-only" in text
    with RunStore(filled[0], create=False, readonly=True) as store:
        assert len(store.runs(10)) == 3  # nothing was written


def test_the_runs_page_filters_and_says_what_is_wrong(base: str) -> None:
    _, _, text = get(f"{base}/?state=failed")
    link = 'name={}">{}</a>'.format
    assert link("broken", "broken") in text and link("numbers", "numbers") not in text
    _, _, text = get(f"{base}/?pipeline=numbers")
    assert link("numbers", "numbers") in text and link("broken", "broken") not in text
    today = time.strftime("%Y-%m-%d")
    _, _, text = get(f"{base}/?since={today}&until={today}")
    assert '<h1>Runs <span class="muted">3</span>' in text
    _, _, text = get(f"{base}/?until=2000-01-01")
    assert "no runs match" in text
    status, _, text = get(f"{base}/?state=exploded")
    assert status == 400 and "state &#39;exploded&#39;: give one of pending" in text
    status, _, text = get(f"{base}/?since=yesterday")
    assert status == 400 and "YYYY-MM-DD" in text
    status, _, text = get(f"{base}/?page=0")
    assert status == 400


def test_the_timeline_has_one_lane_per_worker(
    base: str, filled: tuple[Path, dict[str, str]]
) -> None:
    _, _, text = get(f"{base}/api/runs/{filled[1]['numbers']}/timeline?width=200")
    tl = json.loads(text)
    workers = {(lane["stage"], lane["worker"]) for lane in tl["lanes"]}
    assert len(tl["lanes"]) == len(workers) and {s for s, _ in workers} == {"slow_inc"}
    assert 1 <= len(workers) <= 3
    assert sum(lane["units"] for lane in tl["lanes"]) == tl["units"] == 300
    assert all(len(lane["busy"]) == 200 and max(lane["busy"]) <= 1 for lane in tl["lanes"])
    assert [s["stage"] for s in tl["depth"]["stages"]] == ["slow_inc"]
    status, _, _ = get(f"{base}/api/runs/{filled[1]['numbers']}/timeline?width=wide")
    assert status == 400


def test_a_finished_runs_event_stream_ends(base: str, filled: tuple[Path, dict[str, str]]) -> None:
    _, headers, text = get(f"{base}/runs/{filled[1]['numbers']}/events")
    assert headers["content-type"].startswith("text/event-stream")
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert events[-1].startswith("event: end") and '"succeeded"' in events[-1]
    last = json.loads(events[-2].split("data: ", 1)[1])
    assert last["state"] == "succeeded" and last["emitted"] == 300
    assert last["stages"][0]["out"] == 300


def test_a_missing_store_is_one_clear_error(tmp_path: Path) -> None:
    from conveyor.dashboard import create_app

    with pytest.raises(StoreError, match="no run store at"):
        create_app(tmp_path / "none.db")


def test_find_runs_pages_and_counts(filled: tuple[Path, dict[str, str]]) -> None:
    with RunStore(filled[0], create=False, readonly=True) as store:
        page = find_runs(store, limit=2)
        assert page.total == 3 and len(page.runs) == 2
        assert find_runs(store, limit=2, offset=2).runs[0].pipeline == "numbers"  # the oldest
        (row,) = find_runs(store, pipeline="numbers").runs
        assert row.items_read == 300 and row.throughput is not None and row.throughput > 0
        with pytest.raises(ValueError, match="state 'nope': give one of"):
            find_runs(store, state="nope")
        letters, count = dead_letter_page(store, filled[1]["evil"], limit=5)
        assert count == 1 and letters[0].value_repr == repr(XSS_VALUE)
        assert letters[0].stage == XSS and letters[0].value_pickle is None


def test_the_command_warns_when_exposed_and_names_a_missing_store(tmp_path: Path) -> None:
    from conveyor.dashboard import exposed

    assert not exposed("127.0.0.1") and not exposed("::1") and not exposed("localhost")
    assert exposed("0.0.0.0") and exposed("192.168.1.4") and exposed("myhost")
    cmd = [sys.executable, "-m", "conveyor.cli", "dashboard", "--store", str(tmp_path / "x.db")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no run store at" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    fill_path = tmp_path / "runs.db"
    RunStore(fill_path).close()
    with subprocess.Popen(
        [*cmd[:-1], str(fill_path), "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line.startswith("warning: serving on 0.0.0.0: the dashboard has no login")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_damaged_recording_leaves_the_page_without_a_timeline(tmp_path: Path) -> None:
    import sqlite3

    import conveyor as cv
    from dashboard_support import record, slow_inc

    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        run_id = record(store, cv.Pipeline("p", [cv.stage(slow_inc)]), range(10))
    with sqlite3.connect(path) as c:
        c.execute("UPDATE run_recordings SET data = ?", (b"not gzip at all",))
    with serving(path) as url:
        status, _, text = get(f"{url}/runs/{run_id}")
        assert status == 200 and "no readable recording of this run" in text
        assert "slow_inc" in text  # the stage table, from the stage statistics
        status, _, _ = get(f"{url}/api/runs/{run_id}/timeline")
        assert status == 404
