"""Every count and duration reflow prints (CLI) or serves (API) is what the database holds
after the operation: db clean (dry run and real), runs delete, clear, runs mark and
backfill, on SQLite and PostgreSQL.

The figures expected are worked out here from the rows and files themselves, never from
the code under test."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from reflow.cli.app import app
from reflow.services import history as history_service
from reflow.store import runs as store_runs
from reflow.store.models import backfills, runs, schedulers, task_instances, tries
from reflow.web.app import create_app

from .conftest import Env
from .test_backfill import _daily

with warnings.catch_warnings():  # Starlette deprecates httpx for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LATER = timedelta(hours=1)


@dataclass
class Tools:
    """The CLI and the API of the project under test."""

    env: Env
    client: TestClient

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--home", str(self.env.home)])
        assert result.exit_code == 0, result.output
        return result.output

    def get(self, path: str) -> Any:
        self.client.app.state.projects.refresh()  # type: ignore[attr-defined]
        response = self.client.get("/api/v1" + path)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        self.client.app.state.projects.refresh()  # type: ignore[attr-defined]
        response = self.client.post("/api/v1" + path, json=body)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def tools(env: Env) -> Iterator[Tools]:
    (env.home / "reflow.toml").write_text(f'database_url = "{env.settings.database}"\n')
    with TestClient(create_app(env.project, auth=False, secret_key="k" * 48)) as client:
        yield Tools(env, client)


def _later(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """History commands from now on happen ``by`` later than the runs they change."""
    monkeypatch.setattr(history_service, "utcnow", lambda: datetime.now(UTC) + by)


def _numbers(text: str, *labels: str) -> dict[str, int]:
    """``{label: n}`` for each "<n> <label>" of a summary line; every label must be there."""
    found = {label: re.search(rf"(\d+) {label}\b", text) for label in labels}
    missing = [label for label, m in found.items() if m is None]
    assert not missing, f"no count of {missing} in {text!r}"
    return {label: int(m.group(1)) for label, m in found.items() if m is not None}


def _table(text: str, *columns: str) -> list[dict[str, str]]:
    """The rows of the Rich table whose header holds ``columns`` (in order), as dicts;
    cells are cut at the header's positions (Rich aligns cells left, under their header)."""
    lines = text.splitlines()
    for at, line in enumerate(lines):
        starts = _positions(line, columns)
        if starts is not None:
            bounds = [*starts[1:], None]
            rows = []
            for row in lines[at + 1 :]:
                if row.strip() == "history:":  # what follows the table in `runs show`
                    break
                if row.strip():
                    cells = zip(columns, starts, bounds, strict=True)
                    rows.append({c: row[s:e].strip() for c, s, e in cells})
            return rows
    raise AssertionError(f"no table with {columns} in:\n{text}")


def _positions(line: str, columns: tuple[str, ...]) -> list[int] | None:
    if not line.strip().startswith(columns[0]):
        return None
    starts, pos = [], 0
    for column in columns:
        pos = line.find(column, pos)
        if pos < 0:
            return None
        starts.append(pos)
        pos += len(column)
    return starts


