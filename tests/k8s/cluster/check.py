"""End-to-end check of a running cluster with the official Python client, as the tests use it.

A namespace, a pod of the python image that prints and exits 0 (its log read back, its
network checked: no default route), an ephemeral volume accepted by the server (dry run),
the clean-up; then every listener of the cluster's processes is on 127.0.0.1 or the bridge.
With ``spark``: a PySpark driver pod with a ``k8s://`` master (client mode) whose executor
pod, started with ``args: ["executor"]`` and no command, runs a job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import node
from layout import CONTEXT, KUBECONFIG, PYTHON_IMAGE, SPARK_IMAGE, ClusterError, Timings, run

MARKER = "hello from reflow-k8s-python"
# Runs in the pod: prints the marker, reflow's version and the pod's routes.
POD_SCRIPT = f"""
import os, importlib.metadata as md
print({MARKER!r})
print("reflow", md.version("reflow"), "as uid", os.getuid())
print("KUBERNETES_SERVICE", os.environ.get("KUBERNETES_SERVICE_HOST"),
      os.environ.get("KUBERNETES_SERVICE_PORT"))
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    dst = ".".join(str(int(f[1][i:i + 2], 16)) for i in (6, 4, 2, 0))
    print("route", dst, "via", f[0])
"""


def wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(0.5)


# Runs in the driver pod: one executor, one job; the sum proves the executor ran it.
SPARK_SCRIPT = f"""
import os
from pyspark.sql import SparkSession
env = os.environ
spark = (
    SparkSession.builder.master(
        "k8s://https://%s:%s" % (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"])
    )
    .config("spark.kubernetes.container.image", {SPARK_IMAGE!r})
    .config("spark.kubernetes.container.image.pullPolicy", "Never")
    .config("spark.kubernetes.namespace", env["POD_NAMESPACE"])
    .config("spark.kubernetes.driver.pod.name", env["POD_NAME"])
    .config("spark.driver.host", env["POD_IP"])
    .config("spark.executor.instances", "1")
    .config("spark.executor.memory", "512m")
    .config("spark.kubernetes.executor.request.cores", "100m")
    .getOrCreate()
)
total = spark.range(0, 1000, numPartitions=4).selectExpr("sum(id)").collect()[0][0]
print("spark sum", total)
spark.stop()
"""


def end_to_end(t: Timings, spark: bool = False) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    config.load_kube_config(config_file=str(KUBECONFIG), context=CONTEXT)
    core = client.CoreV1Api()
    ns = f"reflow-check-{uuid.uuid4().hex[:6]}"

    def exists(read: Callable[[], Any]) -> bool:
        try:
            read()
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    def has_token() -> bool:
        # Until the controller manager gives the account its token, creating a pod fails
        # with 500 "No API token found for service account".
        try:
            return bool(core.read_namespaced_service_account("default", ns).secrets)
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    with t.step(f"namespace {ns} and its default service account's token"):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        wait("default service account token", has_token, 60)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="hello"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="main",
                    image=PYTHON_IMAGE,
                    image_pull_policy="Never",
                    command=["python3", "-c", POD_SCRIPT],
                )
            ],
        ),
    )
    with t.step(f"pod of {PYTHON_IMAGE}: created, Succeeded, log read"):
        core.create_namespaced_pod(ns, pod)

        def finished() -> bool:
            phase = core.read_namespaced_pod("hello", ns).status.phase
            if phase == "Failed":
                raise ClusterError(f"pod failed: {core.read_namespaced_pod('hello', ns).status}")
            return phase == "Succeeded"

        wait("pod hello", finished, 120)
        log = core.read_namespaced_pod_log("hello", ns)
        print("    " + log.strip().replace("\n", "\n    "))
        if MARKER not in log:
            raise ClusterError(f"the pod's log lacks {MARKER!r}")
        routes = [line.split()[1] for line in log.splitlines() if line.startswith("route ")]
        if routes != ["10.244.0.0"]:
            raise ClusterError(f"the pod should route the pod range only, it has: {routes}")
    with t.step("ephemeral volume accepted (server-side dry run)"):
        claim = {
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Mi"}},
            }
        }
        scratch = client.V1Pod(
            metadata=client.V1ObjectMeta(name="scratch"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[
                    client.V1Container(
                        name="main",
                        image=PYTHON_IMAGE,
                        image_pull_policy="Never",
                        volume_mounts=[client.V1VolumeMount(name="scratch", mount_path="/s")],
                    )
                ],
                volumes=[
                    client.V1Volume(
                        name="scratch",
                        ephemeral=client.V1EphemeralVolumeSource(
                            volume_claim_template=claim  # type: ignore[arg-type]
                        ),
                    )
                ],
            ),
        )
        core.create_namespaced_pod(ns, scratch, dry_run="All")
    if spark:
        spark_driver(t, ns)
    with t.step("pod and namespace deleted"):
        core.delete_namespaced_pod("hello", ns, grace_period_seconds=0)
        wait("pod deletion", lambda: not exists(lambda: core.read_namespaced_pod("hello", ns)), 60)
        core.delete_namespace(ns)
        wait("namespace deletion", lambda: not exists(lambda: core.read_namespace(ns)), 120)
    with t.step("listeners: 127.0.0.1 or the bridge address only"):
        listeners()


def listeners() -> None:
    """Every TCP listener of the cluster's processes, checked against the allowed addresses."""
    ours = {}
    for name in node.COMPONENTS:
        rec = node.recorded(name)
        if rec is None or not node.alive(*rec):
            raise ClusterError(f"{name} is not running")
        ours[rec[0]] = name
    allowed = {"127.0.0.1", node.BRIDGE_ADDRESS}
    found = []
    for line in run(["ss", "-ltnpH"]).splitlines():
        fields = line.split()
        local, users = fields[3], " ".join(fields[5:])
        for pid, name in ours.items():
            if f"pid={pid}," in users:
                address = local.rsplit(":", 1)[0]
                found.append((name, local))
                print(f"    {name:<24} {local}")
                if address not in allowed:
                    raise ClusterError(f"{name} listens on {local}")
    missing = {"etcd", "kube-apiserver", "kubelet"} - {name for name, _ in found}
    if missing:
        raise ClusterError(f"no listener found for {', '.join(sorted(missing))}")


def spark_driver(t: Timings, ns: str) -> None:
    from kubernetes import client

    core, rbac = client.CoreV1Api(), client.RbacAuthorizationV1Api()
    with t.step(f"spark: driver pod ({SPARK_IMAGE}, k8s:// master) and its executor pod"):
        rbac.create_namespaced_role(
            ns,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="spark"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=[""],
                        resources=["pods", "services", "configmaps", "persistentvolumeclaims"],
                        verbs=["*"],
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            ns,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="spark"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="spark"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="default", namespace=ns)
                ],
            ),
        )

        def field(path: str) -> client.V1EnvVarSource:
            return client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=path))

        driver = client.V1Pod(
            metadata=client.V1ObjectMeta(name="spark-driver"),
            spec=client.V1PodSpec(
                restart_policy="Never",
                active_deadline_seconds=600,
                containers=[
                    client.V1Container(
                        name="main",
                        image=SPARK_IMAGE,
                        image_pull_policy="Never",
                        command=["python3", "-c", SPARK_SCRIPT],
                        env=[
                            client.V1EnvVar(name="POD_IP", value_from=field("status.podIP")),
                            client.V1EnvVar(name="POD_NAME", value_from=field("metadata.name")),
                            client.V1EnvVar(
                                name="POD_NAMESPACE", value_from=field("metadata.namespace")
                            ),
                        ],
                    )
                ],
            ),
        )
        core.create_namespaced_pod(ns, driver)
        executors: set[str] = set()

        def finished() -> bool:
            for pod in core.list_namespaced_pod(ns, label_selector="spark-role=executor").items:
                executors.add(pod.metadata.name)
            phase = core.read_namespaced_pod("spark-driver", ns).status.phase
            if phase == "Failed":
                log = core.read_namespaced_pod_log("spark-driver", ns, tail_lines=120)
                raise ClusterError(f"the Spark driver pod failed:\n{log}")
            return phase == "Succeeded"

        wait("spark driver", finished, 600)
        log = core.read_namespaced_pod_log("spark-driver", ns)
        if "spark sum 499500" not in log:
            raise ClusterError(f"the driver's log lacks the job's result:\n{log[-3000:]}")
        if not executors:
            raise ClusterError("no executor pod was seen")
        print(f"    spark sum 499500, computed by executor pod(s) {', '.join(sorted(executors))}")
        core.delete_namespaced_pod("spark-driver", ns, grace_period_seconds=0)
