"""Chaos trials: schedulers paused and killed while they share a database, a database
server restarted under a backfill, a killed ``backfill --wait``, and a new database used
by several commands at once. After each, the invariants of :mod:`.invariants` hold."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, create_engine, text

from reflow.store.db import Database

from ..pgserver import PrivatePostgres
from ..pgserver import private_postgres as private_postgres
from .conftest import SCHEDULER_TIMEOUT, Databases, Installation, schema_is_complete, wait_for
from .invariants import Expect, check_invariants, evidence_step, read_evidence, summary

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

# Six daily runs, three at a time, whose tasks last long enough to be caught running.
SHARED = """\
from reflow import Pipeline, Shell

with Pipeline("shared", schedule="@daily", start_date="2024-01-01", end_date="2024-01-06",
              catchup=True, max_active_runs=3,
              defaults={{"retries": 1, "retry_delay": 0}}):
    Shell("a", {a!r}) >> Shell("b", {b!r})
"""
SHARED_RUNS = {"shared": Expect(tasks=("a", "b"), runs=6, max_active_runs=3)}

# Backfilled dates; a scheduler daemon also creates the run of the latest date (2024-01-05).
ETL = """\
from reflow import Pipeline, Shell

with Pipeline("etl", schedule="@daily", start_date="2024-01-01", end_date="2024-01-05",
              max_active_runs=2, defaults={{"retries": 1, "retry_delay": 0}}):
    Shell("extract", {a!r}) >> Shell("load", {b!r})
