"""The UI in real headless Chromium (Debian's, through Playwright), against a real server
and a real scheduler: log in, read the grid and a log, run a backfill from its form to
success, use history actions; screenshots of the main pages go to docs/screenshots/."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflow.services import accounts
from reflow.services import backfill as backfill_service

from .conftest import Env, Server, make_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSWORD = "a long password"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]

EVENTS = """
from reflow import Param, Pipeline, Shell

with Pipeline(
    "events",
    schedule="@daily",
    start_date="2024-01-01",
    max_active_runs=4,
    params={
        "source": Param("s3://raw/events", description="where the raw files land"),
        "min_rows": Param(1000, minimum=0, description="fail the day below this count"),
        "force_reprocess": False,
        "api_token": Param("tok-default-0000", secret=True, description="warehouse token"),
    },
    defaults={"retries": 1, "retry_delay": "1s"},
):
    extract = Shell("extract", "echo fetching {{ ds }} from {{ params.source }}; sleep 0.3")
    clean = Shell("clean", "echo cleaning {{ ds }}; sleep 0.1")
    load = Shell("load", "echo loading with token {{ params.api_token }}; sleep 0.4")
    aggregate = Shell(
        "aggregate",
        "if [ {{ ds }} = 2024-01-09 ]; then echo bad partition for {{ ds }} >&2; exit 3; fi;"
        " echo aggregated {{ ds }}; sleep 0.2",
    )
    report = Shell("report", "echo report for {{ ds }}")
    extract >> clean >> load >> aggregate >> report
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests"
        if IN_CI:
            pytest.fail(message + " (CI requires them)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


class SchedulerThread:
    """The real scheduler, in a thread, until the test ends."""

    def __init__(self, env: Env) -> None:
        self.stop = threading.Event()
        self.scheduler = env.scheduler()
        self.thread = threading.Thread(
            target=lambda: self.scheduler.run(self.stop, idle_wait=0.1), daemon=True
        )

    def __enter__(self) -> SchedulerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def site(env: Env) -> Iterator[str]:
    """A project with two weeks of history (one failed day), a user, a running scheduler
    and the web server."""
    env.write("events", EVENTS)
    env.write("legacy", "from reflow import Pipeline\nPipeline('legacy', schedule='@never')\n")
    accounts.create_user(env.project, "alice", PASSWORD)
    plan = backfill_service.plan(env.project, "events", start="2024-01-01", end="2024-01-12")
    first = backfill_service.create(env.project, plan)
    with SchedulerThread(env), Server(make_app(env)) as server:
        env_done = env.runs_done(_backfill_runs(env, first))
        from .conftest import eventually

        eventually(env_done, timeout=90)
        yield server.url


def _backfill_runs(env: Env, backfill_id: int) -> list[int]:
    _, runs = backfill_service.show(env.project, backfill_id)
    return [r.id for r in runs]


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_ui_end_to_end_in_chromium(chromium: Any, site: str) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1360, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(20_000)

    # Not logged in: pages send to the login page, the API answers 401.
    page.goto(site + "/pipelines/events")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    assert page.request.get(site + "/api/v1/pipelines").status == 401
    shot(page, "login")
    page.fill("#username", "alice")
    page.fill("#password", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("Wrong user name or password")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(site + "/pipelines/events")

    # The overview: latest states, next date, the import error.
    page.goto(site + "/")
    expect(page.locator("#pipelines")).to_contain_text("events")
    expect(page.locator("section.problems")).to_contain_text("legacy.py")
    shot(page, "pipelines")

    # The grid: 12 days by 5 tasks; a failed day; its try history and log.
    page.click("text=events")
    grid = page.locator("#grid")
    expect(grid.locator("td.cell[data-task]")).to_have_count(60)
    expect(grid.locator("td.cell[data-task].s-failed")).to_have_count(1)
    expect(grid.locator("td.cell[data-task].s-upstream_failed")).to_have_count(1)
    grid.locator("td.cell[data-task].s-failed").click()
    panel = page.locator("#panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#panel-tries tbody tr")).to_have_count(2)  # retried once
    expect(page.locator("#log")).to_contain_text("bad partition for 2024-01-09")
    expect(page.locator("#log-status")).to_contain_text("failed")
    expect(panel.locator("#panel-tries")).to_contain_text("error")
    shot(page, "grid")
    # The log of a task that printed a secret param shows it masked.
    grid.locator("td.cell[data-task=load]").first.click()
    expect(page.locator("#log")).to_contain_text("loading with token ***")
    assert "tok-default-0000" not in page.content()

    # The trigger form, generated from the params; the server's message for a bad value.
    page.get_by_role("link", name="Trigger", exact=True).click()
    expect(page.locator("#f-min_rows")).to_have_attribute("min", "0")
    expect(page.locator("#f-api_token")).to_have_attribute("type", "password")
    page.fill("#date", "2024-01-20")
    page.fill("#f-min_rows", "-5")
    page.locator("#trigger-form").evaluate("form => { form.noValidate = true; }")
    page.click("#trigger-form button[type=submit]")
    expect(page.locator(".field.invalid")).to_contain_text("greater than or equal to 0")
    shot(page, "trigger")
    page.fill("#f-min_rows", "5")
    page.click("#trigger-form button[type=submit]")
    expect(page.locator(".flash").first).to_contain_text("Queued run")
    expect(page.locator("h1")).to_contain_text("success", timeout=60_000)

    # A backfill from the form: the dry-run plan first, then Start, then success.
    page.goto(site + "/pipelines/events")
    page.get_by_role("link", name="Backfill", exact=True).click()
    page.fill("#start", "2024-01-11")
    page.fill("#end", "2024-01-15")
    page.fill("#max_active_runs", "2")
    page.fill("#f-min_rows", "10")
    page.check("#f-force_reprocess")
    page.click("#plan")
    expect(page.locator("#plan-summary")).to_contain_text("3 to create")
    expect(page.locator("#plan tbody tr")).to_have_count(5)
    expect(page.locator("#plan")).to_contain_text("already succeeded")
    expect(page.locator("#estimate")).to_contain_text("≈")
    shot(page, "backfill-plan")
    page.click("#start")
    expect(page.locator(".flash")).to_contain_text("3 runs created")
    expect(page.locator("#bf-state")).to_contain_text("success", timeout=60_000)
    expect(page.locator(".progress-text")).to_contain_text("3/3")
    page.goto(site + "/backfills")
    expect(page.locator("#backfills tbody tr")).to_have_count(2)
    shot(page, "backfills")

    # The failed run's page: Gantt and durations. Clearing its failed tasks (confirmed in a
    # dialog) starts a second attempt, which fails again: 2024-01-09 always does.
    page.goto(site + "/pipelines/events")
    page.locator("th.date a", has_text="2024-01-09").click()
    expect(page.locator("h1")).to_contain_text("failed")
    expect(page.locator("#gantt tr")).to_have_count(5)  # report never ran; aggregate twice
    shot(page, "run")
    page.check("input[name=only_failed]")
    page.check("input[name=downstream]")
    page.click("#clear")
    expect(page.locator(".flash").first).to_contain_text("Cleared 2 task instances")
    expect(page.locator("h1")).to_contain_text("failed", timeout=60_000)
    page.locator("button.open-log[data-task=aggregate]").click()
    latest = page.locator("#panel-tries tbody tr").first
    expect(latest.locator("td").nth(1)).to_have_text("2")  # the run's second attempt
    expect(page.locator("#log")).to_contain_text("bad partition for 2024-01-09")

    # Logging out ends the session.
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(site + "/backfills")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    assert errors == [], errors
    context.close()
