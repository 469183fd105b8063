"""The Kubernetes version of the API server: read at start-up, and named when a pod asks
for what the server is too old to give (scratch(): generic ephemeral volumes, 1.21)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from reflow.core.errors import TaskError

from .conftest import K8sEnv
from .test_launcher import try_spec

SCRATCH = {"size": "1Gi", "mount": "/scratch", "storage_class": None}


def test_a_server_too_old_for_scratch_is_named_at_start_up_and_when_it_refuses(
    k8s: K8sEnv, launchers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    if k8s.cluster.real:
        pytest.skip("the fake API server plays an older version")
    k8s.cluster.fake.version = (1, 20)
    with caplog.at_level(logging.WARNING, logger="reflow.kubernetes"):
        launcher = launchers()
    assert launcher.server == (1, 20)
    assert "the API server is 1.20; scratch() needs generic ephemeral volumes" in caplog.text
    spec = dataclasses.replace(try_spec(k8s, "true"), scratch=SCRATCH)
    with pytest.raises(TaskError) as refused:
        launcher.start(spec)
    message = str(refused.value)
    assert "scratch() needs generic ephemeral volumes: Kubernetes 1.21 or newer" in message
    assert "the server is 1.20" in message and "must specify a volume type" in message
    # Tries without scratch() run.
    plain = try_spec(k8s, "true")
    assert launcher.start(plain).external_id


def test_a_server_that_has_ephemeral_volumes_gives_scratch(
    k8s: K8sEnv, launchers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="reflow.kubernetes"):
        launcher = launchers()
    assert launcher.server is not None
    if not k8s.cluster.real:
        assert launcher.server >= (1, 21)
        assert "scratch() needs" not in caplog.text
    # The real test cluster is 1.20 with the GenericEphemeralVolume gate: a warning, and
    # the pod is accepted all the same.
    spec = dataclasses.replace(try_spec(k8s, "true"), scratch=SCRATCH)
    assert launcher.start(spec).external_id
