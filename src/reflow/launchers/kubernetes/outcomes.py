"""Outcomes from pod status: pure functions from what the API says of a try's pod (phase,
container state, conditions) to a failure reason and detail, or to nothing yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from reflow.core.states import FailureReason
from reflow.launchers.kubernetes.manifest import CONTAINER

_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
_NEVER_STARTED = "never started: no pod of this try exists; fenced, so that none ever runs"


def _container_status(pod: Mapping[str, Any] | None) -> dict[str, Any]:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def _container_started(pod: Mapping[str, Any]) -> datetime | None:
    """When the try's container began (``startedAt``, whole seconds), None before."""
    state = _container_status(pod).get("state") or {}
    started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    return datetime.fromisoformat(str(started).replace("Z", "+00:00")) if started else None


def _unscheduled(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "unschedulable")
    return ""


def container_state(pod: Mapping[str, Any] | None, gone: bool) -> str:
    """``waiting``, ``running``, ``terminated`` or ``gone``, for the log follower."""
    if gone:
        return "gone"
    state = _container_status(pod).get("state") or {}
    if "terminated" in state:
        return "terminated"
    if "running" in state:
        return "running"
    return "waiting"


def deleted(name: str, cancelled: bool) -> tuple[FailureReason, str]:
    """A pod deleted before its container ended: by reflow's cancel, or by someone else."""
    if cancelled:
        return FailureReason.ERROR, "pod deleted"
    return FailureReason.LOST, f"pod {name} was deleted outside reflow"


def finished(
    status: Mapping[str, Any], terminated: Mapping[str, Any]
) -> tuple[int | None, FailureReason | None, str]:
    """The exit code, failure reason (None: succeeded) and detail of a pod that ended."""
    code = terminated.get("exitCode")
    why = status.get("reason")
    message = status.get("message") or terminated.get("message") or ""
    if why == "Evicted":
        return code, FailureReason.EVICTED, f"evicted: {message}".strip()
    if why == "DeadlineExceeded":
        return code, FailureReason.TIMED_OUT, "activeDeadlineSeconds exceeded"
    oom = terminated.get("reason") == "OOMKilled"
    if status.get("phase") == "Succeeded" and code in (0, None):
        # The phase and the exit code decide. A child killed for memory while the main
        # process went on to exit 0 is the task's own business: kept as a detail.
        if oom:
            return (
                0,
                None,
                "OOMKilled: a process of the container was killed for memory; "
                "the main process exited 0",
            )
        return 0, None, ""
    if oom:
        return code, FailureReason.OOM_KILLED, "OOMKilled: the container hit its memory limit"
    detail = f"exit code {code}" if code is not None else "pod failed"
    if terminated.get("reason") not in (None, "Error", "Completed"):
        detail += f" ({terminated['reason']})"
    if message:
        detail += f": {message}"
    return code, FailureReason.ERROR, detail


def not_starting(
    status: Mapping[str, Any],
    container: Mapping[str, Any],
    pending_for: float,
    startup_timeout: float,
) -> tuple[FailureReason, str] | None:
    """Why a pod not started yet never will (its image cannot be pulled, its container
    cannot be created, it stayed pending past ``startup_timeout``); None: it may still."""
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason, message = waiting.get("reason"), waiting.get("message") or ""
    if reason in _PULL_ERRORS:
        return FailureReason.IMAGE_PULL, f"{reason}: {message}".strip()
    if reason in _CONFIG_ERRORS:
        return FailureReason.CONFIG_ERROR, f"{reason}: {message}".strip()
    if status.get("phase") == "Pending" and pending_for > startup_timeout:
        why = _unscheduled(status) or f"still pending ({reason or 'not started'})"
        return (
            FailureReason.UNSCHEDULABLE,
            f"not started within {startup_timeout:g}s: {why}",
        )
    return None
