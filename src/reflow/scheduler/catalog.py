"""Recording what a process read from the pipelines folder in the store."""

from __future__ import annotations

from datetime import datetime

from reflow.core.discovery import Catalog
from reflow.store import pipelines as store_pipelines
from reflow.store.db import Database


def sync_catalog(db: Database, catalog: Catalog, now: datetime) -> store_pipelines.Synced:
    """Record the catalog's pipelines, versions and import problems in the store; the
    versions only move forward (see ``store.pipelines.sync_pipelines``)."""
    found = {
        name: (p.version, p.fileloc, p.structure(), catalog.stamp(name))
        for name, p in catalog.pipelines.items()
    }
    problems = {p.path: (p.message, p.detail) for p in catalog.problems}
    return db.write(lambda c: store_pipelines.sync_pipelines(c, found, problems, now))
