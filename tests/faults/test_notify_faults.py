"""Notifications survive a scheduler killed (SIGKILL) between the state change and the
delivery: at the outcome's commit (the outbox entry written, nothing routed), after
routing (notifications written, none sent) and after sending (a message delivered, its
attempt not recorded). A normal scheduler then delivers every message: at least once,
and twice at most for the one sent before the crash, under its same delivery number."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from ..peers import Receiver
from .conftest import Installation, wait_for

pytestmark = pytest.mark.faults

ALERTING = """\
from reflow import Pipeline, Shell, on_failure, on_task_failure

with Pipeline("alerting", schedule="@daily", start_date="2024-01-01", end_date="2024-01-01",
              catchup=True, notify=[on_task_failure("hook"), on_failure("hook")]):
    Shell("a", "echo no input; exit 1")
"""
EXPECTED = {"task_failed", "run_failed"}
# Between the state change and its delivery: the outbox entry committed with the outcome,
# then the notifier's own points.
POINTS = ["outcome.recorded", "notify.routed", "notify.sent"]


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


def _configure(inst: Installation, url: str) -> None:
    config = inst.home / "reflow.toml"
    config.write_text(
        config.read_text()
        + "[reflow.notify]\nretry_delay = 0.5\n"
        + '[reflow.notify.channels.hook]\nkind = "webhook"\n'
        + f"url = {url!r}\ntimeout = 5\n"
    )
    inst.write_pipeline("alerting", ALERTING)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("point", POINTS)
def test_a_scheduler_killed_before_delivery_loses_no_notification(
    point: str,
    backend: str,
    hook: Receiver,
    make_installation: Callable[..., Installation],
) -> None:
    inst = make_installation(backend)
    url = f"http://127.0.0.1:{hook._server.server_address[1]}/hook"
    _configure(inst, url)

    armed = inst.scheduler(crash_at=point)
    wait_for(lambda: armed.poll() is not None, timeout=90, what=f"a scheduler to die at {point}")
    assert inst.died_at(point, armed), inst.output(armed)
    before = len(hook.received)

    proc = inst.scheduler()
    try:
        wait_for(
            lambda: (
                {r.json()["event"] for r in hook.received} >= EXPECTED
                and inst.scalar("SELECT count(*) FROM notifications WHERE state = 'sent'") == 2
            ),
            timeout=90,
            what="both notifications delivered after the crash",
        )
    finally:
        code = inst.stop(proc)
    assert code == 0, inst.output(proc)

    deliveries = Counter(r.headers["X-Reflow-Delivery"] for r in hook.received)
    assert len(deliveries) == 2
    if point == "notify.sent":
        # The message sent just before the crash is sent again: the same delivery number.
        assert before == 1 and sorted(deliveries.values()) == [1, 2]
    else:
        assert before == 0 and sorted(deliveries.values()) == [1, 1]
    # One successful attempt recorded per notification, whatever was sent twice.
    assert inst.scalar("SELECT count(*) FROM notification_attempts WHERE ok") == 2
    assert inst.scalar("SELECT count(*) FROM notify_outbox") == 0
