"""Prometheus metrics: what a scheduler observes as it works (:class:`SchedulerMetrics`) and
the gauges any process reads from the store when it is scraped (:class:`StoreGauges`).

Each scheduler has a registry of its own (several run in one test process). Observations
made inside one of its transactions are staged and count only once that transaction has
committed: a transaction run again after lock contention, or lost to an outage (its
outcomes are then recorded on a later tick), counts once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from reflow.core.errors import StoreUnavailable
from reflow.core.naming import Clock, utcnow
from reflow.core.pipeline import Pipeline
from reflow.core.spec import Outcome
from reflow.core.states import RUN_ACTIVE, FailureReason, TIState
from reflow.store import monitoring, outbox, pools
from reflow.store.db import Database

if TYPE_CHECKING:
    from reflow.scheduler.launching import Launch
    from reflow.scheduler.outcomes import Verdict

log = logging.getLogger("reflow.scheduler")
T = TypeVar("T")
# No "_created" series beside every counter and histogram: twice the series for a start
# time that process_start_time_seconds already gives (a setting of the whole process).
disable_created_metrics()  # type: ignore[no-untyped-call]

# A tick takes milliseconds when idle, longer after many outcomes.
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Tries take seconds to hours; few buckets, since there is one histogram per task.
TRY_BUCKETS = (1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600)
# A write transaction: sub-millisecond on SQLite, a round trip or more on PostgreSQL,
# seconds when it waits for a lock.
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)


class SchedulerMetrics:
    """The scheduler's own metrics, in ``registry``. Every method is called on the
    scheduler's thread; a scrape reads the metric objects from another (they lock)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.tick_seconds = Histogram(
            "reflow_scheduler_tick_duration_seconds",
            "Duration of the scheduler's ticks that completed.",
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        self.try_seconds = Histogram(
            "reflow_try_duration_seconds",
            "Duration of the tries that ended, from the start of their process or container.",
            ["pipeline", "task"],
            buckets=TRY_BUCKETS,
            registry=registry,
        )
        self.launches = Counter(
            "reflow_launches",
            "Tries started by a launcher (a process or a pod).",
            ["pipeline"],
            registry=registry,
        )
        self.launch_errors = Counter(
            "reflow_launch_errors",
            "Tries that could not be started (the try fails with the error).",
            ["pipeline"],
            registry=registry,
        )
        self.retries = Counter(
            "reflow_retries",
            "Tries that ended and whose task instance is tried again (up_for_retry).",
            ["pipeline", "task"],
            registry=registry,
        )
        self.lost = Counter(
            "reflow_lost_tries",
            "Tries recorded as lost: their process or pod vanished, or their scheduler died.",
            ["pipeline"],
            registry=registry,
        )
        self.timeouts = Counter(
            "reflow_timeouts",
            "Timeouts: kind=task, a try that ended timed out; kind=run, a run past its "
            "run_timeout.",
            ["pipeline", "kind"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "reflow_db_write_duration_seconds",
            "The scheduler's write transactions, from their start to their commit (lock "
            "waits and retries included).",
            buckets=WRITE_BUCKETS,
            registry=registry,
        )
        self.notifications = Counter(
            "reflow_notification_deliveries",
            "Notification delivery attempts, by channel kind and result (ok or failed).",
            ["kind", "result"],
            registry=registry,
        )
        # time.monotonic() when the loop last came round (a tick ended, well or not) or,
        # until its first tick ends, when it began; None before the loop begins.
        self.loop_at: float | None = None
        self._staged: list[Callable[[], None]] = []
        self._writing = 0

    # -- the loop ---------------------------------------------------------------------------
    def loop_began(self) -> None:
        """The loop begins: a first tick that never ends (stuck, or waiting out a database
        outage) is judged from now, as any later one is from the end of the one before."""
        self.loop_at = time.monotonic()

    def timed(self, tick: Callable[[], T]) -> T:
        """Run one tick, observing its duration if it completes."""
        began = time.perf_counter()
        try:
            result = tick()
        finally:
            self.loop_at = time.monotonic()
        self.tick_seconds.observe(time.perf_counter() - began)
        return result

    def write(
        self, write: Callable[[Callable[[Connection], T]], T], work: Callable[[Connection], T]
    ) -> T:
        """Run ``work`` through ``write`` (one transaction, perhaps run again whole),
        observing its duration; what ``work`` staged counts once it has committed."""

        def attempt(conn: Connection) -> T:
            self._staged.clear()  # an earlier attempt was rolled back
            return work(conn)

        began = time.perf_counter()
        self._writing += 1
        try:
            result = write(attempt)
        except BaseException:
            self._staged.clear()
            raise
        finally:
            self._writing -= 1
            self.write_seconds.observe(time.perf_counter() - began)
        staged, self._staged = self._staged, []
        for count in staged:
            count()
        return result

    def _count(self, count: Callable[[], None]) -> None:
        """Count now, or at the commit when inside a transaction."""
        if self._writing:
            self._staged.append(count)
        else:
            count()

    # -- what happened ------------------------------------------------------------------------
    def launched(self, taken: Sequence[tuple[Launch, int, int]], failed: Iterable[Outcome]) -> None:
        """The tries handed to the launcher (``taken``: candidate, try id, try number):
        started, unless their id is among the ``failed`` outcomes."""
        bad = {o.try_id for o in failed}
        for cand, try_id, _ in taken:
            counter = self.launch_errors if try_id in bad else self.launches
            counter.labels(cand.run.pipeline).inc()

    def try_ended(self, row: Any, outcome: Outcome, verdict: Verdict) -> None:
        """A try whose end was recorded (``row``: ``store.tries.try_rows``)."""
        pipeline, task = row.pipeline, row.task_id
        started = verdict.try_values.get("started_at")
        reason = verdict.reason

        def count() -> None:
            if started is not None:
                seconds = (outcome.ended_at - started).total_seconds()
                self.try_seconds.labels(pipeline, task).observe(max(0.0, seconds))
            if verdict.ti_state == TIState.UP_FOR_RETRY:
                self.retries.labels(pipeline, task).inc()
            if reason == FailureReason.LOST:
                self.lost.labels(pipeline).inc()
            elif reason == FailureReason.TIMED_OUT:
                self.timeouts.labels(pipeline, "task").inc()

        self._count(count)

    def run_timed_out(self, pipeline: str) -> None:
        self._count(lambda: self.timeouts.labels(pipeline, "run").inc())

    def notification(self, kind: str, ok: bool) -> None:
        """An attempt of the notifier (its own thread; counted when recorded)."""
        self.notifications.labels(kind, "ok" if ok else "failed").inc()


class StoreGauges(Collector):
    """Gauges read from the store at each scrape, on a probe connection (no retry): a
    scrape during an outage leaves them out at once instead of waiting."""

    def __init__(
        self,
        db: Database,
        clock: Clock = utcnow,
        pipelines: Callable[[], Mapping[str, Pipeline]] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        # The pipelines this process knows: which of their tasks are in which pool.
        self.pipelines = pipelines

    def describe(self) -> Iterable[Metric]:
        # Registering must not query the database: the families, without samples.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            with self.db.probe() as conn:
                names = monitoring.active_pipelines(conn)
                runs = monitoring.runs_by_state(conn)
                tis = monitoring.unfinished_task_instances(conn)
                beats = monitoring.scheduler_heartbeats(conn)
                slots = {p.name: p.slots for p in pools.all_pools(conn)}
                used = pools.in_use(conn)
                waiting = pools.waiting(conn, self._members())
                notes = outbox.counts(conn)
                notes["unrouted"] = outbox.backlog(conn)
        except (StoreUnavailable, SQLAlchemyError) as exc:
            log.debug("store gauges left out of the scrape: %s", exc)
            return []
        return list(self._families(names, runs, tis, beats, slots, used, notes, waiting))

    def _members(self) -> dict[tuple[str, str], str]:
        """(pipeline, task) -> pool, for every pooled task of the known pipelines."""
        found: dict[tuple[str, str], str] = {}
        for name, pipeline in (self.pipelines() if self.pipelines else {}).items():
            for task_id, task in pipeline.tasks.items():
                if (pool := task.option("pool")) is not None:
                    found[(name, task_id)] = pool
        return found

    def _families(
        self,
        names: Sequence[str] = (),
        runs: dict[tuple[str, str], int] | None = None,
        tis: dict[tuple[str, str], int] | None = None,
        beats: Sequence[tuple[int, str, Any]] = (),
        slots: dict[str, int] | None = None,
        used: dict[str, int] | None = None,
        notes: dict[str, int] | None = None,
        waiting: dict[str, int] | None = None,
    ) -> Iterator[Metric]:
        runs, tis = runs or {}, tis or {}
        # Zeros for the unfinished states of every pipeline: "nothing running" is a value.
        for name in names:
            for active in RUN_ACTIVE:
                runs.setdefault((name, active.value), 0)
            for ti_state in monitoring.TI_UNFINISHED:
                tis.setdefault((name, ti_state), 0)
        run_family = GaugeMetricFamily(
            "reflow_runs", "Runs in each state, per pipeline.", labels=["pipeline", "state"]
        )
        for (pipeline, state), n in sorted(runs.items()):
            run_family.add_metric([pipeline, state], n)
        yield run_family
        ti_family = GaugeMetricFamily(
            "reflow_task_instances",
            "Unfinished task instances in each state, per pipeline (finished ones are "
            "history, not counted).",
            labels=["pipeline", "state"],
        )
        for (pipeline, state), n in sorted(tis.items()):
            ti_family.add_metric([pipeline, state], n)
        yield ti_family
        queue = GaugeMetricFamily(
            "reflow_queue_depth",
            "Task instances scheduled (ready) and waiting for a slot, per pipeline.",
            labels=["pipeline"],
        )
        for (pipeline, state), n in sorted(tis.items()):
            if state == TIState.SCHEDULED:
                queue.add_metric([pipeline], n)
        yield queue
        heartbeat = GaugeMetricFamily(
            "reflow_scheduler_heartbeat_age_seconds",
            "Seconds since each registered scheduler's last heartbeat.",
            labels=["scheduler", "host"],
        )
        now = self.clock()
        for scheduler_id, host, at in beats:
            heartbeat.add_metric([str(scheduler_id), host], max(0.0, (now - at).total_seconds()))
        yield heartbeat
        slots, used = slots or {}, used or {}
        pool_slots = GaugeMetricFamily(
            "reflow_pool_slots", "Slots of each pool (store.pools).", labels=["pool"]
        )
        pool_used = GaugeMetricFamily(
            "reflow_pool_slots_used", "Slots of each pool held by live tries.", labels=["pool"]
        )
        waiting = waiting or {}
        pool_queue = GaugeMetricFamily(
            "reflow_pool_queue_depth",
            "Task instances of each pool ready to start and waiting for its slots.",
            labels=["pool"],
        )
        for pool in sorted({*slots, *used, *waiting}):
            pool_slots.add_metric([pool], slots.get(pool, 0))
            pool_used.add_metric([pool], used.get(pool, 0))
            pool_queue.add_metric([pool], waiting.get(pool, 0))
        yield pool_slots
        yield pool_used
        yield pool_queue
        notifications = GaugeMetricFamily(
            "reflow_notifications",
            "Notifications by state: pending (to deliver), sent, failed (given up), and "
            "unrouted (outbox entries not yet turned into notifications).",
            labels=["state"],
        )
        notes = notes or {}
        for state in sorted({"pending", "sent", "failed", "unrouted", *notes}):
            notifications.add_metric([state], notes.get(state, 0))
        yield notifications
