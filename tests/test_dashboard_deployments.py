"""The dashboard's deployment pages over a store written by the lifecycle's own calls:
on a model's page the running rollout, the traffic each version served (a chart and
its table), the rollouts and the latest decisions; an event's page with its evidence,
its causes (the root first) and what it caused. What users wrote stays text, ids and
names that are not there find nothing, and a store the lifecycle never opened says
so, and keeps none of its tables."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from conveyor.lifecycle import LifecycleLog
from conveyor.models import ModelRegistry
from dashboard_support import XSS, XSS_VALUE, fill_lifecycle, get, serving

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("dash-deployments") / "runs.db"
    return path, fill_lifecycle(path)


@pytest.fixture(scope="module")
def base(store: tuple[Path, dict[str, int]]) -> Iterator[str]:
    with serving(store[0]) as url:
        yield url


def flat(text: str) -> str:
    return " ".join(text.split())


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def page_data(text: str) -> dict[str, object]:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text)
    assert found is not None
    data: dict[str, object] = json.loads(found.group(1))
    return data


def test_a_model_page_shows_the_running_rollout_and_the_rollouts_newest_first(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    status, headers, text = get(base + "/models/digits")
    assert status == 200 and "default-src 'none'" in headers["content-security-policy"]
    page = flat(text)
    assert "<h2>Deployments</h2>" in page
    now = section(page, 'class="active-rollout"', "</p>")
    assert "shadow" in now and "digits@champion" in now and "v1 → v3" in now
    assert "10% of answered batches mirrored to v3" in now
    rollouts = section(page, '<table class="rollouts">', "</table>")
    ids = store[1]
    assert rollouts.index(f'<td class="n">{ids["shadow"]}</td>') < rollouts.index(
        f'<td class="n">{ids["canary"]}</td>'
    )
    assert '<span class="badge rolled_back">rolled_back</span>' in rollouts
    assert f"errors: 3 of 25 {ESCAPED}" in rollouts  # the reason, as text


def test_the_traffic_each_version_served_step_by_step(base: str) -> None:
    _, _, text = get(base + "/models/digits")
    table = flat(section(text, '<table class="traffic">', "</table>"))
    rows = [
        re.sub(r"<[^>]+>", "|", row).split("|")
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    ]
    cells = [[c.strip() for c in row if c.strip()] for row in rows]
    # rollout, alias, mode, step, arm, version, share, requests, errors (newest first)
    assert [c[:9] for c in cells] == [
        ["2", "champion", "shadow", "1", "champion", "1", "100%", "40", "0"],
        ["2", "champion", "shadow", "1", "shadow", "3", "mirror of 10%", "4", "0"],
        ["1", "champion", "canary", "2", "candidate", "2", "25%", "25", "3"],
        ["1", "champion", "canary", "2", "champion", "1", "75%", "75", "0"],
        ["1", "champion", "canary", "1", "candidate", "2", "5%", "5", "0"],  # 3 + 2 replicas
        ["1", "champion", "canary", "1", "champion", "1", "95%", "95", "0"],
    ]
    chart = page_data(text)["traffic"]
    assert isinstance(chart, dict)
    series = {s["label"]: s["values"] for s in chart["series"]}
    assert set(series) == {"v1", "v2"}  # a shadow's version answers nothing
    assert len(chart["x"]) == len(series["v1"]) == len(series["v2"])
    assert chart["x"] == sorted(chart["x"])
    # the canary's two steps, then the shadow (v1 answers all), then the line breaks
    assert series["v1"][:2] == [95.0, 75.0] and series["v2"][:2] == [5.0, 25.0]
    assert 100.0 in series["v1"] and series["v1"][-1] is None and series["v2"][-1] is None


def test_the_latest_events_newest_first_each_linked_and_the_rest_counted(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    ids = store[1]
    _, _, text = get(base + "/models/digits")
    events = flat(section(text, '<table class="events">', "</table>"))
    order = [events.index(f'href="/models/digits/events/{ids[k]}"') for k in
             ("rollback", "step2", "step1", "gate", "build", "alarm")]  # fmt: skip
    assert order == sorted(order)
    assert events.count("<tr>") == 1 + 50  # the header and the latest 50 of 66
    assert 'Lifecycle events <span class="muted">66, newest first' in flat(text)
    assert "16 more, older: <code>conveyor deployments digits --limit 66</code>" in flat(text)
    assert "drift in 1 of 64 features: x3" in events and "the second line" not in events
    assert f'href="/models/digits/events/{ids["other"]}"' not in text  # another model's


def test_an_event_page_shows_its_evidence_its_causes_and_what_it_caused(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    ids = store[1]
    status, _, text = get(f"{base}/models/digits/events/{ids['step2']}")
    assert status == 200
    page = flat(text)
    assert f'Event {ids["step2"]} <span class="badge">canary_step</span>' in page
    assert f"step 2 of 3, 25% of traffic: errors {ESCAPED}" in page
    assert f'href="/models/digits/events/{ids["step1"]}">canary_step {ids["step1"]}</a>' in page
    assert "canary on <code>digits@champion</code>, v1 → v2" in page  # its rollout
    lineage = section(page, '<ol class="lineage">', "</ol>")
    kinds = re.findall(r"(drift_alarm|build|gate|canary_step) (\d+)", lineage)
    assert kinds == [
        ("drift_alarm", str(ids["alarm"])),
        ("build", str(ids["build"])),
        ("gate", str(ids["gate"])),
        ("canary_step", str(ids["step1"])),
        ("canary_step", str(ids["step2"])),  # itself, last, not a link
    ]
    assert f"<b>canary_step {ids['step2']}</b>" in lineage
    caused = section(page, '<table class="descendants">', "</table>")
    assert f'href="/models/digits/events/{ids["rollback"]}">rollback</a>' in caused
    evidence = html.unescape(section(text, '<table class="evidence">', "</table>"))
    assert "<th>breach</th><td>errors</td>" in evidence
    assert '\n  "errors": 3,\n' in evidence and '\n  "requests": 25\n}' in evidence  # indented
    assert '"latency": [0, 0,' in evidence  # a list of numbers on one line


def test_an_alarm_page_shows_everything_it_caused_in_order(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    ids = store[1]
    _, _, text = get(f"{base}/models/digits/events/{ids['alarm']}")
    page = flat(text)
    assert "nothing recorded: a root" in page
    assert "drift in 1 of 64 features: x3\nthe second line" in text  # the whole summary
    caused = section(page, '<table class="descendants">', "</table>")
    found = [
        int(i) for i in re.findall(r'<td class="n"><a href="/models/digits/events/(\d+)"', caused)
    ]
    assert found == [ids[k] for k in ("build", "gate", "step1", "step2", "rollback")]
    assert 'What it caused <span class="muted">5, oldest first' in page
    evidence = html.unescape(section(text, '<table class="evidence">', "</table>"))
    assert '<th>features</th><td><pre>["x3"]</pre>' in evidence
    assert "<th>p</th><td>1e-09</td>" in evidence
    assert '"rows": 1000' in evidence


def test_what_users_wrote_is_text(base: str, store: tuple[Path, dict[str, int]]) -> None:
    ids = store[1]
    for url in (
        "/models/digits",
        f"/models/digits/events/{ids['step2']}",
        f"/models/digits/events/{ids['alarm']}",
    ):
        status, _, text = get(base + url)
        assert status == 200, url
        assert XSS not in text and ESCAPED in text, url


def test_an_event_of_a_model_named_like_html_is_text_and_odd_events_are_shown(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    # LifecycleLog refuses such a name; a store written by other means may hold one
    with sqlite3.connect(store[0]) as c:
        html_named = c.execute(
            "INSERT INTO lifecycle_events (at, name, kind, passed, summary, evidence) "
            "VALUES (0, ?, 'gate', 1, 'passed', ?)",
            (XSS_VALUE, json.dumps({XSS: XSS})),
        ).lastrowid
    c.close()
    with LifecycleLog(store[0]) as log:
        orphan = log.record("digits", "gate", summary="its cause is gone", parent=99_999)
        big = log.record(
            "digits", "gate", summary="much evidence", evidence={"n": list(range(9999))}
        )
    name = urllib.parse.quote(XSS_VALUE, safe="")  # a name with no '/': one path segment
    status, _, text = get(f"{base}/models/{name}/events/{html_named}")
    assert status == 200
    assert XSS_VALUE not in text
    assert text.count("&lt;img src=x onerror=alert(2)&gt;") == 2  # the title, the heading
    assert XSS not in text and text.count(ESCAPED) == 2  # the evidence's key and value
    _, _, text = get(f"{base}/models/digits/events/{orphan.id}")
    assert "event 99999, not in the store" in text and "event 99999 (not in the store)" in text
    _, _, text = get(f"{base}/models/digits/events/{big.id}")
    assert re.search(r"… \d+ more characters", text)  # cut, and said so


@pytest.mark.parametrize(
    "path",
    [
        "/models/digits/events/{other}",  # another model's event
        "/models/other/events/{alarm}",
        "/models/digits/events/999999",
        "/models/digits/events/abc",
        "/models/digits/events/-1",
        "/models/digits/events/1.5",
        "/models/digits/events/" + "9" * 40,
        "/models/digits/events/..%2F..%2Fetc%2Fpasswd",
        "/models/..%2F..%2Fetc%2Fpasswd/events/{alarm}",
        "/models/%2E%2E/events/{alarm}",
        "/models/../../etc/passwd/events/1",
        "/models/digits/events/{alarm}/..%2F..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_ids_and_names_that_are_not_there_find_nothing(
    base: str, store: tuple[Path, dict[str, int]], path: str
) -> None:
    status, _, text = get(base + path.format(**store[1]))
    assert status == 404, path
    assert "root:" not in text


def test_a_store_the_lifecycle_never_opened_says_so_and_keeps_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with ModelRegistry(path) as reg:
        reg.register("plain", {"w": [1.0]}, format="pickle")
    with serving(path) as url:
        status, _, text = get(url + "/models/plain")
        assert status == 200
        assert "No deployment is recorded in this store" in text
        assert 'id="traffic"' not in text and '"traffic": null' in text
        assert get(url + "/models/plain/events/1")[0] == 404
    with sqlite3.connect(path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & {"lifecycle_events", "rollouts", "traffic"}  # read-only: none made


def test_a_model_with_no_deployment_says_so(base: str, store: tuple[Path, dict[str, int]]) -> None:
    with ModelRegistry(store[0]) as reg:
        reg.register("quiet", {"w": [1.0]}, format="pickle")
    status, _, text = get(base + "/models/quiet")
    assert status == 200
    assert (
        "No deployment of <code>quiet</code> is recorded: no rollout, no lifecycle event." in text
    )


def test_rollouts_past_the_latest_20_are_counted_not_listed(
    base: str, store: tuple[Path, dict[str, int]]
) -> None:
    with ModelRegistry(store[0]) as reg:
        reg.register("busy", {"w": [1.0]}, format="pickle")
    with LifecycleLog(store[0]) as log:
        for i in range(23):
            r = log.start_rollout(
                "busy", "champion", mode="canary", champion=1, candidate=2, share=0.1
            )
            log.finish_rollout(r.id, "stopped", f"try {i}")
    _, _, text = get(base + "/models/busy")
    page = flat(text)
    rollouts = section(page, '<table class="rollouts">', "</table>")
    assert rollouts.count("<tr>") == 1 + 20 and "try 22" in rollouts and "try 2<" not in rollouts
    assert "3 more, older, not shown" in page
    assert "no rollout is running" in page and "no lifecycle event" in page
