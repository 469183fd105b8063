"""Run history managed without SQL: clear, mark, delete, pipeline deletion, clean-up, and
pipeline edits while runs have history or are running."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

from reflow.core.errors import Conflict, InvalidInput, NotFound
from reflow.core.states import RunState, TIState
from reflow.services import history as history_service
from reflow.services import runs as run_service
from reflow.store import history
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store.models import events, pipelines, runs, tries

from .conftest import Env, wait_until
from .test_backfill import DAILY, _backfill, _count, _daily, _finish, _run_pks


def _touch(path: Path) -> None:
    """Make an edit visible to the catalog even within the same clock tick."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_clear_only_failed_with_downstream_reruns_them_in_a_new_attempt(env: Env) -> None:
    _daily(env)
    backfill_id = _backfill(env, "2024-01-01", "2024-01-02", conf={"fail": True})
    _finish(env, backfill_id)
    # fix the cause, then clear what failed
    path = env.write(
        "daily", DAILY.format(limit=4, cmd="true").replace("[ {{ params.fail }} = false ]", "true")
    )
    _touch(path)
    result = history_service.clear(
        env.project,
        "daily",
        start="2024-01-01",
        end="2024-01-02",
        only_failed=True,
        downstream=True,
    )
    assert (result.runs, result.task_instances) == (2, 4)  # b and c of each run
    pks = _run_pks(env, backfill_id)
    assert {env.run(pk).state for pk in pks} == {RunState.QUEUED}
    env.drive(env.runs_done(pks))
    for pk in pks:
        run = env.run(pk)
        tis = env.tis(pk)
        assert (run.state, run.attempt) == (RunState.SUCCESS, 2)
        assert {t: tis[t].try_number for t in "abc"} == {"a": 1, "b": 2, "c": 1}


def test_clear_one_task_of_one_run(env: Env) -> None:
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    result = history_service.clear(env.project, "daily", run=str(pk), tasks=["c"])
    assert (result.runs, result.task_instances) == (1, 1)
    env.drive(env.runs_done([pk]))
    assert [t.task_id for t in env.tries(pk)] == ["a", "b", "c", "c"]


def test_clear_needs_a_run_or_a_range(env: Env) -> None:
    _daily(env)
    with pytest.raises(InvalidInput, match="give --run ID, or --start D and --end D"):
        history_service.clear(env.project, "daily")
    with pytest.raises(InvalidInput, match="no task 'x'"):
        history_service.clear(
            env.project, "daily", start="2024-01-01", end="2024-01-02", tasks=["x"]
        )


@pytest.mark.slow
def test_mark_stops_running_tries_and_sets_the_states(env: Env, tmp_path: Path) -> None:
    _daily(env, cmd="sleep 300")
    (pk,) = env.trigger("daily", ["2024-01-05"])
    sched = env.scheduler()
    sched.start()
    while not any(t.state == "running" for t in env.tries(pk)):
        sched.tick()
    sched.stop()
    row = history_service.mark(env.project, "daily", str(pk), "success", wait=15)
    assert row.state == RunState.SUCCESS
    assert {ti.state for ti in env.tis(pk).values()} == {TIState.SUCCESS}
    (attempt,) = env.tries(pk)
    assert (attempt.state, attempt.failure_reason) == ("failed", "killed")
    row = history_service.mark(env.project, "daily", str(pk), "failed")
    assert row.state == RunState.FAILED
    with pytest.raises(InvalidInput, match="success or failed"):
        history_service.mark(env.project, "daily", str(pk), "running")


def test_marking_failed_says_killed_only_of_what_was_running(env: Env) -> None:
    env.write(
        "two",
        """
        from reflow import Pipeline, Shell
        with Pipeline("two", schedule="@daily", start_date="2024-01-01"):
            Shell("a", "sleep 300") >> Shell("b", "true")
        """,
    )
    (pk,) = env.trigger("two", ["2024-01-05"])
    sched = env.scheduler()
    sched.start()
    while not any(t.state == "running" for t in env.tries(pk)):
        sched.tick()
    sched.stop()
    history_service.mark(env.project, "two", str(pk), "failed", wait=15)
    tis = env.tis(pk)
    assert (tis["a"].state, tis["a"].failure_reason) == ("failed", "killed")
    assert (tis["b"].state, tis["b"].failure_reason) == ("failed", None)  # it never ran


