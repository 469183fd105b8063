"""Pods and claims built from tasks: every option, templated per run, valid for Kubernetes
(official schemas through kubernetes-validate, plus the rules the schemas miss)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from reflow.core.errors import ConfError, PipelineError, TaskError
from reflow.launchers.kubernetes.manifest import BACKSTOP_MARGIN
from reflow.services import kubernetes as k8s_service
from reflow.services.project import Project

from .validation import assert_valid

pytestmark = pytest.mark.k8s

HEADER = """
from reflow import Pipeline, Python, Shell, SparkSubmit, Param
from reflow.core.pod import Pod, Volume, scratch
"""

FULL = (
    HEADER
    + """
def check(ds):
    print("checked", ds)

with Pipeline(
    "events",
    schedule="@daily",
    start_date="2024-01-01",
    params={"team": "data", "token": Param("s3cr3t-value", secret=True)},
    defaults={
        "pod": Pod(
            image="registry.example.com/etl:{{ params.team }}-1",
            labels={"team": "{{ params.team }}"},
            node_selector={"pool": "batch"},
        ),
        "kill_grace": 20,
    },
):
    ingest = Shell(
        "ingest",
        "ingest --day {{ ds }} --tmp $REFLOW_SCRATCH",
        timeout="1h",
        scratch=scratch("20Gi", storage_class="fast-ssd"),
        pod=Pod(
            image_pull_policy="Always",
            image_pull_secrets=["regcred"],
            requests={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"},
            limits={"memory": "6Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": 1},
            secret_env={"DB_PASSWORD": "warehouse-db/password"},
            config_map_env={"REGION": "etl-settings/region"},
            env_from=["secret:etl-common", "configmap:etl-defaults"],
            volumes=[
                Volume.claim(
                    "data", "spark-pv-claim-{{ ds_nodash }}", "/data",
                    size="50Gi", storage_class="gp3", access_modes=["ReadWriteOnce"],
                ),
                Volume.claim("reference", "reference-data", "/ref", read_only=True),
                Volume.config_map("settings", "etl-settings", "/etc/etl"),
                Volume.secret("creds", "etl-creds", "/var/run/creds"),
                Volume.empty_dir("cache", "/cache", size_limit="1Gi"),
            ],
            tolerations=[{"key": "batch", "operator": "Equal", "value": "yes",
                          "effect": "NoSchedule"}],
            affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["eu-west-1a"]}]}]}}},
            service_account="etl-runner",
            annotations={"owner": "{{ params.team }}@example.com"},
            labels={"cost-center": "cc-{{ ds_nodash }}"},
            pod_override={
                "spec": {
                    "priorityClassName": "batch-low",
                    "containers": [{"name": "main", "securityContext": {"runAsUser": 1000}}],
                }
            },
        ),
    )
    quality = Python("quality", check, timeout=300)
    spark = SparkSubmit(
        "aggregate",
        "jobs/aggregate.py",
        master="k8s://https://kubernetes.default.svc",
        application_args=["--ds", "{{ ds }}"],
        pod=Pod(volumes=[Volume.claim(
            "spark", "spark-pv-claim-{{ ds_nodash }}", "/spark", size="100Gi")]),
    )
    ingest >> spark >> quality
