"""What must hold after any fault (design semantics 1, 6 and 8), checked from two witnesses:
the metadata database, and the evidence file that every task execution appends to.

Tasks built with :func:`evidence_step` write one line when they start and one when they
end (``ok`` after their work, ``term`` when stopped by SIGTERM)::

    start <pipeline> <run_id> <task> <try_number> <pid> <epoch seconds>
    end   <pipeline> <run_id> <task> <try_number> <pid> <epoch seconds> ok|term

:func:`check_invariants` returns the violations as readable sentences (an empty list when
everything held) and prints what it checked.
"""

from __future__ import annotations

import itertools
import math
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import select

from reflow.core.states import TI_FINISHED, RunState, TIState, TryState
from reflow.store.db import Database
from reflow.store.models import events, run_attempts, runs, task_instances, tries

_FINISHED_RUNS = {RunState.SUCCESS.value, RunState.FAILED.value, RunState.CANCELLED.value}
_FINISHED_TIS = {s.value for s in TI_FINISHED}


def evidence_step(evidence: Path, seconds: float) -> str:
    """A Shell command that does ``seconds`` of work and records its execution."""
    return _MARK_FUNCTION.format(file=shlex.quote(str(evidence))) + (
        f"mark start; sleep {seconds}; mark end ok"
    )


def stubborn_step(evidence: Path, seconds: float) -> str:
    """Like :func:`evidence_step`, for a task meant to be stopped (by its timeout): on
    SIGTERM it records ``term`` and exits 143 at once (once: a stop signals the process
    group and each process in it, so the signal may come twice)."""
    return _MARK_FUNCTION.format(file=shlex.quote(str(evidence))) + (
        f"trap 'trap \"\" TERM; mark end term; exit 143' TERM; mark start; sleep {seconds} & wait"
    )


# $1: start|end; $2: how it ended. The values of the run context are quoted by reflow.
_MARK_FUNCTION = (
    "mark() {{ echo $1 {{{{ pipeline }}}} {{{{ run_id }}}} {{{{ task }}}} {{{{ try_number }}}}"
    " $$ $(date +%s.%N) $2 >> {file}; }}; "
)


@dataclass(frozen=True)
class Expect:
    """What one pipeline of a workload must end with.

    ``fails_with``: None when every run must succeed; else every run must fail, and each
    of its failed task instances with this reason (a deliberate timeout, say).
    """

    tasks: tuple[str, ...]
    runs: int
    max_active_runs: int
    fails_with: str | None = None


@dataclass
class Execution:
    """One process of one try, as the task itself reported it."""

    pipeline: str
    run_id: str
    task: str
    try_number: int
    pid: int
    start: float
    end: float | None = None
    how: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.pipeline, self.run_id, self.task)

    def describe(self) -> str:
        end = f"{self.end:.3f} ({self.how})" if self.end is not None else "no end"
        return f"try {self.try_number} pid {self.pid} [{self.start:.3f} .. {end}]"


@dataclass
class Evidence:
    executions: list[Execution] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_evidence(path: Path) -> Evidence:
    """Pair the start and end lines of the evidence file into executions."""
    found = Evidence()
    if not path.exists():
        return found
    open_: dict[tuple[str, str, str, int, int], Execution] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        try:
            kind, pipeline, run_id, task, try_number, pid, at = words[:7]
            ident = (pipeline, run_id, task, int(try_number), int(pid))
            stamp = float(at)
        except ValueError:
            found.problems.append(f"evidence line {number} is malformed: {line!r}")
            continue
        if kind == "start":
            if ident in open_:
                found.problems.append(f"evidence line {number}: a second start of {ident}")
            execution = Execution(pipeline, run_id, task, ident[3], ident[4], stamp)
            open_[ident] = execution
            found.executions.append(execution)
        elif kind == "end" and ident in open_:
            execution = open_.pop(ident)
            execution.end = stamp
            execution.how = words[7] if len(words) > 7 else "?"
        else:
            found.problems.append(f"evidence line {number} ends nothing started: {line!r}")
    return found


