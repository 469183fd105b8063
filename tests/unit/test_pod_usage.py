"""What a pod held, from its API object: its requests as the scheduler reserves them, its
ephemeral claims and node selector, from its scheduling to its end; and its exact cost."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from reflow.core.cost import GIB, CostSettings, price
from reflow.launchers.kubernetes.usage import finished_at, held, requests, scheduled_at

D = Decimal
NOW = datetime(2024, 1, 3, 12, 0, tzinfo=UTC)


def container(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> Any:
    return {"name": "c", "resources": {"requests": requests or {}, "limits": limits or {}}}


def test_a_pods_request_is_its_containers_sum_or_its_largest_init_container_plus_overhead() -> None:
    spec = {
        "containers": [
            container({"cpu": "500m", "memory": "1Gi"}),
            container({"cpu": "250m"}, {"memory": "512Mi"}),  # a limit alone is the request
        ],
        "initContainers": [container({"cpu": "2", "memory": "256Mi"})],
        "overhead": {"cpu": "100m"},
    }
    assert requests(spec) == {"cpu": D("2.1"), "memory": D(1536 * 2**20)}


def test_a_pod_held_its_requests_from_its_scheduling_to_its_containers_end() -> None:
    pod = {
        "metadata": {"name": "reflow-etl-1"},
        "spec": {
            "containers": [
                container(
                    {
                        "cpu": "2",
                        "memory": "4Gi",
                        "ephemeral-storage": "10Gi",
                        "nvidia.com/gpu": "1",
                    }
                )
            ],
            "nodeSelector": {"pool": "spot"},
            "volumes": [
                {
                    "name": "scratch",
                    "ephemeral": {
                        "volumeClaimTemplate": {
                            "spec": {
                                "resources": {"requests": {"storage": "100Gi"}},
                                "storageClassName": "fast-ssd",
                            }
                        }
                    },
                },
                {"name": "config", "configMap": {"name": "x"}},
            ],
        },
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": "2024-01-03T10:00:00Z",
                }
            ],
            "containerStatuses": [
                {
                    "name": "c",
                    "state": {
                        "terminated": {
                            "startedAt": "2024-01-03T10:05:00Z",  # after the image pull
                            "finishedAt": "2024-01-03T11:30:00Z",
                        }
                    },
                }
            ],
        },
    }
    h = held(pod, NOW)
    assert (h.kind, h.name, h.node_selector) == ("pod", "reflow-etl-1", {"pool": "spot"})
    assert (h.cpu, h.memory, h.ephemeral) == (D(2), 4 * GIB, 10 * GIB)
    assert h.gpus == {"nvidia.com/gpu": D(1)}
    assert h.claims == ((100 * GIB, "fast-ssd"),)
    # Held from its scheduling (the image pull included), not from its container's start.
    assert h.seconds == 5400
    prices = CostSettings.model_validate(
        {
            "cpu_hour": "0.04",
            "memory_gib_hour": "0.005",
            "gpu_hour": {"nvidia.com/gpu": "2.5"},
            "ephemeral_gib_hour": "0.0002",
            "storage_gib_month": {"fast-ssd": "0.146"},
            "node_pools": [{"selector": {"pool": "spot"}, "cpu_hour": "0.012"}],
        }
    )
    cost = price(h.usage(), prices)
    assert cost.cpu == D("0.036")  # 2 vCPU x 1.5 h at the spot pool's 0.012
    assert cost.memory == D("0.03")
    assert cost.gpu == D("3.75")
    assert cost.ephemeral == D("0.003")
    assert cost.storage == D("0.03")  # 100 GiB x 1.5 h / 730 h x 0.146


def test_a_pod_never_scheduled_held_nothing_and_one_still_running_holds_until_now() -> None:
    pending = {"spec": {"containers": [container({"cpu": "1"})]}, "status": {"phase": "Pending"}}
    assert scheduled_at(pending) is None and held(pending, NOW).seconds == 0
    running = {
        "spec": {"containers": [container({"cpu": "1"})]},
        "status": {
            "containerStatuses": [
                {"name": "c", "state": {"running": {"startedAt": "2024-01-03T11:00:00Z"}}}
            ]
        },
    }
    # No PodScheduled condition reported: from its container's start; no end yet: until now.
    assert scheduled_at(running) == datetime(2024, 1, 3, 11, 0, tzinfo=UTC)
    assert finished_at(running) is None
    assert held(running, NOW).seconds == 3600
