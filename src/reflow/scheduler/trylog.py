"""reflow's own lines in a try's log: what the try runs and how it ended, next to the task's
output, where whoever looks at a failed try looks first (a killed try has no output).

Each line starts with ``[reflow] `` and a UTC timestamp, so readers and parsers can tell it
from the task's output. Secrets are masked as the log reader masks them. Everything here
is a pure function of its arguments but :func:`note`, which appends lines to a log.
"""

from __future__ import annotations

import json
import logging
import shlex
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from reflow.core import trylines
from reflow.core.config import Settings
from reflow.core.masking import Secrets, scrub
from reflow.core.pipeline import Pipeline, Task
from reflow.core.spec import Outcome, TrySpec
from reflow.core.states import FailureReason, RunState
from reflow.launchers.kubernetes.manifest import pod_name

log = logging.getLogger("reflow.scheduler")

# Each pipeline's secrets at its version: reading them walks the whole pipeline.
_SECRETS: weakref.WeakKeyDictionary[Pipeline, tuple[str, Secrets]] = weakref.WeakKeyDictionary()


def seconds(value: float) -> str:
    return f"{value:g} s"


def where(
    launcher: str,
    host: str,
    *,
    namespace: str | None = None,
    pod: str | None = None,
    context: str | None = None,
) -> str:
    """Where a try runs: its launcher and host; for a pod, its namespace and name."""
    if launcher != "kubernetes":
        return f"launcher {launcher}, host {host}"
    text = f"launcher kubernetes, namespace {namespace}, pod {pod or '(none yet)'}"
    if context:
        text += f", context {context}"
    return f"{text} (scheduler on host {host})"


def _mask(text: str, values: Sequence[str]) -> str:
    # A secret also appears JSON-escaped (a conf or a run context passed as JSON).
    escaped = [json.dumps(v)[1:-1] for v in values]
    return scrub(text, sorted({*values, *escaped}, key=len, reverse=True))


def header(
    *,
    pipeline: str,
    run_id: str,
    attempt: int,
    task_id: str,
    try_number: int,
    conf: Mapping[str, Any] | None,
    secrets: Secrets,
    runs_on: str,
    timeout: float | None,
    kill_grace: float,
    run_timeout: float | None,
    argv: Sequence[str] | None,
) -> list[str]:
    """The lines that open a try's log: which try, where it runs, its timeout, the run
    attempt's conf and the command (None when it could not be rendered), secrets masked."""
    values = secrets.values([conf or {}])
    limit = seconds(timeout) if timeout else "none"
    limits = f"timeout: {limit} (kill grace {seconds(kill_grace)})"
    if run_timeout:
        limits += f"; run timeout: {seconds(run_timeout)}"
    lines = [
        f"try {try_number} of task {task_id}, run {run_id} (attempt {attempt}) of {pipeline}",
        f"runs on: {runs_on}",
        limits,
        "conf: " + _mask(json.dumps(secrets.conf(conf), sort_keys=True, default=str), values),
    ]
    if argv is not None:
        command = shlex.join(_mask(arg, values) for arg in argv)
        lines += f"command: {command}".splitlines()
    return lines


def opening(
    settings: Settings,
    host: str,
    run: Any,
    pipeline: Pipeline,
    task: Task,
    try_number: int,
    spec: TrySpec | None,
) -> list[str]:
    """:func:`header` of a try of ``task`` in ``run`` (a run row), started by a scheduler
    on ``host``; ``spec`` is None when the try could not be rendered."""
    if spec is not None:
        launcher = spec.launcher
    else:
        launcher = settings.launcher_for(run.pipeline, task.task_id)
    k8s = settings.kubernetes
    pod = pod_name(spec) if spec is not None and launcher == "kubernetes" else None
    return header(
        pipeline=run.pipeline,
        run_id=run.run_id,
        attempt=run.attempt,
        task_id=task.task_id,
        try_number=try_number,
        conf=run.conf,
        secrets=secrets_of(pipeline),
        runs_on=where(launcher, host, namespace=k8s.namespace, pod=pod, context=k8s.context),
        timeout=task.option("timeout"),
        kill_grace=float(task.option("kill_grace")),
        run_timeout=pipeline.run_timeout,
        argv=spec.argv if spec is not None else None,
    )


def secrets_of(pipeline: Pipeline) -> Secrets:
    """What the log reader masks in the logs of ``pipeline`` (``services.runs.secrets_of``),
    worked out once per pipeline version."""
    known = _SECRETS.get(pipeline)
    if known is None or known[0] != pipeline.version:
        secrets = Secrets.of(pipeline.structure(), pipeline.params.secret_names())
        known = _SECRETS[pipeline] = (pipeline.version, secrets)
    return known[1]


def fenced(detail: str) -> str:
    return f"not started: {detail}"


def taken_over(scheduler: int, host: str, alive: bool) -> str:
    state = "still runs" if alive else "is no longer running"
    return (
        f"taken over by scheduler {scheduler} on host {host}: the scheduler that watched "
        f"this try stopped or was declared dead; the try {state}"
    )


def ended(row: Any, outcome: Outcome, ok: bool, reason: str | None) -> str:
    """How a try ended, from its row (``store.tries.try_rows``) and its outcome as recorded:
    ``ok`` and ``reason`` as the scheduler decided them."""
    code = outcome.exit_code
    status = f"exit code {code}" if code is not None else "no exit code"
    detail = outcome.detail or ""
    # The launcher's detail, when it says more than the exit code.
    how = detail if detail.startswith(status) else f"{status}; {detail}" if detail else status
    if ok:
        if row.cancel_reason:
            return f"ended: success, {status} (it had been asked to stop: {row.cancel_reason})"
        return f"ended: success, {status}"
    if reason == FailureReason.TIMED_OUT:
        limit = _timeout_of(row)
        after = f" after {seconds(limit)}" if limit is not None else ""
        return f"ended: timed out{after} (the task's timeout) and was stopped: {how}"
    if reason == FailureReason.RUN_TIMED_OUT:
        return f"ended: stopped because its run timed out (run_timeout): {how}"
    if reason == FailureReason.KILLED:
        return f"ended: cancelled on request (reason: killed, {_why_killed(row.run_state)}): {how}"
    if reason == FailureReason.LOST:
        return (
            f"ended: lost ({detail or 'it vanished without an exit status'}): its scheduler "
            "or host died, or its process or pod disappeared"
        )
    if reason == FailureReason.ERROR and code is None and row.started_at is None:
        return f"ended: could not start the try: {detail or 'unknown error'}"
    kind = "" if reason in (None, FailureReason.ERROR) else f" ({reason})"
    return f"ended: failed{kind}, {how}"


def _why_killed(run_state: str) -> str:
    """Why reflow stopped a try with reason ``killed``, from its run's state."""
    if run_state == RunState.CANCELLED:
        return "its run was cancelled"
    if run_state in (RunState.SUCCESS, RunState.FAILED):
        return f"its run was marked {run_state}"
    return f"its run is {run_state}"


def _timeout_of(row: Any) -> float | None:
    """The task timeout the try had: its deadline counts from its start (from its queueing
    when the start was never recorded)."""
    since = row.started_at or row.queued_at
    if row.deadline is None or since is None:
        return None
    return round(float((row.deadline - since).total_seconds()), 3)


def note(path: Path, lines: Sequence[str], at: datetime) -> None:
    """Append lines of reflow's own to a try's log, if it can be written (a log that
    cannot be written never stops the scheduler)."""
    try:
        trylines.write(path, trylines.stamped(at, lines))
    except OSError as exc:
        log.warning("cannot write to %s: %s", path, exc)
