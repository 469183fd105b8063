"""A real project per test: pipelines folder, metadata database, local launcher."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reflow.core.config import Settings
from reflow.launchers.local import LocalLauncher
from reflow.scheduler import Scheduler
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store import tries as store_tries
from reflow.store.db import Database


@dataclass
class Env:
    home: Path
    settings: Settings
    db: Database

    @property
    def project(self) -> Project:
        return Project(self.settings, self.db)

    def write(self, name: str, source: str) -> Path:
        path = self.settings.pipelines_path / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    def scheduler(self, **kwargs: Any) -> Scheduler:
        """A scheduler that, unless told otherwise, runs only the runs a test triggers."""
        kwargs.setdefault("create_scheduled_runs", False)
        launcher = LocalLauncher(self.settings.runtime_path)
        return Scheduler(self.db, self.settings, launcher, **kwargs)

    def trigger(
        self,
        pipeline: str,
        dates: Sequence[str] = (),
        conf: dict[str, Any] | None = None,
    ) -> list[int]:
        return [r.id for r in run_service.trigger(self.project, pipeline, dates, conf)]

    def drive(
        self,
        until: Callable[[], bool],
        timeout: float = 60.0,
        scheduler: Scheduler | None = None,
        **kwargs: Any,
    ) -> Scheduler:
        """Run a scheduler in this thread until ``until()``; fail after ``timeout`` s."""
        sched = scheduler or self.scheduler(**kwargs)
        stop = threading.Event()
        timer = threading.Timer(timeout, stop.set)
        timer.start()
        try:
            sched.run(stop, until=until, idle_wait=0.05)
        finally:
            timer.cancel()
        if stop.is_set():
            pytest.fail(f"scheduler did not finish within {timeout}s")
        return sched

    def runs_done(self, run_pks: Sequence[int]) -> Callable[[], bool]:
        def check() -> bool:
            p = run_service.progress(self.project, run_pks)
            return p.done == p.total

        return check

    def run(self, run_pk: int) -> Any:
        with self.db.read() as conn:
            return store_runs.runs_by_pk(conn, [run_pk])[0]

    def tis(self, run_pk: int) -> dict[str, Any]:
        with self.db.read() as conn:
            return {t.task_id: t for t in store_runs.run_task_instances(conn, [run_pk])}

    def tries(self, run_pk: int) -> list[Any]:
        with self.db.read() as conn:
            return store_tries.tries_of(conn, run_pk=run_pk)


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[Env]:
    home = tmp_path / "project"
    home.mkdir()
    settings = Settings(
        home=home,
        database_url=db_url,
        heartbeat_interval=0.5,
        scheduler_timeout=3.0,
        parse_interval=0.2,
    )
    db = Database(db_url)
    db.migrate()
    yield Env(home, settings, db)
    db.dispose()


def wait_until(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
