"""Late dates: the logical dates whose deadline passed before they succeeded (see
``core.lateness``), as the scheduler recorded them, for the CLI and the API."""

from __future__ import annotations

from collections.abc import Sequence

from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.services.records import DeadlineMiss, LateDate, Run

# ``store.deadlines`` is imported where it is read: it brings the schedules along (croniter),
# which a list of runs with none to look up does without.


def late_dates(
    project: Project,
    pipeline: str,
    start: str | None = None,
    end: str | None = None,
    *,
    limit: int = 100,
    labels: tuple[str, str] = ("--start", "--end"),
) -> list[LateDate]:
    """The misses of ``pipeline`` with logical dates from ``start`` to ``end`` (None:
    open; see ``runs.date_range``), newest date first, dates without a run included."""
    from reflow.store import deadlines

    run_service.known(project, pipeline)
    first, last = run_service.date_range(project, pipeline, start, end, labels=labels)
    with project.db.read() as conn:
        return deadlines.late_dates(conn, pipeline, first, last, limit=limit)


def misses_of_runs(project: Project, runs: Sequence[Run]) -> dict[int, list[DeadlineMiss]]:
    """The misses of each run's logical date (by run id; a run of an on-time date has
    none), earliest due first."""
    if not runs:
        return {}
    from reflow.store import deadlines

    with project.db.read() as conn:
        found = deadlines.misses_of_dates(conn, [(r.pipeline, r.logical_date) for r in runs])
    return {r.id: found.get((r.pipeline, r.logical_date), []) for r in runs}
