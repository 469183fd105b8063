"""Readiness: what a running run's task instances may do next. Pure: no database, no clock.

Given the instances of one run (their task, state and retry time), the pipeline's tasks
(their upstreams, and whether they are plain join points) and the time, :func:`decide`
says which instances are ready to start, which succeed at once (a plain ``Task`` is a
no-op join point), which can never run (an upstream failed), and whether the run is
over. The scheduler reads, calls this outside any write transaction, then applies the
decision as guarded transitions.

One pass in topological order is a fixpoint: an instance decided ``success`` or
``upstream_failed`` here is seen so by its downstreams in the same pass, so nothing
changes when the same inputs are decided again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from reflow.core import edits
from reflow.core.edits import being_removed
from reflow.core.pipeline import Pipeline, Task
from reflow.core.states import (
    TI_FAILED_RESULTS,
    TI_FINISHED,
    TI_UPSTREAM_BAD,
    TI_UPSTREAM_OK,
    RunState,
    TIState,
)


class Instance(edits.Instance, Protocol):
    """What readiness needs of a task instance (a store row has it): what an edit looks
    at, and when its next try may start."""

    @property
    def next_try_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Step:
    """A task as readiness sees it: its upstream tasks, and whether it is a plain ``Task``
    (a join point that succeeds without a try)."""

    upstream_ids: frozenset[str]
    no_op: bool = False


@dataclass(frozen=True)
class Shape:
    """A pipeline version as readiness sees it: its steps, in topological order."""

    steps: Mapping[str, Step]
    order: Mapping[str, int]

    @classmethod
    def of(cls, pipeline: Pipeline) -> Shape:
        steps = {
            task_id: Step(frozenset(task.upstream_ids), no_op=type(task) is Task)
            for task_id, task in pipeline.tasks.items()
        }
        return cls(steps, {t: i for i, t in enumerate(pipeline.topological())})


@dataclass
class Decision:
    """What to do with one run. ``scheduled`` maps the state an instance leaves (pending,
    or up for retry) to the instances that become ``scheduled``: ready to launch."""

    scheduled: dict[TIState, list[int]] = field(default_factory=dict)
    no_ops: list[int] = field(default_factory=list)
    upstream_failed: list[int] = field(default_factory=list)
    # The run's end (success or failed) when every instance has finished.
    outcome: RunState | None = None
    # A removed task's try is being stopped: nothing else of the run starts meanwhile.
    held: bool = False

    @property
    def writes(self) -> bool:
        return bool(self.scheduled or self.no_ops or self.upstream_failed or self.outcome)


def decide(instances: Iterable[Instance], shape: Shape, now: datetime) -> Decision:
    """The next steps of one running run whose task instances are ``instances``."""
    instances = list(instances)
    if being_removed(instances, shape.steps):
        return Decision(held=True)
    decision = Decision()
    state = {ti.task_id: TIState(ti.state) for ti in instances}
    ordered = sorted(instances, key=lambda ti: shape.order.get(ti.task_id, 0))
    for ti in ordered:
        step = shape.steps.get(ti.task_id)
        if step is None:
            continue  # a removed task's finished instance
        current = state[ti.task_id]
        ready = False
        if current == TIState.PENDING:
            ups = [state.get(u, TIState.PENDING) for u in step.upstream_ids]
            if any(u in TI_UPSTREAM_BAD for u in ups):
                decision.upstream_failed.append(ti.id)
                state[ti.task_id] = TIState.UPSTREAM_FAILED
            else:
                ready = all(u in TI_UPSTREAM_OK for u in ups)
        elif current == TIState.UP_FOR_RETRY:
            ready = ti.next_try_at is None or ti.next_try_at <= now
        if ready and step.no_op:
            decision.no_ops.append(ti.id)
            state[ti.task_id] = TIState.SUCCESS
        elif ready:
            decision.scheduled.setdefault(current, []).append(ti.id)
            state[ti.task_id] = TIState.SCHEDULED
    if state and all(s in TI_FINISHED for s in state.values()):
        failed = any(s in TI_FAILED_RESULTS for s in state.values())
        decision.outcome = RunState.FAILED if failed else RunState.SUCCESS
    return decision