"""
)


def project(tmp_path: Path, source: str, toml: str = "") -> Project:
    home = tmp_path / "project"
    (home / "pipelines").mkdir(parents=True, exist_ok=True)
    (home / "pipelines" / "events.py").write_text(textwrap.dedent(source))
    (home / "reflow.toml").write_text(
        textwrap.dedent(
            """
            [reflow.kubernetes]
            namespace = "etl"
            image = "registry.example.com/default:1"
            """
        )
        + textwrap.dedent(toml)
    )
    return Project.open(home)


def render(proj: Project, task: str, date: str = "2024-01-03", **kw: Any) -> list[dict[str, Any]]:
    manifests = k8s_service.render(proj, "events", task, date, kw.get("conf")).manifests
    for manifest in manifests:
        assert_valid(manifest)
    return manifests


def the_pod(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    pods = [m for m in manifests if m["kind"] == "Pod"]
    assert len(pods) == 1
    return pods[0]


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_every_option_of_a_shell_task_reaches_the_pod(tmp_path: Path) -> None:
    manifests = render(project(tmp_path, FULL), "ingest")
    pod = the_pod(manifests)
    spec, container = pod["spec"], pod["spec"]["containers"][0]

    assert pod["metadata"]["namespace"] == "etl"
    assert container["image"] == "registry.example.com/etl:data-1"  # templated, from defaults
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert "ingest --day 2024-01-03" in container["command"][2]
    assert container["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"},
        "limits": {"memory": "6Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"},
    }
    env = env_of(pod)
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "warehouse-db", "key": "password"}}
    assert env["REGION"] == {"configMapKeyRef": {"name": "etl-settings", "key": "region"}}
    assert env["REFLOW_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["REFLOW_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["REFLOW_SCRATCH"] == "/scratch"
    assert env["REFLOW_DS"] == "2024-01-03"
    assert container["envFrom"] == [
        {"secretRef": {"name": "etl-common"}},
        {"configMapRef": {"name": "etl-defaults"}},
    ]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "spark-pv-claim-20240103"}
    assert volumes["reference"]["persistentVolumeClaim"] == {
        "claimName": "reference-data",
        "readOnly": True,
    }
    assert volumes["settings"]["configMap"] == {"name": "etl-settings"}
    assert volumes["creds"]["secret"] == {"secretName": "etl-creds"}
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "1Gi"}
    claim = volumes["reflow-scratch"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast-ssd",
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {
        "data": "/data",
        "reference": "/ref",
        "settings": "/etc/etl",
        "creds": "/var/run/creds",
        "cache": "/cache",
        "reflow-scratch": "/scratch",
    }
    assert spec["nodeSelector"] == {"pool": "batch"}
    assert spec["tolerations"][0]["key"] == "batch"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["serviceAccountName"] == "etl-runner"
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 20
    # The server's backstop comes after reflow's own stop: start-up, timeout, grace, margin.
    assert spec["activeDeadlineSeconds"] == 600 + 3600 + 20 + BACKSTOP_MARGIN
    # pod_override is deep-merged: the main container keeps everything and gains more.
    assert spec["priorityClassName"] == "batch-low"
    assert container["securityContext"] == {"runAsUser": 1000}
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels["team"] == "data"
    assert labels["cost-center"] == "cc-20240103"
    assert labels["reflow.io/pipeline"] == "events"
    assert labels["reflow.io/task"] == "ingest"
    assert labels["reflow.io/try"] == "1"
    assert labels["app.kubernetes.io/managed-by"] == "reflow"
    assert annotations["owner"] == "data@example.com"
    assert annotations["reflow.io/run-id"] == "scheduled__2024-01-03T00:00:00+00:00"
    # The claim with a size is created by reflow; the one without must exist already.
    claims = [m for m in manifests if m["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["spark-pv-claim-20240103"]
    assert claims[0]["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "gp3",
    }


def test_a_claim_name_templated_per_date_gives_each_date_its_own_claim(tmp_path: Path) -> None:
    proj = project(tmp_path, FULL)
    names = set()
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        for manifest in render(proj, "aggregate", day):
            if manifest["kind"] == "PersistentVolumeClaim":
                names.add(manifest["metadata"]["name"])

    assert names == {
        "spark-pv-claim-20240101",
        "spark-pv-claim-20240102",
        "spark-pv-claim-20240103",
    }


def test_a_spark_task_on_kubernetes_runs_client_mode_with_the_pod_ip(tmp_path: Path) -> None:
    pod = the_pod(render(project(tmp_path, FULL), "aggregate"))
    script = pod["spec"]["containers"][0]["command"][2]

    assert "--deploy-mode client" in script
    assert "${REFLOW_POD_IP" in script and "${REFLOW_POD_NAME" in script
    assert "spark-submit" in script
    assert env_of(pod)["REFLOW_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_a_python_task_runs_reflows_entry_point_in_the_image(tmp_path: Path) -> None:
    pod = the_pod(render(project(tmp_path, FULL), "quality"))
    container = pod["spec"]["containers"][0]
    env = env_of(pod)

    assert container["command"] == ["python3", "-m", "reflow.tasks.pyrun"]
    assert env["REFLOW_TASK_FILE"] == "/opt/reflow/pipelines/events.py"
    assert env["REFLOW_TASK_ID"] == "quality"
    assert pod["spec"]["activeDeadlineSeconds"] == 600 + 300 + 20 + BACKSTOP_MARGIN


SECRETS = (
    HEADER
    + """
