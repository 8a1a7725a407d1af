"""The dashboard in a real browser: Playwright driving Debian's chromium (``.ci/run``
installs it) against a dashboard over a store the tests fill. Every page loads with
no console error, a live run's counts rise while it runs, the timeline shows one
lane per worker, a model's traffic chart has a line per version, and a screenshot
of each page is kept under
``tests/artifacts/dashboard/`` (ignored by git)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

import conveyor as cv  # noqa: E402
from conftest import wait_until  # noqa: E402
from conveyor.store import RunStore, SnapshotRecorder, StoreRecorder, find_runs  # noqa: E402
from dashboard_support import XSS, fill, fill_lifecycle, serving, slow_inc  # noqa: E402

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    path = tmp_path_factory.mktemp("dash-browser") / "runs.db"
    ids = fill(path)
    with serving(path) as url:
        yield url, path, ids


class Page:
    """A browser page that fails the test on any console error or page error."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, url: str) -> Any:
        response = self.page.goto(url, wait_until="load")
        assert response is not None and response.status == 200, url
        return self.page

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.page.close()
        assert self.errors == []


def test_every_page_loads_without_console_errors(
    browser: Any, site: tuple[str, Path, dict[str, str]]
) -> None:
    base, _, ids = site
    p = Page(browser)
    try:
        page = p.open(base + "/")
        assert page.locator("table.runs tbody tr").count() == 3
        p.shot("runs")
        page = p.open(f"{base}/runs/{ids['numbers']}")
        page.wait_for_selector("body[data-timeline-drawn='1']", timeout=15_000)
        assert page.locator("tr.limiting").count() == 1
        p.shot("run")
        page = p.open(f"{base}/runs/{ids['evil']}")
        page.wait_for_selector("body[data-timeline-drawn='1']", timeout=15_000)
        # the stage named like a script is text on the page, and no script ran
        assert page.locator("table.stages td", has_text=XSS).count() >= 1
        assert page.evaluate("typeof window.alerted") == "undefined"
        p.shot("run-escaped")
        page = p.open(f"{base}/runs/{ids['broken']}")
        page.wait_for_selector("body[data-timeline-drawn='1']", timeout=15_000)
        page = p.open(f"{base}/pipeline?name=numbers")
        page.wait_for_selector("body[data-charts-drawn='1']", timeout=15_000)
        p.shot("pipeline")
        page = p.open(f"{base}/runs/{ids['numbers']}/live")
        page.wait_for_selector("body[data-ended='succeeded']", timeout=15_000)
    finally:
        p.close()


def test_the_timeline_shows_one_lane_per_worker(
    browser: Any, site: tuple[str, Path, dict[str, str]]
) -> None:
    base, path, ids = site
    with RunStore(path, readonly=True) as store:
        workers = {s.stage: s.workers for s in store.stage_statistics(ids["numbers"])}
    p = Page(browser)
    try:
        page = p.open(f"{base}/runs/{ids['numbers']}")
        page.wait_for_selector("body[data-timeline-drawn='1']", timeout=15_000)
        lanes = int(page.get_attribute("#lanes", "data-lanes") or 0)
        labels = page.locator("#lanes .u-legend .u-series th").all_inner_texts()
        lane_labels = [t for t in labels if "worker" in t]
        assert len(lane_labels) == lanes
        # every lane is a worker of slow_inc that ran units: at most its pool
        assert 1 <= lanes <= workers["slow_inc"] == 3
        assert all(t.startswith("slow_inc · worker ") for t in lane_labels)
    finally:
        p.close()


def emitted(page: Any) -> int:
    """The results the live page shows (no script evaluated: the page's policy forbids
    eval, and Playwright's wait_for_function would need it)."""
    return int(page.get_attribute("body", "data-emitted") or 0)


def gated(gate: threading.Semaphore, n: int) -> Iterator[int]:
    for i in range(n):
        assert gate.acquire(timeout=60), "the test stopped feeding the source"
        yield i


