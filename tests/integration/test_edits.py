"""Editing a pipeline file while it has runs (core.edits): one owner of the current
version, tasks that come back, removed tasks stopped before anything replaces them, and
params added since a run was created."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reflow.core.errors import Conflict
from reflow.core.states import FailureReason, RunState, TIState
from reflow.scheduler import Scheduler
from reflow.services import history as history_service
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import pipelines as store_pipelines

from .conftest import Env, wait_until

SOURCE = """
    from reflow import Pipeline, Shell
    with Pipeline("edited", schedule="@daily", start_date="2024-01-01", params={params}):
        {tasks}
"""


def _write(env: Env, tasks: str, params: str = "{}", later_by: int = 0) -> Path:
    path = env.write("edited", SOURCE.format(tasks=tasks, params=params))
    if later_by:
        # Make the edit unmistakably newer than the file before it (coarse file clocks).
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + later_by * 10**9))
    return path


@contextmanager
def _running(sched: Scheduler) -> Iterator[Scheduler]:
    """``sched`` ticking in a thread while the test edits files and waits."""
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop,), kwargs={"idle_wait": 0.05})
    thread.start()
    try:
        yield sched
    finally:
        stop.set()
        thread.join(timeout=60)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_versions_only_move_forward(env: Env) -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)

    def sync(version: str, stamp: int) -> store_pipelines.Synced:
        found = {"p": (version, "p.py", {"tasks": {}}, stamp)}
        return env.db.write(lambda c: store_pipelines.sync_pipelines(c, found, {}, t))

    assert sync("v1", 10).changed == ["p"]
    assert sync("v2", 20).changed == ["p"]
    # A process that read the file before the edit syncs after it: nothing moves back.
    late = sync("v1", 10)
    assert late.changed == [] and late.stale == {"p": "v2"}
    # The old content written again is a new edit: forward, to a new generation.
    assert sync("v1", 30).changed == ["p"]
    with env.db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["p"])
    assert (row.version, row.generation, row.source_stamp) == ("v1", 3, 30)


def test_a_task_added_just_before_a_trigger_runs(env: Env, tmp_path: Path) -> None:
    """The scheduler still holds the version before the edit when the command records
    the new one and triggers: the run keeps the new task (it used to be ``removed`` and the
    run ended ``success`` without it)."""
    out = tmp_path / "out.txt"
    _write(env, f'Shell("a", "echo a >> {out}")')
    sched = env.scheduler()
    # This scheduler does not re-read the files on its own.
    sched.settings = env.settings.model_copy(update={"parse_interval": 3600.0})
    sched.start()
    _write(env, f'Shell("a", "echo a >> {out}") >> Shell("c", "echo c >> {out}")', later_by=1)
    (run_pk,) = env.trigger("edited", ["2024-01-01"])
    env.drive(env.runs_done([run_pk]), scheduler=sched)
    tis = env.tis(run_pk)
    assert {t: ti.state for t, ti in tis.items()} == {"a": TIState.SUCCESS, "c": TIState.SUCCESS}
    assert sorted(_lines(out)) == ["a", "c"]


def test_a_removed_task_that_comes_back_runs(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    gate = tmp_path / "gate"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    both = f'Shell("a", "{wait}; echo a >> {out}") >> Shell("b", "echo b >> {out}")'
    _write(env, both)
    (run_pk,) = env.trigger("edited", ["2024-01-01"])
    with _running(env.scheduler()):
        wait_until(lambda: env.tis(run_pk)["a"].state == TIState.RUNNING, 60)
        _write(env, f'Shell("a", "{wait}; echo a >> {out}")', later_by=1)
        wait_until(lambda: env.tis(run_pk)["b"].state == TIState.REMOVED, 60)
        _write(env, both, later_by=2)
        wait_until(lambda: env.tis(run_pk)["b"].state == TIState.PENDING, 60)
        gate.touch()
        wait_until(env.runs_done([run_pk]), 60)
    assert env.run(run_pk).state == RunState.SUCCESS
    assert env.tis(run_pk)["b"].state == TIState.SUCCESS
    assert _lines(out) == ["a", "b"]


def test_a_renamed_task_starts_only_after_the_old_one_was_stopped(env: Env, tmp_path: Path) -> None:
    """Renaming a task while its try runs: the old try is stopped (reason task_removed),
    its instance becomes ``removed``, and the new name starts only once it has ended, so
    the same work never runs twice at once."""
    out = tmp_path / "out.txt"
    gate = tmp_path / "gate"

    def task(name: str) -> str:
        mark = f"echo {{}} {name} $(date +%s.%N) >> {out}"
        return (
            f'Shell("{name}", "trap \'{mark.format("end")}; exit 143\' TERM; '
            f'{mark.format("start")}; while [ ! -e {gate} ]; do sleep 0.05; done")'
        )

    _write(env, task("load"))
    (run_pk,) = env.trigger("edited", ["2024-01-01"])
    with _running(env.scheduler()):
        wait_until(lambda: "load" in _lines(out), 60)
        _write(env, task("load_v2"), later_by=1)
        wait_until(lambda: "load_v2" in _lines(out), 60)
        gate.touch()
        wait_until(env.runs_done([run_pk]), 60)
    tis = env.tis(run_pk)
    assert tis["load"].state == TIState.REMOVED
    assert tis["load"].failure_reason == FailureReason.TASK_REMOVED
    assert tis["load_v2"].state == TIState.SUCCESS
    old_try = next(t for t in env.tries(run_pk) if t.ti == tis["load"].id)
    assert old_try.failure_reason == FailureReason.TASK_REMOVED
    marks = {
        f"{kind} {name}": float(at)
        for kind, name, at in (line.split() for line in out.read_text().splitlines())
    }
    assert marks["end load"] <= marks["start load_v2"], marks
    assert env.run(run_pk).state == RunState.SUCCESS
    # `runs show` says what happened, from the run's history.
    detail = run_service.run_detail(env.project, env.run(run_pk))
    said = [(e.task_id, e.old, e.new, e.detail) for e in detail.history]
    version = env.run(run_pk).version
    assert ("load_v2", None, "pending", f"task added to the pipeline (version {version})") in said
    assert (
        "load",
        "running",
        "removed",
        "task removed from the pipeline; its try has ended",
    ) in said


def test_a_param_added_later_renders_its_default_for_older_runs(env: Env, tmp_path: Path) -> None:
    """A run's conf is frozen when it is created; a task added with a new param renders
    that param's default, in the running run and when an older run is cleared."""
    out = tmp_path / "out.txt"
    _write(env, f'Shell("a", "echo n={{{{ params.n }}}} >> {out}")', params='{"n": 1}')
    (done_pk,) = env.trigger("edited", ["2024-01-01"], {"n": 5})
    env.drive(env.runs_done([done_pk]))
    _write(
        env,
        f'Shell("a", "echo n={{{{ params.n }}}} >> {out}") >> '
        f'Shell("b", "echo region={{{{ params.region }}}} >> {out}")',
        params='{"n": 1, "region": "eu"}',
        later_by=1,
    )
    cleared = history_service.clear(env.project, "edited", run=str(done_pk))
    assert cleared.runs == 1
    env.drive(env.runs_done([done_pk]))
    assert env.run(done_pk).state == RunState.SUCCESS
    assert _lines(out) == ["n=5", "n=5", "region=eu"]