def check(token):
    print(len(token))

with Pipeline(
    "events",
    schedule="@daily",
    start_date="2024-01-01",
    params={"token": Param("s3cr3t-value", secret=True), "team": "data"},
):
    Python("quality", check)
    Shell(
        "load",
        "load --team {{ params.team }}",
        env={
            "WAREHOUSE_TOKEN": "{{ params.token }}",
            "API_KEY": "k-123",
            "TEAM": "{{ params.team }}",
        },
    )
    Shell("plain", "echo {{ params.team }}")
"""
)


@pytest.mark.parametrize(
    ("task", "hidden"),
    [("quality", {"REFLOW_TASK_CONTEXT"}), ("load", {"WAREHOUSE_TOKEN", "API_KEY"})],
)
def test_secret_values_reach_the_pod_through_a_secret_of_its_own(
    tmp_path: Path, task: str, hidden: set[str]
) -> None:
    # A Python task's run context holds the params; a Shell task's env may read a secret
    # param or have a secret-looking name. None of those values may be in the pod's spec.
    manifests = render(project(tmp_path, SECRETS), task, conf={"token": "from-conf-42"})
    assert [m["kind"] for m in manifests] == ["Secret", "Pod"]
    secret, pod = manifests
    name = pod["metadata"]["name"]
    assert secret["metadata"]["name"] == name
    assert (
        secret["metadata"]["labels"]["reflow.io/try-id"]
        == pod["metadata"]["labels"]["reflow.io/try-id"]
    )
    assert set(secret["stringData"]) == hidden
    env = env_of(pod)
    for key in hidden:
        assert env[key] == {"secretKeyRef": {"name": name, "key": key}}
    assert "from-conf-42" in str(secret["stringData"])
    assert "from-conf-42" not in str(pod) and "k-123" not in str(pod)
    if task == "load":
        assert env["TEAM"] == "data"


def test_secret_env_inline_keeps_the_values_in_the_pod_spec(tmp_path: Path) -> None:
    # For a scheduler whose RBAC has no rights on secrets.
    proj = project(tmp_path, SECRETS, toml='secret_env = "inline"\n')
    manifests = render(proj, "load", conf={"token": "from-conf-42"})
    assert [m["kind"] for m in manifests] == ["Pod"]
    assert env_of(manifests[0])["WAREHOUSE_TOKEN"] == "from-conf-42"


def test_a_task_without_secret_values_has_no_secret(tmp_path: Path) -> None:
    manifests = render(project(tmp_path, SECRETS), "plain")
    assert [m["kind"] for m in manifests] == ["Pod"]


def test_long_names_give_valid_labels_and_pod_names(tmp_path: Path) -> None:
    long_name = "a_very_long_pipeline_name_" + "x" * 60
    source = (
        HEADER
        + f"""
with Pipeline("{long_name}", schedule="@daily", start_date="2024-01-01"):
    Shell("Task.With.Dots_and_CAPS_" + "y" * 50, "true")
