"""The scheduling loop."""

from reflow.scheduler.loop import Scheduler

__all__ = ["Scheduler"]