def test_delete_removes_runs_tries_and_logs_and_refuses_active_runs(env: Env) -> None:
    _daily(env)
    done = env.trigger("daily", ["2024-01-01"])
    env.drive(env.runs_done(done))
    logs = [Path(t.log_path) for t in env.tries(done[0])]
    assert all(p.exists() for p in logs)
    queued = env.trigger("daily", ["2024-01-02"])
    with pytest.raises(Conflict, match="use --force"):
        history_service.delete(env.project, "daily", start="2024-01-01", end="2024-01-02")
    assert _count(env, runs) == 2  # nothing was deleted
    deleted = history_service.delete(
        env.project, "daily", start="2024-01-01", end="2024-01-02", force=True
    )
    assert (deleted.runs, deleted.task_instances, deleted.tries, deleted.logs) == (2, 6, 3, 3)
    assert not any(p.exists() for p in logs)
    with env.db.read() as conn:
        left = conn.execute(
            select(func.count()).select_from(events).where(events.c.run.in_(done + queued))
        ).scalar_one()
    assert left == 0
    assert _count(env, tries) == 0


def test_a_deleted_runs_number_is_never_given_to_another_run(env: Env) -> None:
    _daily(env)
    _, newest = env.trigger("daily", ["2024-01-01", "2024-01-02"])
    history_service.delete(env.project, "daily", run=str(newest), force=True)
    (later,) = env.trigger("daily", ["2024-01-03"])
    assert later > newest
    # The number someone wrote down names no run now, never another one.
    with pytest.raises(NotFound, match=f"no run '{newest}'"):
        run_service.find_run(env.project, str(newest))


def test_deleting_a_pipeline_keeps_history_until_purged(env: Env) -> None:
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-01"])
    env.drive(env.runs_done([pk]))
    with pytest.raises(Conflict, match="remove the file first"):
        history_service.delete_pipeline(env.project, "daily")
    path = env.settings.pipelines_path / "daily.py"
    source = path.read_text()
    path.unlink()
    project = env.project  # a fresh catalog: the file is gone
    history_service.delete_pipeline(project, "daily")
    with env.db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["daily"])
    assert not row.active and _count(env, runs) == 1
    # the file comes back: the pipeline and its history are there again
    path.write_text(source)
    assert "daily" in env.project.catalog.pipelines
    with env.db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["daily"])
    assert row.active and env.run(pk).state == RunState.SUCCESS
    path.unlink()
    counts = history_service.delete_pipeline(env.project, "daily", purge=True)
    assert (counts["runs"], counts["tries"]) == (1, 3)
    assert _count(env, runs) == 0 and _count(env, pipelines) == 0


def test_db_clean_purges_finished_history_before_a_date(env: Env) -> None:
    _daily(env)
    old = env.trigger("daily", ["2024-01-01", "2024-01-02"])
    recent = env.trigger("daily", ["2024-03-01"])
    env.drive(env.runs_done(old + recent))
    counted = history_service.clean(env.project, "2024-02-01", dry_run=True)
    assert (counted["runs"], counted["task_instances"], counted["tries"]) == (2, 6, 6)
    assert _count(env, runs) == 3
    counts = history_service.clean(env.project, "2024-02-01")
    assert (counts["runs"], counts["tries"], counts["logs"]) == (2, 6, 6)
    with env.db.read() as conn:
        assert [r.id for r in store_runs.list_runs(conn)] == recent


# -- pipeline edits -------------------------------------------------------------------------
EDITABLE = """
from reflow import Pipeline, Shell, Param
with Pipeline("edit", schedule="@daily", start_date="2024-01-01", max_active_runs=4,
              params={params}):
{tasks}
"""