"""
    )
    proj = project(tmp_path, source)
    task = next(iter(proj.pipeline(long_name).tasks))
    manifests = k8s_service.render(proj, long_name, task, "2024-01-03").manifests
    pod = the_pod(manifests)
    assert_valid(pod)

    assert len(pod["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())
    assert pod["metadata"]["annotations"]["reflow.io/pipeline"] == long_name


def test_pod_override_from_a_templated_yaml_file(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01"):
    Shell("ingest", "true", pod=Pod(pod_override="overrides/ingest.yaml"))
"""
    )
    proj = project(tmp_path, source)
    folder = proj.settings.pipelines_path / "overrides"
    folder.mkdir()
    (folder / "ingest.yaml").write_text(
        "metadata:\n  annotations:\n    day: '{{ ds }}'\nspec:\n  hostNetwork: false\n"
    )

    pod = the_pod(render(proj, "ingest"))

    assert pod["metadata"]["annotations"]["day"] == "2024-01-03"
    assert pod["spec"]["hostNetwork"] is False
    assert pod["metadata"]["labels"]["reflow.io/task"] == "ingest"


def test_an_override_cannot_change_reflows_identity_or_restart_policy(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01"):
    Shell("ingest", "true", pod=Pod(pod_override={
        "metadata": {"name": "mine", "labels": {"reflow.io/try-id": "999"}},
        "spec": {"restartPolicy": "Always"},
    }))
"""
    )
    pod = the_pod(render(project(tmp_path, source), "ingest"))

    assert pod["metadata"]["name"] != "mine"
    assert pod["metadata"]["labels"]["reflow.io/try-id"] == "0"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_a_claim_name_that_renders_invalid_fails_the_try_clearly(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01"):
    Shell("ingest", "true", pod=Pod(volumes=[Volume.claim("data", "claim_{{ ds }}", "/data")]))
"""
    )
    with pytest.raises(TaskError, match="claim name 'claim_2024-01-03' is not a valid"):
        render(project(tmp_path, source), "ingest")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('requests={"memory": "4 GB"}', "not a Kubernetes quantity"),
        (
            'volumes=[Volume.claim("data", "c", "/d", access_modes=["ReadWriteSometimes"])]',
            "access modes must be among",
        ),
        ('volumes=[Volume.empty_dir("a", "/a"), Volume.empty_dir("a", "/b")]', "duplicate volume"),
        ('volumes=[Volume.empty_dir("Bad_Name", "/a")]', "volume name 'Bad_Name'"),
        ('volumes=[Volume.empty_dir("a", "relative")]', "expected an absolute path"),
        ('image_pull_policy="Sometimes"', "image_pull_policy must be one of"),
        ('secret_env={"A": "no-key"}', "expected 'name/key'"),
        ('env_from=["vault:x"]', "expected 'secret:NAME'"),
        # The server refuses these at pod creation; refused at load instead.
        ('labels={"team": "data eng"}', "not a valid label value"),
        ('labels={"team": "x" * 64}', "not a valid label value"),
        ('labels={"bad key!": "x"}', "not a valid label key"),
        (
            'requests={"ephemeral-storage": "30Gi"}, limits={"ephemeral-storage": "20Gi"}',
            "requests 'ephemeral-storage' 30Gi exceed its limit 20Gi",
        ),
        ('requests={"cpu": "1500m"}, limits={"cpu": 1}', "exceed its limit"),
    ],
)
def test_bad_pod_options_are_refused_when_the_file_loads(
    tmp_path: Path, options: str, message: str
) -> None:
    source = (
        HEADER
        + f"""
with Pipeline("events", schedule="@daily", start_date="2024-01-01"):
    Shell("ingest", "true", pod=Pod({options}))
"""
    )
    proj = project(tmp_path, source)
    problems = [p.message for p in proj.catalog.problems]

    assert len(problems) == 1 and message in problems[0] and "events.py" in problems[0]