def test_a_conf_that_no_longer_validates_fails_the_try_with_one_clear_line(
    env: Env, tmp_path: Path
) -> None:
    _write(env, 'Shell("a", "echo {{ params.n }}")', params='{"n": 1}')
    (run_pk,) = env.trigger("edited", ["2024-01-01"], {"n": 5})
    env.drive(env.runs_done([run_pk]))
    _write(env, 'Shell("a", "echo {{ params.n }}")', params='{"n": "one"}', later_by=1)
    history_service.clear(env.project, "edited", run=str(run_pk))
    env.drive(env.runs_done([run_pk]))
    assert env.tis(run_pk)["a"].state == TIState.FAILED
    last = env.tries(run_pk)[-1]
    text = Path(last.log_path).read_text()
    assert "the run's conf no longer matches the pipeline's params: param 'n'" in text
    assert "Traceback" not in text


def test_a_process_with_an_older_copy_refuses_to_trigger(env: Env) -> None:
    _write(env, 'Shell("a", "true")')
    old = Project(env.settings, env.db)
    assert old.catalog.pipelines["edited"]  # read (and synced) before the edit
    _write(env, 'Shell("a", "true") >> Shell("b", "true")', later_by=1)
    assert env.project.catalog.pipelines["edited"]  # a newer process records the edit
    stale = Project(env.settings, env.db)
    stale._catalog = old.catalog  # the older process, syncing its copy again
    from reflow.core.naming import utcnow
    from reflow.scheduler.catalog import sync_catalog

    stale.stale = sync_catalog(env.db, old.catalog, utcnow()).stale
    with pytest.raises(Conflict, match="older than its current version"):
        stale.pipeline("edited")
    with env.db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["edited"])
    assert set(row.structure["tasks"]) == {"a", "b"}
