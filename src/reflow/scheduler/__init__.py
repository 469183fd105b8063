"""The scheduling loop."""

from reflow.scheduler.loop import Scheduler, run_id_for, sync_catalog, utcnow

__all__ = ["Scheduler", "run_id_for", "sync_catalog", "utcnow"]
