"""What an edit of a pipeline file does to the runs it already has, stated in one place.

The store owns each pipeline's current version, and it only moves forward (see
``store.pipelines.sync_pipelines``). A run follows the current version from the moment a
scheduler sees it; the run's earlier versions stay in its history (``run_attempts``).

==========================  ==============================================================
edit                        effect on a queued or running run
==========================  ==============================================================
task added                  a pending instance; it runs when its upstreams allow
task removed                an instance not started yet becomes ``removed``; a live one has
                            its try stopped first (reason ``task_removed``) and becomes
                            ``removed`` once the try has ended; a finished one keeps how it
                            ended
task renamed                removed + added; nothing else of the run starts until the
                            removed task's try has ended, so the same work never runs twice
task restored               its ``removed`` instance is pending again and runs
dependencies changed        followed by every instance that has not started yet
param added                 rendered with its default (the run's conf is kept as created)
param removed               dropped from rendering, kept in the run's conf
param retyped               a conf value that no longer validates fails the try with one
                            line saying which param and why
==========================  ==============================================================

A finished run keeps everything as it ended. Clearing or reprocessing it follows the
current version: finished instances of removed tasks become ``removed`` as well.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from reflow.core.states import TI_FINISHED, TI_LIVE, TIState


class Instance(Protocol):
    """The part of a task instance an edit looks at (a store record has it)."""

    @property
    def id(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def state(self) -> str: ...


@dataclass(frozen=True)
class Edit:
    """What one run's task instances need to follow a new version."""

    add: tuple[str, ...] = ()  # tasks without an instance: a pending one each
    restore: tuple[int, ...] = ()  # removed instances whose task is back: pending again
    stop: tuple[int, ...] = ()  # live instances of removed tasks: stop the try first
    remove: tuple[int, ...] = ()  # instances of removed tasks that may go now

    @property
    def empty(self) -> bool:
        return not (self.add or self.restore or self.stop or self.remove)


def edit_for(instances: Iterable[Instance], tasks: Sequence[str], *, rerun: bool) -> Edit:
    """The edit that brings ``instances`` (one run's) to the pipeline's ``tasks``.

    ``rerun``: the run is being cleared or reprocessed, so finished instances of removed
    tasks go too; otherwise they keep how they ended.
    """
    current = set(tasks)
    have: set[str] = set()
    restore: list[int] = []
    stop: list[int] = []
    remove: list[int] = []
    for ti in instances:
        have.add(ti.task_id)
        if ti.task_id in current:
            if ti.state == TIState.REMOVED:
                restore.append(ti.id)
        elif ti.state in TI_LIVE:
            stop.append(ti.id)
        elif ti.state != TIState.REMOVED and (rerun or ti.state not in TI_FINISHED):
            remove.append(ti.id)
    add = tuple(t for t in tasks if t not in have)
    return Edit(add, tuple(restore), tuple(stop), tuple(remove))


def being_removed(instances: Iterable[Instance], tasks: Container[str]) -> bool:
    """True while a live instance's task is no longer in the pipeline: its try is being
    stopped, and nothing else of the run may start before it has ended. Called every
    tick for every running run: ``tasks`` is looked into, never copied."""
    return any(ti.state in TI_LIVE and ti.task_id not in tasks for ti in instances)
