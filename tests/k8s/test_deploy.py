"""deploy/kubernetes, checked offline: every manifest valid for the API server, RBAC exactly
what reflow needs, the kustomization complete, reflow.toml loadable, the Dockerfile sane.

None of this applies the manifests or builds the image: test_deploy_real.py applies them
(server-side dry run) on a real cluster; see deploy/kubernetes/README.md.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from reflow.core.config import load_settings
from tests.k8s.validation import assert_valid

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "reflow"
IMAGE = "ghcr.io/example/reflow-etl:1.0"
RBAC_GROUP = "rbac.authorization.k8s.io"

# Role name -> {(api group, resource): verbs}: reflow's launcher, and Spark's driver in
# client mode creating its executors. Anything more is a finding.
ALLOWED_RULES = {
    "reflow-launcher": {
        ("", "pods"): {"create", "get", "list", "watch", "patch", "delete"},
        ("", "pods/log"): {"get"},
        ("", "persistentvolumeclaims"): {"create", "get", "list", "delete"},
        ("", "secrets"): {"create", "update", "patch", "list", "delete"},
        ("", "configmaps"): {"get", "create", "delete", "list"},
        ("", "events"): {"get", "list", "watch"},
    },
    "reflow-spark": {
        ("", "pods"): {"create", "get", "list", "watch", "delete", "deletecollection"},
        # The driver's shutdown deletes its services by label (deletecollection).
        ("", "services"): {"create", "get", "list", "delete", "deletecollection"},
        ("", "configmaps"): {"create", "get", "list", "delete", "deletecollection"},
        ("", "persistentvolumeclaims"): {"create", "get", "list", "delete", "deletecollection"},
    },
}
BINDINGS = {"reflow-launcher": "reflow", "reflow-spark": "reflow-spark"}  # role -> account

REFLOW_TOML = {
    "reflow": {
        "pipelines_folder": "pipelines",
        "logs_folder": "/var/lib/reflow/logs",
        "launcher": "kubernetes",
        "kubernetes": {
            "namespace": "reflow",
            "image": IMAGE,
            "service_account": "reflow-spark",
            "pipelines_folder": "/opt/reflow/pipelines",
            "cleanup": "on_success",
            "startup_timeout": 600,
        },
    }
}
DATABASE_URL = "postgresql+psycopg://reflow:CHANGE-ME@postgres.reflow.svc:5432/reflow"


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


MANIFESTS = [(path, doc) for path in manifest_files() for doc in documents(path)]


def ident(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in MANIFESTS
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r}")


def reflow_toml() -> str:
    text: str = the("ConfigMap", "reflow-config")["data"]["reflow.toml"]
    return text


def test_the_example_has_manifests() -> None:
    assert Counter(doc["kind"] for _, doc in MANIFESTS) == {
        "Namespace": 1,
        "ServiceAccount": 2,
        "Role": 2,
        "RoleBinding": 2,
        "Secret": 1,
        "ConfigMap": 1,
        "PersistentVolumeClaim": 1,
        "Deployment": 1,
        "Service": 1,
    }


# -- every manifest -------------------------------------------------------------------------
@pytest.mark.parametrize("item", MANIFESTS, ids=[ident(m) for m in MANIFESTS])
def test_every_manifest_is_valid_for_the_api_server(item: tuple[Path, dict[str, Any]]) -> None:
    assert_valid(item[1])


@pytest.mark.parametrize("item", MANIFESTS, ids=[ident(m) for m in MANIFESTS])
def test_every_object_lives_in_the_reflow_namespace(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    if doc["kind"] == "Namespace":
        assert doc["metadata"]["name"] == NAMESPACE
    else:
        assert doc["metadata"].get("namespace") == NAMESPACE


def test_the_kustomization_lists_every_manifest_file_once() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == {p.name for p in manifest_files()}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_valid_objects() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    for doc in docs:
        assert_valid(doc)
    names = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert names == sorted((d["kind"], d["metadata"]["name"]) for _, d in MANIFESTS)


# -- RBAC -----------------------------------------------------------------------------------
def test_nothing_is_granted_cluster_wide() -> None:
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_each_role_grants_exactly_what_reflow_needs_and_no_wildcard() -> None:
    roles = [doc for _, doc in MANIFESTS if doc["kind"] == "Role"]
    assert {r["metadata"]["name"] for r in roles} == set(ALLOWED_RULES)
    for role in roles:
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
            for word in rule["apiGroups"] + rule["resources"] + rule["verbs"]:
                assert "*" not in word, f"{role['metadata']['name']}: wildcard in {rule}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        assert granted == ALLOWED_RULES[role["metadata"]["name"]]


def test_each_role_is_bound_to_its_own_service_account_only() -> None:
    accounts = {doc["metadata"]["name"] for _, doc in MANIFESTS if doc["kind"] == "ServiceAccount"}
    assert accounts == set(BINDINGS.values())
    bindings = [doc for _, doc in MANIFESTS if doc["kind"] == "RoleBinding"]
    assert len(bindings) == len(BINDINGS)
    for binding in bindings:
        ref = binding["roleRef"]
        assert (ref["apiGroup"], ref["kind"]) == (RBAC_GROUP, "Role")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": BINDINGS[ref["name"]], "namespace": NAMESPACE}
        ]


# -- configuration --------------------------------------------------------------------------
def test_reflow_toml_has_exactly_the_documented_keys() -> None:
    assert tomllib.loads(reflow_toml()) == REFLOW_TOML


def test_reflow_loads_the_configmap_reflow_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("REFLOW_")]:
        monkeypatch.delenv(var)
    (tmp_path / "reflow.toml").write_text(reflow_toml())
    settings = load_settings(tmp_path)
    assert settings.launcher == "kubernetes"
    assert settings.logs_folder == Path("/var/lib/reflow/logs")
    assert settings.kubernetes.namespace == NAMESPACE
    assert settings.kubernetes.image == IMAGE
    assert settings.kubernetes.service_account == "reflow-spark"


def test_the_secret_is_an_example_pointing_at_a_secret_manager() -> None:
    secret = the("Secret", "reflow-secrets")
    assert secret["stringData"]["REFLOW_DATABASE_URL"] == DATABASE_URL
    assert "secret manager" in (DEPLOY / "secret.yaml").read_text()


# -- the deployment -------------------------------------------------------------------------
def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_every_reference_of_the_pod_names_an_object_of_the_example() -> None:
    spec = pod_spec()
    assert spec["serviceAccountName"] == "reflow"
    secret_keys = set(the("Secret", "reflow-secrets")["stringData"])
    for c in spec["initContainers"] + spec["containers"]:
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "reflow-secrets" and ref["key"] in secret_keys
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "reflow-config"
    assert volumes["logs"]["persistentVolumeClaim"]["claimName"] == "reflow-logs"


def test_the_scheduler_and_the_web_server_share_the_logs_and_the_config() -> None:
    toml_mount = {
        "name": "config",
        "mountPath": "/opt/reflow/reflow.toml",
        "subPath": "reflow.toml",
        "readOnly": True,
    }
    for name in ("db-upgrade", "scheduler", "web"):
        c = container(name)
        assert c["image"] == IMAGE
        assert toml_mount in c["volumeMounts"]
        env = env_of(c)
        assert env["REFLOW_HOME"] == "/opt/reflow"
        assert env["REFLOW_DATABASE_URL"] == {
            "secretKeyRef": {"name": "reflow-secrets", "key": "REFLOW_DATABASE_URL"}
        }
    for name in ("scheduler", "web"):
        mounts = {m["mountPath"]: m for m in container(name)["volumeMounts"]}
        assert mounts[REFLOW_TOML["reflow"]["logs_folder"]]["name"] == "logs"


def test_the_processes_are_reflow_commands() -> None:
    assert container("db-upgrade")["command"] == ["reflow", "db", "upgrade"]
    scheduler = container("scheduler")
    assert scheduler["command"] == [
        "reflow",
        "scheduler",
        "--metrics-host",
        "0.0.0.0",
        "--metrics-port",
        "9464",
    ]
    assert scheduler["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    web = container("web")
    assert web["command"] == ["reflow", "web", "--host", "0.0.0.0", "--port", "8080"]
    assert web["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_both_processes_are_probed_on_their_health_endpoints() -> None:
    for name, port in (("scheduler", "metrics"), ("web", "http")):
        c = container(name)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        # A probe reads the database once: a slow server must not fail it at once.
        assert c["readinessProbe"]["timeoutSeconds"] >= 5
    assert "startupProbe" not in container("scheduler")


def test_prometheus_scrapes_the_schedulers_metrics_port() -> None:
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
    }
    ports = {p["name"]: p["containerPort"] for p in container("scheduler")["ports"]}
    assert str(ports["metrics"]) == annotations["prometheus.io/port"]


def test_only_the_scheduler_gets_the_api_token() -> None:
    spec = pod_spec()
    assert spec["automountServiceAccountToken"] is False
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    holders = [
        c["name"]
        for c in spec["initContainers"] + spec["containers"]
        if any(m["mountPath"] == token_path for m in c.get("volumeMounts", []))
    ]
    assert holders == ["scheduler"]
    token = {v["name"]: v for v in spec["volumes"]}["api-token"]["projected"]["sources"]
    assert {next(iter(s)) for s in token} == {"serviceAccountToken", "configMap", "downwardAPI"}


def test_one_scheduler_recreated_not_rolled() -> None:
    deployment = the("Deployment", "reflow")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_every_container_runs_as_non_root_with_cpu_memory_and_ephemeral_storage_bounded() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for c in spec["initContainers"] + spec["containers"]:
        for part in ("requests", "limits"):
            assert set(c["resources"][part]) == {"cpu", "memory", "ephemeral-storage"}, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_pods_are_not_mistaken_for_tries() -> None:
    # The launcher's orphan sweep deletes pods with this label that no try owns.
    labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/managed-by") != "reflow"


def test_the_service_reaches_the_web_container() -> None:
    service = the("Service", "reflow-web")
    template_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    port_names = {p["name"] for p in container("web")["ports"]}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "http")]
    assert "http" in port_names


def test_the_logs_claim_is_20gi_read_write_once_in_the_default_class() -> None:
    claim = the("PersistentVolumeClaim", "reflow-logs")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in claim["spec"]


# -- the Dockerfile -------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/kubernetes/Dockerfile, continuation lines joined
    and comments (and parser directives) dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        word, _, rest = (pending + stripped).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def test_the_dockerfile_starts_from_a_pinned_base_image() -> None:
    instructions = dockerfile()
    assert instructions[0][0] == "FROM"
    for word, args in instructions:
        if word == "FROM":
            image = args.split()[0]
            assert re.search(r":[\w][\w.-]*$|@sha256:[0-9a-f]{64}$", image), f"unpinned {image}"
            assert not image.endswith(":latest")


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for word, args in dockerfile() if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert int(uid) == pod_spec()["securityContext"]["runAsUser"]


def dockerignore_allows(source: str) -> bool:
    """Whether the allow-list Dockerfile.dockerignore ("*" then "!path" lines) sends
    ``source`` to the build."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].strip("/") for line in lines if line.startswith("!")]
    return any(source == a or source.startswith(a + "/") for a in allowed)


