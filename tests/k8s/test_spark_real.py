"""The events pipeline (examples/events) with Spark on a real Kubernetes cluster: each
SparkSubmit try's pod is the driver (``k8s://`` master, client mode), its executors are
pods the driver starts and owns, and stopping the try leaves neither behind.

Only a real cluster can show this (the fake API server starts no executors): these tests
run with ``make test-k8s-real`` against the local cluster (``make k8s-cluster``).

The project is the example as it ships, with two additions a cluster needs and a laptop
does not: the project folder reaches the driver's pod and the executors' pods (here a
folder of the single node mounted at the image's working directory, /opt/reflow, where
a real deployment has it in the image and its data in object storage), and the Spark
role of deploy/kubernetes for the pods' service account.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reflow.core.states import RunState
from reflow.services import history

from ..integration.conftest import wait_until
from .conftest import REAL_CONTEXT, SPARK_IMAGE, K8sEnv

pytestmark = [
    pytest.mark.skipif(
        not (REAL_CONTEXT and SPARK_IMAGE),
        reason="needs the real cluster and its Spark image (make k8s-cluster; make test-k8s-real)",
    ),
    # A Spark run on a single 2-core node takes a minute or more, longer on a loaded
    # machine: the waits inside each test bound it, not the suite's 120 s default.
    pytest.mark.timeout(1500),
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "events"
IN_POD = "/opt/reflow"  # the images' working directory
SPARK_ACCOUNT = "reflow-spark"
EXECUTOR = "spark-role=executor"


def _events_project(k8s: K8sEnv) -> Path:
    """The example project in the test's home, set up for the cluster (see the module's
    docstring); returns the project folder."""
    home = k8s.settings.pipelines_path.parent
    for name in ("jobs", "checks.py", "generate.py"):
        source = EXAMPLE / name
        if source.is_dir():
            shutil.copytree(source, home / name)
        else:
            shutil.copy(source, home / name)
    text = (EXAMPLE / "pipelines" / "events.py").read_text()
    executors = {
        # The project folder in the executors' pods too: they read and write its data.
        "spark.kubernetes.executor.volumes.hostPath.project.mount.path": IN_POD,
        "spark.kubernetes.executor.volumes.hostPath.project.options.path": str(home),
        # Two small executors fit beside the driver on a 2-core node.
        "spark.executor.instances": "2",
        "spark.executor.memory": "512m",
        "spark.kubernetes.executor.request.cores": "100m",
    }
    conf_line = '    "spark.sql.sources.partitionOverwriteMode": "dynamic",\n'
    defaults_line = '    defaults={"retries": 1, "retry_delay": "2m"},\n'
    assert conf_line in text and defaults_line in text, "the example changed: update this test"
    text = text.replace(
        conf_line, conf_line + "".join(f"    {k!r}: {v!r},\n" for k, v in executors.items())
    )
    override = {
        "spec": {
            "volumes": [{"name": "project", "hostPath": {"path": str(home), "type": "Directory"}}],
            "containers": [
                {"name": "main", "volumeMounts": [{"name": "project", "mountPath": IN_POD}]}
            ],
        }
    }
    text = text.replace(
        defaults_line,
        defaults_line.replace("}", f', "pod": Pod(pod_override={override!r})}}'),
    )
    text = text.replace(
        "from reflow import Param, Pipeline, Python, SparkSubmit",
        "from reflow import Param, Pipeline, Pod, Python, SparkSubmit",
    )
    (home / "pipelines").mkdir(exist_ok=True)
    (home / "pipelines" / "events.py").write_text(text)
    subprocess.run(
        [
            sys.executable,
            str(home / "generate.py"),
            str(home / "data" / "landing"),
            "--start",
            "2024-01-01",
            "--days",
            "3",
            "--events-per-day",
            "500",
        ],
        check=True,
    )
    # The pods run as the images' user (10001): the project is theirs to write.
    for path in [home, *home.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return home


def _spark_role(k8s: K8sEnv) -> None:
    """deploy/kubernetes/rbac-spark.yaml (service account, role, binding) in the test's
    namespace: the rights a driver in a try's pod has in a real deployment."""
    from kubernetes import client

    namespace = k8s.cluster.settings.namespace
    rbac = client.RbacAuthorizationV1Api(k8s.cluster.core.api_client)
    for doc in yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "rbac-spark.yaml").read_text()):
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        if doc["kind"] == "ServiceAccount":
            k8s.cluster.core.create_namespaced_service_account(namespace, doc)
        elif doc["kind"] == "Role":
            rbac.create_namespaced_role(namespace, doc)
        else:
            rbac.create_namespaced_role_binding(namespace, doc)
    # A pod with that account waits for its token.
    wait_until(
        lambda: bool(
            k8s.cluster.core.read_namespaced_service_account(SPARK_ACCOUNT, namespace).secrets
        ),
        timeout=60,
    )