def check_invariants(
    db_url: str,
    evidence_file: Path,
    pipelines: Mapping[str, Expect],
) -> list[str]:
    """Every violation of the fault-tolerance invariants, as sentences; [] when all held.

    Call it once every scheduler has stopped: a run or try still live is a violation.
    """
    db = Database(db_url)
    try:
        with db.read() as conn:
            state = _State(
                runs=conn.execute(select(runs).order_by(runs.c.id)).all(),
                attempts=conn.execute(select(run_attempts)).all(),
                tis=conn.execute(select(task_instances)).all(),
                tries=conn.execute(select(tries).order_by(tries.c.id)).all(),
                run_events=conn.execute(
                    select(events).where(events.c.entity == "run").order_by(events.c.id)
                ).all(),
            )
    finally:
        db.dispose()
    evidence = read_evidence(evidence_file)
    violations = list(evidence.problems)
    checked: list[str] = []
    for check in (
        _nothing_half_written,
        _no_run_lost_or_stuck,
        _every_limit_held,
        _no_overlapping_execution,
        _no_finished_try_ran_again,
    ):
        found, said = check(state, evidence, pipelines)
        violations += found
        checked.append(said)
    print("invariants checked:\n  " + "\n  ".join(checked))
    if violations:
        print("violations:\n  " + "\n  ".join(violations))
    return violations


@dataclass
class _State:
    runs: Sequence[Any]
    attempts: Sequence[Any]
    tis: Sequence[Any]
    tries: Sequence[Any]
    run_events: Sequence[Any]

    def __post_init__(self) -> None:
        self.run_by_pk = {r.id: r for r in self.runs}
        self.ti_by_pk = {t.id: t for t in self.tis}
        self.tries_by_ti: dict[int, list[Any]] = defaultdict(list)
        for t in self.tries:
            self.tries_by_ti[t.ti].append(t)

    def name(self, ti: Any) -> str:
        run = self.run_by_pk.get(ti.run)
        where = f"{run.pipeline} {run.run_id}" if run is not None else f"run pk {ti.run}"
        return f"{where} {ti.task_id}"

    def ti_for(self, key: tuple[str, str, str]) -> Any | None:
        for ti in self.tis:
            run = self.run_by_pk.get(ti.run)
            if run is not None and (run.pipeline, run.run_id, ti.task_id) == key:
                return ti
        return None


_Result = tuple[list[str], str]


def _nothing_half_written(state: _State, _e: Evidence, pipelines: Mapping[str, Expect]) -> _Result:
    out: list[str] = []
    attempts = {(a.run, a.attempt) for a in state.attempts}
    tis_of: dict[int, list[str]] = defaultdict(list)
    for ti in state.tis:
        tis_of[ti.run].append(ti.task_id)
    for run in state.runs:
        missing = [n for n in range(1, run.attempt + 1) if (run.id, n) not in attempts]
        if missing:
            out.append(f"run {run.pipeline} {run.run_id} has no attempt row for {missing}")
        expect = pipelines.get(run.pipeline)
        have = Counter(tis_of.get(run.id, []))
        if expect is not None and sorted(have.elements()) != sorted(expect.tasks):
            out.append(
                f"run {run.pipeline} {run.run_id} has task instances {sorted(have.elements())}, "
                f"expected one of each of {sorted(expect.tasks)}"
            )
    for t in state.tries:
        ti = state.ti_by_pk.get(t.ti)
        if ti is None:
            out.append(f"try {t.id} belongs to no task instance (ti {t.ti})")
        elif ti.run != t.run:
            out.append(f"try {t.id} names run {t.run} but its task instance is in run {ti.run}")
    for ti in state.tis:
        if ti.run not in state.run_by_pk:
            out.append(f"task instance {ti.id} belongs to no run ({ti.run})")
        numbers = sorted(t.try_number for t in state.tries_by_ti.get(ti.id, []))
        if numbers != list(range(1, ti.try_number + 1)):
            out.append(
                f"{state.name(ti)}: try_number is {ti.try_number} but its tries are numbered "
                f"{numbers}"
            )
    said = (
        f"nothing half-written: {len(state.runs)} runs with their attempt rows and one task "
        f"instance per task, {len(state.tries)} tries each of an existing task instance"
    )
    return out, said


