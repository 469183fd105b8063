"""The scheduling loop."""

from reflow.core.naming import utcnow
from reflow.scheduler.catalog import sync_catalog
from reflow.scheduler.loop import Scheduler

__all__ = ["Scheduler", "sync_catalog", "utcnow"]