"""
BACKFILL = ("backfill", "etl", "--start", "2024-01-01", "--end", "2024-01-04")


def _etl(inst: Installation, seconds: float = 0.5) -> None:
    step = evidence_step(inst.evidence, seconds)
    inst.write_pipeline("etl", ETL.format(a=step, b=step))


def _etl_runs(runs: int) -> dict[str, Expect]:
    return {"etl": Expect(tasks=("extract", "load"), runs=runs, max_active_runs=2)}


def _clean_exit(inst: Installation, proc: subprocess.Popen[bytes], what: str) -> None:
    """``proc`` is still running, stops cleanly on SIGTERM and never printed a traceback."""
    assert proc.poll() is None, f"{what} died (exit {proc.returncode})\n{inst.output(proc)}"
    code = inst.stop(proc)
    assert code == 0, f"{what} exited {code} on SIGTERM\n{inst.output(proc)}"
    assert "Traceback" not in inst.output(proc), f"{what}:\n{inst.output(proc)}"


@contextmanager
def _watching(db_url: str) -> Iterator[Connection]:
    """One autocommit connection to poll the store quickly."""
    engine = create_engine(Database(db_url).url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


_LIVE_TRIES_BY_OWNER = text(
    "SELECT s.pid, s.id, t.id, t.state FROM tries t JOIN schedulers s ON s.id = t.owner "
    "WHERE t.ended_at IS NULL AND s.stopped_at IS NULL ORDER BY t.state"
)


def _pause_one_holding_tries(
    inst: Installation, procs: list[subprocess.Popen[bytes]], timeout: float = 60
) -> tuple[subprocess.Popen[bytes], int, dict[int, str]]:
    """SIGSTOP one of ``procs`` while it owns live tries, preferably one it queued but has
    not recorded as started (the window in which a paused scheduler may later start a try
    that is no longer its own). Returns (process, its scheduler id, {try id: state} of the
    live tries it held)."""
    by_pid = {p.pid: p for p in procs}
    start = time.monotonic()
    with _watching(inst.db_url) as conn:
        while time.monotonic() - start < timeout:
            rows = [r for r in conn.execute(_LIVE_TRIES_BY_OWNER).all() if r[0] in by_pid]
            queued = [r for r in rows if r[3] == "queued"]
            # For the first seconds, only a scheduler caught between queueing and starting.
            pick = (
                queued[0]
                if queued
                else (rows[0] if rows and time.monotonic() - start > 8 else None)
            )
            if pick is None:
                time.sleep(0.002)
                continue
            pid, scheduler_id = pick[0], pick[1]
            os.kill(pid, signal.SIGSTOP)
            held: dict[int, str] = dict(
                conn.execute(
                    text("SELECT id, state FROM tries WHERE owner = :o AND ended_at IS NULL"),
                    {"o": scheduler_id},
                ).all()
            )
            if "queued" in held.values() or (held and time.monotonic() - start > 8):
                return by_pid[pid], scheduler_id, held
            os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"no scheduler was seen holding a live try within {timeout} s")


def _sessions(inst: Installation) -> str:
    """What every session of the database is doing (who waits for a lock)."""
    rows = inst.query(
        "SELECT pid, state, wait_event_type, wait_event, left(query, 100) "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return "\n".join(f"  {r}" for r in rows)


def _taken_over(inst: Installation, scheduler_id: int) -> bool:
    """Was the paused scheduler declared dead, and none of the live tries left its own?"""
    (stopped, held) = inst.query(
        "SELECT (SELECT stopped_at IS NOT NULL FROM schedulers WHERE id = "
        f"{scheduler_id}), (SELECT count(*) FROM tries WHERE owner = {scheduler_id} "
        "AND ended_at IS NULL)"
    )[0]
    return bool(stopped) and held == 0


def _kill_one_holding_tries(
    inst: Installation, procs: list[subprocess.Popen[bytes]], timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """SIGKILL one of ``procs`` that owns live tries (any of them if the work ends first)."""
    by_pid = {p.pid: p for p in procs}
    with _watching(inst.db_url) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [r for r in conn.execute(_LIVE_TRIES_BY_OWNER).all() if r[0] in by_pid]
            if rows:
                victim = by_pid[rows[0][0]]
                victim.kill()
                victim.wait()
                return victim, f"holding tries {sorted({r[2] for r in rows if r[0] == victim.pid})}"
            if inst.runs_finished(SHARED_RUNS["shared"].runs):
                break
            time.sleep(0.01)
    victim = procs[0]
    victim.kill()
    victim.wait()
    return victim, "holding no try (the work was over)"


# -- (a) split brain -----------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("count", [2, 3], ids=["2-schedulers", "3-schedulers"])
def test_a_paused_scheduler_never_starts_a_try_it_no_longer_owns(
    count: int, make_installation: Callable[..., Installation]
) -> None:
    inst = make_installation("postgres")
    step = evidence_step(inst.evidence, 1.0)
    inst.write_pipeline("shared", SHARED.format(a=step, b=step))
    # One after the other: several schedulers starting at once on a new database is the
    # first-use trial's subject, not this one's.
    procs: list[subprocess.Popen[bytes]] = []
    for _ in range(count):
        proc = inst.scheduler()
        procs.append(proc)
        wait_for(
            lambda p=proc: p.poll() is not None or inst.registered(p),  # type: ignore[misc]
            timeout=60,
            what="a scheduler to register",
        )
        assert proc.poll() is None, f"a scheduler died at start\n{inst.output(proc)}"

    paused, paused_id, held = _pause_one_holding_tries(inst, procs)
    print(f"paused scheduler {paused_id} (pid {paused.pid}) holding {held}")
    others = [p for p in procs if p is not paused]
    try:
        wait_for(
            lambda: _taken_over(inst, paused_id) or all(p.poll() is not None for p in others),
            timeout=30 + 3 * SCHEDULER_TIMEOUT,
            what="the other schedulers to declare the paused one dead and take its tries",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsessions of the database:\n{_sessions(inst)}") from None
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    for proc in others:
        assert proc.poll() is None, (
            f"scheduler pid {proc.pid} died while another was paused\n{inst.output(proc)}"
        )

    killed, what = _kill_one_holding_tries(inst, others)
    print(f"killed pid {killed.pid} {what}")
    survivors = [p for p in procs if p is not killed]
    wait_for(
        lambda: inst.runs_finished(6) or any(p.poll() is not None for p in survivors),
        timeout=120,
        what="every run to finish",
    )
    for proc in survivors:
        _clean_exit(inst, proc, f"scheduler pid {proc.pid}")
    violations = check_invariants(inst.db_url, inst.evidence, SHARED_RUNS)
    violations += _fenced_tries_never_ran(inst, [t for t, s in held.items() if s == "queued"])
    assert not violations, summary(violations)


def _fenced_tries_never_ran(inst: Installation, try_ids: list[int]) -> list[str]:
    """The tries a scheduler had queued when it was paused, and that were declared lost
    meanwhile, never ran (their retries did)."""
    out = []
    executions = read_evidence(inst.evidence).executions
    for try_id in try_ids:
        ((pipeline, run_id, task, number, state, reason),) = inst.query(
            "SELECT r.pipeline, r.run_id, ti.task_id, t.try_number, t.state, t.failure_reason "
            "FROM tries t JOIN task_instances ti ON ti.id = t.ti JOIN runs r ON r.id = t.run "
            f"WHERE t.id = {try_id}"
        )
        ran = [
            e
            for e in executions
            if (e.pipeline, e.run_id, e.task, e.try_number) == (pipeline, run_id, task, number)
        ]
        print(f"try {try_id} queued when paused: {state} ({reason}), executions {len(ran)}")
        if reason == "lost" and ran:
            out.append(
                f"the paused scheduler started try {number} of {pipeline} {run_id} {task} "
                f"after it was declared lost: {ran[0].describe()}"
            )
    return out


# -- (b) database outage -------------------------------------------------------------------
@pytest.mark.postgres
def test_a_postgresql_restart_during_a_backfill_is_ridden_out(
    private_postgres: PrivatePostgres,
    make_installation: Callable[..., Installation],
) -> None:
    server = private_postgres
    server.start()  # a test that failed midway may have left it stopped
    url = server.create_database(f"reflow_{uuid.uuid4().hex[:8]}")
    inst = make_installation("postgres", db_url=url)
    _etl(inst)
    upgraded = inst.run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    daemon = inst.scheduler()
    wait_for(lambda: inst.registered(daemon), timeout=60, what="the scheduler to register")
    backfill = inst.start(*BACKFILL, "--wait")
    wait_for(
        lambda: any(read_evidence(inst.evidence).executions), timeout=60, what="a task to start"
    )
    down_at = time.time()
    server.stop()
    try:
        # Down until a try ended that nobody could record.
        wait_for(
            lambda: any(
                e.end is not None and e.end > down_at
                for e in read_evidence(inst.evidence).executions
            ),
            timeout=30,
            what="a task to end while the database is down",
        )
    finally:
        server.start()
    print(f"database down for {time.time() - down_at:.1f} s")
    wait_for(lambda: backfill.poll() is not None, timeout=120, what="`backfill --wait` to end")
    assert backfill.returncode == 0, inst.output(backfill)
    assert "Traceback" not in inst.output(backfill), inst.output(backfill)
    wait_for(lambda: inst.runs_finished(5), timeout=60, what="the scheduled run to finish too")
    _clean_exit(inst, daemon, "the scheduler")
    violations = check_invariants(url, inst.evidence, _etl_runs(5))
    assert not violations, summary(violations)


# -- (c) a killed backfill --wait ----------------------------------------------------------
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_killed_backfill_wait_is_finished_by_the_next_one_without_repeats(
    backend: str, make_installation: Callable[..., Installation]
) -> None:
    inst = make_installation(backend)
    _etl(inst)
    first = inst.start(*BACKFILL, "--wait")
    wait_for(
        lambda: (
            first.poll() is not None
            or inst.scalar("SELECT count(*) FROM tries WHERE state = 'running'") > 0
        ),
        timeout=60,
        what="`backfill --wait` to run a try",
    )
    assert first.poll() is None, inst.output(first)
    first.kill()
    first.wait()

    shown = inst.run("backfill", "show", "1")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    again = inst.run(*BACKFILL, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stderr, again.stderr
    states = inst.query("SELECT run_id, state FROM runs ORDER BY id")
    assert inst.runs_finished(4), f"`backfill --wait` returned with runs unfinished: {states}"
    shown = inst.run("backfill", "show", "1")
    assert "4/4 done" in shown.stdout, shown.stdout
    violations = check_invariants(inst.db_url, inst.evidence, _etl_runs(4))
    assert not violations, summary(violations)


# -- (d) first use, concurrently -----------------------------------------------------------
FIRST_USE: list[tuple[str, ...]] = [
    ("pipelines", "list"),
    ("db", "upgrade"),
    ("trigger", "etl", "--date", "2024-01-01"),
    ("runs", "list"),
    ("backfill", "etl", "--start", "2024-01-02", "--end", "2024-01-03"),
    ("pipelines", "show", "etl"),
]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_commands_using_a_new_database_at_once_all_work_and_create_the_schema_once(
    backend: str, databases: Databases, make_installation: Callable[..., Installation]
) -> None:
    inst = make_installation(backend, db_url=databases.new(backend, migrated=False))
    _etl(inst, seconds=0.1)
    daemon = inst.scheduler()
    procs = [inst.start(*args) for args in FIRST_USE]
    results: list[tuple[tuple[str, ...], int, str]] = []
    for args, proc in zip(FIRST_USE, procs, strict=True):
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = -1
        results.append((args, code, inst.output(proc)))
    failed = [r for r in results if r[1] != 0 or "Traceback" in r[2]]
    assert not failed, "\n".join(f"reflow {' '.join(a)} -> {c}\n{o}" for a, c, o in failed)
    # manual 2024-01-01, backfill 2024-01-02 and 03, the scheduled run of 2024-01-05
    wait_for(
        lambda: daemon.poll() is not None or inst.runs_finished(4),
        timeout=60,
        what="the scheduler to run every run",
    )
    _clean_exit(inst, daemon, "the scheduler")
    assert schema_is_complete(inst.db_url) == []
    violations = check_invariants(inst.db_url, inst.evidence, _etl_runs(4))
    assert not violations, summary(violations)