def _no_run_lost_or_stuck(state: _State, _e: Evidence, pipelines: Mapping[str, Expect]) -> _Result:
    out: list[str] = []
    count = Counter(r.pipeline for r in state.runs)
    for name, wanted in pipelines.items():
        if count[name] != wanted.runs:
            out.append(f"pipeline {name} has {count[name]} runs, expected {wanted.runs}")
    for run in state.runs:
        expect = pipelines.get(run.pipeline)
        label = f"run {run.pipeline} {run.run_id}"
        if run.state not in _FINISHED_RUNS:
            out.append(f"{label} is stuck {run.state}")
            continue
        tis = [ti for ti in state.tis if ti.run == run.id]
        unfinished = [f"{ti.task_id}:{ti.state}" for ti in tis if ti.state not in _FINISHED_TIS]
        if unfinished:
            out.append(f"{label} ended {run.state} with unfinished task instances {unfinished}")
        if expect is None:
            continue
        if expect.fails_with is None:
            if run.state != RunState.SUCCESS:
                why = [f"{ti.task_id}:{ti.state}({ti.failure_reason})" for ti in tis]
                out.append(f"{label} ended {run.state}, expected success: {why}")
        else:
            failed = [ti for ti in tis if ti.state == TIState.FAILED]
            if run.state != RunState.FAILED or not failed:
                out.append(f"{label} ended {run.state}, expected failed ({expect.fails_with})")
            for ti in failed:
                if ti.failure_reason != expect.fails_with:
                    out.append(
                        f"{label} {ti.task_id} failed with reason {ti.failure_reason!r}, "
                        f"expected {expect.fails_with!r}"
                    )
    for t in state.tries:
        if t.state in (TryState.QUEUED, TryState.RUNNING) or t.ended_at is None:
            ti = state.ti_by_pk.get(t.ti)
            label = state.name(ti) if ti is not None else f"ti {t.ti}"
            out.append(f"try {t.try_number} of {label} left {t.state} after the schedulers ended")
    said = (
        f"no run lost or stuck: {dict(count)} runs all finished as expected, "
        "no try left queued or running"
    )
    return out, said


def _every_limit_held(state: _State, _e: Evidence, pipelines: Mapping[str, Expect]) -> _Result:
    out: list[str] = []
    pipeline_of = {r.id: r.pipeline for r in state.runs}
    running: dict[str, set[int]] = defaultdict(set)
    peak: Counter[str] = Counter()
    for ev in state.run_events:
        name = pipeline_of.get(ev.entity_id)
        if name is None:
            continue
        if ev.new == RunState.RUNNING:
            running[name].add(ev.entity_id)
        elif ev.old == RunState.RUNNING:
            running[name].discard(ev.entity_id)
        peak[name] = max(peak[name], len(running[name]))
    for name, expect in pipelines.items():
        if peak[name] > expect.max_active_runs:
            out.append(
                f"pipeline {name} had {peak[name]} runs running at once, "
                f"max_active_runs is {expect.max_active_runs}"
            )
    said = f"max_active_runs held: peak running runs per pipeline {dict(peak)}"
    return out, said