def _edit(env: Env, tasks: str, params: str = '{"n": 1}') -> None:
    path = env.write("edit", EDITABLE.format(tasks=tasks, params=params))
    _touch(path)


A_B = '    a = Shell("a", "true")\n    b = Shell("b", "{b}")\n    a >> b\n'


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # adding a task: running runs get it
        (
            A_B.format(b="true") + '    c = Shell("c", "true")\n    b >> c\n',
            {"a": "success", "b": "success", "c": "success"},
        ),
        # removing a task: its unfinished instances are removed
        ('    a = Shell("a", "true")\n', {"a": "success", "b": "removed"}),
        # renaming a task: the old name is removed, the new one runs
        (
            '    a = Shell("a", "true")\n    b2 = Shell("b2", "true")\n    a >> b2\n',
            {"a": "success", "b": "removed", "b2": "success"},
        ),
    ],
    ids=["add", "remove", "rename"],
)
def test_editing_a_pipeline_while_a_run_is_running(
    env: Env, tmp_path: Path, after: str, expected: dict[str, str]
) -> None:
    gate = tmp_path / "gate"
    _edit(env, A_B.format(b=f"while [ ! -e {gate} ]; do sleep 0.05; done"))
    (pk,) = env.trigger("edit", ["2024-01-01"])
    sched = env.scheduler()
    sched.start()
    while not any(t.state == "running" for t in env.tries(pk) if t.task_id == "b"):
        sched.tick()
    _edit(env, after)
    sched.refresh_pipelines(datetime.now(UTC))  # the scheduler sees the edit while b runs
    sched.tick()
    gate.touch()
    env.drive(env.runs_done([pk]), scheduler=sched)
    tis = env.tis(pk)
    assert {t: ti.state for t, ti in tis.items()} == expected
    assert env.run(pk).state == RunState.SUCCESS
    assert env.run(pk).version == sched.catalog.pipelines["edit"].version


def test_history_survives_edits_and_reprocessing_uses_the_new_structure(env: Env) -> None:
    _edit(env, A_B.format(b="true"))
    (pk,) = env.trigger("edit", ["2024-01-01"])
    env.drive(env.runs_done([pk]))
    old_version = env.run(pk).version
    # rename b, add a param: the finished run's history is untouched
    _edit(
        env,
        '    a = Shell("a", "true")\n    c = Shell("c", "true")\n    a >> c\n',
        params='{"n": 1, "m": 2}',
    )
    project = env.project
    assert env.run(pk).version == old_version
    assert {t: ti.state for t, ti in env.tis(pk).items()} == {"a": "success", "b": "success"}
    result = history_service.clear(project, "edit", run=str(pk))
    assert result.runs == 1
    env.drive(env.runs_done([pk]))
    run = env.run(pk)
    assert run.version != old_version and run.state == RunState.SUCCESS
    assert {t: ti.state for t, ti in env.tis(pk).items()} == {
        "a": "success",
        "b": "removed",
        "c": "success",
    }
    with env.db.read() as conn:
        versions = {a.version for a in store_runs.attempts_of(conn, pk)}
    assert versions == {old_version, run.version}


