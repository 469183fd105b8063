"""The outbox and deliveries in the store (SQLite and PostgreSQL): claims and their leases,
attempts recorded only by the holder, a dead sender's claims taken over, and forgetting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from reflow.core.notify import Event
from reflow.store import history, outbox
from reflow.store import schedulers as store_schedulers
from reflow.store.db import Database
from reflow.store.models import notifications

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _add(db: Database, *, pipeline: str = "p", state: str = "pending", at: datetime = T0) -> int:
    row: dict[str, Any] = {
        "event": "run_failed",
        "created_at": at,
        "pipeline": pipeline,
        "run": None,
        "channel": "hook",
        "state": state,
        "attempts": 0,
        "next_at": at,
        "context": {"pipeline": pipeline},
    }
    return int(
        db.write(
            lambda c: c.execute(
                insert(notifications).values(row).returning(notifications.c.id)
            ).scalar_one()
        )
    )


def _scheduler(db: Database) -> int:
    return db.write(lambda c: store_schedulers.register_scheduler(c, "host", 1, T0))


def test_a_claim_holds_until_its_lease_ends_or_its_sender_is_dead(db: Database) -> None:
    db.migrate()
    one, two = _scheduler(db), _scheduler(db)
    n = _add(db)
    assert [x.id for x in db.write(lambda c: outbox.claim_due(c, one, T0, lease=60))] == [n]
    assert db.write(lambda c: outbox.claim_due(c, two, T0, lease=60)) == []
    later = T0 + timedelta(seconds=61)
    assert [x.id for x in db.write(lambda c: outbox.claim_due(c, two, later, lease=60))] == [n]
    # The first sender's late answer is not recorded: the claim is the second's now.
    assert not db.write(
        lambda c: outbox.record_attempt(
            c, n, one, ok=True, result="HTTP 200", seconds=0.1, now=later, retry_at=None
        )
    )
    assert db.write(
        lambda c: outbox.record_attempt(
            c, n, two, ok=False, result="HTTP 500", seconds=0.1, now=later, retry_at=later
        )
    )
    # A sender known to be dead loses its claim at once.
    assert db.write(lambda c: outbox.claim_due(c, two, later, lease=600))
    db.write(lambda c: store_schedulers.stop_scheduler(c, two, later))
    taken = db.write(lambda c: outbox.claim_due(c, one, later, lease=600))
    assert [x.id for x in taken] == [n] and taken[0].attempts == 1


def test_clean_forgets_finished_notifications_and_purge_a_pipelines(db: Database) -> None:
    db.migrate()
    old_sent = _add(db, state="sent")
    old_failed = _add(db, state="failed")
    old_pending = _add(db)
    recent = _add(db, state="sent", at=T0 + timedelta(days=30))
    other = _add(db, pipeline="q", state="sent", at=T0 + timedelta(days=30))
    cutoff = T0 + timedelta(days=1)
    with db.read() as conn:
        assert outbox.count_finished_before(conn, cutoff) == 2
    counts = db.write(lambda c: history.clean_before(c, cutoff, dry_run=False))
    assert counts["notifications"] == 2

    def ids() -> set[int]:
        with db.read() as conn:
            return set(conn.execute(select(notifications.c.id)).scalars())

    assert ids() == {old_pending, recent, other}
    assert old_sent not in ids() and old_failed not in ids()
    assert db.write(lambda c: outbox.forget_pipeline(c, "p")) == 2
    assert ids() == {other}


def test_an_entry_routed_by_two_notifiers_at_once_becomes_one_set_of_notifications(
    db: Database,
) -> None:
    db.migrate()
    db.write(lambda c: outbox.enqueue(c, Event.SCHEDULER_STARTED, T0, "scheduler", 1))
    with db.read() as conn:
        first = outbox.take(conn)
    with db.read() as conn:
        second = outbox.take(conn)  # read before the first routing committed
    assert [p.entry.id for p in first] == [p.entry.id for p in second]
    made = [(first[0], "scheduler_started", "hook", None)]
    assert db.write(lambda c: outbox.route(c, [first[0].entry.id], made, T0)) == 1
    again = [(second[0], "scheduler_started", "hook", None)]
    assert db.write(lambda c: outbox.route(c, [second[0].entry.id], again, T0)) == 0
    with db.read() as conn:
        assert len(outbox.listing(conn)) == 1 and outbox.backlog(conn) == 0
