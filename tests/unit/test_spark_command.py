"""SparkSubmit: from a task and its run context to the exact spark-submit command (no JVM)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reflow.core.context import RunInfo, build_context
from reflow.core.errors import PipelineError, TaskError, TemplateError
from reflow.core.pipeline import Pipeline
from reflow.core.spec import TrySpec
from reflow.tasks.build import build_try
from reflow.tasks.spark import (
    DEFAULT_MASTER,
    K8S_SPARK_SUBMIT,
    MASTER_ENV,
    NO_JAVA,
    SparkSubmit,
    dns_label,
    label_value,
    parse_app_id,
)

RUN_ID = "scheduled__2024-01-01T00:00:00+00:00"
K8S = "k8s://https://kubernetes.default.svc:443"


def context(task: str = "job", try_number: int = 1, conf: dict[str, Any] | None = None) -> Any:
    run = RunInfo(
        pipeline="etl",
        run_id=RUN_ID,
        logical_date=datetime(2024, 1, 1, tzinfo=UTC),
        data_interval_start=datetime(2024, 1, 1, tzinfo=UTC),
        data_interval_end=datetime(2024, 1, 2, tzinfo=UTC),
        conf=conf if conf is not None else {"region": "eu west", "table": "events"},
    )
    return build_context(run, task, try_number)


def build(task: SparkSubmit, ctx: Any = None) -> TrySpec:
    return build_try(
        task,
        ctx if ctx is not None else context(task.task_id),
        try_id=7,
        log_path="/logs/7.log",
        pipelines_folder="/srv/pipelines",
    )


def fake_program(folder: Path, name: str, body: str = "exit 0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def spark_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with Java on PATH and a Spark installation at SPARK_HOME (both fakes)."""
    home = tmp_path / "spark"
    fake_program(home / "bin", "spark-submit")
    java_bin = tmp_path / "jdk" / "bin"
    fake_program(java_bin, "java")
    monkeypatch.setenv("SPARK_HOME", str(home))
    monkeypatch.setenv("PATH", f"{java_bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv(MASTER_ENV, raising=False)
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_DRIVER_PYTHON", raising=False)
    return home


# -- the command line per master ------------------------------------------------------------


def test_a_local_try_runs_spark_submit_from_spark_home_with_every_option(
    spark_home: Path,
) -> None:
    task = SparkSubmit(
        "job",
        "jobs/etl.py",
        application_args=["--ds", "{{ ds }}", "--region", "{{ params.region }}"],
        conf={"spark.sql.shuffle.partitions": 4, "spark.ui.enabled": False},
        packages=["org.example:lib:1.0", "org.example:other:2.0"],
        py_files=["deps.zip"],
        files="lookup.csv",
        driver_memory="1g",
        executor_memory="2g",
        executor_cores=2,
        num_executors=3,
        verbose=True,
    )

    spec = build(task)

    assert spec.argv == (
        str(spark_home / "bin" / "spark-submit"),
        "--master", "local[*]",
        "--name", "etl.job.2024-01-01",
        "--packages", "org.example:lib:1.0,org.example:other:2.0",
        "--py-files", "deps.zip",
        "--files", "lookup.csv",
        "--driver-memory", "1g",
        "--executor-memory", "2g",
        "--executor-cores", "2",
        "--num-executors", "3",
        "--verbose",
        "--conf", "spark.sql.shuffle.partitions=4",
        "--conf", "spark.ui.enabled=false",
        "jobs/etl.py",
        "--ds", "2024-01-01", "--region", "eu west",
    )  # fmt: skip


def test_a_local_pyspark_try_uses_reflows_python_unless_the_env_says_otherwise(
    spark_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build(SparkSubmit("job", "etl.py")).env["PYSPARK_PYTHON"] == sys.executable

    own = SparkSubmit("job", "etl.py", env={"PYSPARK_PYTHON": "/opt/py/bin/python"})
    assert build(own).env["PYSPARK_PYTHON"] == "/opt/py/bin/python"

    monkeypatch.setenv("PYSPARK_PYTHON", "/usr/bin/python3")
    assert "PYSPARK_PYTHON" not in build(SparkSubmit("job", "etl.py")).env


def test_a_standalone_try_is_the_same_command_with_a_spark_url(spark_home: Path) -> None:
    task = SparkSubmit(
        "job",
        "app.jar",
        main_class="com.example.Etl",
        master="spark://10.0.0.5:7077",
        jars=["a.jar", "b.jar"],
        total_executor_cores=4,
        application_args=["{{ ds_nodash }}"],
    )

    spec = build(task)

    assert spec.argv == (
        str(spark_home / "bin" / "spark-submit"),
        "--master", "spark://10.0.0.5:7077",
        "--name", "etl.job.2024-01-01",
        "--class", "com.example.Etl",
        "--jars", "a.jar,b.jar",
        "--total-executor-cores", "4",
        "app.jar",
        "20240101",
    )  # fmt: skip
    assert "PYSPARK_PYTHON" not in spec.env  # not a Python application


def test_a_standalone_pyspark_driver_uses_reflows_python(spark_home: Path) -> None:
    spec = build(SparkSubmit("job", "etl.py", master="spark://10.0.0.5:7077"))

    assert spec.env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert "PYSPARK_PYTHON" not in spec.env  # executors use the cluster's Python


def k8s_task(**kwargs: Any) -> SparkSubmit:
    kwargs.setdefault("master", K8S)
    kwargs.setdefault("image", "registry.example/spark:4.0")
    return SparkSubmit("job", "local:///opt/app/etl.py", **kwargs)


def test_a_k8s_try_runs_client_mode_in_its_pod_through_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    # No Java and no Spark on the scheduler's machine: the pod brings both.
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("SPARK_HOME", raising=False)
    task = k8s_task(
        namespace="etl",
        application_args=["--ds", "{{ ds }}"],
        executor_memory="4g",
        conf={"spark.executor.instances": 2},
    )

    spec = build(task)

    sh, flag, script = spec.argv
    assert (sh, flag) == ("/bin/sh", "-c")
    assert script.startswith(f"exec {K8S_SPARK_SUBMIT} ")
    words = shlex.split(script)[2:]
    assert words[:6] == ["--master", K8S, "--deploy-mode", "client", "--name", "etl.job.2024-01-01"]
    confs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--conf")
    prefix = confs.pop("spark.kubernetes.executor.podNamePrefix")
    app_id = confs.pop("spark.app.id")
    assert re.fullmatch(r"spark-[0-9a-f]{32}", app_id)
    assert confs == {
        "spark.driver.host": "${REFLOW_POD_IP:?is not set, expected the pod IP}",
        "spark.kubernetes.driver.pod.name": "${REFLOW_POD_NAME:?is not set, expected the pod name}",
        "spark.kubernetes.executor.label.reflow-pipeline": "etl",
        "spark.kubernetes.executor.label.reflow-run": "scheduled-2024-01-01t00-00-00-00-00",
        "spark.kubernetes.executor.label.reflow-task": "job",
        "spark.kubernetes.namespace": "etl",
        "spark.kubernetes.container.image": "registry.example/spark:4.0",
        "spark.executor.instances": "2",
    }
    assert prefix.startswith("etl-job-20240101-") and prefix.endswith("-1")
    assert words[-3:] == ["local:///opt/app/etl.py", "--ds", "2024-01-01"]
    assert "PYSPARK_PYTHON" not in spec.env and "PYSPARK_DRIVER_PYTHON" not in spec.env


def printed_words(script: str, **pod_env: str) -> list[str]:
    """The words spark-submit would get from the pod's shell: printf prints each one on
    its own line in its place."""
    return subprocess.run(
        ["/bin/sh", "-c", script.replace(K8S_SPARK_SUBMIT, "printf '%s\\n'", 1)],
        env={
            "REFLOW_POD_IP": "10.1.2.3",
            "REFLOW_POD_NAME": "etl-job-pod",
            "PATH": "/usr/bin:/bin",
            **pod_env,
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def test_the_k8s_shell_form_keeps_every_value_one_literal_word() -> None:
    nasty = "a b \"c\" 'd' $HOME `id` $(id) ; rm -rf / \\ *"
    task = k8s_task(
        name="{{ params.name }}",
        conf={"spark.{{ params.key }}": "{{ params.value }}"},
        application_args=["{{ params.value }}", "--flag"],
        env={"X": "1"},
    )
    ctx = context(conf={"name": nasty, "key": "app.tag", "value": nasty})
    script = build(task, ctx).argv[2]

    printed = printed_words(script)

    assert printed[printed.index("--name") + 1] == nasty
    assert f"spark.app.tag={nasty}" in printed
    assert "spark.driver.host=10.1.2.3" in printed
    assert "spark.kubernetes.driver.pod.name=etl-job-pod" in printed
    assert printed[-3:] == ["local:///opt/app/etl.py", nasty, "--flag"]


def test_the_k8s_shell_form_fails_clearly_without_the_pod_ip() -> None:
    script = build(k8s_task()).argv[2]

    done = subprocess.run(
        ["/bin/sh", "-c", script.replace(K8S_SPARK_SUBMIT, "printf '%s\\n'", 1)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )

    assert done.returncode != 0
    assert "REFLOW_POD_IP" in done.stderr and "is not set" in done.stderr


def test_k8s_executors_default_to_the_pods_namespace_and_image() -> None:
    task = SparkSubmit("job", "local:///opt/app/etl.py", master=K8S)
    script = build(task).argv[2]

    printed = printed_words(
        script, REFLOW_POD_NAMESPACE="etl", REFLOW_POD_IMAGE="registry.example/etl:7"
    )

    assert "spark.kubernetes.namespace=etl" in printed
    assert "spark.kubernetes.container.image=registry.example/etl:7" in printed


def test_a_k8s_try_with_a_spark_home_runs_that_spark_submit() -> None:
    script = build(k8s_task(spark_home="/opt/my spark")).argv[2]

    assert script.startswith("exec '/opt/my spark/bin/spark-submit' --master ")


def test_k8s_spark_local_dirs_get_on_demand_claims_owned_by_the_driver_pod() -> None:
    claim = {"size": "{{ params.size }}", "storage_class": "gp3", "mount": "/scratch"}
    task = k8s_task(spark_local_dir_claim=claim)

    words = shlex.split(build(task, context(conf={"size": "200Gi"})).argv[2])

    base = "spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1"
    for conf in (
        f"{base}.options.claimName=OnDemand",
        f"{base}.options.storageClass=gp3",
        f"{base}.options.sizeLimit=200Gi",
        f"{base}.mount.path=/scratch",
        f"{base}.mount.readOnly=false",
        "spark.kubernetes.driver.ownPersistentVolumeClaim=true",
        "spark.kubernetes.driver.reusePersistentVolumeClaim=true",
    ):
        assert conf in words


def test_k8s_executor_names_and_labels_are_per_run_and_kubernetes_safe() -> None:
    long_run = "manual__2024-01-01T00:00:00+00:00__" + "x" * 80
    ctx = {**context(), "run_id": long_run, "pipeline": "Sales_Daily.ETL"}

    words = shlex.split(build(k8s_task(), ctx).argv[2])
    confs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--conf")

    run_label = confs["spark.kubernetes.executor.label.reflow-run"]
    assert len(run_label) == 63 and run_label == label_value(long_run)
    assert confs["spark.kubernetes.executor.label.reflow-pipeline"] == "sales-daily.etl"
    prefix = confs["spark.kubernetes.executor.podNamePrefix"]
    assert prefix.startswith("sales-daily-etl-job-20240101-") and len(prefix) <= 47
    other = shlex.split(build(k8s_task(), {**ctx, "run_id": long_run + "y"}).argv[2])
    assert prefix not in other  # two runs of one date never share executor pod names


def test_a_templated_executor_pod_name_prefix_is_rendered_and_made_safe() -> None:
    task = k8s_task(executor_pod_name_prefix="ETL_{{ params.table }}_{{ ds_nodash }}")

    words = shlex.split(build(task).argv[2])

    assert "spark.kubernetes.executor.podNamePrefix=etl-events-20240101" in words


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("etl", "etl"),
        ("Sales_Daily", "sales-daily"),
        ("manual__2024-01-03T00:00:00+00:00__ab12cd", "manual-2024-01-03t00-00-00-00-00-ab12cd"),
        ("--x--", "x"),
        ("a.b-c", "a.b-c"),
    ],
)
def test_label_values_are_lowercase_alphanumerics_dots_and_dashes(
    value: str, expected: str
) -> None:
    assert label_value(value) == expected


def test_long_label_values_and_pod_prefixes_get_a_hash_suffix() -> None:
    a, b = "p" * 70 + "-one", "p" * 70 + "-two"

    assert len(label_value(a)) == 63 and label_value(a) != label_value(b)
    assert label_value(a)[:54] == "p" * 54
    assert len(dns_label(a, 47)) == 47 and dns_label(a, 47) != dns_label(b, 47)
    assert label_value("___") != ""


# -- templating ----------------------------------------------------------------------------


def test_every_field_is_rendered_with_the_run_context(spark_home: Path) -> None:
    with Pipeline("etl", defaults={"env": {"STAGE": "{{ params.table }}"}}):
        task = SparkSubmit(
            "job",
            "jobs/{{ params.table }}.py",
            application_args=["--day={{ ds }}", "{{ params.region }}"],
            name="{{ pipeline }}-{{ task }}-{{ ds_nodash }}-try{{ try_number }}",
            conf={
                "spark.{{ params.table }}.day": "{{ ds }}",
                "spark.executor.memoryOverhead": "{{ params.overhead }}",
            },
            py_files=["libs/{{ params.table }}.zip"],
            files=["{{ params.table }}.csv"],
            driver_memory="{{ params.memory }}",
            executor_cores="{{ params.cores }}",
            env={"DAY": "{{ ds_nodash }}"},
            cwd="/work/{{ ds }}",
        )
    conf = {"table": "events", "region": "eu west", "overhead": "512m", "memory": "2g", "cores": 3}

    spec = build(task, context("job", try_number=2, conf=conf))

    assert spec.argv[1:] == (
        "--master", "local[*]",
        "--name", "etl-job-20240101-try2",
        "--py-files", "libs/events.zip",
        "--files", "events.csv",
        "--driver-memory", "2g",
        "--executor-cores", "3",
        "--conf", "spark.events.day=2024-01-01",
        "--conf", "spark.executor.memoryOverhead=512m",
        "jobs/events.py",
        "--day=2024-01-01", "eu west",
    )  # fmt: skip
    assert spec.env["STAGE"] == "events" and spec.env["DAY"] == "20240101"
    assert spec.cwd == "/work/2024-01-01"


def test_a_conf_value_cannot_become_a_second_argument(spark_home: Path) -> None:
    task = SparkSubmit("job", "etl.py", application_args=["--table", "{{ params.table }}"])

    spec = build(task, context(conf={"table": "t --conf spark.x=1; rm -rf /"}))

    assert spec.argv[-2:] == ("--table", "t --conf spark.x=1; rm -rf /")


def test_the_master_and_name_are_templates_too(spark_home: Path) -> None:
    task = SparkSubmit("job", "etl.py", master="spark://{{ params.host }}:7077", name="n")

    spec = build(task, context(conf={"host": "spark-master"}))

    assert spec.argv[1:5] == ("--master", "spark://spark-master:7077", "--name", "n")


def test_an_undefined_name_in_a_field_raises_template_error(spark_home: Path) -> None:
    task = SparkSubmit("job", "etl.py", conf={"spark.x": "{{ params.missing }}"})

    with pytest.raises(TemplateError, match="'missing'"):
        build(task)


def test_a_templated_value_that_renders_invalid_fails_the_try(spark_home: Path) -> None:
    task = SparkSubmit("job", "etl.py", executor_memory="{{ params.memory }}")

    with pytest.raises(TaskError, match=r"executor_memory 'lots': expected a size like"):
        build(task, context(conf={"memory": "lots"}))


# -- master resolution ---------------------------------------------------------------------


def test_the_master_comes_from_the_task_then_the_env_then_local(
    spark_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def master(task: SparkSubmit) -> str:
        argv = build(task).argv
        return argv[argv.index("--master") + 1]

    assert master(SparkSubmit("job", "etl.py")) == DEFAULT_MASTER == "local[*]"
    monkeypatch.setenv(MASTER_ENV, "spark://from-env:7077")
    assert master(SparkSubmit("job", "etl.py")) == "spark://from-env:7077"
    task_env = SparkSubmit("job", "etl.py", env={MASTER_ENV: "local[2]"})
    assert master(task_env) == "local[2]"
    assert master(SparkSubmit("job", "etl.py", master="local[1]")) == "local[1]"


def test_a_k8s_master_from_the_env_gives_the_k8s_shell_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MASTER_ENV, K8S)

    spec = build(SparkSubmit("job", "etl.py", image="img"))

    assert spec.argv[:2] == ("/bin/sh", "-c") and f"--master {K8S}" in spec.argv[2]


# -- finding spark-submit and java ---------------------------------------------------------


def test_without_spark_home_spark_submit_comes_from_pyspark(
    spark_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPARK_HOME")
    from pyspark.find_spark_home import _find_spark_home

    argv = build(SparkSubmit("job", "etl.py")).argv

    assert argv[0] == os.path.join(_find_spark_home(), "bin", "spark-submit")


def test_a_task_spark_home_wins_over_the_env(spark_home: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    fake_program(mine / "bin", "spark-submit")

    assert build(SparkSubmit("job", "etl.py", spark_home=str(mine))).argv[0] == str(
        mine / "bin" / "spark-submit"
    )


def test_a_spark_home_without_spark_submit_fails_the_try(
    spark_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "empty"))

    with pytest.raises(TaskError, match=r"no spark-submit at .*empty/bin/spark-submit"):
        build(SparkSubmit("job", "etl.py"))


@pytest.mark.parametrize("master", [None, "local[2]", "spark://10.0.0.5:7077"])
def test_without_java_building_the_try_fails_with_one_clear_message(
    spark_home: Path, monkeypatch: pytest.MonkeyPatch, master: str | None
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(TaskError) as raised:
        build(SparkSubmit("job", "etl.py", master=master))

    assert str(raised.value) == NO_JAVA
    assert NO_JAVA == "SparkSubmit needs Java 17: no java on PATH and JAVA_HOME is not set"


def test_java_home_is_used_when_java_is_not_on_path(
    spark_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    jdk = tmp_path / "jdk17"
    fake_program(jdk / "bin", "java")
    monkeypatch.setenv("JAVA_HOME", str(jdk))

    assert build(SparkSubmit("job", "etl.py")).argv[0].endswith("spark-submit")


def test_a_java_home_without_java_fails_the_try(
    spark_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nothing"))

    with pytest.raises(TaskError, match=r"needs Java 17: JAVA_HOME=.*nothing has no bin/java$"):
        build(SparkSubmit("job", "etl.py"))


def test_a_task_env_path_without_java_counts(spark_home: Path) -> None:
    # The try runs with its own env: a PATH it sets is the one spark-submit sees.
    with pytest.raises(TaskError, match="no java on PATH"):
        build(SparkSubmit("job", "etl.py", env={"PATH": "/nonexistent"}))


# -- check() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"application": ""}, "application must be a .py file or a jar"),
        ({"application": "app.jar"}, "application 'app.jar' is a jar: main_class is required"),
        ({"main_class": "com.x.Main"}, "main_class is only for a jar application"),
        ({"driver_memory": "1 GB"}, "driver_memory '1 GB': expected a size like '512m' or '2g'"),
        ({"executor_memory": "512"}, "executor_memory '512': expected a size like"),
        ({"executor_cores": 0}, "executor_cores must be a positive integer, got 0"),
        ({"driver_cores": -1}, "driver_cores must be a positive integer"),
        ({"num_executors": "two"}, "num_executors must be a positive integer, got 'two'"),
        ({"total_executor_cores": True}, "total_executor_cores must be a positive integer"),
        ({"conf": {"shuffle.partitions": 4}}, "conf key 'shuffle.partitions' is not a Spark"),
        ({"conf": {"spark.x": None}}, "conf 'spark.x': expected a string, number or bool"),
        ({"spark_local_dir_claim": {"storage_class": "gp3"}}, "spark_local_dir_claim needs a"),
        (
            {"spark_local_dir_claim": {"size": "1Gi", "sc": "x"}},
            "spark_local_dir_claim: unknown key sc",
        ),
        ({"spark_local_dir_claim": {"size": "lots"}}, "spark_local_dir_claim size 'lots'"),
    ],
)
def test_check_names_the_invalid_field(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"application": "etl.py", **kwargs}

    task = SparkSubmit("job", **kwargs)

    with pytest.raises(PipelineError, match=f"^{re.escape(message)}"):
        task.check()


def test_check_rejects_a_field_that_is_not_a_valid_template() -> None:
    task = SparkSubmit("job", "etl.py", application_args=["--day", "{{ ds"])

    with pytest.raises(TemplateError, match=re.escape("template syntax error in '{{ ds'")):
        task.check()


def test_check_accepts_a_valid_task_and_leaves_templates_for_later() -> None:
    SparkSubmit(
        "job",
        "app.jar",
        main_class="com.example.Main",
        driver_memory="512m",
        executor_memory="{{ params.memory }}",
        executor_cores="4",
        num_executors="{{ params.n }}",
        conf={"{{ params.key }}": "x", "spark.a": 1, "spark.b": True},
        spark_local_dir_claim={"size": "100Gi", "storage_class": "gp3"},
    ).check()


def test_an_invalid_spark_task_makes_its_pipeline_invalid() -> None:
    with Pipeline("etl") as p:
        SparkSubmit("job", "etl.py", executor_cores=0)

    with pytest.raises(PipelineError, match="task 'job': executor_cores must be a positive"):
        p.validate()


def test_every_option_is_part_of_the_pipeline_version() -> None:
    def version(**kwargs: Any) -> str:
        with Pipeline("etl") as p:
            SparkSubmit("job", "etl.py", **kwargs)
        return p.version

    base = version()
    assert version(conf={"spark.x": 1}) != base
    assert version(executor_memory="2g") != base
    assert version(verbose=True) != base
    assert version() == base


# -- application ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "app_id"),
    [
        ("spark application id: local-1700000000000", "local-1700000000000"),
        (
            "24/01/01 00:00:01 INFO StandaloneSchedulerBackend: Connected to Spark cluster "
            "with app ID app-20240101000000-0000",
            "app-20240101000000-0000",
        ),
        (
            "INFO Client: Submitted application application_1700000000000_0001",
            "application_1700000000000_0001",
        ),
        (
            "INFO KubernetesClusterSchedulerBackend: app id spark-0123456789abcdef0123456789abcdef",
            "spark-0123456789abcdef0123456789abcdef",
        ),
    ],
)
def test_parse_app_id_finds_every_kind_of_application_id(line: str, app_id: str) -> None:
    log = f"WARNING: Using incubator modules\n{line}\nINFO SparkContext: stopped\n"

    assert parse_app_id(log) == app_id


def test_parse_app_id_returns_the_first_id_and_ignores_look_alikes() -> None:
    noise = (
        "INFO DiskBlockManager: Created local directory at "
        "/tmp/blockmgr-1ca63305-df09-433c-80d6-de5ef828eb4a\n"
        "INFO ShutdownHookManager: Deleting directory "
        "/tmp/spark-6f1c2a3b-1234-4c5d-8e9f-0a1b2c3d4e5f\n"
        "exec spark-submit --master local[*]\n"
        "INFO Utils: local-17000000000001 is not an id, nor is xlocal-1700000000000\n"
    )

    assert parse_app_id(noise) is None
    log = noise + "id local-1700000000001\nExecutor added on app-20240101000000-0001\n"
    assert parse_app_id(log) == "local-1700000000001"


def test_importing_reflow_does_not_import_pyspark() -> None:
    code = (
        "import sys, reflow\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'py4j'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"


def test_the_application_id_is_read_from_the_start_of_the_tries_log(tmp_path: Path) -> None:
    log = tmp_path / "try-1.log"
    log.write_text(
        "Using Spark's default log4j profile\nspark application id: local-1700000000123\n"
    )
    task = SparkSubmit("job", "etl.py")

    assert task.app_id_from_log(str(log)) == "local-1700000000123"
    assert task.app_id_from_log(str(tmp_path / "missing.log")) is None


def test_a_k8s_try_sets_an_application_id_of_its_own_that_its_log_gives_back(
    tmp_path: Path,
) -> None:
    """In client mode with a k8s:// master the driver prints no application id: the try
    sets one (the executors carry it as their spark-app-selector label) and its command,
    in reflow's opening lines of the log, gives it back."""

    def app_id(ctx: dict[str, Any]) -> str:
        words = shlex.split(build(k8s_task(), ctx).argv[2])
        confs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--conf")
        return confs["spark.app.id"]

    first = app_id(context())
    assert first == app_id(context())  # the same try, the same id
    assert first != app_id({**context(), "try_number": 2})
    assert first != app_id({**context(), "run_id": "manual__2024-01-01T00:00:00+00:00__ab"})
    log = tmp_path / "try.log"
    script = build(k8s_task()).argv[2]
    log.write_text(f"[reflow] 2024-01-01T00:00:00Z command: /bin/sh -c {script}\nok\n")
    assert k8s_task().app_id_from_log(str(log)) == first
    # A spark.app.id of the user's wins.
    task = k8s_task(conf={"spark.app.id": "spark-" + "0" * 32})
    words = shlex.split(build(task).argv[2])
    assert [w for w in words if w.startswith("spark.app.id=")] == ["spark.app.id=spark-" + "0" * 32]
