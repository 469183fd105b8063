"""The offline manifest checks: each rule accepts a good manifest and catches a broken one.

Good manifests are built with the official client's models and turned into the API's JSON
form by ``sanitize_for_serialization``, as the kubernetes launcher will build them; each
case below breaks one thing and names the path the problem must be reported at.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.k8s.validation import KUBERNETES_VERSION, assert_valid, problems

pytestmark = pytest.mark.k8s

Manifest = dict[str, Any]
Edit = Callable[[Manifest], None]
DELETE = object()


def json_form(obj: Any) -> Manifest:
    result: Manifest = k8s.ApiClient().sanitize_for_serialization(obj)
    return result


def steps(path: str) -> list[str | int]:
    """``spec.containers.0.name`` -> ["spec", "containers", 0, "name"]; a key holding dots
    goes in brackets: ``metadata.labels[reflow.dev/pipeline]``."""
    parts = re.findall(r"\[([^\]]*)\]|([^.\[]+)", path)
    return [key if key else int(word) if word.isdigit() else word for key, word in parts]


def edit(path: str, value: Any = DELETE) -> Edit:
    """Set (or delete) the value at ``path`` (see ``steps``)."""
    *parents, last = steps(path)

    def apply(manifest: Manifest) -> None:
        node: Any = manifest
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)

    return apply


def edits(*changes: Edit) -> Edit:
    def apply(manifest: Manifest) -> None:
        for change in changes:
            change(manifest)

    return apply


def append(path: str, value: Any) -> Edit:
    def apply(manifest: Manifest) -> None:
        node: Any = manifest
        for part in steps(path):
            node = node[part]
        node.append(copy.deepcopy(value))

    return apply


def broken(base: Manifest, change: Edit) -> list[str]:
    manifest = copy.deepcopy(base)
    change(manifest)
    return problems(manifest)


def assert_caught(base: Manifest, change: Edit, where: str) -> None:
    found = broken(base, change)
    assert any(p.startswith(where) for p in found), f"nothing reported at {where}: {found}"


# -- good manifests -------------------------------------------------------------------------
def claim_spec(size: str = "10Gi") -> k8s.V1PersistentVolumeClaimSpec:
    return k8s.V1PersistentVolumeClaimSpec(
        access_modes=["ReadWriteOnce"],
        volume_mode="Filesystem",
        storage_class_name="fast-ssd",
        resources=k8s.V1VolumeResourceRequirements(requests={"storage": size}),
    )


def good_pod() -> Manifest:
    """A pod like the ones a Spark try runs in: every field the rules look at, used well."""
    mounts = [
        k8s.V1VolumeMount(name="spark-local", mount_path="/var/data/spark"),
        k8s.V1VolumeMount(
            name="config", mount_path="/opt/reflow/reflow.toml", sub_path="reflow.toml"
        ),
        k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),
    ]
    main = k8s.V1Container(
        name="try",
        image="ghcr.io/example/reflow-etl:1.0",
        image_pull_policy="IfNotPresent",
        command=["sh", "-c", "spark-submit jobs/ingest.py"],
        ports=[
            k8s.V1ContainerPort(name="spark-driver", container_port=7078),
            k8s.V1ContainerPort(name="spark-ui", container_port=4040, protocol="TCP"),
        ],
        env=[
            k8s.V1EnvVar(name="PYSPARK_PYTHON", value="python3"),
            k8s.V1EnvVar(name="spark.conf-dir_1", value="x"),
            k8s.V1EnvVar(
                name="REFLOW_POD_IP",
                value_from=k8s.V1EnvVarSource(
                    field_ref=k8s.V1ObjectFieldSelector(field_path="status.podIP")
                ),
            ),
        ],
        volume_mounts=mounts,
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
            limits={
                "cpu": "2",
                "memory": "1Gi",
                "ephemeral-storage": "4Gi",
                "nvidia.com/gpu": "1",
            },
        ),
        liveness_probe=k8s.V1Probe(
            tcp_socket=k8s.V1TCPSocketAction(port="spark-ui"), period_seconds=10
        ),
        readiness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/", port=4040)),
    )
    init = k8s.V1Container(
        name="prepare",
        image="busybox:1.36",
        command=["true"],
        volume_mounts=[k8s.V1VolumeMount(name="scratch", mount_path="/tmp")],
    )
    pod = k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name="events-2024-01-03-ingest-1",
            namespace="reflow",
            labels={
                "app.kubernetes.io/managed-by": "reflow",
                "reflow.dev/pipeline": "events",
                "reflow.dev/logical-date": "2024-01-03",
                "reflow.dev/flag": "",
            },
            annotations={"reflow.dev/conf": '{"force_reprocess": true}'},
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            dns_policy="ClusterFirst",
            service_account_name="reflow-spark",
            active_deadline_seconds=2700,
            termination_grace_period_seconds=10,
            node_selector={"kubernetes.io/os": "linux"},
            tolerations=[
                k8s.V1Toleration(
                    key="dedicated", operator="Equal", value="spark", effect="NoSchedule"
                ),
                k8s.V1Toleration(
                    key="node.kubernetes.io/unreachable",
                    operator="Exists",
                    effect="NoExecute",
                    toleration_seconds=60,
                ),
                k8s.V1Toleration(operator="Exists"),
            ],
            init_containers=[init],
            containers=[main],
            volumes=[
                k8s.V1Volume(
                    name="spark-local",
                    ephemeral=k8s.V1EphemeralVolumeSource(
                        volume_claim_template=k8s.V1PersistentVolumeClaimTemplate(
                            metadata=k8s.V1ObjectMeta(labels={"reflow.dev/pipeline": "events"}),
                            spec=claim_spec("50Gi"),
                        )
                    ),
                ),
                k8s.V1Volume(
                    name="config", config_map=k8s.V1ConfigMapVolumeSource(name="reflow-config")
                ),
                k8s.V1Volume(
                    name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")
                ),
            ],
        ),
    )
    return json_form(pod)


def good_claim() -> Manifest:
    return json_form(
        k8s.V1PersistentVolumeClaim(
            api_version="v1",
            kind="PersistentVolumeClaim",
            metadata=k8s.V1ObjectMeta(name="events-2024-01-03-spark-local", namespace="reflow"),
            spec=claim_spec(),
        )
    )


def good_deployment() -> Manifest:
    labels = {"app.kubernetes.io/name": "reflow"}
    return json_form(
        k8s.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=k8s.V1ObjectMeta(name="reflow", namespace="reflow", labels=labels),
            spec=k8s.V1DeploymentSpec(
                replicas=1,
                strategy=k8s.V1DeploymentStrategy(type="Recreate"),
                selector=k8s.V1LabelSelector(
                    match_labels=labels,
                    match_expressions=[
                        k8s.V1LabelSelectorRequirement(
                            key="app.kubernetes.io/name", operator="In", values=["reflow"]
                        )
                    ],
                ),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels={**labels, "tier": "control"}),
                    spec=k8s.V1PodSpec(
                        containers=[k8s.V1Container(name="scheduler", image="reflow:1.0")]
                    ),
                ),
            ),
        )
    )


def good_service() -> Manifest:
    return json_form(
        k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=k8s.V1ObjectMeta(name="reflow-web", namespace="reflow"),
            spec=k8s.V1ServiceSpec(
                selector={"app.kubernetes.io/name": "reflow"},
                ports=[
                    k8s.V1ServicePort(name="http", port=80, target_port="http"),
                    k8s.V1ServicePort(name="metrics", port=9090, target_port=9090),
                ],
            ),
        )
    )


def good_role() -> Manifest:
    return json_form(
        k8s.V1Role(
            api_version="rbac.authorization.k8s.io/v1",
            kind="Role",
            metadata=k8s.V1ObjectMeta(name="system:reflow-launcher", namespace="reflow"),
            rules=[
                k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["create", "get"]),
                k8s.V1PolicyRule(api_groups=[""], resources=["pods/log"], verbs=["get"]),
            ],
        )
    )


def good_role_binding() -> Manifest:
    return json_form(
        k8s.V1RoleBinding(
            api_version="rbac.authorization.k8s.io/v1",
            kind="RoleBinding",
            metadata=k8s.V1ObjectMeta(name="reflow-launcher", namespace="reflow"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="system:reflow-launcher"
            ),
            subjects=[
                k8s.RbacV1Subject(kind="ServiceAccount", name="reflow"),
                k8s.RbacV1Subject(
                    kind="Group", name="platform-admins", api_group="rbac.authorization.k8s.io"
                ),
            ],
        )
    )


def good_config_map() -> Manifest:
    return json_form(
        k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(name="reflow-config", namespace="reflow"),
            data={"reflow.toml": '[reflow]\nlauncher = "kubernetes"\n'},
            binary_data={"logo.png": "iVBORw0KGgo="},
        )
    )


def good_secret() -> Manifest:
    return json_form(
        k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=k8s.V1ObjectMeta(name="reflow-secrets", namespace="reflow"),
            type="Opaque",
            string_data={"REFLOW_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/reflow"},
            data={"token": "c2VjcmV0"},
        )
    )


def good_namespace() -> Manifest:
    return json_form(
        k8s.V1Namespace(
            api_version="v1", kind="Namespace", metadata=k8s.V1ObjectMeta(name="reflow")
        )
    )


def good_service_account() -> Manifest:
    return json_form(
        k8s.V1ServiceAccount(
            api_version="v1",
            kind="ServiceAccount",
            metadata=k8s.V1ObjectMeta(name="reflow-spark", namespace="reflow"),
        )
    )


GOOD = {
    "pod": good_pod,
    "claim": good_claim,
    "deployment": good_deployment,
    "service": good_service,
    "role": good_role,
    "role binding": good_role_binding,
    "config map": good_config_map,
    "secret": good_secret,
    "namespace": good_namespace,
    "service account": good_service_account,
}


@pytest.mark.parametrize("kind", GOOD)
def test_a_good_manifest_has_no_problems(kind: str) -> None:
    manifest = GOOD[kind]()
    assert problems(manifest) == []
    assert_valid(manifest)


def test_the_good_pod_uses_the_json_form_of_the_api() -> None:
    pod = good_pod()
    container = pod["spec"]["containers"][0]
    assert "imagePullPolicy" in container and "image_pull_policy" not in container
    assert all(value is not None for value in container.values())


def test_the_version_is_one_kubernetes_validate_ships_strict_schemas_for() -> None:
    import importlib.resources

    folder = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    assert folder.joinpath(f"v{KUBERNETES_VERSION}-local-strict", "pod-v1.json").is_file()


# -- schema ---------------------------------------------------------------------------------
SCHEMA_CASES = {
    "unknown container field": (edit("spec.containers.0.bogus", 1), "spec.containers[0]"),
    "unknown pod spec field": (edit("spec.restartPolicyy", "Never"), "spec"),
    "unknown top-level field": (edit("status2", {}), "(root)"),
    "snake_case key from to_dict": (
        edit("spec.containers.0.image_pull_policy", "Always"),
        "spec.containers[0]",
    ),
    "wrong type": (edit("spec.containers.0.ports.0.containerPort", "7078"), "spec.containers"),
    "wrong api version": (edit("apiVersion", "v2"), "Pod:"),
}


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_the_strict_schema_rejects_unknown_fields_and_wrong_types(case: str) -> None:
    change, where = SCHEMA_CASES[case]
    assert_caught(good_pod(), change, where)


def test_every_schema_error_is_listed_not_only_the_first() -> None:
    found = broken(
        good_pod(),
        edits(edit("spec.containers.0.bogus", 1), edit("spec.extra", 2), edit("status2", {})),
    )
    assert len([p for p in found if "was unexpected" in p]) == 3, found


def test_a_kind_without_a_schema_is_a_problem() -> None:
    found = problems({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"})
    assert any("Couldn't find schema" in p for p in found), found


def test_a_manifest_without_kind_is_a_problem_and_not_a_crash() -> None:
    assert problems({"metadata": {"name": "x"}})[0] == "apiVersion and kind are required strings"


def test_a_model_object_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="sanitize_for_serialization"):
        problems(k8s.V1Pod())  # type: ignore[arg-type]


def test_assert_valid_lists_every_problem() -> None:
    pod = good_pod()
    pod["metadata"]["name"] = "Bad_Name"
    pod["spec"]["restartPolicy"] = "Sometimes"
    with pytest.raises(AssertionError) as caught:
        assert_valid(pod)
    message = str(caught.value)
    assert f"Pod 'Bad_Name' is not valid for Kubernetes {KUBERNETES_VERSION}" in message
    assert "metadata.name" in message and "spec.restartPolicy" in message


# -- pods -----------------------------------------------------------------------------------
LONG = "a" * 64
POD_CASES: dict[str, tuple[Edit, str]] = {
    # names
    "pod name with capitals": (edit("metadata.name", "Events-1"), "metadata.name"),
    "pod name with underscore": (edit("metadata.name", "events_1"), "metadata.name"),
    "pod name over 253": (edit("metadata.name", "a" * 254), "metadata.name"),
    "pod name ending in a dash": (edit("metadata.name", "events-"), "metadata.name"),
    "no name nor generateName": (edit("metadata.name"), "metadata.name"),
    "namespace not a label": (edit("metadata.namespace", "re.flow"), "metadata.namespace"),
    "claim name of an ephemeral volume over 253": (
        edit("metadata.name", "a" * 245),
        "spec.volumes[0].name (claim name",
    ),
    "container name with capitals": (
        edit("spec.containers.0.name", "Try"),
        "spec.containers[0].name",
    ),
    "container name over 63": (edit("spec.containers.0.name", LONG), "spec.containers[0].name"),
    "container name used twice": (
        edit("spec.initContainers.0.name", "try"),
        "spec.containers[0].name: duplicate",
    ),
    "no containers": (edit("spec.containers", []), "spec.containers"),
    "no image": (edit("spec.containers.0.image"), "spec.containers[0].image"),
    "init container without image": (
        edit("spec.initContainers.0.image", ""),
        "spec.initContainers[0].image",
    ),
    # ports
    "port name with capitals": (
        edit("spec.containers.0.ports.0.name", "Driver"),
        "spec.containers[0].ports[0].name",
    ),
    "port name over 15": (
        edit("spec.containers.0.ports.0.name", "spark-driver-port"),
        "spec.containers[0].ports[0].name",
    ),
    "port name without a letter": (
        edit("spec.containers.0.ports.0.name", "7078"),
        "spec.containers[0].ports[0].name",
    ),
    "port name with a double dash": (
        edit("spec.containers.0.ports.0.name", "spark--ui"),
        "spec.containers[0].ports[0].name",
    ),
    "port name used twice": (
        edit("spec.containers.0.ports.1.name", "spark-driver"),
        "spec.containers[0].ports[1].name: duplicate",
    ),
    "port number 0": (
        edit("spec.containers.0.ports.0.containerPort", 0),
        "spec.containers[0].ports[0].containerPort",
    ),
    "port number over 65535": (
        edit("spec.containers.0.ports.0.containerPort", 70000),
        "spec.containers[0].ports[0].containerPort",
    ),
    "unknown protocol": (
        edit("spec.containers.0.ports.0.protocol", "HTTP"),
        "spec.containers[0].ports[0].protocol",
    ),
    # volumes and mounts
    "volume name with capitals": (edit("spec.volumes.1.name", "Config"), "spec.volumes[1].name"),
    "volume name used twice": (
        edit("spec.volumes.2.name", "config"),
        "spec.volumes[2].name: duplicate",
    ),
    "volume with two sources": (
        edit("spec.volumes.2.hostPath", {"path": "/tmp"}),
        "spec.volumes[2]: exactly one volume source",
    ),
    "volume without a source": (
        edit("spec.volumes.2.emptyDir"),
        "spec.volumes[2]: exactly one volume source",
    ),
    "mount of an undeclared volume": (
        edit("spec.containers.0.volumeMounts.0.name", "spark-locl"),
        "spec.containers[0].volumeMounts[0].name",
    ),
    "init container mount of an undeclared volume": (
        edit("spec.initContainers.0.volumeMounts.0.name", "nope"),
        "spec.initContainers[0].volumeMounts[0].name",
    ),
    "relative mount path": (
        edit("spec.containers.0.volumeMounts.0.mountPath", "var/data"),
        "spec.containers[0].volumeMounts[0].mountPath",
    ),
    "mount path used twice": (
        edit("spec.containers.0.volumeMounts.2.mountPath", "/var/data/spark"),
        "spec.containers[0].volumeMounts[2].mountPath: duplicate",
    ),
    "sub path leaving the volume": (
        edit("spec.containers.0.volumeMounts.1.subPath", "../etc/passwd"),
        "spec.containers[0].volumeMounts[1].subPath",
    ),
    "absolute sub path": (
        edit("spec.containers.0.volumeMounts.1.subPath", "/reflow.toml"),
        "spec.containers[0].volumeMounts[1].subPath",
    ),
    # labels and annotations
    "label key starting with a dash": (edit("metadata.labels[-bad]", "x"), "metadata.labels"),
    "label key with an upper-case prefix": (
        edit("metadata.labels[Reflow.dev/x]", "y"),
        "metadata.labels",
    ),
    "label key with an empty prefix": (edit("metadata.labels[/x]", "y"), "metadata.labels"),
    "label key name over 63": (edit(f"metadata.labels[reflow.dev/{LONG}]", "y"), "metadata.labels"),
    "label key with two slashes": (edit("metadata.labels[a/b/c]", "y"), "metadata.labels"),
    "label value with a space": (
        edit("metadata.labels[reflow.dev/pipeline]", "daily events"),
        "metadata.labels[reflow.dev/pipeline]",
    ),
    "label value over 63": (
        edit("metadata.labels[reflow.dev/pipeline]", LONG),
        "metadata.labels[reflow.dev/pipeline]",
    ),
    "label value ending in a dot": (
        edit("metadata.labels[reflow.dev/pipeline]", "events."),
        "metadata.labels[reflow.dev/pipeline]",
    ),
    "annotation key with a space": (
        edit("metadata.annotations.reflow conf", "x"),
        "metadata.annotations",
    ),
    "annotations over 256 KiB": (
        edit("metadata.annotations.big", "x" * (256 * 1024)),
        "metadata.annotations",
    ),
    "claim template label value": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.metadata.labels.x", "a b"),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.metadata.labels",
    ),
    "node selector label value": (
        edit("spec.nodeSelector[kubernetes.io/os]", "linux os"),
        "spec.nodeSelector",
    ),
    # enumerations
    "restart policy": (edit("spec.restartPolicy", "Sometimes"), "spec.restartPolicy"),
    "image pull policy": (
        edit("spec.containers.0.imagePullPolicy", "Maybe"),
        "spec.containers[0].imagePullPolicy",
    ),
    "dns policy": (edit("spec.dnsPolicy", "Auto"), "spec.dnsPolicy"),
    "toleration operator": (
        edit("spec.tolerations.0.operator", "Like"),
        "spec.tolerations[0].operator",
    ),
    "toleration effect": (edit("spec.tolerations.0.effect", "NoRun"), "spec.tolerations[0].effect"),
    "toleration Exists with a value": (
        edit("spec.tolerations.1.value", "x"),
        "spec.tolerations[1].value",
    ),
    "toleration without key and Equal": (
        edit("spec.tolerations.2.operator", "Equal"),
        "spec.tolerations[2].operator",
    ),
    "toleration seconds without NoExecute": (
        edit("spec.tolerations.1.effect", "NoSchedule"),
        "spec.tolerations[1].tolerationSeconds",
    ),
    # env
    "env name starting with a digit": (
        edit("spec.containers.0.env.0.name", "1PYSPARK"),
        "spec.containers[0].env[0].name",
    ),
    "env name with a space": (
        edit("spec.containers.0.env.0.name", "PYSPARK PYTHON"),
        "spec.containers[0].env[0].name",
    ),
    "env name with an equals sign": (
        edit("spec.containers.0.env.0.name", "A=B"),
        "spec.containers[0].env[0].name",
    ),
    "env value and valueFrom": (
        edit("spec.containers.0.env.2.value", "10.0.0.1"),
        "spec.containers[0].env[2].valueFrom",
    ),
    "env valueFrom without a source": (
        edit("spec.containers.0.env.2.valueFrom", {}),
        "spec.containers[0].env[2].valueFrom",
    ),
    # resources
    "cpu not a quantity": (
        edit("spec.containers.0.resources.requests.cpu", "lots"),
        "spec.containers[0].resources.requests[cpu]",
    ),
    "memory with a space": (
        edit("spec.containers.0.resources.limits.memory", "1 Gi"),
        "spec.containers[0].resources.limits[memory]",
    ),
    "memory with a lower-case binary suffix": (
        edit("spec.containers.0.resources.limits.memory", "1gi"),
        "spec.containers[0].resources.limits[memory]",
    ),
    "negative cpu": (
        edit("spec.containers.0.resources.requests.cpu", "-1"),
        "spec.containers[0].resources.requests[cpu]",
    ),
    "cpu request over its limit": (
        edit("spec.containers.0.resources.requests.cpu", "2500m"),
        "spec.containers[0].resources.requests[cpu]",
    ),
    "memory request over its limit": (
        edit("spec.containers.0.resources.requests.memory", "1025Mi"),
        "spec.containers[0].resources.requests[memory]",
    ),
    "ephemeral-storage request over its limit": (
        edit("spec.containers.0.resources.requests.ephemeral-storage", "5G"),
        "spec.containers[0].resources.requests[ephemeral-storage]",
    ),
    "gpu request below its limit": (
        edit("spec.containers.0.resources.requests[nvidia.com/gpu]", "0"),
        "spec.containers[0].resources.requests[nvidia.com/gpu]",
    ),
    "gpu request without a limit": (
        edits(
            edit("spec.containers.0.resources.requests[nvidia.com/gpu]", "1"),
            edit("spec.containers.0.resources.limits[nvidia.com/gpu]"),
        ),
        "spec.containers[0].resources.limits[nvidia.com/gpu]",
    ),
    "emptyDir size not a quantity": (
        edit("spec.volumes.2.emptyDir.sizeLimit", "big"),
        "spec.volumes[2].emptyDir.sizeLimit",
    ),
    # generic ephemeral volumes: checked like claims
    "ephemeral claim without access modes": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.accessModes", []),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.accessModes",
    ),
    "ephemeral claim with an unknown access mode": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.accessModes", ["ReadWriteAll"]),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.accessModes[0]",
    ),
    "ephemeral claim volume mode": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.volumeMode", "Disk"),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.volumeMode",
    ),
    "ephemeral claim without a storage request": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.resources.requests", {}),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources.requests[storage]",
    ),
    "ephemeral claim of zero bytes": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.resources.requests.storage", "0"),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources.requests[storage]",
    ),
    "ephemeral claim storage not a quantity": (
        edit(
            "spec.volumes.0.ephemeral.volumeClaimTemplate.spec.resources.requests.storage", "50GB"
        ),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources.requests[storage]",
    ),
    "ephemeral claim storage class": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec.storageClassName", "Fast_SSD"),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.storageClassName",
    ),
    "ephemeral volume without a claim spec": (
        edit("spec.volumes.0.ephemeral.volumeClaimTemplate.spec"),
        "spec.volumes[0].ephemeral.volumeClaimTemplate.spec",
    ),
    # durations
    "active deadline of zero": (
        edit("spec.activeDeadlineSeconds", 0),
        "spec.activeDeadlineSeconds",
    ),
    "negative active deadline": (
        edit("spec.activeDeadlineSeconds", -5),
        "spec.activeDeadlineSeconds",
    ),
    "negative grace period": (
        edit("spec.terminationGracePeriodSeconds", -1),
        "spec.terminationGracePeriodSeconds",
    ),
    # other references
    "service account name": (
        edit("spec.serviceAccountName", "Reflow_Spark"),
        "spec.serviceAccountName",
    ),
    "hostname": (edit("spec.hostname", "driver.pod"), "spec.hostname"),
    "probe with two handlers": (
        edit("spec.containers.0.livenessProbe.exec", {"command": ["true"]}),
        "spec.containers[0].livenessProbe",
    ),
    "probe without a handler": (
        edit("spec.containers.0.readinessProbe.httpGet"),
        "spec.containers[0].readinessProbe",
    ),
    "probe port name": (
        edit("spec.containers.0.livenessProbe.tcpSocket.port", "Spark_UI"),
        "spec.containers[0].livenessProbe.tcpSocket.port",
    ),
    "probe port number": (
        edit("spec.containers.0.readinessProbe.httpGet.port", 0),
        "spec.containers[0].readinessProbe.httpGet.port",
    ),
}


@pytest.mark.parametrize("case", POD_CASES)
def test_a_broken_pod_is_caught(case: str) -> None:
    change, where = POD_CASES[case]
    assert_caught(good_pod(), change, where)


POD_ACCEPTED: dict[str, Edit] = {
    # The API accepts these, so the checks must too.
    "pod name of 253 characters (no volume claim to derive)": edits(
        edit("metadata.name", "a" * 253),
        edit("spec.volumes.0"),
        edit("spec.containers.0.volumeMounts.0"),
    ),
    "generateName instead of name": edits(
        edit("metadata.name"), edit("metadata.generateName", "events-")
    ),
    "empty label value": edit("metadata.labels[reflow.dev/try]", ""),
    "label value with dots and underscores": edit("metadata.labels.x", "A.b_c-1"),
    "every restart policy": edit("spec.restartPolicy", "OnFailure"),
    "decimal exponent quantity": edit("spec.containers.0.resources.limits.memory", "2e9"),
    "numeric quantity": edit("spec.containers.0.resources.requests.cpu", 0.5),
    "toleration effect empty": edit("spec.tolerations.0.effect", ""),
    "claim without a storage class": edit(
        "spec.volumes.0.ephemeral.volumeClaimTemplate.spec.storageClassName", ""
    ),
    "every access mode": edit(
        "spec.volumes.0.ephemeral.volumeClaimTemplate.spec.accessModes",
        ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
    ),
    "block volume mode": edit(
        "spec.volumes.0.ephemeral.volumeClaimTemplate.spec.volumeMode", "Block"
    ),
    "grace period of zero": edit("spec.terminationGracePeriodSeconds", 0),
    "request without a limit": edit("spec.containers.0.resources.limits.cpu"),
    "limit without a request": edit("spec.containers.0.resources.requests.memory"),
    "same env name twice": append(
        "spec.containers.0.env", {"name": "PYSPARK_PYTHON", "value": "x"}
    ),
    "same port name in two containers": append(
        "spec.containers",
        {
            "name": "sidecar",
            "image": "busybox:1.36",
            "ports": [{"name": "spark-ui", "containerPort": 1}],
        },
    ),
}


@pytest.mark.parametrize("case", POD_ACCEPTED)
def test_what_the_api_accepts_is_not_a_problem(case: str) -> None:
    assert broken(good_pod(), POD_ACCEPTED[case]) == []


JUNK: dict[str, Edit] = {
    "containers not a list": edit("spec.containers", "try"),
    "container not a mapping": edit("spec.containers.0", 3),
    "names of the wrong type": edits(
        edit("spec.containers.0.name", ["x"]), edit("spec.volumes.1.name", {"a": 1})
    ),
    "mount name of the wrong type": edit("spec.containers.0.volumeMounts.0.name", ["x"]),
    "labels not a mapping": edit("metadata.labels", ["a"]),
    "resources of the wrong type": edit("spec.containers.0.resources.requests", "1"),
    "quantity of the wrong type": edit("spec.containers.0.resources.requests.cpu", [1]),
    "quantity true": edit("spec.containers.0.resources.requests.cpu", True),
    "spec not a mapping": edit("spec", "none"),
    "metadata missing": edit("metadata"),
    "access modes a string": edit(
        "spec.volumes.0.ephemeral.volumeClaimTemplate.spec.accessModes", "ReadWriteOnce"
    ),
}


@pytest.mark.parametrize("case", JUNK)
def test_malformed_manifests_are_problems_not_crashes(case: str) -> None:
    assert broken(good_pod(), JUNK[case])


# -- claims ---------------------------------------------------------------------------------
CLAIM_CASES: dict[str, tuple[Edit, str]] = {
    "name with capitals": (edit("metadata.name", "Logs"), "metadata.name"),
    "no access modes": (edit("spec.accessModes"), "spec.accessModes"),
    "empty access modes": (edit("spec.accessModes", []), "spec.accessModes"),
    "unknown access mode": (edit("spec.accessModes", ["RWX"]), "spec.accessModes[0]"),
    "ReadWriteOncePod with another mode": (
        edit("spec.accessModes", ["ReadWriteOncePod", "ReadOnlyMany"]),
        "spec.accessModes",
    ),
    "volume mode": (edit("spec.volumeMode", "Raw"), "spec.volumeMode"),
    "no storage request": (edit("spec.resources.requests"), "spec.resources.requests[storage]"),
    "storage limit under its request": (
        edit("spec.resources.limits", {"storage": "5Gi"}),
        "spec.resources.requests[storage]",
    ),
    "storage class": (edit("spec.storageClassName", "-fast"), "spec.storageClassName"),
    "selector operator": (
        edit("spec.selector", {"matchExpressions": [{"key": "a", "operator": "Has"}]}),
        "spec.selector.matchExpressions[0].operator",
    ),
    "selector In without values": (
        edit("spec.selector", {"matchExpressions": [{"key": "a", "operator": "In"}]}),
        "spec.selector.matchExpressions[0].values",
    ),
}


@pytest.mark.parametrize("case", CLAIM_CASES)
def test_a_broken_claim_is_caught(case: str) -> None:
    change, where = CLAIM_CASES[case]
    assert_caught(good_claim(), change, where)


def test_a_claim_may_ask_for_read_write_once_pod_alone() -> None:
    assert broken(good_claim(), edit("spec.accessModes", ["ReadWriteOncePod"])) == []


# -- deploy kinds ---------------------------------------------------------------------------
TEMPLATE = "spec.template.spec"
OTHER_CASES: dict[str, tuple[Callable[[], Manifest], Edit, str]] = {
    "deployment selector not matching the template": (
        good_deployment,
        edit("spec.selector.matchLabels[app.kubernetes.io/name]", "other"),
        "spec.selector",
    ),
    "deployment selector expression not matching": (
        good_deployment,
        edit("spec.selector.matchExpressions.0.operator", "NotIn"),
        "spec.selector",
    ),
    "deployment empty selector": (good_deployment, edit("spec.selector", {}), "spec.selector"),
    "deployment restart policy Never": (
        good_deployment,
        edit(f"{TEMPLATE}.restartPolicy", "Never"),
        f"{TEMPLATE}.restartPolicy",
    ),
    "deployment Recreate with rollingUpdate": (
        good_deployment,
        edit("spec.strategy.rollingUpdate", {"maxSurge": 1}),
        "spec.strategy.rollingUpdate",
    ),
    "deployment strategy type": (
        good_deployment,
        edit("spec.strategy.type", "BlueGreen"),
        "spec.strategy.type",
    ),
    "deployment negative replicas": (good_deployment, edit("spec.replicas", -1), "spec.replicas"),
    "deployment pod rules apply to the template": (
        good_deployment,
        edit(f"{TEMPLATE}.containers.0.name", "Scheduler"),
        f"{TEMPLATE}.containers[0].name",
    ),
    "deployment template labels": (
        good_deployment,
        edit("spec.template.metadata.labels.tier", "control plane"),
        "spec.template.metadata.labels",
    ),
    "service name starting with a digit (DNS-1035)": (
        good_service,
        edit("metadata.name", "1web"),
        "metadata.name",
    ),
    "service name with a dot (DNS-1035)": (
        good_service,
        edit("metadata.name", "reflow.web"),
        "metadata.name",
    ),
    "service without ports": (good_service, edit("spec.ports", []), "spec.ports"),
    "service port without a name among several": (
        good_service,
        edit("spec.ports.1.name"),
        "spec.ports[1].name",
    ),
    "service port name": (good_service, edit("spec.ports.0.name", "HTTP"), "spec.ports[0].name"),
    "service port name used twice": (
        good_service,
        edit("spec.ports.1.name", "http"),
        "spec.ports[1].name: duplicate",
    ),
    "service same port twice": (
        good_service,
        edit("spec.ports.1.port", 80),
        "spec.ports[1]: duplicate",
    ),
    "service port 0": (good_service, edit("spec.ports.0.port", 0), "spec.ports[0].port"),
    "service target port name": (
        good_service,
        edit("spec.ports.0.targetPort", "Http"),
        "spec.ports[0].targetPort",
    ),
    "service type": (good_service, edit("spec.type", "Internal"), "spec.type"),
    "service node port on ClusterIP": (
        good_service,
        edit("spec.ports.0.nodePort", 30080),
        "spec.ports[0].nodePort",
    ),
    "service selector label": (good_service, edit("spec.selector.app", "re flow"), "spec.selector"),
    "role without verbs": (good_role, edit("rules.0.verbs", []), "rules[0].verbs"),
    "role with an empty verb": (good_role, edit("rules.0.verbs", [""]), "rules[0].verbs"),
    "role without resources": (good_role, edit("rules.0.resources", []), "rules[0].resources"),
    "role without api groups": (good_role, edit("rules.0.apiGroups"), "rules[0].apiGroups"),
    "role with non-resource URLs": (
        good_role,
        edit("rules.1", {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}),
        "rules[1].nonResourceURLs",
    ),
    "role name with a slash": (
        good_role,
        edit("metadata.name", "reflow/launcher"),
        "metadata.name",
    ),
    "binding role ref group": (
        good_role_binding,
        edit("roleRef.apiGroup", "rbac"),
        "roleRef.apiGroup",
    ),
    "binding role ref kind": (good_role_binding, edit("roleRef.kind", "Pod"), "roleRef.kind"),
    "binding subject kind": (
        good_role_binding,
        edit("subjects.0.kind", "Robot"),
        "subjects[0].kind",
    ),
    "binding service account name": (
        good_role_binding,
        edit("subjects.0.name", "Reflow"),
        "subjects[0].name",
    ),
    "binding service account with an api group": (
        good_role_binding,
        edit("subjects.0.apiGroup", "rbac.authorization.k8s.io"),
        "subjects[0].apiGroup",
    ),
    "binding group without the rbac api group": (
        good_role_binding,
        edit("subjects.1.apiGroup"),
        "subjects[1].apiGroup",
    ),
    "config map key with a slash": (
        good_config_map,
        edit("data[conf/reflow.toml]", "x"),
        "data: key",
    ),
    "config map key in data and binaryData": (
        good_config_map,
        edit("binaryData[reflow.toml]", "eA=="),
        "binaryData: key",
    ),
    "config map binary data not base64": (
        good_config_map,
        edit("binaryData[logo.png]", "not base64!"),
        "binaryData[logo.png]",
    ),
    "config map over 1 MiB": (good_config_map, edit("data.big", "x" * (1 << 20)), "data:"),
    "secret data not base64": (good_secret, edit("data.token", "secret!"), "data[token]"),
    "secret string data key": (
        good_secret,
        edit("stringData.DATABASE URL", "x"),
        "stringData: key",
    ),
    "namespace name with a dot (a label)": (
        good_namespace,
        edit("metadata.name", "reflow.prod"),
        "metadata.name",
    ),
    "namespace name over 63": (good_namespace, edit("metadata.name", LONG), "metadata.name"),
    "service account name": (good_service_account, edit("metadata.name", "Spark"), "metadata.name"),
}


@pytest.mark.parametrize("case", OTHER_CASES)
def test_a_broken_deploy_manifest_is_caught(case: str) -> None:
    make, change, where = OTHER_CASES[case]
    assert_caught(make(), change, where)


def test_a_cluster_role_binding_needs_the_namespace_of_its_service_account() -> None:
    binding = good_role_binding()
    binding["kind"] = "ClusterRoleBinding"
    binding["roleRef"]["kind"] = "ClusterRole"
    del binding["metadata"]["namespace"]
    found = problems(binding)
    assert any(p.startswith("subjects[0].namespace") for p in found), found
    binding["subjects"][0]["namespace"] = "reflow"
    assert problems(binding) == []
    binding["roleRef"]["kind"] = "Role"
    assert any(p.startswith("roleRef.kind") for p in problems(binding))


def test_a_cluster_role_may_have_non_resource_urls_but_not_mixed() -> None:
    role = good_role()
    role["kind"] = "ClusterRole"
    del role["metadata"]["namespace"]
    role["rules"].append({"nonResourceURLs": ["/metrics"], "verbs": ["get"]})
    assert problems(role) == []
    role["rules"][-1]["resources"] = ["pods"]
    assert any(re.match(r"rules\[2\]: nonResourceURLs", p) for p in problems(role))


def test_a_headless_service_needs_no_ports_and_an_external_name_service_no_selector() -> None:
    service = good_service()
    service["spec"].update(clusterIP="None", ports=[])
    assert problems(service) == []
    external = good_service()
    external["spec"] = {"type": "ExternalName", "externalName": "db.example.com"}
    assert problems(external) == []
    del external["spec"]["externalName"]
    assert problems(external) == ["spec.externalName: required for type ExternalName"]
