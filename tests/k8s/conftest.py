"""A Kubernetes API for the launcher's lifecycle tests: the fake server of fakeapi.py, or
a real cluster when ``REFLOW_K8S_CONTEXT`` names a kubeconfig context."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reflow.core.config import KubernetesSettings, Settings
from reflow.scheduler import Scheduler
from reflow.services.project import Project

from ..integration.conftest import Env, env  # noqa: F401 - the env fixture

REAL_CONTEXT = os.environ.get("REFLOW_K8S_CONTEXT")
# The images of test pods on a real cluster: sh, python3 and reflow; and Spark for Spark.
REAL_IMAGE = os.environ.get("REFLOW_K8S_TEST_IMAGE", "python:3.11-slim")
SPARK_IMAGE = os.environ.get("REFLOW_K8S_SPARK_IMAGE")
REFLOW_SELECTOR = "app.kubernetes.io/managed-by=reflow"


@dataclass
class Cluster:
    """Where the tests' pods run, and how to look at them."""

    settings: KubernetesSettings
    fake: Any | None  # the FakeCluster, None on a real cluster
    core: Any  # a CoreV1Api on the same cluster
    volumes: list[str] = field(default_factory=list)  # persistent volumes made for the test

    @property
    def real(self) -> bool:
        return self.fake is None

    def pods(self) -> list[dict[str, Any]]:
        return self._reflows("pods", self.core.list_namespaced_pod)

    def claims(self) -> list[dict[str, Any]]:
        return self._reflows("claims", self.core.list_namespaced_persistent_volume_claim)

    def secrets(self) -> list[dict[str, Any]]:
        """reflow's secrets (those of tries with secret env)."""
        return self._reflows("secrets", self.core.list_namespaced_secret)

    def local_volumes(self, folder: Path, count: int, size: str = "1Gi") -> None:
        """``count`` local persistent volumes for the claims the test's pods make (the real
        cluster has no provisioner; the fake makes a folder per claim itself). They have
        no storage class, so any claim without one binds to them."""
        if self.fake is not None:
            return
        for _ in range(count):
            name = f"{self.settings.namespace}-{len(self.volumes)}"
            path = folder / name
            path.mkdir(parents=True)
            path.chmod(0o777)  # the pods run as the images' user, 10001
            self.core.create_persistent_volume(
                {
                    "metadata": {"name": name},
                    "spec": {
                        "capacity": {"storage": size},
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "",
                        "hostPath": {"path": str(path), "type": "Directory"},
                    },
                }
            )
            self.volumes.append(name)

    def _reflows(self, kind: str, list_call: Any) -> list[dict[str, Any]]:
        """The objects of a kind that reflow made in the namespace."""
        if self.fake is not None:
            return list(getattr(self.fake, kind)(self.settings.namespace))
        # Every claim in the test's namespace is the test's: those of scratch() carry only
        # the try's reflow.io/ labels.
        selector = None if kind == "claims" else REFLOW_SELECTOR
        items = list_call(self.settings.namespace, label_selector=selector).items
        # A real server's list items carry no apiVersion and kind (the fake's do).
        kind_of = {"pods": "Pod", "claims": "PersistentVolumeClaim", "secrets": "Secret"}
        return [
            {
                "apiVersion": "v1",
                "kind": kind_of[kind],
                **self.core.api_client.sanitize_for_serialization(x),
            }
            for x in items
        ]


