"""A pod's log with ``logs_url`` in S3 (moto on loopback): the scheduler follows the
container's log into its spool file and ships it, pod output and reflow's lines together,
to the bucket; nothing of it stays on the scheduler's disk."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reflow.core.states import RunState
from reflow.core.trylines import task_output
from reflow.services import logs as log_service
from reflow.services import runs as run_service
from tests.s3 import S3Server, s3

from .conftest import K8sEnv
from .test_launcher import only_try, pipeline

__all__ = ["s3"]  # the fixture

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.slow,
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]


def test_a_pods_log_is_followed_into_the_spool_and_shipped_to_s3(k8s: K8sEnv, s3: S3Server) -> None:
    settings = k8s.settings.model_copy(
        update={
            "logs_url": f"s3://{s3.bucket}/pods",
            "logs_storage_options": s3.options,
            "logs_ship_interval": 0.2,
        }
    )
    k8s = replace(k8s, settings=settings)
    pipeline(k8s, 'Shell("t", "echo start {{ ds }}; sleep 0.5; echo to-stderr >&2; echo end")')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))
    assert k8s.run(run_pk).state == RunState.SUCCESS

    attempt = only_try(k8s, run_pk)
    assert attempt.log_path.startswith(f"s3://{s3.bucket}/pods/etl/")
    run = run_service.find_run(k8s.project, str(run_pk))
    text = "".join(log_service.try_log(k8s.project, run, "t").stream())
    assert task_output(text).splitlines() == ["start 2024-01-03", "to-stderr", "end"]
    assert any("pod " in line and " created" in line for line in text.splitlines())
    assert text.rstrip().endswith("ended: success, exit code 0")
    key = attempt.log_path.removeprefix(f"s3://{s3.bucket}/")
    assert s3.read(key) == text.encode()
    assert not list(settings.spool_path.rglob("try-*"))  # the position file too