def test_every_copy_source_exists_in_the_repository_and_reaches_the_build() -> None:
    copies = [args for word, args in dockerfile() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(args))
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert dockerignore_allows(source.rstrip("/")), f"COPY {source}: ignored"


def test_the_image_installs_reflow_with_spark_and_kubernetes_and_has_spark_submit() -> None:
    runs = " && ".join(args for word, args in dockerfile() if word == "RUN")
    extras = re.search(r"pip install [^&]*\[([\w,]+)\]", runs)
    assert extras, "reflow is not pip-installed with extras"
    # psycopg: the URL of the example's database is postgresql+psycopg.
    assert set(extras.group(1).split(",")) >= {"spark", "kubernetes", "postgres"}
    assert "openjdk-17-jre-headless" in runs
    # The Spark task of a pod runs "${SPARK_HOME:+$SPARK_HOME/bin/}spark-submit": with
    # SPARK_HOME unset, the one pip put in the venv, which is on PATH.
    env = dockerfile_env()
    assert "SPARK_HOME" not in env
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "python3 -m venv /opt/venv" in runs
    assert "spark-submit --version" in runs
    assert env["PYSPARK_PYTHON"] == "python3"


def test_the_image_holds_the_example_project_where_reflow_toml_says() -> None:
    copies = [shlex.split(args) for word, args in dockerfile() if word == "COPY"]
    assert any(c[-2:] == ["examples/events", "/opt/reflow"] for c in copies)
    workdirs = [args for word, args in dockerfile() if word == "WORKDIR"]
    assert workdirs[-1] == "/opt/reflow"
    pipelines = REFLOW_TOML["reflow"]["kubernetes"]["pipelines_folder"]
    assert pipelines == "/opt/reflow/pipelines"
    assert (ROOT / "examples" / "events" / "pipelines").is_dir()
    assert dockerfile_env()["REFLOW_HOME"] == "/opt/reflow"