@pytest.fixture
def events(k8s: K8sEnv, monkeypatch: pytest.MonkeyPatch) -> K8sEnv:
    """The events project on the real cluster, Spark drivers with a ``k8s://`` master."""
    from kubernetes import config

    _events_project(k8s)
    _spark_role(k8s)
    server = config.new_client_from_config(context=REAL_CONTEXT).configuration.host
    monkeypatch.setenv("REFLOW_SPARK_MASTER", f"k8s://{server}")
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    k8s.settings = k8s.settings.model_copy(
        update={
            "kubernetes": k8s.settings.kubernetes.model_copy(
                update={
                    "image": SPARK_IMAGE,
                    "pipelines_folder": f"{IN_POD}/pipelines",
                    "service_account": SPARK_ACCOUNT,
                }
            )
        }
    )
    return k8s


def _pods(k8s: K8sEnv, selector: str | None = None) -> list[Any]:
    return k8s.cluster.core.list_namespaced_pod(
        k8s.cluster.settings.namespace, label_selector=selector
    ).items


def _ended(k8s: K8sEnv, run_pk: int) -> bool:
    return all(t.state not in ("queued", "running") for t in k8s.tries(run_pk))


def test_the_events_pipeline_runs_with_executor_pods_owned_by_the_trys_pod(events: K8sEnv) -> None:
    (run_pk,) = events.trigger("events", ["2024-01-01"])
    executors: dict[str, Any] = {}

    def look() -> bool:
        executors.update({p.metadata.name: p for p in _pods(events, EXECUTOR)})
        return events.runs_done([run_pk])()

    events.drive(look, timeout=900)

    tries = {t.task_id: t for t in events.tries(run_pk)}
    logs = {task: Path(t.log_path).read_text() for task, t in tries.items()}
    assert events.run(run_pk).state == RunState.SUCCESS, logs
    assert [tries[t].state for t in ("ingest", "aggregate", "quality")] == ["success"] * 3
    home = events.settings.pipelines_path.parent
    assert (home / "data" / "warehouse" / "daily_metrics" / "date=2024-01-01").is_dir()
    # Each Spark try had executor pods, owned by its own pod (the driver) and labelled
    # with the application id reflow recorded for it.
    for task in ("ingest", "aggregate"):
        t = tries[task]
        driver = t.external_id.split("/")[1]
        mine = [p for p in executors.values() if p.metadata.labels.get("reflow-task") == task]
        assert mine, f"{task}: no executor pod seen"
        for pod in mine:
            owners = [(o.kind, o.name) for o in pod.metadata.owner_references or []]
            assert owners == [("Pod", driver)]
            assert pod.metadata.labels["spark-app-selector"] == t.app_id
        assert t.app_id and t.app_id.startswith("spark-")
    # Finished and cleaned up (on_success): no driver, no executor left.
    wait_until(lambda: not _pods(events), timeout=120)


def test_stopping_a_spark_try_leaves_no_driver_and_no_executor_pod(events: K8sEnv) -> None:
    (run_pk,) = events.trigger("events", ["2024-01-02"])
    events.drive(lambda: bool(_pods(events, EXECUTOR)), timeout=600)
    run_id = events.run(run_pk).run_id

    stopped = time.monotonic()
    history.mark(events.project, "events", run_id, "failed", wait=0)
    # The run is failed at once; a new scheduler adopts the try and records its end.
    events.drive(lambda: _ended(events, run_pk), timeout=120)
    recorded = time.monotonic() - stopped

    ingest = next(t for t in events.tries(run_pk) if t.task_id == "ingest")
    assert (ingest.state, ingest.failure_reason) == ("failed", "killed")
    # The driver (the JVM, the container's first process: spark-submit runs with exec)
    # ended on SIGTERM, within the grace period, not killed at its end (137).
    assert ingest.exit_code == 143, Path(ingest.log_path).read_text()[-3000:]
    # Deleting the driver's pod took its executors with it: Kubernetes' garbage
    # collector, not the driver's own clean-up, which a stopped driver may never do.
    wait_until(lambda: not _pods(events), timeout=120)
    gone = time.monotonic() - stopped
    print(f"stopped: outcome recorded after {recorded:.1f} s, no pod left after {gone:.1f} s")
    # Within the task's kill_grace (10 s by default) and the pod's deletion.
    assert recorded < 10 + 30
