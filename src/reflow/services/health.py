"""Health and metrics of a process serving a project (the web server): its Prometheus
registry and its readiness. Both read the store on probe connections (no retry), so they
answer at once during an outage."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from reflow.core.errors import StoreUnavailable
from reflow.scheduler.metrics import StoreGauges
from reflow.scheduler.probes import Health, first_line, process_collectors
from reflow.services.project import Project
from reflow.store import monitoring


def registry(project: Project) -> CollectorRegistry:
    """A registry of the store's gauges (runs, unfinished task instances, queue depth,
    scheduler heartbeats) and of this process, read at each scrape."""
    registry = CollectorRegistry()
    registry.register(StoreGauges(project.db, pipelines=lambda: project.catalog.pipelines))
    process_collectors(registry)
    return registry


def readiness(project: Project) -> Health:
    """Ready when the database answers one cheap read and holds a reflow schema."""
    try:
        present = monitoring.schema_answers(project.db)
    except StoreUnavailable as exc:
        return Health(False, "the database cannot be read", first_line(exc))
    if not present:
        return Health(False, "the database holds no reflow schema")
    return Health(True, "the database answers")