def _wait_for_service_account(core: Any, namespace: str, timeout: float = 60) -> None:
    """A new namespace refuses pods until its default service account has its token."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            account = core.read_namespaced_service_account("default", namespace)
            if account.secrets:
                return
        except Exception:  # not created yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"namespace {namespace}: no service account token within {timeout} s")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    from kubernetes import client, config

    if REAL_CONTEXT:
        # Each test in a namespace and an instance of its own: names reused from one test
        # to the next never meet (a pod re-created right after one of its name was deleted
        # can race in the kubelet), and everything the test made goes with the namespace.
        run = uuid.uuid4().hex[:8]
        volumes: list[str] = []
        namespace = f"reflow-test-{run}"
        api = config.new_client_from_config(context=REAL_CONTEXT)
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": namespace}})
        try:
            _wait_for_service_account(core, namespace)
            settings = KubernetesSettings(
                context=REAL_CONTEXT,
                namespace=namespace,
                image=REAL_IMAGE,
                instance=f"reflow-test-{run}",
                startup_timeout=60,
                sweep_interval=0.5,
            )
            yield Cluster(settings, None, core, volumes)
        finally:
            core.delete_namespace(namespace, grace_period_seconds=0)
            for volume in volumes:
                core.delete_persistent_volume(volume)
        return
    from .fakeapi import FakeCluster

    fake = FakeCluster(tmp_path / "cluster").start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    settings = KubernetesSettings(
        kubeconfig=kubeconfig,
        context="fake",
        namespace="default",
        image="python:3.11-slim",
        startup_timeout=5,
        sweep_interval=0.5,
    )
    api = config.new_client_from_config(config_file=str(kubeconfig), context="fake")
    try:
        yield Cluster(settings, fake, client.CoreV1Api(api))
    finally:
        fake.stop()


@dataclass
class K8sEnv:
    """A project whose tries run on the cluster (see :class:`Env` for the helpers)."""

    env: Env
    cluster: Cluster
    settings: Settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    @property
    def project(self) -> Project:
        return Project(self.settings, self.env.db)

    def pipeline_pod(self) -> str:
        """Source of a ``Pod(...)`` for a pipeline's ``defaults`` that lets its pods read
        the pipeline files (Python tasks import them again): on the real cluster, the
        project's pipelines folder mounted from the node at the same path; "" on the fake,
        whose pods run on this machine."""
        if not self.cluster.real:
            return ""
        folder = self.env.settings.pipelines_path
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # the pods run as the images' user, 10001
        override = {
            "spec": {
                "volumes": [
                    {
                        "name": "test-pipelines",
                        "hostPath": {"path": str(folder), "type": "Directory"},
                    }
                ],
                "containers": [
                    {
                        "name": "main",
                        "volumeMounts": [
                            {"name": "test-pipelines", "mountPath": str(folder), "readOnly": True}
                        ],
                    }
                ],
            }
        }
        return f"Pod(pod_override={override!r})"

    def scheduler(self, **kwargs: Any) -> Scheduler:
        kwargs.setdefault("create_scheduled_runs", False)
        return Scheduler(self.env.db, self.settings, self.project.launcher(), **kwargs)

    def drive(
        self, until: Any, timeout: float = 60.0, scheduler: Scheduler | None = None
    ) -> Scheduler:
        return self.env.drive(until, timeout=timeout, scheduler=scheduler or self.scheduler())

    def trigger(self, *args: Any, **kwargs: Any) -> list[int]:
        from reflow.services import runs as run_service

        return [r.id for r in run_service.trigger(self.project, *args, **kwargs)]


@pytest.fixture
def k8s(env: Env, cluster: Cluster) -> K8sEnv:  # noqa: F811 - the imported fixture
    # Python tasks find the pipeline files where the project has them: the fake's kubelet
    # runs commands here (with this interpreter), and on the real cluster the pipelines
    # folder is mounted into the pods at the same path (see K8sEnv.pipeline_pod).
    update: dict[str, Any] = {"pipelines_folder": str(env.settings.pipelines_path)}
    if cluster.fake is not None:
        update["python"] = sys.executable
    k8s_settings = cluster.settings.model_copy(update=update)
    settings = env.settings.model_copy(
        update={"launcher": "kubernetes", "kubernetes": k8s_settings}
    )
    return K8sEnv(env, cluster, settings)


@pytest.fixture
def launchers(k8s: K8sEnv) -> Iterator[Any]:
    """Makes launchers on the test's cluster (settings changed by keyword); closes them."""
    from reflow.launchers.kubernetes.launcher import KubernetesLauncher

    made: list[KubernetesLauncher] = []

    def make(**changes: Any) -> KubernetesLauncher:
        made.append(KubernetesLauncher(k8s.settings.kubernetes.model_copy(update=changes)))
        return made[-1]

    yield make
    for launcher in made:
        launcher.close()