def test_a_cleared_task_instance_gets_its_retries_again(env: Env, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    env.write(
        "retry",
        f"""
        from reflow import Pipeline, Shell
        with Pipeline("retry", schedule="@daily", start_date="2024-01-01",
                      defaults={{"retries": 1, "retry_delay": 0}}):
            Shell("t", "[ -e {flag} ] || {{ echo try >> {tmp_path}/count; exit 1; }}")
    """,
    )
    (pk,) = env.trigger("retry", ["2024-01-01"])
    env.drive(env.runs_done([pk]))
    assert env.tis(pk)["t"].try_number == 2  # one try and its retry
    history_service.clear(env.project, "retry", run=str(pk))
    env.drive(env.runs_done([pk]))
    assert env.tis(pk)["t"].try_number == 4  # again one try and one retry
    assert env.run(pk).state == RunState.FAILED


# -- races: what was read may change before it is written -----------------------------------
def _in_another_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` to completion in another thread (its own connection and transaction)
    while the caller holds what it read; return its result or raise its error."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = work()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the other command is blocked"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _skip_on_sqlite(env: Env) -> None:
    if env.db.is_sqlite:
        pytest.skip("SQLite lets one writer in at a time: these writes cannot interleave")


@pytest.mark.slow
def test_delete_refuses_a_run_whose_try_started_after_it_was_read(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = tmp_path / "slow"
    _daily(env, cmd=f"if [ -e {slow} ]; then sleep 300; fi")
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    slow.touch()
    sched = env.scheduler()
    read = history_service._runs

    def read_then_restart(*args: Any, **kwargs: Any) -> Any:
        rows = read(*args, **kwargs)  # the run is finished: deleting it looks fine
        monkeypatch.setattr(history_service, "_runs", read)
        history_service.clear(env.project, "daily", run=str(pk))
        sched.start()

        def started() -> bool:
            sched.tick()
            return any(t.state == "running" for t in env.tries(pk))

        wait_until(started, timeout=30)
        return rows

    monkeypatch.setattr(history_service, "_runs", read_then_restart)
    try:
        with pytest.raises(Conflict, match="nothing was deleted"):
            history_service.delete(env.project, "daily", run=str(pk))
        monkeypatch.undo()
        (live,) = [t for t in env.tries(pk) if t.state == "running"]
        assert Path(live.log_path).exists() and env.run(pk).state == RunState.RUNNING
    finally:
        monkeypatch.undo()
        sched.stop()
        deleted = history_service.delete(env.project, "daily", run=str(pk), force=True, wait=30)
    assert deleted.runs == 1
    assert not psutil.pid_exists(live.pid) or psutil.Process(live.pid).status() == "zombie"


def test_two_clears_of_one_finished_run_at_once_start_one_new_attempt(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_on_sqlite(env)
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    reset = history.reset_run
    other: list[history_service.Cleared] = []

    def race(*args: Any, **kwargs: Any) -> Any:
        if not other:  # the other clear reads, writes and commits first
            other.append(history_service.Cleared())
            other[0] = _in_another_thread(
                lambda: history_service.clear(env.project, "daily", run=str(pk))
            )
        return reset(*args, **kwargs)

    monkeypatch.setattr(history, "reset_run", race)
    late = history_service.clear(env.project, "daily", run=str(pk))
    assert (other[0].runs, other[0].task_instances) == (1, 3)
    assert (late.runs, late.task_instances) == (0, 0)  # its work was done: a no-op
    with env.db.read() as conn:
        assert [a.attempt for a in store_runs.attempts_of(conn, pk)] == [1, 2]
    env.drive(env.runs_done([pk]))
    assert (env.run(pk).state, env.run(pk).attempt) == (RunState.SUCCESS, 2)


def test_a_mark_racing_a_clear_marks_the_run_as_it_is_now(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_on_sqlite(env)
    _daily(env)
    (pk,) = env.trigger("daily", ["2024-01-05"])
    env.drive(env.runs_done([pk]))
    mark = history.mark_run
    cleared: list[bool] = []

    def race(*args: Any, **kwargs: Any) -> Any:
        if not cleared:  # a clear starts attempt 2 after the mark read the run
            cleared.append(True)
            _in_another_thread(lambda: history_service.clear(env.project, "daily", run=str(pk)))
        return mark(*args, **kwargs)

    monkeypatch.setattr(history, "mark_run", race)
    history_service.mark(env.project, "daily", str(pk), "failed")
    run = env.run(pk)
    with env.db.read() as conn:
        attempts = [(a.attempt, a.state) for a in store_runs.attempts_of(conn, pk)]
    # Attempt 1 keeps its outcome; the mark applies to attempt 2, the run's current one.
    assert attempts == [(1, "success"), (2, "failed")]
    assert (run.state, run.attempt) == (RunState.FAILED, 2)
    assert {ti.state for ti in env.tis(pk).values()} == {TIState.FAILED}