def _shown(seconds: float | None) -> str:
    """How the CLI writes a duration: "-" for what never ran."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def _count(env: Env, table: Any, *where: Any) -> int:
    with env.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _ti_took(env: Env, run_pk: int) -> dict[str, float | None]:
    """What each task instance of a finished run ran for, from its rows: from the start
    of its first try of the run's current attempt (every clear here starts one) to the
    end of the task instance; None when no such try started."""
    run = env.run(run_pk)
    out: dict[str, float | None] = {}
    for task_id, ti in env.tis(run_pk).items():
        starts = [
            t.started_at
            for t in env.tries(run_pk)
            if t.ti == ti.id and t.run_attempt == run.attempt and t.started_at is not None
        ]
        out[task_id] = _seconds(min(starts), ti.ended_at) if starts else None
    return out


def _ti_took_of_attempt(env: Env, run_pk: int, task_id: str, attempt: int) -> float | None:
    ti = env.tis(run_pk)[task_id]
    starts = [
        t.started_at
        for t in env.tries(run_pk)
        if t.ti == ti.id and t.run_attempt == attempt and t.started_at is not None
    ]
    return _seconds(min(starts), ti.ended_at) if starts else None


def _check_durations(
    tools: Tools, run_pk: int, earlier: dict[str, float | None] | None = None
) -> None:
    """`runs list`, `runs show`, `tasks list` and the API show the run's and its task
    instances' durations as the rows say (``earlier``: of those that last ran in an
    earlier attempt, as worked out then)."""
    env = tools.env
    run = env.run(run_pk)
    run_took = _seconds(run.started_at, run.ended_at)
    took = _ti_took(env, run_pk) | (earlier or {})

    columns = ("id", "pipeline", "logical date", "origin", "state", "attempt", "started")
    listed = {
        r["id"]: r
        for r in _table(tools.cli("runs", "list", "daily"), *columns, "duration", "run id")
    }
    assert listed[str(run_pk)]["duration"] == _shown(run_took)
    shown = tools.cli("runs", "show", "daily", str(run_pk))
    for output in (tools.cli("tasks", "list", str(run_pk)), shown):
        rows = _table(output, "task", "state", "tries", "started", "duration", "exit")
        assert {r["task"]: r["duration"] for r in rows} == {t: _shown(s) for t, s in took.items()}

    detail = tools.get(f"/pipelines/daily/runs/{run_pk}")
    assert detail["run"]["duration"] == (None if run_took is None else round(run_took, 3))
    assert {t["task_id"]: t["duration"] for t in detail["task_instances"]} == {
        t: None if s is None else round(s, 3) for t, s in took.items()
    }
    (graph,) = [r for r in tools.get("/pipelines/daily/grid")["runs"] if r["id"] == run_pk]
    assert graph["duration"] == detail["run"]["duration"]
    assert f"duration {_shown(run_took)}" in shown


# -- db clean -------------------------------------------------------------------------------
def _existing_logs(env: Env, *where: Any) -> list[Path]:
    with env.db.read() as conn:
        paths = [Path(r[0]) for r in conn.execute(select(tries.c.log_path).where(*where))]
    return [p for p in paths if p.exists()]


def test_db_clean_dry_run_counts_what_the_real_clean_deletes(tools: Tools) -> None:
    env = tools.env
    _daily(env)
    old_backfill = _backfill_cli(tools, "2024-01-01", "2024-01-02")
    spanning = _backfill_cli(tools, "2024-01-31", "2024-02-01")  # one run stays
    manual = env.trigger("daily", ["2024-01-03"])
    env.drive(env.runs_done(_all_runs(env)))
    cutoff = datetime(2024, 2, 1, tzinfo=UTC)
    with env.db.read() as conn:
        sched_ids = [r[0] for r in conn.execute(select(schedulers.c.id))]
    long_ago = datetime(2023, 12, 1, tzinfo=UTC)
    env.db.write(
        lambda c: (
            c.execute(update(backfills).values(created_at=long_ago)),
            c.execute(
                update(schedulers)
                .where(schedulers.c.id == sched_ids[0])
                .values(heartbeat_at=long_ago)
            ),
        )
    )
    going = runs.c.logical_date < cutoff
    old_runs = [r for r in _all_runs(env) if env.run(r).logical_date < cutoff]
    logs = _existing_logs(env, tries.c.run.in_(old_runs))
    logs[0].unlink()  # a log file already gone is not counted
    expected = {
        "runs": _count(env, runs, going),
        "task instances": _count(env, task_instances, task_instances.c.run.in_(old_runs)),
        "tries": _count(env, tries, tries.c.run.in_(old_runs)),
        "log files": len(logs) - 1,
        "backfills": 1,
        "schedulers": 1,
    }
    assert expected["runs"] == 4 and expected["tries"] == 12 and manual[0] in old_runs

    before = {t.name: _count(env, t) for t in (runs, task_instances, tries, backfills, schedulers)}
    dry = _numbers(tools.cli("db", "clean", "--before", "2024-02-01", "--dry-run"), *expected)
    assert dry == expected
    assert {t.name: _count(env, t) for t in (runs, task_instances, tries)} == {
        k: before[k] for k in ("runs", "task_instances", "tries")
    }
    assert all(p.exists() for p in logs[1:])

    real = _numbers(tools.cli("db", "clean", "--before", "2024-02-01"), *expected)
    assert real == dry
    after = {t.name: _count(env, t) for t in (runs, task_instances, tries, backfills, schedulers)}
    assert {k: before[k] - after[k] for k in before} == {
        "runs": real["runs"],
        "task_instances": real["task instances"],
        "tries": real["tries"],
        "backfills": real["backfills"],
        "schedulers": real["schedulers"],
    }
    assert not any(p.exists() or p.parent.exists() for p in logs)  # with folders left empty
    assert all(p.exists() for p in _existing_logs(env))  # those of the run kept stay
    with env.db.read() as conn:
        assert [r[0] for r in conn.execute(select(backfills.c.id))] == [spanning]
    assert old_backfill != spanning
    again = _numbers(tools.cli("db", "clean", "--before", "2024-02-01", "--dry-run"), *expected)
    assert set(again.values()) == {0}


def _what_deleting_removes(env: Env, run_pk: int) -> dict[str, int]:
    return {
        "runs": _count(env, runs, runs.c.id == run_pk),
        "task instances": _count(env, task_instances, task_instances.c.run == run_pk),
        "tries": _count(env, tries, tries.c.run == run_pk),
        "log files": len(_existing_logs(env, tries.c.run == run_pk)),
    }


def test_runs_delete_prints_and_returns_what_it_deleted(tools: Tools) -> None:
    env = tools.env
    _daily(env)
    first, second = env.trigger("daily", ["2024-01-01", "2024-01-02"])
    env.drive(env.runs_done([first, second]))
    _existing_logs(env, tries.c.run == first)[0].unlink()
    logs = _existing_logs(env)

    expected = _what_deleting_removes(env, first)
    out = tools.cli("runs", "delete", "daily", "--run", str(first))
    assert (
        _numbers(out, *expected)
        == expected
        == {
            "runs": 1,
            "task instances": 3,
            "tries": 3,
            "log files": 2,
        }
    )
    expected = _what_deleting_removes(env, second)
    served = tools.post("/pipelines/daily/delete", {"run": str(second)})
    assert served == {
        "runs": expected["runs"],
        "task_instances": expected["task instances"],
        "tries": expected["tries"],
        "logs": expected["log files"],
    }
    assert _count(env, runs) == _count(env, tries) == 0
    assert not any(p.exists() for p in logs)


# -- marks, clears and removed tasks keep what ran --------------------------------------------
def test_marking_a_finished_run_keeps_how_long_it_and_its_tasks_ran(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tools.env
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"], conf={"fail": True})
    env.drive(env.runs_done([pk]))
    ran = env.run(pk)
    ended = {t: ti.ended_at for t, ti in env.tis(pk).items()}
    took = _ti_took(env, pk)
    assert ran.state == "failed" and took["c"] is None  # upstream_failed: never ran
    _check_durations(tools, pk)

    _later(monkeypatch, LATER)
    out = tools.cli("runs", "mark", "daily", "--run", str(pk), "--state", "success")
    assert f"Run {pk} " in out and "success" in out
    run = env.run(pk)
    assert (run.state, run.started_at, run.ended_at) == ("success", ran.started_at, ran.ended_at)
    tis = env.tis(pk)
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys("abc", "success")
    assert {t: ti.ended_at for t, ti in tis.items() if t != "c"} == {
        t: e for t, e in ended.items() if t != "c"
    }
    assert _ti_took(env, pk) == took
    _check_durations(tools, pk)

    _later(monkeypatch, 2 * LATER)
    marked = tools.post("/pipelines/daily/mark", {"run": str(pk), "state": "failed"})
    assert marked["duration"] == round(_seconds(ran.started_at, ran.ended_at) or 0, 3)
    assert env.run(pk).ended_at == ran.ended_at
    _check_durations(tools, pk)


def test_a_run_marked_before_it_started_shows_no_duration(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tools.env
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"])
    _later(monkeypatch, LATER)
    tools.cli("runs", "mark", "daily", "--run", str(pk), "--state", "success")
    run = env.run(pk)
    assert run.started_at is None and run.ended_at is not None
    assert {ti.started_at for ti in env.tis(pk).values()} == {None}
    _check_durations(tools, pk)


def test_a_task_removed_from_the_pipeline_keeps_how_long_it_ran(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tools.env
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    c_ran = env.tis(pk)["c"]
    c_took = _ti_took(env, pk)["c"]
    assert c_took is not None
    # c is removed from the file, then the run is cleared an hour later
    source = (env.settings.pipelines_path / "daily.py").read_text()
    path = env.write(
        "daily",
        source.replace("    a >> b >> c\n", "    a >> b\n").replace(
            '    c = Shell("c", "true")\n', ""
        ),
    )
    stat = path.stat()  # seen as changed even within the same clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _later(monkeypatch, LATER)
    cleared = _numbers(
        tools.cli("runs", "clear", "daily", "--run", str(pk)), "task instances", "runs"
    )
    tis = env.tis(pk)
    assert (
        cleared
        == {
            "task instances": sum(1 for ti in tis.values() if ti.state == "pending"),
            "runs": _count(env, runs, runs.c.id == pk, runs.c.state == "queued"),
        }
        == {"task instances": 2, "runs": 1}
    )
    assert (tis["c"].state, tis["c"].started_at, tis["c"].ended_at) == (
        "removed",
        c_ran.started_at,
        c_ran.ended_at,
    )
    env.drive(env.runs_done([pk]))
    _check_durations(tools, pk, earlier={"c": c_took})


def test_clear_prints_and_returns_what_it_cleared(tools: Tools) -> None:
    env = tools.env
    _daily(env)
    (ok,) = env.trigger("daily", ["2024-01-01"])
    (bad,) = env.trigger("daily", ["2024-01-02"], conf={"fail": True})
    env.drive(env.runs_done([ok, bad]))
    before = {pk: env.run(pk).attempt for pk in (ok, bad)}
    out = tools.cli(
        "runs", "clear", "daily", "--start", "2024-01-01", "--end", "2024-01-02", "--only-failed"
    )
    pending = _count(env, task_instances, task_instances.c.state == "pending")
    requeued = [pk for pk in (ok, bad) if env.run(pk).attempt > before[pk]]
    assert (
        _numbers(out, "task instances", "runs")
        == {
            "task instances": pending,
            "runs": len(requeued),
        }
        == {"task instances": 2, "runs": 1}
    )
    assert requeued == [bad] and env.run(bad).state == "queued"
    # nothing failed is left to clear: the API says so, and nothing changes
    again = tools.post(
        "/pipelines/daily/clear", {"start": "2024-01-01", "end": "2024-01-02", "only_failed": True}
    )
    assert again == {"runs": 0, "task_instances": 0, "left_running": []}
    assert _count(env, task_instances, task_instances.c.state == "pending") == pending
    env.drive(env.runs_done([bad]))
    _check_durations(tools, bad, earlier={"a": _ti_took_of_attempt(env, bad, "a", 1)})


def test_a_clear_that_finds_its_tasks_running_counts_no_run(tools: Tools, tmp_path: Path) -> None:
    env = tools.env
    gate = tmp_path / "gate"
    _daily(env, cmd=f"while [ ! -e {gate} ]; do sleep 0.05; done")
    (pk,) = env.trigger("daily", ["2024-01-05"])
    sched = env.scheduler()
    sched.start()
    try:
        while env.tis(pk)["a"].state != "running":
            sched.tick()
        before = {t: (ti.state, ti.try_number) for t, ti in env.tis(pk).items()}
        out = tools.cli("runs", "clear", "daily", "--run", str(pk), "--tasks", "a")
        assert {t: (ti.state, ti.try_number) for t, ti in env.tis(pk).items()} == before
        assert _numbers(out, "task instances", "runs") == {"task instances": 0, "runs": 0}
        assert "a of " in out and "is running and was left as it is" in out
        gate.touch()
        env.drive(env.runs_done([pk]), scheduler=sched)
    finally:
        gate.touch()
        sched.stop()
    _check_durations(tools, pk)


def test_a_retried_task_ran_from_its_first_try_to_its_end(tools: Tools, tmp_path: Path) -> None:
    env = tools.env
    flag = tmp_path / "failed-once"
    env.write(
        "daily",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("daily", schedule="@daily", start_date="2024-01-01",
                      defaults={{"retries": 1, "retry_delay": 1}}):
            Shell("t", "[ -e {flag} ] || {{ touch {flag}; exit 1; }}")
    """,
    )
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    first, _ = env.tries(pk)
    ti = env.tis(pk)["t"]
    assert (ti.state, ti.try_number) == ("success", 2)
    took = _seconds(first.started_at, ti.ended_at)
    assert took is not None and took >= 1.0  # the retry delay is part of it
    assert _ti_took(env, pk) == {"t": took}
    _check_durations(tools, pk)
    detail = tools.get(f"/pipelines/daily/runs/{pk}")
    assert detail["task_instances"][0]["started_at"].startswith(
        first.started_at.replace(tzinfo=None).isoformat()[:19]
    )


