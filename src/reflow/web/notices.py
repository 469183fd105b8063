"""Read models of notifications for the API and the run page (through the services)."""

from __future__ import annotations

from reflow.services import notifications as service
from reflow.services.project import Project
from reflow.web import schemas as s


def listing(
    project: Project,
    *,
    pipeline: str | None = None,
    run: int | None = None,
    state: str | None = None,
    event: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> s.NotificationListOut:
    found = service.list_notifications(
        project,
        pipeline=pipeline,
        run=run,
        state=state,
        event=event,
        limit=limit,
        before=before,
        with_attempts=True,
    )
    return s.NotificationListOut(
        notifications=[out(n) for n in found],
        next_before=found[-1].id if len(found) == limit else None,
    )


def one(project: Project, notification: int) -> s.NotificationOut:
    return out(service.show(project, notification))


def retry(project: Project, notification: int) -> s.NotificationOut:
    return out(service.retry(project, notification))


def of_run(project: Project, run: int) -> list[s.NotificationOut]:
    """A run's notifications, oldest first (the run page)."""
    found = service.list_notifications(project, run=run, limit=200, with_attempts=True)
    return [out(n) for n in reversed(found)]


def out(n: service.NotificationView) -> s.NotificationOut:
    return s.NotificationOut.model_validate(n.as_dict())