def test_the_entrypoint_starts_spark_executors_and_runs_any_other_command(
    tmp_path: Path,
) -> None:
    """Spark starts executor pods with ``args: ["executor"]`` and no command: the image's
    entrypoint turns Spark's environment into the executor's JVM command line."""
    (ENTRYPOINT,) = [shlex.split(args) for word, args in dockerfile() if word == "ENTRYPOINT"]
    copies = [shlex.split(args) for word, args in dockerfile() if word == "COPY"]
    assert any(c[-1] == "/usr/local/bin/" + ENTRYPOINT[0].strip('[]",') for c in copies)
    fake_java = tmp_path / "java"
    fake_java.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake_java.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "SPARK_HOME": "/opt/spark",
        "SPARK_JAVA_OPT_1": "-Dspark.driver.port=7078",
        "SPARK_JAVA_OPT_0": "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "SPARK_JAVA_OPT_10": "-Dwith space=yes",
        "SPARK_EXECUTOR_MEMORY": "512m",
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.244.0.5:7078",
        "SPARK_EXECUTOR_ID": "2",
        "SPARK_EXECUTOR_CORES": "1",
        "SPARK_APPLICATION_ID": "spark-abc",
        "SPARK_EXECUTOR_POD_IP": "10.244.0.7",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        "SPARK_EXECUTOR_POD_NAME": "etl-exec-2",
    }
    script = str(DEPLOY / "entrypoint.sh")
    out = subprocess.run(
        [script, "executor"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[:3] == [
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "-Dspark.driver.port=7078",
        "-Dwith space=yes",
    ]
    assert out[3:6] == ["-Xms512m", "-Xmx512m", "-cp"]
    assert out[6] == "/opt/spark/jars/*"
    assert out[7] == "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
    args = dict(zip(out[8::2], out[9::2], strict=True))
    assert args == {
        "--driver-url": env["SPARK_DRIVER_URL"],
        "--executor-id": "2",
        "--cores": "1",
        "--app-id": "spark-abc",
        "--hostname": "10.244.0.7",
        "--resourceProfileId": "0",
        "--podName": "etl-exec-2",
    }
    other = subprocess.run([script, "echo", "hello"], env=env, capture_output=True, text=True)
    assert (other.returncode, other.stdout) == (0, "hello\n")


def test_the_operator_podmonitor_scrapes_the_scheduler_metrics_port() -> None:
    (monitor,) = documents(DEPLOY / "operator" / "podmonitor.yaml")
    assert monitor["kind"] == "PodMonitor"
    labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in container("scheduler")["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["namespace"] == the("Deployment")["metadata"]["namespace"]