# -- backfills ------------------------------------------------------------------------------
def _all_runs(env: Env) -> list[int]:
    with env.db.read() as conn:
        return [r.id for r in store_runs.list_runs(conn, limit=10_000)]


def _backfill_cli(tools: Tools, start: str, end: str, *args: str) -> int:
    out = tools.cli("backfill", "daily", "--start", start, "--end", end, *args)
    found = re.search(r"Backfill (\d+) of daily", out)
    assert found, out
    return int(found.group(1))


def test_a_backfill_summary_and_the_backfill_list_count_its_runs(tools: Tools) -> None:
    env = tools.env
    _daily(env)
    first = _backfill_cli(tools, "2024-01-01", "2024-01-02")
    env.drive(env.runs_done(_all_runs(env)))
    _check_backfill_counts(tools, first, total=2, done=2, failed=0)
    tools.cli("runs", "mark", "daily", "--run", "2024-01-02", "--state", "failed")
    _check_backfill_counts(tools, first, total=2, done=2, failed=1)

    out = tools.cli("backfill", "daily", "--start", "2024-01-01", "--end", "2024-01-04")
    second = int(re.search(r"Backfill (\d+) of daily", out).group(1))  # type: ignore[union-attr]
    with env.db.read() as conn:
        row = conn.execute(select(backfills).where(backfills.c.id == second)).one()
        mine = [r for r in store_runs.list_runs(conn, limit=100) if r.backfill_id == second]
    summary = _numbers(out, "runs created", "reset", "skipped")
    assert (
        summary
        == {
            "runs created": sum(1 for r in mine if r.attempt == 1),
            "reset": sum(1 for r in mine if r.attempt > 1),
            "skipped": 4 - len(mine),
        }
        == {"runs created": 2, "reset": 1, "skipped": 1}
    )
    assert row.planned == {
        "create": summary["runs created"],
        "reset": summary["reset"],
        "skip": summary["skipped"],
    }
    _check_backfill_counts(tools, second, total=3, done=0, failed=0)
    env.drive(env.runs_done([r.id for r in mine]))
    _check_backfill_counts(tools, second, total=3, done=3, failed=0)


def _check_backfill_counts(
    tools: Tools, backfill_id: int, *, total: int, done: int, failed: int
) -> None:
    """`backfill list` and the API count the backfill's runs as its rows say (and as the
    test expects)."""
    with tools.env.db.read() as conn:
        states = [
            r[0]
            for r in conn.execute(select(runs.c.state).where(runs.c.backfill_id == backfill_id))
        ]
    held = (
        sum(1 for st in states if st not in ("queued", "running")),
        len(states),
        sum(1 for st in states if st in ("failed", "cancelled")),
    )
    assert held == (done, total, failed)
    columns = ("id", "pipeline", "range", "reprocess", "state", "done", "failed", "created")
    (row,) = [
        r for r in _table(tools.cli("backfill", "list"), *columns) if r["id"] == str(backfill_id)
    ]
    (served,) = [b for b in tools.get("/backfills")["backfills"] if b["id"] == backfill_id]
    assert (row["done"], row["failed"]) == (f"{done}/{total}", str(failed))
    assert (served["done"], served["total"], served["failed"]) == held
    shown = tools.cli("backfill", "show", str(backfill_id))
    assert f"{done}/{total} done" in shown