def _no_overlapping_execution(
    state: _State, evidence: Evidence, _p: Mapping[str, Expect]
) -> _Result:
    out: list[str] = []
    # An execution without an end line ended at the latest when its try was recorded over.
    ended_at: dict[tuple[str, str, str, int], float] = {}
    for t in state.tries:
        ti = state.ti_by_pk.get(t.ti)
        run = state.run_by_pk.get(t.run)
        if ti is not None and run is not None and t.ended_at is not None:
            ended_at[(run.pipeline, run.run_id, ti.task_id, t.try_number)] = t.ended_at.timestamp()
    by_key: dict[tuple[str, str, str], list[tuple[float, float, Execution]]] = defaultdict(list)
    alive: list[str] = []
    for ex in evidence.executions:
        end = ex.end
        if end is None:
            end = ended_at.get((*ex.key, ex.try_number), math.inf)
            if _running(ex.pid):
                alive.append(f"{' '.join(ex.key)} {ex.describe()}")
        by_key[ex.key].append((ex.start, end, ex))
    for key, spans in by_key.items():
        spans.sort(key=lambda s: s[0])
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                out.append(
                    f"{' '.join(key)} ran twice at once: {first.describe()} and {second.describe()}"
                )
    out += [f"{x} is still running after the schedulers ended" for x in alive]
    # The store's own view: the tries of a task instance follow one another.
    for ti_pk, of_ti in state.tries_by_ti.items():
        ordered = sorted(of_ti, key=lambda t: t.queued_at)
        for a, b in itertools.pairwise(ordered):
            if a.ended_at is None or b.queued_at < a.ended_at:
                out.append(
                    f"{state.name(state.ti_by_pk[ti_pk])}: try {b.try_number} was queued "
                    f"before try {a.try_number} ended"
                )
    said = (
        f"no overlapping execution: {len(evidence.executions)} executions of "
        f"{len(by_key)} task instances (evidence), {len(state.tries)} tries (store); "
        "no task process left behind"
    )
    return out, said


def _no_finished_try_ran_again(
    state: _State, evidence: Evidence, _p: Mapping[str, Expect]
) -> _Result:
    out: list[str] = []
    runs_of: dict[tuple[str, str, str, int], list[Execution]] = defaultdict(list)
    for ex in evidence.executions:
        runs_of[(*ex.key, ex.try_number)].append(ex)
    known: set[tuple[str, str, str, int]] = set()
    for t in state.tries:
        ti = state.ti_by_pk.get(t.ti)
        run = state.run_by_pk.get(t.run)
        if ti is None or run is None:
            continue
        key = (run.pipeline, run.run_id, ti.task_id, t.try_number)
        known.add(key)
        label = f"{run.pipeline} {run.run_id} {ti.task_id} try {t.try_number}"
        executions = runs_of.get(key, [])
        if len(executions) > 1:
            out.append(
                f"{label} executed {len(executions)} times: "
                + "; ".join(e.describe() for e in executions)
            )
        if t.state == TryState.SUCCESS and not any(e.how == "ok" for e in executions):
            out.append(f"{label} is recorded success but never finished its work")
        done = [e for e in executions if e.how == "ok"]
        if done and t.state != TryState.SUCCESS:
            out.append(
                f"{label} finished its work ({done[0].describe()}) but is recorded {t.state} "
                f"({t.failure_reason}): its outcome was lost"
            )
        if done or t.state == TryState.SUCCESS:
            later = [x.try_number for x in state.tries_by_ti[ti.id] if x.try_number > t.try_number]
            if later:
                out.append(f"{label} finished, yet the task instance ran again as tries {later}")
    for key, executions in runs_of.items():
        if key not in known:
            out.append(
                f"{' '.join(key[:3])} executed a try {key[3]} the store has no record of: "
                + "; ".join(e.describe() for e in executions)
            )
    per_ti = Counter((ex.key) for ex in evidence.executions)
    said = (
        "no finished try ran again: every execution is one recorded try, every success "
        f"finished its work once ({sum(per_ti.values())} executions)"
    )
    return out, said


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def summary(items: Iterable[str]) -> str:
    """The violations as one assertion message."""
    return "invariants violated:\n  " + "\n  ".join(items)
