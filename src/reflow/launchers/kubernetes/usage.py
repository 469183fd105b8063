"""What a pod held, from what the API says of it: pure functions from a pod object to a
:class:`~reflow.core.cost.Held` (its requests, node selector, ephemeral volume claims, and
from when it was scheduled to when it ended).

A pod holds what it *requests* on its node, used or not, so that is what it is priced by.
Its request of a resource is what the scheduler reserves: the sum over its containers,
or the largest request of an init container if that is more (they run one at a time,
before the others), plus the pod's overhead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from reflow.core.cost import Held
from reflow.core.pod import quantity

_CPU, _MEMORY, _EPHEMERAL = "cpu", "memory", "ephemeral-storage"


def requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What a pod spec reserves on its node, by resource."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or ():
        for name, amount in _requested(container).items():
            total[name] = total.get(name, Decimal(0)) + amount
    for container in spec.get("initContainers") or ():
        for name, amount in _requested(container).items():
            total[name] = max(total.get(name, Decimal(0)), amount)
    for name, amount in (spec.get("overhead") or {}).items():
        total[str(name)] = total.get(str(name), Decimal(0)) + _amount(amount)
    return total


def _requested(container: Mapping[str, Any]) -> dict[str, Decimal]:
    """A container's requests; a limit without a request is its request, as the API
    server defaults it."""
    resources = container.get("resources") or {}
    found = {str(k): _amount(v) for k, v in (resources.get("limits") or {}).items()}
    found |= {str(k): _amount(v) for k, v in (resources.get("requests") or {}).items()}
    return found


def _amount(value: Any) -> Decimal:
    try:
        return quantity(value)
    except Exception:  # the API server validated it; a value it let through counts as 0
        return Decimal(0)


def _claims(spec: Mapping[str, Any]) -> tuple[tuple[Decimal, str], ...]:
    """The pod's ephemeral volume claims (scratch space): size and storage class."""
    found = []
    for volume in spec.get("volumes") or ():
        template = ((volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}).get("spec")
        if not template:
            continue
        size = ((template.get("resources") or {}).get("requests") or {}).get("storage")
        if size is not None:
            found.append((_amount(size), str(template.get("storageClassName") or "default")))
    return tuple(found)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def scheduled_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod was bound to a node; failing that, when a container of it started."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        bound = condition.get("type") == "PodScheduled" and condition.get("status") == "True"
        if bound and (when := _time(condition.get("lastTransitionTime"))) is not None:
            return when
    starts = [
        _time((s.get("state") or {}).get(k, {}).get("startedAt"))
        for s in _statuses(status)
        for k in ("running", "terminated")
    ]
    return min((s for s in starts if s is not None), default=None)


def finished_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the last of its containers ended, if all have."""
    ends = []
    for status in _statuses(pod.get("status") or {}):
        terminated = (status.get("state") or {}).get("terminated")
        if not terminated:
            return None
        ends.append(_time(terminated.get("finishedAt")))
    known = [e for e in ends if e is not None]
    return max(known) if known and len(known) == len(ends) else None


def _statuses(status: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    return status.get("containerStatuses") or ()


def held(pod: Mapping[str, Any], now: datetime, kind: str = "pod") -> Held:
    """What ``pod`` held, from its scheduling to its end (its containers' end, else
    ``now``: the pod was deleted or is being given up on)."""
    spec = pod.get("spec") or {}
    wanted = requests(spec)
    began = scheduled_at(pod)
    ended = finished_at(pod) or now
    return Held(
        kind,
        str((pod.get("metadata") or {}).get("name") or ""),
        began,
        max(ended, began) if began is not None else ended,
        cpu=wanted.get(_CPU, Decimal(0)),
        memory=wanted.get(_MEMORY, Decimal(0)),
        gpus={k: v for k, v in wanted.items() if "/" in k and v > 0},
        ephemeral=wanted.get(_EPHEMERAL, Decimal(0)),
        claims=_claims(spec),
        node_selector={str(k): str(v) for k, v in (spec.get("nodeSelector") or {}).items()},
    )
