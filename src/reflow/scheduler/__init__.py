"""The scheduling loop. ``Scheduler`` is imported on first use: a command that only needs
a small part of this package (who else is scheduling) does not load the loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reflow.scheduler.loop import Scheduler

__all__ = ["Scheduler"]


def __getattr__(name: str) -> Any:
    if name == "Scheduler":
        from reflow.scheduler.loop import Scheduler

        return Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
