"""The grid under load of history: a year of a daily pipeline with 20 tasks (365 runs,
7,300 task instances) in SQLite, then the latency of the grid page and of its API call.

Runs and task instances are written through the store (``store.runs.create_run`` and
``store.transitions.transition``, one transaction). The server is the real one (Uvicorn,
auth on, a Bearer token for the API, a session for the page), requests go over HTTP with
keep-alive.
Prints p50/p95 per request; the target is p50 < 150 ms.
Run: `.venv/bin/python bench/web_grid.py [--days 365] [--tasks 20] [--requests 50]`.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from reflow.core.config import Settings
from reflow.core.naming import run_id_for
from reflow.core.states import RunOrigin, RunState, TIState
from reflow.services import accounts
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store import transitions
from reflow.store.db import Database
from reflow.web.app import create_app

TARGET_MS = 150.0


def pipeline_source(tasks: int) -> str:
    lines = [
        "from reflow import Pipeline, Shell",
        'with Pipeline("bench", schedule="@daily", start_date="2020-01-01", max_active_runs=8):',
        '    previous = Shell("t00", "true")',
    ]
    for i in range(1, tasks):
        lines.append(f'    current = Shell("t{i:02d}", "true")')
        lines.append("    previous >> current")
        lines.append("    previous = current")
    return "\n".join(lines) + "\n"


def seed(project: Project, days: int) -> None:
    """``days`` finished runs (every 17th failed) with all their task instances."""
    pipeline = project.pipeline("bench")
    tasks = pipeline.topological()
    first = datetime(2024, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)

    def work(conn: Any) -> None:
        for day in range(days):
            logical = first + timedelta(days=day)
            run_pk = store_runs.create_run(
                conn,
                pipeline="bench",
                run_id=run_id_for(RunOrigin.BACKFILL, logical),
                logical_date=logical,
                interval=pipeline.schedule.interval(logical),
                origin=RunOrigin.BACKFILL,
                conf={},
                version=pipeline.version,
                task_ids=tasks,
                now=now,
            )
            failed = day % 17 == 16
            tis = store_runs.run_task_instances(conn, [run_pk])
            start = now - timedelta(days=days - day)
            for i, ti in enumerate(sorted(tis, key=lambda t: t.task_id)):
                state = TIState.FAILED if failed and i == len(tis) - 1 else TIState.SUCCESS
                transitions.transition(
                    conn,
                    "ti",
                    [ti.id],
                    state,
                    [TIState.PENDING],
                    now,
                    started_at=start + timedelta(seconds=10 * i),
                    ended_at=start + timedelta(seconds=10 * i + 5 + day % 7),
                )
            end = RunState.FAILED if failed else RunState.SUCCESS
            transitions.transition(
                conn,
                "run",
                [run_pk],
                end,
                [RunState.QUEUED],
                now,
                started_at=start,
                ended_at=start + timedelta(seconds=10 * len(tis)),
            )

    project.db.write(work)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(client: httpx.Client, url: str, n: int, **kwargs: Any) -> tuple[float, float]:
    for _ in range(3):  # warm up
        client.get(url, **kwargs).raise_for_status()
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(url, **kwargs)
        took.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    took.sort()
    return statistics.median(took), took[max(0, int(len(took) * 0.95) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reflow-bench-web-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "bench.py").write_text(pipeline_source(args.tasks))
        settings = Settings(home=home)
        db = Database(settings.database)
        db.migrate()
        project = Project(settings, db)
        t0 = time.perf_counter()
        seed(project, args.days)
        print(
            f"seeded {args.days} runs x {args.tasks} tasks "
            f"({args.days * args.tasks} task instances) in {time.perf_counter() - t0:.1f}s"
        )
        token = accounts.create_token(project, "bench")
        accounts.create_user(project, "bench", "bench password")
        app = create_app(project, auth=True, secret_key="bench-" + "k" * 40)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                login = client.get("/login").text
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)
                assert csrf is not None
                client.post(
                    "/login",
                    data={"username": "bench", "password": "bench password", "csrf_token": csrf[1]},
                )
                bearer = {"Authorization": f"Bearer {token}"}
                cases = [
                    ("grid page, default window (30 runs)", "/pipelines/bench", {}, True),
                    (
                        "grid API, default window (60 runs)",
                        "/api/v1/pipelines/bench/grid",
                        bearer,
                        True,
                    ),
                    ("grid page, 365 runs", "/pipelines/bench?limit=365", {}, True),
                    ("grid API, 365 runs", "/api/v1/pipelines/bench/grid?limit=365", bearer, True),
                    (
                        "grid API, a month by date range",
                        "/api/v1/pipelines/bench/grid?start=2024-06-01&end=2024-06-30",
                        bearer,
                        True,
                    ),
                ]
                print(f"{'request':44} {'p50 ms':>8} {'p95 ms':>8}")
                ok = True
                for label, url, headers, targeted in cases:
                    p50, p95 = measure(client, url, args.requests, headers=headers)
                    mark = ""
                    if targeted:
                        mark = "  ok" if p50 < TARGET_MS else f"  ABOVE TARGET ({TARGET_MS:.0f})"
                        ok &= p50 < TARGET_MS
                    print(f"{label:44} {p50:8.1f} {p95:8.1f}{mark}")
                verdict = "met" if ok else "MISSED"
                print(f"target p50 < {TARGET_MS:.0f} ms for every view: {verdict}")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            db.dispose()


if __name__ == "__main__":
    main()
