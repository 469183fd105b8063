"""A reflow project: its settings, metadata database and pipeline catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reflow.core.config import Settings, load_settings
from reflow.core.errors import Conflict, NotFound
from reflow.core.naming import utcnow
from reflow.store import pipelines as store_pipelines
from reflow.store.db import Database

if TYPE_CHECKING:  # a command that reads no pipeline file loads neither these nor the scheduler
    from reflow.core.discovery import Catalog
    from reflow.core.pipeline import Pipeline
    from reflow.launchers.base import Launcher


@dataclass
class Project:
    settings: Settings
    db: Database
    _catalog: Catalog | None = field(default=None, repr=False)
    # Pipelines this process read from an older file than their current version (recorded
    # by another process): name -> current version. Never run from this copy.
    stale: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, home: Path | None = None, **overrides: Any) -> Project:
        """Load settings and bring the database schema up to date (created on first use)."""
        settings = load_settings(home, **overrides)
        # A process frozen inside a transaction must not hold the locks others need to
        # declare it dead: well within scheduler_timeout, the server ends its session.
        db = Database(
            settings.database, idle_transaction_timeout=max(5.0, settings.scheduler_timeout / 2)
        )
        db.migrate()
        return cls(settings, db)

    @property
    def catalog(self) -> Catalog:
        """Pipelines read from the pipelines folder and recorded in the store."""
        if self._catalog is None:
            from reflow.core.discovery import Catalog
            from reflow.scheduler.catalog import sync_catalog

            self._catalog = Catalog(self.settings.pipelines_path)
            self._catalog.refresh()
            self.stale = sync_catalog(self.db, self._catalog, utcnow()).stale
        return self._catalog

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline as this process read it; Conflict when another process recorded a
        newer version of it since (this copy must not create or re-run anything)."""
        pipeline = self.catalog.pipelines.get(name)
        if pipeline is not None and name in self.stale:
            raise Conflict(
                f"pipeline {name!r}: {pipeline.fileloc} as read by this process (version "
                f"{pipeline.version}) is older than its current version {self.stale[name]}, "
                "recorded by another process; run the command again (if the file did not "
                "change, a module it imports did: touch the pipeline file)"
            )
        if pipeline is not None:
            return pipeline
        broken = [p.message for p in self.catalog.problems if f"pipeline {name!r}" in p.message]
        if broken:
            raise NotFound(broken[0])
        # Known to the store, from a file that does not load now: say so, not "unknown".
        with self.db.read() as conn:
            rows = store_pipelines.pipeline_rows(conn, [name])
        failing = {p.path: p.message for p in self.catalog.problems}
        if rows and rows[0].fileloc in failing:
            raise NotFound(
                f"pipeline {name!r} cannot be used until its file loads again "
                f"(its runs wait meanwhile): {failing[rows[0].fileloc]}"
            )
        known = ", ".join(sorted(self.catalog.pipelines)) or "none"
        raise NotFound(
            f"unknown pipeline {name!r} (known: {known}; folder: {self.settings.pipelines_path})"
        )

    def launcher(self) -> Launcher:
        """Every launcher the configuration can route a try to, each made on first use."""
        from reflow.launchers.local import LocalLauncher
        from reflow.launchers.router import Launchers

        def kubernetes() -> Launcher:
            from reflow.launchers.kubernetes.launcher import KubernetesLauncher

            return KubernetesLauncher(self.settings.kubernetes)

        configured = {self.settings.launcher, *self.settings.launchers.values()}
        return Launchers(
            {"local": lambda: LocalLauncher(self.settings.runtime_path), "kubernetes": kubernetes},
            eager=sorted(configured),
        )

    def close(self) -> None:
        self.db.dispose()
