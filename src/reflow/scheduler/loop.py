"""The scheduler: one loop that turns due intervals into runs and runs into tries.

Each tick: collect finished tries, re-read changed pipeline files, create due scheduled
runs, enforce deadlines, admit queued runs under ``max_active_runs``, schedule task
instances whose upstreams are done, and hand them to the launcher under
``max_active_tasks`` and ``parallelism``. The scheduler decides; the store executes.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from reflow.core.config import Settings
from reflow.core.discovery import Catalog
from reflow.core.errors import Conflict, LeaseLost, StoreUnavailable
from reflow.core.faults import crash_point
from reflow.core.naming import Clock, utcnow
from reflow.core.notify import Event
from reflow.core.pipeline import Pipeline
from reflow.core.spec import Outcome, TryRef
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.notify.messages import check_templates
from reflow.notify.notifier import Notifier
from reflow.scheduler import deadlines, launching, settling, shipping, slots, trylog
from reflow.scheduler import outcomes as try_outcomes
from reflow.scheduler.admission import admissible
from reflow.scheduler.catalog import sync_catalog
from reflow.scheduler.due import create_due
from reflow.scheduler.lateness import Lateness
from reflow.scheduler.metrics import SchedulerMetrics
from reflow.scheduler.peers import covers, exited
from reflow.scheduler.readiness import Decision, Shape, decide
from reflow.scheduler.reading import FolderReader
from reflow.store import history, outbox, pauses, pools, scheduling
from reflow.store import logs as store_logs
from reflow.store import pipelines as store_pipelines
from reflow.store import runs as store_runs
from reflow.store import schedulers as store_schedulers
from reflow.store import tries as store_tries
from reflow.store.db import Database
from reflow.store.records import (
    CancelRequest,
    QueuedRun,
    Run,
    SchedulerRecord,
    TaskInstance,
    Try,
)

log = logging.getLogger("reflow.scheduler")

T = TypeVar("T")
# Pipelines whose due runs one transaction creates: a midnight with many pipelines is a
# few transactions, each short enough not to hold the write lock long.
_DUE_PER_TRANSACTION = 100
# Running runs one transaction of the scheduler acts on: a tick after many outcomes is a
# few short transactions, not one that holds the write lock long.
_RUNS_PER_TRANSACTION = 50
# How often an idle scheduler looks whether another process committed: SQLite's look is a
# pragma, PostgreSQL's a round trip to the server.
_NOTICE_STEP = {"sqlite": 0.02, "postgresql": 0.05}
# Queued runs one transaction admits at most.
_ADMITTED_PER_TRANSACTION = 100
# How long a stop waits for a database that does not answer (the others declare this
# scheduler dead after its silence and adopt its tries).
_STOP_PATIENCE = 5.0
# Every pipeline, for a rescan.
_ALL: frozenset[str] = frozenset({"*"})


class Scheduler:
    """Drives runs to completion. One instance per process; every method runs on its thread.

    ``only`` restricts the pipelines it works on and ``runs`` the runs it admits and
    schedules (``trigger --wait`` runs one in-process for its own runs; it still adopts
    and records the orphaned tries of its pipelines). ``create_scheduled_runs=False``
    stops it from creating runs for due intervals and from checking deadlines per date.
    ``relaunch`` makes a fresh launcher for a scheduler that lost its lease and registers
    again; without it, a lost lease ends :meth:`run` with LeaseLost.

    Fencing: every transaction that starts, adopts or records anything first checks that
    this scheduler still holds its lease (``store.schedulers.hold_lease``). One that was
    paused past ``scheduler_timeout`` and declared dead by another finds out there, stops
    watching the tries it had (they are the other's now) and registers again.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        launcher: Launcher,
        *,
        catalog: Catalog | None = None,
        only: Iterable[str] | None = None,
        runs: Iterable[int] | None = None,
        create_scheduled_runs: bool = True,
        clock: Clock = utcnow,
        relaunch: Callable[[], Launcher] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.launcher = launcher
        # What this scheduler runs: a copy of the catalog, replaced whole when the reader
        # (on its own thread) has read changed files.
        catalog = catalog or Catalog(settings.pipelines_path)
        self.catalog = catalog.snapshot()
        self._reader = FolderReader(catalog, lambda: self.settings.parse_interval)
        self.only = set(only) if only is not None else None
        self.runs = set(runs) if runs is not None else None
        self.create_scheduled_runs = create_scheduled_runs
        self.clock = clock
        self.id: int | None = None
        self.host = socket.gethostname()
        self._next_heartbeat = datetime.min.replace(tzinfo=UTC)
        self._next_recovery = datetime.min.replace(tzinfo=UTC)
        self._next_due: dict[str, datetime] = {}
        self._signalled: set[int] = set()
        self._relaunch = relaunch
        self.metrics = SchedulerMetrics()
        # Notifications are routed and delivered on a thread of their own, by daemons
        # (a command's in-process scheduler lives too briefly to hold deliveries).
        self.notifier = (
            Notifier(
                db,
                settings.notify,
                lambda: self.catalog.pipelines,
                lambda: self._id,
                clock,
                on_attempt=self.metrics.notification,
                logs=lambda location: store_logs.open_log(settings, location),
            )
            if only is None
            else None
        )
        # Ships try logs to logs_url on a thread of its own (nothing to do without one).
        self.logs = shipping.shipper_for(settings, db)
        # Outcomes polled but not yet committed, and started tries not yet recorded as
        # started: kept across a failed transaction (a database outage), written next tick.
        self._unrecorded: list[Outcome] = []
        self._unmarked: list[launching.Started] = []
        self._store_trouble: str | None = None
        # Pipelines whose current version (recorded by another process) differs from this
        # scheduler's copy: name -> that version. Not run until the files are read again.
        self._stale: dict[str, str] = {}
        self._said_stale: set[tuple[str, str]] = set()
        # Pipelines whose running runs are all looked at on the next tick (_ALL: every
        # one, on start-up and after recovery); otherwise only the runs that changed.
        self._rescan: set[str] | frozenset[str] = _ALL
        # Runs a removed task's try holds (nothing else of them starts until it ends).
        self._held: set[int] = set()
        self._shapes: dict[tuple[str, str], Shape] = {}
        # The queued and running runs (store.scheduling.admission_signature) when admission
        # last found nothing to start: while they stay the same, nothing can start.
        self._nothing_admissible: tuple[Any, ...] | None = None
        # Paused pipelines (store.pauses), read at each tick's start: they get no new run
        # and start nothing; what runs finishes.
        self._paused: frozenset[str] = frozenset()
        # Tasks that compete for slots: (pipeline, task) -> priority weight (those not 1),
        # and -> (pool, slots) for those in a pool (store.pools).
        self._weights: dict[tuple[str, str], int] = {}
        self._pooled: dict[tuple[str, str], tuple[str, int]] = {}
        self._said_poolless: set[str] = set()
        # Deadlines per date (with the scheduled runs: a daemon's work).
        self._lateness = Lateness(db, self._write)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def pipelines(self) -> dict[str, Pipeline]:
        names = self.catalog.pipelines
        if self.only is None:
            return names
        return {n: p for n, p in names.items() if n in self.only}

    def start(self) -> None:
        """Register, load pipelines and adopt the tries of dead schedulers."""
        check_templates(self.settings.notify)
        self.db.migrate()
        self.logs.start()
        self._rescan = _ALL  # the one full look: after this, only what changed
        now = self.clock()
        self.refresh_pipelines(now, force=True)
        if self.settings.pools:
            self.db.write(lambda c: pools.sync_config(c, self.settings.pools, now))
        self.id = self.db.write(
            lambda c: store_schedulers.register_scheduler(c, self.host, os.getpid(), now, self.only)
        )
        _dead, alive = self._partition_others(now)
        rivals = [r for r in alive if covers(r.scope, self.only)]
        if rivals and self.db.is_sqlite:
            pids = ", ".join(str(r.pid) for r in rivals)
            self.db.write(lambda c: store_schedulers.stop_scheduler(c, self._id, now))
            raise Conflict(
                f"another scheduler (pid {pids}) is running on this SQLite database; "
                "SQLite supports one scheduler at a time (use PostgreSQL for several)"
            )
        self._say_started(now)
        self.recover(now)
        self._reader.start()
        log.info("scheduler %s started with %d pipelines", self.id, len(self.pipelines))

    def _say_started(self, now: datetime) -> None:
        """A daemon's start, for notifications (a command's in-process scheduler is no
        news)."""
        if self.only is None:
            about = {"scheduler": self._id, "host": self.host, "pid": os.getpid()}
            self.db.write(
                lambda c: outbox.enqueue(
                    c, Event.SCHEDULER_STARTED, now, "scheduler", self._id, data=about
                )
            )

    def stop(self) -> None:
        """Stop cleanly. Running tries keep running; the next scheduler adopts them.

        A stop during a database outage waits for it a few seconds at most (a daemon
        otherwise rides out any outage): asked to stop, the process must end."""
        patience = self.db.outage_timeout
        self.db.outage_timeout = (
            _STOP_PATIENCE if patience is None else min(patience, _STOP_PATIENCE)
        )
        try:
            if self.id is not None:
                now = self.clock()
                self.db.write(lambda c: store_schedulers.stop_scheduler(c, self._id, now))
        except (StoreUnavailable, SQLAlchemyError) as exc:
            # The others find this scheduler silent and take its tries over.
            log.warning("could not record the scheduler's stop: %s", exc)
        finally:
            self.db.outage_timeout = patience
            if self.notifier is not None:
                self.notifier.stop()
            self._reader.stop()
            self.launcher.close()
            self.logs.stop()

    def run(
        self,
        stop: threading.Event | None = None,
        until: Callable[[], bool] | None = None,
        idle_wait: float = 1.0,
    ) -> None:
        """Tick until ``stop`` is set or ``until()`` is true, then :meth:`stop`."""
        stop = stop or threading.Event()
        if self.id is None:
            self.start()
        if self.notifier is not None:
            self.notifier.start()  # a daemon's loop only: not a test's hand-made ticks
        self.metrics.loop_began()
        try:
            while not stop.is_set():
                try:
                    busy = self.metrics.timed(self.tick)
                except LeaseLost as exc:
                    self._fenced(exc)
                    continue
                except (StoreUnavailable, SQLAlchemyError) as exc:
                    self._on_store_trouble(exc)
                    self.launcher.wait(min(5.0, max(idle_wait, 1.0)))
                    continue
                self._on_store_ok()
                if busy and self.notifier is not None:
                    self.notifier.wake()  # what the tick committed may notify: look now
                if until is not None and until():
                    return
                if not busy:
                    self._idle(idle_wait)
        finally:
            self.stop()

    def _idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for work: a try ending (the launcher wakes up), or
        another process committing (a trigger, a backfill, a clear), looked at every
        ``_NOTICE_STEP`` s at the cost of one tiny query (``Database.commits_elsewhere``)."""
        since = self.db.commits_elsewhere()
        if since is None:
            self.launcher.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            step = min(left, _NOTICE_STEP["sqlite" if self.db.is_sqlite else "postgresql"])
            began = time.monotonic()
            self.launcher.wait(step)
            if time.monotonic() - began < step * 0.9:
                return  # woken early: a try ended
            if self.db.commits_elsewhere() != since:
                return

    def _on_store_trouble(self, exc: Exception) -> None:
        """A tick failed on the database: say so once, then retry the tick (nothing polled
        is lost: unrecorded outcomes and starts are kept for the next one)."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if message != self._store_trouble:
            log.warning("database trouble, the scheduler keeps retrying: %s", message)
        self._store_trouble = message

    def _on_store_ok(self) -> None:
        if self._store_trouble is not None:
            log.info("database writes succeed again")
            self._store_trouble = None

    def _fenced(self, exc: LeaseLost) -> None:
        """Another scheduler declared this one dead and took its tries over: stop
        watching them and register again (or give up without ``relaunch``)."""
        watched = sorted(self.launcher.watched())
        log.warning(
            "%s: this scheduler stops watching its %d tries (another scheduler owns them "
            "now) and registers again",
            exc,
            len(watched),
        )
        # Tries started but never recorded may not have been found by the new owner: stop
        # them, so that they never run beside the retry it makes.
        for started in self._unmarked:
            self.launcher.cancel(started.try_id, 0)
        self.launcher.poll()
        self.launcher.close()
        self._signalled.clear()
        self._unrecorded.clear()
        self._unmarked.clear()
        self.id = None
        if self._relaunch is None:
            raise exc
        self.launcher = self._relaunch()
        self.start()

    def stop_tries(self, try_ids: Iterable[int], timeout: float) -> bool:
        """Carry out the stop requests of these tries and record how they ended, starting
        nothing else. For commands that stop tries while no scheduler runs. Returns True
        when every one of them has ended."""
        wanted = set(try_ids)
        if self.id is None:
            self.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.record_outcomes(self.launcher.poll(), self.clock())
                self.enforce_deadlines(self.clock())
                with self.db.read() as conn:
                    live = {t.id for t in store_tries.live_tries(conn)} & wanted
                if not live or time.monotonic() > deadline:
                    return not live
                self.launcher.wait(0.1)
        finally:
            self.stop()

    @property
    def _id(self) -> int:
        assert self.id is not None, "scheduler not started"
        return self.id

    def _drives(self, run_pk: int) -> bool:
        return self.runs is None or run_pk in self.runs

    def _write(self, work: Callable[[Connection], T]) -> T:
        """One transaction of this scheduler: first checks that it still holds its lease
        (raises LeaseLost otherwise), so a fenced scheduler writes nothing."""
        scheduler_id = self._id

        def fenced(conn: Connection) -> T:
            store_schedulers.hold_lease(conn, scheduler_id)
            return work(conn)

        return self.metrics.write(self.db.write, fenced)

    # -- the tick -------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> bool:
        """One pass of the loop; returns True when it changed anything."""
        now = now or self.clock()
        if self._unmarked:
            self._mark_started()
        busy = self.record_outcomes(self.launcher.poll(), now)
        if (fresh := self._reader.take()) is not None:
            self._take_up(fresh, now)
        with self.db.read() as conn:
            self._paused = pauses.paused_pipelines(conn)
        if self.create_scheduled_runs:
            busy |= self.create_due_runs(now)
            self._lateness.check(self.pipelines, self._stale, now)
        busy |= self.enforce_deadlines(now)
        # Runs whose last task just ended are finished first, so that admission can give
        # their slots to queued runs in this same tick, and those start at once.
        busy |= self._settle(now)
        admitted = self.admit_runs(now)
        busy |= admitted
        busy |= self.schedule(now, settle=admitted)
        busy |= self.close_backfills(now)
        if now >= self._next_heartbeat:
            self.db.write(lambda c: store_schedulers.heartbeat(c, self._id, now))
            self._next_heartbeat = now + timedelta(seconds=self.settings.heartbeat_interval)
        if now >= self._next_recovery:
            busy |= self.recover(now)
        return busy

    # -- pipelines --------------------------------------------------------------------------
    def refresh_pipelines(self, now: datetime, force: bool = False) -> None:
        """Read the pipelines folder now, on this thread (at start-up; the reader's thread
        does it afterwards), and take up what changed (everything, with ``force``)."""
        fresh = self._reader.read()
        if fresh is not None or force:
            self._take_up(fresh or self.catalog, now)

    def _take_up(self, fresh: Catalog, now: datetime) -> None:
        """Run the pipelines of ``fresh`` from now on, and record them in the store."""
        before = {n: p.version for n, p in self.catalog.pipelines.items()}
        self.catalog = fresh
        for problem in self.catalog.problems:
            log.warning("%s", problem.message)
        was_stale = set(self._stale)
        self._stale = dict(sync_catalog(self.db, self.catalog, now).stale)
        self._say_stale()
        self._next_due.clear()
        self._shapes.clear()
        self._nothing_admissible = None  # a limit may have changed
        self._weights, self._pooled = slots.rules(self.pipelines)
        # The runs of a pipeline that changed (or stops being stale) are all looked at:
        # they are brought to the new version, and readiness may differ under it.
        edited = {n for n, p in self.catalog.pipelines.items() if before.get(n) != p.version}
        if self._rescan is not _ALL:
            self._rescan = self._rescan | edited | was_stale

    def _say_stale(self) -> None:
        for name, version in sorted(self._stale.items()):
            if (name, version) in self._said_stale:
                continue
            self._said_stale.add((name, version))
            mine = self.catalog.pipelines.get(name)
            log.warning(
                "pipeline %r: this scheduler's copy (version %s) is not its current version "
                "%s, recorded by another process; its runs wait until this scheduler reads "
                "the same file (if the file did not change, a module it imports did: touch "
                "the pipeline file)",
                name,
                mine.version if mine else "?",
                version,
            )

    # -- scheduled runs -------------------------------------------------------------------
    def create_due_runs(self, now: datetime) -> bool:
        """Create the scheduled runs that are due: the due pipelines' runs are created
        together, up to ``_DUE_PER_TRANSACTION`` pipelines per transaction (a ``@daily``
        midnight with a thousand pipelines is ten transactions, not a thousand)."""
        due = [
            pipeline
            for name, pipeline in self.pipelines.items()
            if not pipeline.schedule.is_manual
            and self._next_due.get(name, now) <= now
            and name not in self._stale
            and name not in self._paused  # stays due: its missed runs come when unpaused
        ]
        created = False
        for i in range(0, len(due), _DUE_PER_TRANSACTION):
            chunk = due[i : i + _DUE_PER_TRANSACTION]
            made, next_due = self._write(functools.partial(create_due, chunk=chunk, now=now))
            # Crash point: the runs are committed; a scheduler dying here leaves them to
            # the next one, which finds them made (no date is created twice).
            if made:
                crash_point("run.created")
            created |= made
            # Only once committed: a transaction that failed leaves these pipelines due.
            self._next_due.update(next_due)
        return created

    # -- deadlines and cancellation ----------------------------------------------------------
    def enforce_deadlines(self, now: datetime) -> bool:
        # Look first without the write lock: most ticks have no deadline to enforce.
        with self.db.read() as conn:
            due = bool(store_tries.expired_tries(conn, self._id, now)) or bool(
                scheduling.expired_runs(conn, now, self.pipelines)
            )
            requested = store_tries.cancel_requested(conn, self._id)

        def work(conn: Connection) -> list[CancelRequest]:
            expired = store_tries.expired_tries(conn, self._id, now)
            expired = deadlines.past_timeout(conn, self.launcher, self._id, expired, now)
            store_tries.request_cancel(conn, [r.id for r in expired], FailureReason.TIMED_OUT.value)
            for run in scheduling.expired_runs(conn, now, self.pipelines):
                deadlines.time_out_run(conn, run.id, now)
                self.metrics.run_timed_out(run.pipeline)
            return store_tries.cancel_requested(conn, self._id)

        if due:
            requested = self._write(work)
        to_signal = [r for r in requested if r.id not in self._signalled]
        if to_signal:
            crash_point("try.cancel_requested")
        for row in to_signal:
            log.info("stopping try %s (%s)", row.id, row.cancel_reason)
            self.launcher.cancel(row.id, row.kill_grace)
            self._signalled.add(row.id)
        if to_signal:
            crash_point("try.cancel_sent")
        return bool(to_signal)

    # -- outcomes -------------------------------------------------------------------------
    def record_outcomes(self, outcomes: Sequence[Outcome], now: datetime) -> bool:
        """Commit how tries ended, then let the launcher clean up after them.

        Crash points: dying before the commit leaves the evidence (exit file, finished
        pod) in place, so the next scheduler adopts the try and records the same outcome;
        dying after it leaves only files for the sweep. Never the other way round.
        """
        pending = [*self._unrecorded, *outcomes]
        if not pending:
            return False
        self._unrecorded = pending
        crash_point("outcome.seen")

        def work(conn: Connection) -> list[int]:
            # Each try ends at the launcher's time of its end, not the tick's: latencies
            # stay honest.
            return try_outcomes.record(
                conn,
                pending,
                owner=self._id,
                pipelines=self.catalog.pipelines,
                settings=self.settings,
                clock=self.clock,
                metrics=self.metrics,
            )

        settled = self._write(work)
        self._unrecorded = []
        for outcome in pending:
            self._signalled.discard(outcome.try_id)
        crash_point("outcome.recorded")
        self.logs.finish(settled)
        self.launcher.release(settled)
        return True

    def close_backfills(self, now: datetime) -> bool:
        with self.db.read() as conn:
            done = history.finished_backfills(conn)
        if done:
            self._write(lambda c: history.close_backfills(c, done, now))
        return bool(done)

    # -- admission ------------------------------------------------------------------------
    def admit_runs(self, now: datetime) -> bool:
        """Start the queued runs that fit under their limits (see admission): decided
        without the write lock, then asked again in the transaction on fresh counts for
        the runs chosen. A tick finds nothing to do cheaply: when nothing could start last
        time and no run was queued, started or ended since, it reads no queued run."""
        pipelines = self.pipelines

        def candidates(conn: Connection, queued: list[QueuedRun]) -> list[QueuedRun]:
            if not queued:
                return []
            backfills = history.open_backfills(conn) if any(r.backfill_id for r in queued) else {}
            running = scheduling.count_running_runs(conn)
            running_bf = scheduling.count_running_by_backfill(conn, backfills)
            return admissible(queued, pipelines, running, backfills, running_bf)

        with self.db.read() as conn:
            signature = (scheduling.admission_signature(conn), self._paused)
            if signature == self._nothing_admissible:
                return False
            queued = [
                r
                for r in scheduling.queued_runs(conn, pipelines)
                if self._drives(r.id) and r.pipeline not in self._paused
            ]
            # The first few: a backfill of thousands of dates under a high limit is admitted
            # over a few ticks, each transaction short.
            chosen = candidates(conn, queued)[:_ADMITTED_PER_TRANSACTION]
        if not chosen:
            self._nothing_admissible = signature
            return False
        self._nothing_admissible = None

        def work(conn: Connection) -> bool:
            # Locked, then asked whether paused: a pause committed since the read wins.
            mine = store_schedulers.lock_pipelines(conn, {r.pipeline for r in chosen})
            mine -= pauses.paused_pipelines(conn)
            # Asked again on what the transaction reads: another scheduler, or a command,
            # may have started runs since.
            again = candidates(conn, [r for r in chosen if r.pipeline in mine])
            deadlines = {
                run.id: (
                    now + timedelta(seconds=timeout)
                    if (timeout := pipelines[run.pipeline].run_timeout)
                    else None
                )
                for run in again
            }
            return bool(store_runs.start_runs(conn, deadlines, now))

        admitted = self._write(work)
        if admitted:
            crash_point("run.admitted")
        return admitted

    # -- task instances -----------------------------------------------------------------
    def schedule(self, now: datetime, settle: bool = True) -> bool:
        """Act on the running runs that changed since the last look (unless the caller
        just did and nothing started since: ``settle=False``), then launch what is ready
        and fits. The cost follows what changed, not how much is running."""
        changed = self._settle(now) if settle else False
        launches = self._ready(now)
        if launches:
            changed |= self._launch(launches, now)
        return changed

    def _settle(self, now: datetime) -> bool:
        """Decide the next steps of the runs to look at (readiness, read outside the write
        lock), then apply them, a chunk of runs per short transaction, to the runs that
        did not change meanwhile (the others are looked at again next tick)."""
        pipelines = self.pipelines
        rescan = self._rescan
        with self.db.read() as conn:
            looked = {r.id: r for r in scheduling.unsettled_runs(conn)}
            looked.update((r.id, r) for r in scheduling.runs_with_due_retries(conn, now))
            if rescan:
                names = None if rescan is _ALL else sorted(rescan & pipelines.keys())
                looked.update((r.id, r) for r in scheduling.running_runs(conn, names))
            mine = [r for r in looked.values() if r.pipeline in pipelines and self._drives(r.id)]
            if mine:
                self._check_versions(conn, {r.pipeline for r in mine}, now)
        mine = [r for r in mine if r.pipeline not in self._stale]
        changed = False
        for i in range(0, len(mine), _RUNS_PER_TRANSACTION):
            changed |= self._settle_chunk(mine[i : i + _RUNS_PER_TRANSACTION], now)
        # Only once applied: a failed transaction leaves the rescan for the next tick.
        self._rescan = set() if rescan is _ALL else self._rescan - (rescan or set())
        return changed

    def _settle_chunk(self, chunk: list[Run], now: datetime) -> bool:
        pipelines = self.pipelines
        current = [r for r in chunk if r.version == pipelines[r.pipeline].version]
        with self.db.read() as conn:
            tis = store_runs.run_task_instances(conn, [r.id for r in current])
        by_run: dict[int, list[TaskInstance]] = {}
        for ti in tis:
            by_run.setdefault(ti.run, []).append(ti)
        decisions = {
            r.id: decide(by_run.get(r.id, []), self._shape(pipelines[r.pipeline]), now)
            for r in current
        }
        outdated = [r for r in chunk if r.version != pipelines[r.pipeline].version]
        if not outdated and all(
            not d.writes and looked.change_seq == looked.seen_seq
            for looked, d in zip(current, decisions.values(), strict=True)
        ):
            self._hold(decisions)
            return False  # nothing to apply, nothing unseen (a retry not due after all)
        seen = {r.id: r.change_seq for r in chunk}

        def apply(conn: Connection) -> bool:
            held = scheduling.hold_unchanged_runs(conn, seen)
            changed = False
            for run in outdated:
                if run.id in held:
                    pipeline = pipelines[run.pipeline]
                    tis = settling.reconcile(conn, run, pipeline, now)
                    decisions[run.id] = decide(tis, self._shape(pipeline), now)
                    changed = True
            changed |= settling.apply(
                {pk: d for pk, d in decisions.items() if pk in held}, conn, now
            )
            scheduling.settle_runs(conn, held)
            return changed

        changed = self._write(apply)
        self._hold(decisions)
        return changed

    def _hold(self, decisions: dict[int, Decision]) -> None:
        """Remember the runs whose scheduled instances must not launch for now."""
        for run_pk, decision in decisions.items():
            if decision.held:
                self._held.add(run_pk)
            else:
                self._held.discard(run_pk)

    def _ready(self, now: datetime) -> list[launching.Launch]:
        """The scheduled task instances this scheduler may launch, best first."""
        free = self.settings.parallelism - len(self.launcher.watched())
        if free <= 0:
            return []
        pipelines = self.pipelines
        limit = free * 2 + 16
        with self.db.read() as conn:
            # Only as many of the best as could start: a backlog of thousands costs nothing.
            rows = scheduling.scheduled_task_instances(
                conn,
                limit=limit,
                weights=self._weights,
                skip_pipelines=self._paused,
                run_pks=self.runs,
            )
            if rows:
                # Pipelines at max_active_tasks and tasks whose pool is full cannot take
                # one more: read past them.
                live = scheduling.count_live_tis(conn)
                full = [
                    p
                    for p, n in live.items()
                    if p in pipelines and n >= pipelines[p].max_active_tasks
                ]
                crowded = slots.crowded(conn, self._pooled, on_undefined=self._say_poolless)
                if any(r.pipeline in full or (r.pipeline, r.ti_task_id) in crowded for r in rows):
                    rows = scheduling.scheduled_task_instances(
                        conn,
                        limit=limit,
                        weights=self._weights,
                        skip_pipelines=[*full, *self._paused],
                        skip_tasks=crowded,
                        run_pks=self.runs,
                    )
            rows = [r for r in rows if r.pipeline in pipelines]
            if rows:
                self._check_versions(conn, {r.pipeline for r in rows}, now)
        return launching.rank(
            rows,
            pipelines,
            self._shape,
            skip=lambda r: (
                not self._drives(r.id) or r.id in self._held or r.pipeline in self._stale
            ),
        )

    def _say_poolless(self, pool: str) -> None:
        if pool not in self._said_poolless:
            self._said_poolless.add(pool)
            log.warning(
                "pool %r has no slots (neither reflow.toml's [reflow.pools] nor `reflow pools "
                "set` names it): its tasks wait",
                pool,
            )

    def _check_versions(self, conn: Connection, names: set[str], now: datetime) -> None:
        """Runs follow their pipeline's current version, which the store owns: a pipeline
        whose current version is not this scheduler's copy is stale (its runs wait) until
        the files are read again, which the next tick does."""
        pipelines = self.pipelines
        versions = store_pipelines.current_versions(conn, names)
        stale = {n: v for n, v in versions.items() if v != pipelines[n].version}
        if stale.keys() - self._stale.keys():
            self._reader.ask()  # read the files again now
        self._stale = {**{n: v for n, v in self._stale.items() if n not in versions}, **stale}
        self._say_stale()

    def _shape(self, pipeline: Pipeline) -> Shape:
        key = (pipeline.name, pipeline.version)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape.of(pipeline)
        return shape

    def _launch(self, candidates: list[launching.Launch], now: datetime) -> bool:
        pipelines = self.pipelines
        free = self.settings.parallelism - len(self.launcher.watched())
        if free <= 0:
            return False

        def take(conn: Connection) -> list[tuple[launching.Launch, int, int]]:
            # Locked, then asked whether paused: once a pause is committed, nothing of its
            # pipeline starts.
            mine = store_schedulers.lock_pipelines(conn, {c.run.pipeline for c in candidates})
            mine -= pauses.paused_pipelines(conn)
            live = scheduling.count_live_tis(conn)
            # The pools' rows are locked before their slots are counted: two schedulers
            # never fill the same free slots (PostgreSQL; SQLite's write lock does it).
            wanted = {self._pooled.get((c.run.pipeline, c.task_id), ("", 0))[0] for c in candidates}
            pool_free = slots.free(conn, wanted - {""}, lock=True)
            chosen = launching.choose(
                candidates, pipelines, mine=mine, live=live, free=free, pool_free=pool_free
            )
            claims = [launching.claim(self.settings, pipelines[c.run.pipeline], c) for c in chosen]
            got = store_tries.queue_tries(conn, claims, owner=self._id, now=now)
            return [(c, *got[c.ti_id]) for c in chosen if c.ti_id in got]

        taken = self._write(take)
        if not taken:
            return False
        # Crash point: the tries are queued, no process started. A scheduler dying here
        # leaves queued tries with no process: the next one adopts them and finds them lost
        # (retried without using up a retry), never running twice.
        crash_point("try.queued")
        started, failed = launching.start_tries(
            taken,
            pipelines,
            settings=self.settings,
            launcher=self.launcher,
            host=self.host,
            clock=self.clock,
            now=now,
            logs=self.logs,
        )
        self.metrics.launched(taken, failed)
        if started:
            # Crash point: processes run but are recorded as queued; the next scheduler
            # adopts them by their log and exit files (local) or labels (pods).
            crash_point("try.launched")
            self._unmarked += started
            self._mark_started()
            crash_point("try.running")
        if failed:
            self.record_outcomes(failed, now)
        return True

    def _mark_started(self) -> None:
        """Record where the started tries run. A try that is no longer queued has ended
        already (its outcome was recorded first); nothing else can have happened to it
        while this scheduler holds its lease."""
        starts = [s.record() for s in self._unmarked]
        self._write(lambda conn: store_tries.mark_tries_started(conn, starts, owner=self._id))
        self._unmarked = []

    # -- crash recovery -----------------------------------------------------------------
    def _partition_others(
        self, now: datetime
    ) -> tuple[list[SchedulerRecord], list[SchedulerRecord]]:
        """Other registered schedulers, split into (dead, alive)."""
        with self.db.read() as conn:
            others = store_schedulers.other_schedulers(conn, self._id)
        limit = now - timedelta(seconds=self.settings.scheduler_timeout)
        dead, alive = [], []
        for row in others:
            if row.heartbeat_at < limit or exited(row, self.host):
                dead.append(row)
            else:
                alive.append(row)
        return dead, alive

    def _live_try_ids(self) -> set[int]:
        with self.db.read() as conn:
            return {t.id for t in store_tries.live_tries(conn)}

    def recover(self, now: datetime) -> bool:
        """Declare silent schedulers dead and adopt the live tries of dead ones (of this
        scheduler's pipelines); the launcher reports those that are gone as lost."""
        self._next_recovery = now + timedelta(seconds=self.settings.scheduler_timeout / 3)
        dead, _ = self._partition_others(now)
        limit = now - timedelta(seconds=self.settings.scheduler_timeout)
        gone = [r.id for r in dead if exited(r, self.host)]
        silent = [r.id for r in dead if r.id not in gone]

        def work(conn: Connection) -> list[Try]:
            # A silent scheduler's heartbeat is checked again under its row's lock: one
            # that resumed meanwhile keeps its tries, and its next transaction goes on.
            lost = store_schedulers.mark_schedulers_dead(
                conn, silent=silent, silent_since=limit, exited=gone, now=now
            )
            for row in dead:
                if row.id in lost and row.scope is None:
                    how = "exited without stopping" if row.id in gone else "went silent"
                    about = {"scheduler": row.id, "host": row.host, "pid": row.pid, "how": how}
                    outbox.enqueue(conn, Event.SCHEDULER_LOST, now, "scheduler", row.id, data=about)
            return store_schedulers.claim_orphans(conn, self._id, self.only)

        orphans = self._write(work)
        self.launcher.sweep(self._live_try_ids)
        for row in orphans:
            self.logs.watch(row.id, row.log_path, adopted=True)
            spool = self.settings.log_file(row.log_path)
            ref = TryRef(
                row.id, str(spool), row.pid, row.host, row.external_id, row.launcher or "local"
            )
            alive_now = self.launcher.adopt(ref)
            log.info("adopted try %s (%s)", row.id, "alive" if alive_now else "gone")
            taken = trylog.taken_over(self._id, self.host, alive_now)
            trylog.note(spool, [taken], now)
        return bool(orphans)