def test_a_live_runs_counts_rise_while_it_runs(
    browser: Any, site: tuple[str, Path, dict[str, str]]
) -> None:
    base, path, _ = site
    gate = threading.Semaphore(0)
    pipe = cv.Pipeline("live", [cv.stage(slow_inc, workers=2)])
    with RunStore(path) as store:
        snaps = SnapshotRecorder(store, every=0.2)
        run = pipe.stream(gated(gate, 40), instruments=[snaps, StoreRecorder(store)], record=False)
        out: list[int] = []
        consumer = threading.Thread(target=lambda: out.extend(run))
        p = Page(browser)
        try:
            for _ in range(10):
                gate.release()
            consumer.start()
            assert wait_until(lambda: bool(find_runs(store, pipeline="live").total), timeout=20)
            page = p.open(f"{base}/runs/{run.id}/live")
            assert wait_until(lambda: emitted(page) >= 10, timeout=20)
            first = emitted(page)
            assert page.locator("#live-state").inner_text() == "running"
            for _ in range(20):
                gate.release()
            assert wait_until(lambda: emitted(page) >= first + 20, timeout=20)
            row = page.locator("#live-stages tr[data-stage='slow_inc'] td").all_inner_texts()
            assert int(row[2]) >= 30  # out, on the stage's row
            p.shot("live")
            for _ in range(10):
                gate.release()
            page.wait_for_selector("body[data-ended='succeeded']", timeout=20_000)
            assert page.locator("#live-state").inner_text() == "succeeded"
        finally:
            for _ in range(40):
                gate.release()
            consumer.join(timeout=30)
            p.close()
        assert len(out) == 40


def test_a_run_whose_process_died_is_said_to_have_gone_quiet(
    browser: Any, site: tuple[str, Path, dict[str, str]]
) -> None:
    base, path, _ = site
    with RunStore(path) as store:  # begun and running, then nothing: a process killed
        store.begin_run("deadbeef0001", "killed", None)
        store.set_state("deadbeef0001", "running")
    p = Page(browser)
    try:
        page = p.open(f"{base}/runs/deadbeef0001/live")
        page.wait_for_selector("#live-note:has-text('no snapshot for')", timeout=20_000)
        assert page.locator("#live-state").inner_text() == "running"
        p.shot("live-quiet")
    finally:
        p.close()


def test_the_models_pages_load_without_console_errors(
    browser: Any, site: tuple[str, Path, dict[str, str]]
) -> None:
    pytest.importorskip("torch", reason="the model here is a torch module")
    from conveyor.models import ModelRegistry
    from modelfns import Tiny

    base, path, ids = site
    with ModelRegistry(path) as reg:
        reg.register("tiny", Tiny(), metrics={"loss": 0.5}, alias="champion")
        reg.register("tiny", Tiny(), metrics={"loss": 0.25}, run_id=ids["numbers"])
        reg.alias("tiny", "champion", 2, reason=f"lower loss {XSS}")
    p = Page(browser)
    try:
        page = p.open(base + "/models")
        assert page.locator("table.models tbody tr").count() == 1
        page = p.open(base + "/models/tiny")
        assert page.locator("table.versions tbody tr").count() == 2
        assert page.locator("table.moves td", has_text=XSS).count() == 1  # as text
        assert page.evaluate("typeof window.alerted") == "undefined"
        p.shot("model")
    finally:
        p.close()


def test_the_deployment_pages_load_without_console_errors(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    ids = fill_lifecycle(path)
    with serving(path) as base:
        p = Page(browser)
        try:
            page = p.open(base + "/models/digits")
            page.wait_for_selector("body[data-traffic-drawn='1']", timeout=15_000)
            assert page.get_attribute("#traffic", "data-series") == "2"  # v1 and v2
            assert page.locator("#traffic canvas").count() >= 1
            assert page.locator("table.rollouts td", has_text=XSS).count() == 1  # as text
            assert page.locator("table.events tbody tr").count() == 50
            assert page.evaluate("typeof window.alerted") == "undefined"
            p.shot("model-deployments")
            page.click(f"table.events a[href='/models/digits/events/{ids['step2']}'] >> nth=0")
            page.wait_for_selector("ol.lineage")
            assert page.locator("ol.lineage li").count() == 5  # the alarm ... this step
            assert page.locator("table.evidence td", has_text=XSS).count() == 1
            p.shot("event")
            page = p.open(f"{base}/models/digits/events/{ids['alarm']}")
            assert page.locator("table.descendants tbody tr").count() == 5
        finally:
            p.close()
