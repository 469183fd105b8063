"""Fences: the ConfigMap that stops a try adopted before its start was recorded from ever
running; laid by the adopter, read around the creation of the try's pod, swept when old.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from reflow.core.config import KubernetesSettings
from reflow.core.errors import Fenced, TaskError
from reflow.launchers.kubernetes.api import NamespaceApi, _ApiError
from reflow.launchers.kubernetes.manifest import fence_manifest, fence_name, fence_selector

log = logging.getLogger("reflow.kubernetes")

_FENCE_RIGHTS = (
    " (the scheduler's Role needs get, create, delete and list on configmaps: see "
    "deploy/kubernetes/rbac-scheduler.yaml)"
)


def _fenced_message(try_id: int) -> str:
    return f"try {try_id} was declared lost by another scheduler (and retried): it must not start"


def lay_fence(api: NamespaceApi, settings: KubernetesSettings, try_id: int) -> None:
    """Create the try's fence; one that exists already (409) is as good."""
    fence = fence_manifest(try_id, settings)
    try:
        api.create_config_map(fence)
    except _ApiError as exc:
        if exc.status != 409:
            log.warning(
                "cannot fence try %s (config map %s): %s; it is looked up again later",
                try_id,
                fence["metadata"]["name"],
                exc,
            )
            raise
    log.info("try %s, never recorded as started, is fenced", try_id)


def fence_stands(api: NamespaceApi, settings: KubernetesSettings, try_id: int) -> bool:
    """Is the try fenced? A GET by name: the API server's latest state, not a cache."""
    name = fence_name(try_id, settings)
    try:
        api.read_config_map(name)
    except _ApiError as exc:
        if exc.status == 404:
            return False
        hint = _FENCE_RIGHTS if exc.status == 403 else ""
        raise TaskError(
            f"kubernetes: cannot read the fence {name} of try {try_id}: {exc}{hint}"
        ) from None
    return True


def check_fence_after_create(
    api: NamespaceApi, settings: KubernetesSettings, try_id: int, name: str, secret: bool
) -> None:
    """Delete the pod just created, and raise Fenced, if the try is fenced now.

    The API server orders every write and un-cached read. The adopter creates the fence,
    then lists the try's pods; this created the pod, and reads the fence now:
    - pod created before the adopter's list: the list finds it, and the try is adopted;
    - pod created after it: so was this read, which comes after the fence's creation
      and finds it; the pod goes before the try is reported started anywhere.
    Both can hold at once (pod before the list, fence before this read): the adopter
    then sees its pod deleted and reports the try lost. No interleaving leaves a pod
    that its try's owner does not know of. The check before the create cannot give
    this: a fence may come right after it."""
    try:
        fenced = fence_stands(api, settings, try_id)
    except TaskError as exc:  # unknown: the pod may not stay
        withdraw(api, name, secret)
        raise TaskError(f"{exc}; pod {name} deleted") from None
    if fenced:
        withdraw(api, name, secret)
        raise Fenced(f"{_fenced_message(try_id)}; its pod {name}, just created, was deleted")


def withdraw(api: NamespaceApi, name: str, secret: bool) -> None:
    """Delete a pod that must not run, at once, and its Secret (not owned by it yet).
    What cannot be deleted now is the sweep's: its try is not live."""
    try:
        api.delete_pod(name, 0)
    except _ApiError as exc:
        log.warning("cannot delete pod %s of a fenced try: %s", name, exc)
    if secret:
        with contextlib.suppress(_ApiError):
            api.delete_secret(name)


def sweep_fences(
    api: NamespaceApi, settings: KubernetesSettings, clock: Callable[[], datetime], keep: float
) -> int:
    """Delete this instance's fences older than ``keep`` seconds: a scheduler paused
    longer than that is not expected to resume (its lease was taken long ago)."""
    try:
        fences = api.list_config_maps(fence_selector(settings))
    except _ApiError as exc:
        log.warning("fence sweep skipped: %s", exc)
        return 0
    limit = clock() - timedelta(seconds=keep)
    removed = 0
    for fence in fences:
        meta = fence.get("metadata") or {}
        try:
            created = datetime.fromisoformat(
                str(meta.get("creationTimestamp")).replace("Z", "+00:00")
            )
        except ValueError:
            continue
        if created >= limit:
            continue
        with contextlib.suppress(_ApiError):
            api.delete_config_map(meta["name"])
            removed += 1
    return removed
