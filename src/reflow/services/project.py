"""A reflow project: its settings, metadata database and pipeline catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reflow.core.config import Settings, load_settings
from reflow.core.discovery import Catalog
from reflow.core.errors import NotFound
from reflow.core.pipeline import Pipeline
from reflow.launchers.base import Launcher
from reflow.scheduler import sync_catalog, utcnow
from reflow.store.db import Database


@dataclass
class Project:
    settings: Settings
    db: Database
    _catalog: Catalog | None = field(default=None, repr=False)

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
            self._catalog = Catalog(self.settings.pipelines_path)
            self._catalog.refresh()
            sync_catalog(self.db, self._catalog, utcnow())
        return self._catalog

    def pipeline(self, name: str) -> Pipeline:
        pipeline = self.catalog.pipelines.get(name)
        if pipeline is not None:
            return pipeline
        broken = [p.message for p in self.catalog.problems if f"pipeline {name!r}" in p.message]
        if broken:
            raise NotFound(broken[0])
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