def test_requests_above_the_default_limits_are_refused_when_the_file_loads(
    tmp_path: Path,
) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01",
              defaults={"pod": Pod(limits={"memory": "1Gi"})}):
    Shell("ingest", "true", pod=Pod(requests={"memory": "2Gi"}))
"""
    )
    problems = [p.message for p in project(tmp_path, source).catalog.problems]
    assert len(problems) == 1 and "'memory' 2Gi exceed its limit 1Gi" in problems[0]


def test_templated_labels_and_requests_are_checked_once_rendered(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01",
              params={"team": "data", "disk": "1Gi"}):
    Shell("ingest", "true", pod=Pod(labels={"team": "{{ params.team }}"},
                                   requests={"ephemeral-storage": "{{ params.disk }}"},
                                   limits={"ephemeral-storage": "2Gi"}))
"""
    )
    proj = project(tmp_path, source)
    assert render(proj, "ingest")
    with pytest.raises(TaskError, match="not a valid label value"):
        render(proj, "ingest", conf={"team": "data eng"})
    with pytest.raises(TaskError, match="exceed its limit 2Gi"):
        render(proj, "ingest", conf={"disk": "3Gi"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("4Gi", 4 * 2**30), ("500m", 0.5), ("1e3", 1000), ("1.5G", 1.5e9), (2, 2), ("100Ki", 102400)],
)
def test_quantities_compare_by_the_amount_they_stand_for(text: Any, value: float) -> None:
    from reflow.core.pod import quantity

    assert float(quantity(text)) == value


def test_scratch_must_be_declared_with_a_quantity() -> None:
    from reflow.core.pod import scratch

    with pytest.raises(PipelineError, match="scratch size"):
        scratch("lots")


def test_conf_is_validated_before_rendering(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
with Pipeline("events", schedule="@daily", start_date="2024-01-01", params={"n": 1}):
    Shell("ingest", "echo {{ params.n }}")
"""
    )
    with pytest.raises(ConfError):
        render(project(tmp_path, source), "ingest", conf={"n": "many"})


def test_the_launcher_is_chosen_per_pipeline_and_per_task(tmp_path: Path) -> None:
    proj = project(
        tmp_path,
        FULL,
        """
        [reflow]
        launcher = "kubernetes"
        [reflow.launchers]
        "events.quality" = "local"
        "other" = "local"
        """,
    )
    settings = proj.settings

    assert settings.launcher_for("events", "ingest") == "kubernetes"
    assert settings.launcher_for("events", "quality") == "local"
    assert settings.launcher_for("other", "anything") == "local"


def test_the_cli_prints_yaml_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    proj = project(tmp_path, FULL)
    home = str(proj.settings.home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reflow.cli", *args, "--home", home],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = cli("k8s", "render", "events", "ingest", "--date", "2024-01-05")
    assert ok.returncode == 0, ok.stderr
    documents = list(yaml.safe_load_all(ok.stdout))
    assert [d["kind"] for d in documents] == ["PersistentVolumeClaim", "Pod"]
    for document in documents:
        assert_valid(document)
    assert "s3cr3t-value" not in ok.stdout
    python = cli("k8s", "render", "events", "quality", "--date", "2024-01-05")
    assert python.returncode == 0, python.stderr
    secret, _pod = yaml.safe_load_all(python.stdout)
    assert secret["kind"] == "Secret" and "***" in secret["stringData"]["REFLOW_TASK_CONTEXT"]
    assert "s3cr3t-value" not in python.stdout

    for args, message in [
        (("events", "nope", "--date", "2024-01-05"), "has no task 'nope'"),
        (("events", "ingest", "--date", "someday"), "bad date 'someday'"),
        (("events", "ingest", "--date", "2024-01-05", "--conf", "{"), "--conf is not valid JSON"),
        (("missing", "ingest", "--date", "2024-01-05"), "unknown pipeline 'missing'"),
    ]:
        bad = cli("k8s", "render", *args)
        assert bad.returncode == 2
        assert bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], bad.stderr
