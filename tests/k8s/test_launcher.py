"""The kubernetes launcher end to end, with the real scheduler and the official client,
against the fake API server (whose kubelet runs each pod's command as a local process),
or a real cluster when REFLOW_K8S_CONTEXT is set."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from reflow.core.errors import Fenced, TaskError
from reflow.core.spec import Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason, RunState, TIState
from reflow.core.trylines import task_output
from reflow.launchers.kubernetes.launcher import KubernetesLauncher
from reflow.launchers.kubernetes.manifest import fence_manifest, fence_name, pod_name
from reflow.services import backfill as backfill_service
from reflow.store import schedulers as store_schedulers

from ..integration.conftest import wait_until
from .conftest import SPARK_IMAGE, K8sEnv
from .validation import assert_valid

pytestmark = [
    pytest.mark.k8s,
    pytest.mark.slow,
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]

SIMULATE = "fake.reflow.io/simulate"


def pipeline(k8s: K8sEnv, body: str, name: str = "etl", **options: Any) -> None:
    defaults = {k: repr(v) for k, v in options.pop("defaults", {}).items()}
    if k8s.pipeline_pod():
        defaults["pod"] = k8s.pipeline_pod()
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    if defaults:
        extra += ", defaults={" + ", ".join(f"{k!r}: {v}" for k, v in defaults.items()) + "}"
    k8s.write(
        name,
        "from reflow import Pipeline, Pod, Python, Shell, SparkSubmit, Volume, scratch\n"
        f"with Pipeline({name!r}, schedule='@daily', start_date='2024-01-01'{extra}):\n"
        + textwrap.indent(textwrap.dedent(body), "    "),
    )


def only_try(k8s: K8sEnv, run_pk: int, task: str = "t") -> Any:
    tries = [t for t in k8s.tries(run_pk) if t.task_id == task]
    assert tries, f"no try of {task}"
    return tries[-1]


def reflow_pods(k8s: K8sEnv) -> list[dict[str, Any]]:
    return [p for p in k8s.cluster.pods() if not p["metadata"].get("deletionTimestamp")]


def test_a_shell_task_runs_in_a_pod_its_log_is_streamed_and_the_pod_cleaned(k8s: K8sEnv) -> None:
    pipeline(
        k8s,
        """
        Shell("t", "echo start {{ ds }}; sleep 0.5; echo middle; echo to-stderr >&2; echo end",
              pod=Pod(requests={"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
                      limits={"memory": "128Mi", "ephemeral-storage": "2Gi"}))
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    created: list[dict[str, Any]] = []

    def done() -> bool:
        created.extend(p for p in k8s.cluster.pods() if p not in created)
        return k8s.runs_done([run_pk])()

    k8s.drive(done)

    assert k8s.run(run_pk).state == RunState.SUCCESS
    t = only_try(k8s, run_pk)
    assert t.exit_code == 0 and t.launcher == "kubernetes"
    assert t.external_id.startswith(f"{k8s.cluster.settings.namespace}/etl-t-20240103-1-")
    log = Path(t.log_path).read_text()
    for line in ("start 2024-01-03", "middle", "to-stderr", "end"):
        assert line in log.splitlines()
    assert log.splitlines().count("middle") == 1
    # The pod as created carried the resources, and is gone now (cleanup: on_success).
    assert created, "the pod was never seen"
    resources = created[0]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == "1Gi"
    assert resources["limits"]["ephemeral-storage"] == "2Gi"
    assert_valid(created[0])
    wait_until(lambda: not reflow_pods(k8s), timeout=15)


def test_the_command_and_env_reach_the_shell_untouched_by_kubernetes_expansion(
    k8s: K8sEnv,
) -> None:
    # Kubernetes expands $(VAR) in commands and env values and turns $$ into $: reflow
    # escapes both, so the shell sees exactly the rendered command.
    pipeline(
        k8s,
        """
        Shell("t", 'echo "pid-$$-ok"; v=$(echo sub); echo "got $v"; echo "env=$RAW"',
              env={"RAW": "a$(REFLOW_DS)b$$c"})
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    lines = Path(only_try(k8s, run_pk).log_path).read_text().splitlines()
    assert any(line.startswith("pid-") and line[4:-3].isdigit() for line in lines), lines
    assert "got sub" in lines
    assert "env=a$(REFLOW_DS)b$$c" in lines


def test_a_failing_pod_fails_the_try_with_its_exit_code_and_is_kept(k8s: K8sEnv) -> None:
    pipeline(k8s, 'Shell("t", "echo about to fail; exit 3")')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    t = only_try(k8s, run_pk)
    assert (t.state, t.exit_code, t.failure_reason) == ("failed", 3, "error")
    assert "about to fail" in task_output(Path(t.log_path).read_text())
    # on_success keeps failed pods, for a look with kubectl.
    assert [p["metadata"]["name"] for p in reflow_pods(k8s)] == [t.external_id.split("/")[1]]


def test_a_pods_try_log_says_where_it_ran_and_how_it_ended_around_the_pods_output(
    k8s: K8sEnv,
) -> None:
    pipeline(k8s, 'Shell("t", "echo from the pod; exit 4", retries=0)')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    t = only_try(k8s, run_pk)
    settings = k8s.settings.kubernetes
    namespace, pod = t.external_id.split("/")
    lines = Path(t.log_path).read_text().splitlines()
    ours = [line.split(" ", 2)[2] for line in lines if line.startswith("[reflow] ")]
    assert ours[1] == (
        f"runs on: launcher kubernetes, namespace {settings.namespace}, pod {pod}, "
        f"context {settings.context} (scheduler on host {socket.gethostname()})"
    )
    assert namespace == settings.namespace
    assert ours[4] == "command: /bin/sh -c 'echo from the pod; exit 4'"
    assert ours[-1] == "ended: failed, exit code 4"
    # The pod's log is appended after reflow's opening lines, which it leaves in place.
    assert lines[:5] == [line for line in lines if line.startswith("[reflow] ")][:5]
    assert lines.index("from the pod") > 4
    assert lines[-1].startswith("[reflow] ")


@pytest.mark.parametrize(
    ("cleanup", "command", "kept"),
    [("always", "exit 3", False), ("never", "true", True), ("on_success", "true", False)],
)
def test_the_cleanup_policy_decides_which_finished_pods_stay(
    k8s: K8sEnv, cleanup: str, command: str, kept: bool
) -> None:
    policy = k8s.settings.kubernetes.model_copy(update={"cleanup": cleanup})
    k8s.settings = k8s.settings.model_copy(update={"kubernetes": policy})
    pipeline(k8s, f'Shell("t", "{command}")')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    name = only_try(k8s, run_pk).external_id.split("/")[1]
    if kept:
        time.sleep(1.5)  # past a sweep: finished pods the policy keeps are not orphans
        with _Background(k8s):
            time.sleep(1.5)
        assert _names(k8s) == [name]
    else:
        wait_until(lambda: not reflow_pods(k8s), timeout=15)


def test_a_claim_templated_per_date_gives_a_parallel_spark_backfill_three_claims(
    k8s: K8sEnv, tmp_path: Path
) -> None:
    if k8s.cluster.real and not SPARK_IMAGE:
        pytest.skip("set REFLOW_K8S_SPARK_IMAGE (an image with Spark, e.g. deploy/kubernetes)")
    k8s.cluster.local_volumes(tmp_path / "volumes", 3)
    # Next to the pipeline files, which real pods mount (not a pipeline file: "_" folder).
    app = k8s.settings.pipelines_path / "_jobs" / "count.py"
    app.parent.mkdir(parents=True)
    app.parent.chmod(0o755)
    app.write_text(
        textwrap.dedent(
            """
            import sys
            from pyspark.sql import SparkSession

            spark = SparkSession.builder.getOrCreate()
            ds, out = sys.argv[1], sys.argv[2]
            spark.range(5).selectExpr(f"'{ds}' AS ds", "id").write.mode("overwrite").parquet(out)
            print("wrote", spark.read.parquet(out).count(), "rows for", ds)
            spark.stop()
            """
        )
    )
    image = SPARK_IMAGE or "spark-job:test"
    # The fake's kubelet runs spark-submit here; a real pod has the image's on its PATH.
    env = {"SPARK_SUBMIT_OPTS": "-XX:TieredStopAtLevel=1"}
    if not k8s.cluster.real:
        env["SPARK_HOME"] = _spark_home()
    pipeline(
        k8s,
        f"""
        SparkSubmit(
            "t", {str(app)!r},
            application_args=["{{{{ ds }}}}", "/data/out"],
            conf={{"spark.ui.enabled": False, "spark.sql.shuffle.partitions": 1}},
            driver_memory="512m",
            env={env!r},
            pod=Pod(
                image={image!r},
                volumes=[Volume.claim("data", "spark-pv-claim-{{{{ ds_nodash }}}}", "/data",
                                      size="1Gi")],
            ),
        )
        """,
        max_active_runs=3,
    )
    plan = backfill_service.plan(k8s.project, "etl", start="2024-01-01", end="2024-01-03")
    backfill_id = backfill_service.create(k8s.project, plan)
    _, runs = backfill_service.show(k8s.project, backfill_id)
    running_at_once = 0

    def done() -> bool:
        nonlocal running_at_once
        running_at_once = max(running_at_once, len(reflow_pods(k8s)))
        return k8s.runs_done([r.id for r in runs])()

    k8s.drive(done, timeout=150)

    assert {k8s.run(r.id).state for r in runs} == {RunState.SUCCESS}
    claims = {c["metadata"]["name"] for c in k8s.cluster.claims()}
    assert {
        "spark-pv-claim-20240101",
        "spark-pv-claim-20240102",
        "spark-pv-claim-20240103",
    } <= claims
    assert running_at_once >= 2  # the dates ran side by side, each on its own claim
    for r in runs:
        log = Path(only_try(k8s, r.id).log_path).read_text()
        assert "wrote 5 rows for" in log
    if k8s.cluster.fake is not None:  # each claim's folder holds its own date's output
        written = sorted((k8s.cluster.fake.workdir / "pods").glob("*/data/out/_SUCCESS"))
        assert len(written) == 3


def test_scratch_space_is_the_trys_own_and_goes_with_its_pod(k8s: K8sEnv, tmp_path: Path) -> None:
    """scratch(): a generic ephemeral volume, so a claim made for the try's pod and deleted
    with it by Kubernetes' garbage collector."""
    k8s.cluster.local_volumes(tmp_path / "volumes", 1)
    pipeline(
        k8s,
        """
        Shell("t", "echo kept > /scratch/part && cat /scratch/part && ls -ld /scratch",
              scratch=scratch("1Gi"))
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    claims: dict[str, Any] = {}

    def look() -> bool:
        claims.update({c["metadata"]["name"]: c for c in k8s.cluster.claims()})
        return k8s.runs_done([run_pk])()

    k8s.drive(look, timeout=120)

    t = only_try(k8s, run_pk)
    assert (t.state, t.exit_code) == ("success", 0), Path(t.log_path).read_text()
    assert "kept" in task_output(Path(t.log_path).read_text())
    pod = t.external_id.split("/")[1]
    assert list(claims) == [f"{pod}-reflow-scratch"]
    owners = claims[f"{pod}-reflow-scratch"]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("Pod", pod)]
    # The pod was cleaned up (on_success), and its scratch claim went with it.
    wait_until(lambda: not reflow_pods(k8s) and not k8s.cluster.claims(), timeout=60)


def test_a_timeout_counts_from_the_containers_start_not_the_pods_creation(k8s: K8sEnv) -> None:
    """Scheduling and the image pull do not eat into a task's timeout (startup_timeout
    governs them): the try's start and deadline move to the container's start."""
    if k8s.cluster.real:
        pytest.skip("the image pull is played by the fake API server")
    pipeline(
        k8s,
        """
        Shell("t", "sleep 1; echo done", timeout=2.5,
              pod=Pod(annotations={"fake.reflow.io/pull-seconds": "3"}))
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]), timeout=60)

    t = only_try(k8s, run_pk)
    assert (t.state, t.failure_reason) == ("success", None), Path(t.log_path).read_text()
    # The recorded start is the container's: after the 3 s "pull" (counted from the pod's
    # creation, the 2.5 s timeout would have stopped it; the fake's startup_timeout, 5 s,
    # leaves the pull 2 s to spare). Kubernetes gives container times in whole seconds,
    # so the recorded start may be up to 1 s early.
    assert (t.started_at - t.queued_at).total_seconds() >= 2.0
    assert "done" in task_output(Path(t.log_path).read_text())


def test_a_timeout_deletes_the_pod_and_the_try_is_timed_out(k8s: K8sEnv, tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    pipeline(
        k8s,
        f"""
        Shell("t", "trap 'echo got TERM; touch {marker}; exit 143' TERM; echo waiting; "
                   "while true; do sleep 0.1; done",
              timeout=2, kill_grace=3)
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]), timeout=40)

    t = only_try(k8s, run_pk)
    assert (t.state, t.failure_reason) == ("failed", "timed_out")
    assert k8s.tis(run_pk)["t"].state == TIState.FAILED
    assert "waiting" in task_output(Path(t.log_path).read_text())
    wait_until(lambda: not k8s.cluster.pods(), timeout=15)
    if k8s.cluster.fake is not None:
        assert marker.exists()  # stopped with SIGTERM first, as the grace allows
        assert k8s.cluster.fake.deleted_pods() == [t.external_id]


def test_an_oom_killed_pod_gives_that_reason_and_a_retry(k8s: K8sEnv) -> None:
    pipeline(
        k8s,
        """
        Shell(
            "t",
            "if [ {{ try_number }} = 1 ]; then"
            " exec python3 -c 'import time; b = bytearray(300 * 2**20); time.sleep(20)'; fi;"
            " echo try {{ try_number }} done",
            retries=1, retry_delay=0.2,
            pod=Pod(
                limits={"memory": "64Mi"},
                annotations={"fake.reflow.io/simulate": "{{ 'oom' if try_number == 1 else '' }}"},
            ),
        )
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]), timeout=60)

    first, second = sorted(k8s.tries(run_pk), key=lambda t: t.try_number)
    assert (first.state, first.failure_reason, first.exit_code) == ("failed", "oom_killed", 137)
    assert "OOMKilled" in Path(first.log_path).read_text()
    assert second.state == "success"
    assert k8s.run(run_pk).state == RunState.SUCCESS


@pytest.mark.parametrize(
    ("simulate", "reason", "words"),
    [
        ("image-pull", "image_pull", "ErrImagePull"),
        ("config-error", "config_error", "CreateContainerConfigError"),
        ("unschedulable", "unschedulable", "Insufficient memory"),
        ("evict", "evicted", "ephemeral-storage"),
    ],
)
def test_pods_that_cannot_start_or_are_evicted_fail_with_a_clear_reason(
    k8s: K8sEnv, simulate: str, reason: str, words: str
) -> None:
    if k8s.cluster.real:
        pytest.skip("simulated by the fake API server only")
    pipeline(k8s, f'Shell("t", "sleep 5", pod=Pod(annotations={{"{SIMULATE}": "{simulate}"}}))')
    k8s.cluster.settings  # noqa: B018 - startup_timeout is 5 s on the fake
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]), timeout=40)

    t = only_try(k8s, run_pk)
    assert (t.state, t.failure_reason) == ("failed", reason)
    assert words in Path(t.log_path).read_text()
    if simulate != "evict":  # a pod that never started is deleted at once
        wait_until(lambda: not k8s.cluster.pods(), timeout=10)


def test_a_scheduler_killed_mid_run_adopts_the_running_pod_after_restart(
    k8s: K8sEnv, tmp_path: Path
) -> None:
    pipeline(k8s, 'Shell("t", "echo before; sleep 5; echo after")')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    scheduler = _scheduler_process(k8s, tmp_path)
    try:
        wait_until(lambda: any(t.state == "running" for t in k8s.tries(run_pk)), timeout=30)
        log = Path(only_try(k8s, run_pk).log_path)
        wait_until(lambda: log.exists() and "before" in task_output(log.read_text()), timeout=15)
    finally:
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait(10)
    assert only_try(k8s, run_pk).state == "running"

    k8s.drive(k8s.runs_done([run_pk]), timeout=60)

    tries = k8s.tries(run_pk)
    assert len(tries) == 1, "the running pod was adopted, not run again"
    assert (tries[0].state, tries[0].exit_code) == ("success", 0)
    lines = Path(tries[0].log_path).read_text().splitlines()
    assert lines.count("before") == 1 and lines.count("after") == 1


def test_a_finished_pod_stays_until_its_outcome_is_recorded(k8s: K8sEnv) -> None:
    # A scheduler that dies after the pod ended but before it recorded the outcome must
    # find the pod again: deleting it at once would turn a success into a lost try.
    pipeline(k8s, 'Shell("t", "echo done")')
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    dying = k8s.scheduler()
    dying.start()
    wait_until(lambda: (dying.tick(), any(t.state == "running" for t in k8s.tries(run_pk)))[1])
    reported: list[Any] = []
    wait_until(lambda: reported.extend(dying.launcher.poll()) or reported, timeout=30)
    name = only_try(k8s, run_pk).external_id.split("/")[1]
    assert _names(k8s) == [name], "reported but not recorded: the pod is still there"
    # The scheduler dies here, its outcome never recorded: its heartbeat stops, and once
    # that is older than the timeout the next scheduler adopts the pod.
    stale = datetime.now(UTC) - timedelta(hours=1)
    k8s.db.write(lambda c: store_schedulers.heartbeat(c, dying.id, stale))

    k8s.drive(k8s.runs_done([run_pk]), timeout=60)

    tries = k8s.tries(run_pk)
    assert [(t.state, t.exit_code) for t in tries] == [("success", 0)]
    wait_until(lambda: not reflow_pods(k8s), timeout=15)


def test_secret_values_reach_the_task_but_not_the_pod_spec(k8s: K8sEnv) -> None:
    k8s.write(
        "etl",
        """
        from reflow import Param, Pipeline, Pod, Python, Shell

        def check(params):  # reversed: the log would show the value otherwise
            print("python sees", params["token"][::-1])

        with Pipeline("etl", schedule="@daily", start_date="2024-01-01",
                      params={"token": Param("", secret=True)},
                      defaults={"pod": """
        + (k8s.pipeline_pod() or "None")
        + """}):
            Python("p", check) >> Shell(
                "s", 'echo "shell sees $(echo $TOKEN | rev)"', env={"TOKEN": "{{ params.token }}"}
            )
        """,
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"], conf={"token": "tok-98765"})
    pods: dict[str, Any] = {}
    secrets: dict[str, Any] = {}

    def look() -> bool:
        pods.update({p["metadata"]["name"]: p for p in k8s.cluster.pods()})
        secrets.update({s["metadata"]["name"]: s for s in k8s.cluster.secrets()})
        return k8s.runs_done([run_pk])()

    k8s.drive(look)

    tries = {t.task_id: t for t in k8s.tries(run_pk)}
    assert {t.state for t in tries.values()} == {"success"}
    assert "python sees 56789-kot" in Path(tries["p"].log_path).read_text()
    assert "shell sees 56789-kot" in Path(tries["s"].log_path).read_text()
    assert len(pods) == 2 and set(secrets) == set(pods), "each pod had its secret"
    for pod in pods.values():
        assert "tok-98765" not in str(pod)
        assert_valid(pod)
    for name, secret in secrets.items():
        owners = secret["metadata"].get("ownerReferences") or []
        assert [(o["kind"], o["name"]) for o in owners] == [("Pod", name)]
    # The pods were cleaned up (on_success), and Kubernetes took their secrets with them.
    wait_until(lambda: not reflow_pods(k8s) and not k8s.cluster.secrets(), timeout=30)


def test_cancel_deletes_the_pod_with_the_grace_period(k8s: K8sEnv, tmp_path: Path) -> None:
    from reflow.services import history

    marker = tmp_path / "terminated"
    pipeline(
        k8s,
        f"""Shell("t", "trap 'touch {marker}; exit 143' TERM; while true; do sleep 0.1; done")""",
    )
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    scheduler = k8s.scheduler()
    k8s.drive(lambda: any(t.state == "running" for t in k8s.tries(run_pk)), scheduler=scheduler)
    run_id = k8s.run(run_pk).run_id

    history.mark(k8s.project, "etl", run_id, "failed")
    k8s.drive(k8s.runs_done([run_pk]), timeout=30)

    t = only_try(k8s, run_pk)
    assert (t.state, t.failure_reason) == ("failed", "killed")
    wait_until(lambda: not k8s.cluster.pods(), timeout=15)
    if k8s.cluster.fake is not None:
        assert marker.exists()


def test_api_failures_are_retried_and_never_stop_the_scheduler(k8s: K8sEnv) -> None:
    if k8s.cluster.real:
        pytest.skip("faults are injected by the fake API server only")
    fake = k8s.cluster.fake
    pipeline(
        k8s,
        """
        Shell("t", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.2; done")
        """,
    )
    fake.fail_next(2, status=503, method="POST", path_contains="/pods")
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    with _Background(k8s):
        wait_until(lambda: any(t.state == "running" for t in k8s.tries(run_pk)), timeout=30)
        time.sleep(0.5)
        fake.expire_watches()  # 410 Gone: the watch lists again
        time.sleep(0.4)
        fake.drop_connections()  # the log stream breaks: it resumes after the last line
        wait_until(k8s.runs_done([run_pk]), timeout=40)

    t = only_try(k8s, run_pk)
    assert t.state == "success"
    lines = [x for x in Path(t.log_path).read_text().splitlines() if x.startswith("line")]
    assert lines == [f"line {i}" for i in range(1, 11)]


def test_a_pod_that_already_exists_for_the_try_is_taken_over(k8s: K8sEnv) -> None:
    if k8s.cluster.real:
        pytest.skip("needs the fake API server's fault injection")
    # The first create reached the server but its answer was lost: the retry gets a 409.
    fake = k8s.cluster.fake
    pipeline(k8s, 'Shell("t", "echo once")')
    fake.fail_next(1, status=504, method="POST", path_contains="/pods", after_apply=True)
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    t = only_try(k8s, run_pk)
    assert t.state == "success"
    assert Path(t.log_path).read_text().splitlines().count("once") == 1


def test_orphan_pods_of_no_live_try_are_swept(k8s: K8sEnv) -> None:
    settings = k8s.cluster.settings

    def pod(name: str, try_id: str, instance: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/managed-by": "reflow",
                    "reflow.io/instance": instance,
                    "reflow.io/try-id": try_id,
                },
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": settings.image, "command": ["sleep", "60"]}
                ],
            },
        }

    # A pod of a try the store does not know as live (its scheduler lost it), and one of
    # another reflow installation sharing the namespace.
    k8s.cluster.core.create_namespaced_pod(
        settings.namespace, pod("orphan", "424242", settings.instance)
    )
    k8s.cluster.core.create_namespaced_pod(settings.namespace, pod("neighbour", "424243", "other"))
    # The secret of a try whose pod was never created (the scheduler died in between).
    for name, labels in (
        ("orphan", pod("", "424244", settings.instance)["metadata"]["labels"]),
        ("neighbour", pod("", "424245", "other")["metadata"]["labels"]),
    ):
        secret = {"metadata": {"name": name, "labels": labels}, "stringData": {"K": "v"}}
        k8s.cluster.core.create_namespaced_secret(settings.namespace, secret)
    pipeline(k8s, 'Shell("t", "true")')
    scheduler = k8s.scheduler()
    scheduler.start()

    def swept() -> bool:
        scheduler.tick()
        secrets = [s["metadata"]["name"] for s in k8s.cluster.secrets()]
        return "orphan" not in _names(k8s) and "orphan" not in secrets

    try:
        wait_until(swept, timeout=20)
    finally:
        scheduler.stop()

    assert "neighbour" in _names(k8s)
    assert [s["metadata"]["name"] for s in k8s.cluster.secrets()] == ["neighbour"]
    k8s.cluster.core.delete_namespaced_pod("neighbour", settings.namespace, grace_period_seconds=0)
    k8s.cluster.core.delete_namespaced_secret("neighbour", settings.namespace)


def _names(k8s: K8sEnv) -> list[str]:
    return [p["metadata"]["name"] for p in reflow_pods(k8s)]


def test_local_and_kubernetes_tasks_in_one_run(k8s: K8sEnv, tmp_path: Path) -> None:
    out = tmp_path / "local.txt"
    pipeline(
        k8s,
        f"""
        def check(ds):
            print("python task in a pod for", ds)

        a = Shell("a", "echo in a pod")
        b = Python("b", check)
        c = Shell("c", "echo on the scheduler host > {out}")
        a >> b >> c
        """,
    )
    settings = k8s.settings.model_copy(update={"launchers": {"etl.c": "local"}})
    k8s.settings = settings
    (run_pk,) = k8s.trigger("etl", ["2024-01-03"])
    k8s.drive(k8s.runs_done([run_pk]))

    assert k8s.run(run_pk).state == RunState.SUCCESS
    tries = {t.task_id: t for t in k8s.tries(run_pk)}
    assert (tries["a"].launcher, tries["b"].launcher, tries["c"].launcher) == (
        "kubernetes",
        "kubernetes",
        "local",
    )
    assert "python task in a pod for 2024-01-03" in Path(tries["b"].log_path).read_text()
    assert out.read_text().strip() == "on the scheduler host"


# -- the launcher on its own, as the scheduler drives it (restarts are new instances) ----------
_next_try = [int(time.time() * 1000) % 10**8 * 10]  # try ids unique on a real cluster too


def try_spec(
    k8s: K8sEnv,
    command: str,
    *,
    pipeline: str = "etl",
    run_id: str = "manual__2024-01-03",
    task: str = "t",
    try_id: int | None = None,
    pod: dict[str, Any] | None = None,
    kill_grace: float = 1.0,
) -> TrySpec:
    """A try as the scheduler renders it, logging where the scheduler puts its logs."""
    if try_id is None:
        _next_try[0] += 1
        try_id = _next_try[0]
    log = k8s.settings.logs_path / pipeline / run_id / task / "try-1.log"
    return TrySpec(
        try_id=try_id,
        argv=("sh", "-c", command),
        log_path=str(log),
        env={"REFLOW_DS": "2024-01-03"},
        kill_grace=kill_grace,
        labels={"pipeline": pipeline, "run_id": run_id, "task": task, "try_number": "1"},
        launcher="kubernetes",
        pod=pod,
    )


def outcome_of(launcher: KubernetesLauncher, try_id: int, timeout: float = 30.0) -> Outcome:
    found: list[Outcome] = []

    def reported() -> bool:
        found.extend(o for o in launcher.poll() if o.try_id == try_id)
        if not found:
            launcher.wait(0.1)
        return bool(found)

    wait_until(reported, timeout=timeout)
    return found[0]


def pod_named(k8s: K8sEnv, name: str) -> dict[str, Any] | None:
    return next((p for p in k8s.cluster.pods() if p["metadata"]["name"] == name), None)


def running(k8s: K8sEnv, name: str) -> bool:
    pod = pod_named(k8s, name)
    return pod is not None and pod.get("status", {}).get("phase") == "Running"


def test_a_finished_pod_stays_until_released_and_a_new_launcher_reports_its_outcome(
    k8s: K8sEnv, launchers: Any
) -> None:
    first = launchers()  # cleanup on_success: the pod goes, but only once released
    spec = try_spec(k8s, "echo done")
    handle = first.start(spec)
    name = handle.external_id.split("/")[1]
    assert outcome_of(first, spec.try_id).ok
    first.poll()
    first.poll()
    assert pod_named(k8s, name) is not None, "reported, not released: the pod stays"
    first.close()  # the scheduler dies before recording the outcome
    assert pod_named(k8s, name) is not None

    second = launchers()
    ref = TryRef(spec.try_id, spec.log_path, external_id=handle.external_id, launcher="kubernetes")
    second.adopt(ref)
    outcome = outcome_of(second, spec.try_id)
    assert (outcome.exit_code, outcome.reason) == (0, None), outcome
    second.release([spec.try_id + 1, 123456789])  # not its tries: ignored
    second.poll()
    assert pod_named(k8s, name) is not None
    second.release([spec.try_id])
    wait_until(lambda: pod_named(k8s, name) is None, timeout=15)


def test_a_try_whose_start_was_never_recorded_is_found_by_its_labels(
    k8s: K8sEnv, launchers: Any
) -> None:
    # The scheduler died between creating the pod and recording it: the store has no
    # pod name. The next one must find the pod, not declare the try lost and run it again.
    first = launchers()
    spec = try_spec(k8s, "echo before; sleep 2; echo after")
    name = first.start(spec).external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    first.close()

    second = launchers()
    assert second.adopt(TryRef(spec.try_id, spec.log_path, launcher="kubernetes"))
    outcome = outcome_of(second, spec.try_id)
    assert (outcome.exit_code, outcome.reason) == (0, None), outcome
    assert [p["metadata"]["name"] for p in k8s.cluster.pods()] == [name]
    lines = Path(spec.log_path).read_text().splitlines()
    assert lines.count("before") == 1 and lines.count("after") == 1


def test_a_try_with_no_pod_and_no_recorded_start_is_lost_as_never_started(
    k8s: K8sEnv, launchers: Any
) -> None:
    launcher = launchers()
    spec = try_spec(k8s, "true")
    assert not launcher.adopt(TryRef(spec.try_id, spec.log_path, launcher="kubernetes"))
    outcome = outcome_of(launcher, spec.try_id)
    assert outcome.reason == FailureReason.LOST
    assert "never started" in outcome.detail


def fences(k8s: K8sEnv) -> dict[str, str]:
    """reflow's fences in the namespace: name -> the try id they fence."""
    items = k8s.cluster.core.list_namespaced_config_map(
        k8s.cluster.settings.namespace, label_selector="reflow.io/fence"
    ).items
    return {c.metadata.name: c.metadata.labels["reflow.io/try-id"] for c in items}


def test_a_start_fenced_while_its_pod_is_created_deletes_the_pod_and_raises_fenced(
    k8s: K8sEnv, launchers: Any
) -> None:
    if k8s.cluster.real:
        pytest.skip("the fence is laid at that very moment by the fake API server")
    fake, namespace = k8s.cluster.fake, k8s.cluster.settings.namespace
    launcher = launchers()
    spec = try_spec(k8s, "sleep 30")
    fence = fence_manifest(spec.try_id, k8s.settings.kubernetes)
    # The start passed its first look at the fence; another scheduler declares the try lost
    # (it lists no pod of it yet) once the pod is created, before start() looks again.
    fake.after_next(
        "POST",
        f"/namespaces/{namespace}/pods",
        lambda: k8s.cluster.core.create_namespaced_config_map(namespace, fence),
    )
    with pytest.raises(Fenced, match="just created, was deleted"):
        launcher.start(spec)

    name = pod_name(spec)
    assert fake.deleted_pods() == [f"{namespace}/{name}"]
    assert pod_named(k8s, name) is None, "deleted with no grace period: gone at once"
    assert launcher.watched() == set()
    fence_path = f"/api/v1/namespaces/{namespace}/configmaps/{fence['metadata']['name']}"
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    steps = [
        (method, path)
        for method, path in fake.requests()
        if "/configmaps" in path or (method != "GET" and path.startswith(pods_path))
    ]
    assert steps == [
        ("GET", fence_path),  # before: no fence
        ("POST", pods_path),
        ("POST", f"/api/v1/namespaces/{namespace}/configmaps"),  # the other scheduler
        ("GET", fence_path),  # after: fenced
        ("DELETE", f"{pods_path}/{name}"),
    ]


def test_an_unrecorded_try_whose_pod_exists_is_adopted_despite_its_fence(
    k8s: K8sEnv, launchers: Any
) -> None:
    # Its scheduler created the pod and died before recording it. Each adopter fences the
    # try before looking its pod up; the second finds the fence there already.
    first = launchers()
    spec = try_spec(k8s, "echo before; sleep 1; echo after")
    name = first.start(spec).external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    first.close()
    ref = TryRef(spec.try_id, spec.log_path, launcher="kubernetes")

    second = launchers()
    assert second.adopt(ref)
    fence = fence_name(spec.try_id, k8s.settings.kubernetes)
    assert fences(k8s) == {fence: str(spec.try_id)}
    second.close()  # dies too, before recording anything
    third = launchers()
    assert third.adopt(ref)
    outcome = outcome_of(third, spec.try_id)
    assert (outcome.exit_code, outcome.reason) == (0, None), outcome
    assert [p["metadata"]["name"] for p in k8s.cluster.pods()] == [name]
    assert fences(k8s) == {fence: str(spec.try_id)}
    lines = Path(spec.log_path).read_text().splitlines()
    assert lines.count("before") == 1 and lines.count("after") == 1


def test_the_sweep_removes_old_fences_and_keeps_young_ones(k8s: K8sEnv, launchers: Any) -> None:
    if k8s.cluster.real:
        pytest.skip("fences are aged by the fake API server")
    fake, namespace = k8s.cluster.fake, k8s.cluster.settings.namespace
    ours, theirs = launchers(), launchers(instance="neighbour")
    old, young, neighbours = (try_spec(k8s, "true") for _ in range(3))
    for launcher, spec in ((ours, old), (ours, young), (theirs, neighbours)):
        assert not launcher.adopt(TryRef(spec.try_id, spec.log_path, launcher="kubernetes"))
        assert "fenced" in outcome_of(launcher, spec.try_id).detail
    names = {
        "old": fence_name(old.try_id, ours.settings),
        "young": fence_name(young.try_id, ours.settings),
        "neighbour's": fence_name(neighbours.try_id, theirs.settings),
    }
    assert set(fences(k8s)) == set(names.values())
    day = 24 * 3600
    fake.backdate("configmaps", namespace, names["old"], day + 60)
    fake.backdate("configmaps", namespace, names["young"], day - 3600)
    fake.backdate("configmaps", namespace, names["neighbour's"], 2 * day)  # not ours to sweep

    assert launchers().sweep(lambda: set()) == 1
    assert set(fences(k8s)) == {names["young"], names["neighbour's"]}


def test_cancel_right_after_start_deletes_the_pod(k8s: K8sEnv, launchers: Any) -> None:
    # What the scheduler does with a pod whose start it cannot record (its lease is lost).
    launcher = launchers()
    spec = try_spec(k8s, "while true; do sleep 0.1; done")
    name = launcher.start(spec).external_id.split("/")[1]
    launcher.cancel(spec.try_id, 0)
    outcome = outcome_of(launcher, spec.try_id)
    assert not outcome.ok
    wait_until(lambda: pod_named(k8s, name) is None, timeout=15)
    assert launcher.watched() == set()


@pytest.mark.parametrize("recorded", [True, False], ids=["by-name", "by-labels"])
def test_a_pod_of_the_previous_instance_name_is_taken_over_not_run_twice(
    k8s: K8sEnv, launchers: Any, recorded: bool
) -> None:
    # The `instance` setting changed between two runs of the scheduler: the pod carries
    # the old one, which the new scheduler's watch and sweep do not select.
    before = launchers(instance="reflow-before")
    spec = try_spec(k8s, "echo before; sleep 2; echo after")
    handle = before.start(spec)
    name = handle.external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    before.close()

    after = launchers(instance="reflow-after")
    external_id = handle.external_id if recorded else None
    assert after.adopt(TryRef(spec.try_id, spec.log_path, external_id=external_id))
    pod = pod_named(k8s, name)
    assert pod is not None
    assert pod["metadata"]["labels"]["reflow.io/instance"] == "reflow-after"
    assert after.sweep(lambda: set()) == 0, "the sweep sees the pod as watched"
    outcome = outcome_of(after, spec.try_id)
    assert (outcome.exit_code, outcome.reason) == (0, None), outcome
    assert [p["metadata"]["name"] for p in k8s.cluster.pods()] == [name]
    lines = Path(spec.log_path).read_text().splitlines()
    assert lines.count("before") == 1 and lines.count("after") == 1


def test_a_pod_of_the_previous_instance_name_is_followed_when_it_cannot_be_relabelled(
    k8s: K8sEnv, launchers: Any
) -> None:
    if k8s.cluster.real:
        pytest.skip("needs the fake API server's fault injection")
    # No `patch` right on pods (an older RBAC role): the pod is read by name instead.
    before = launchers(instance="reflow-before")
    spec = try_spec(k8s, "echo before; sleep 2; echo after")
    handle = before.start(spec)
    name = handle.external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    before.close()
    k8s.cluster.fake.fail_next(1, status=403, method="PATCH", path_contains="/pods/")

    after = launchers(instance="reflow-after")
    assert after.adopt(TryRef(spec.try_id, spec.log_path, external_id=handle.external_id))
    outcome = outcome_of(after, spec.try_id)
    assert (outcome.exit_code, outcome.reason) == (0, None), outcome
    assert pod_named(k8s, name)["metadata"]["labels"]["reflow.io/instance"] == "reflow-before"
    lines = Path(spec.log_path).read_text().splitlines()
    assert lines.count("before") == 1 and lines.count("after") == 1


def test_a_pod_of_another_installation_with_the_same_try_id_is_not_adopted(
    k8s: K8sEnv, launchers: Any
) -> None:
    # Another reflow, with its own database, shares the namespace: its try 7 is not ours.
    theirs = launchers(instance="neighbour")
    their_spec = try_spec(k8s, "while true; do sleep 0.1; done", pipeline="sales")
    name = theirs.start(their_spec).external_id.split("/")[1]
    ours = launchers()
    mine = try_spec(k8s, "true", try_id=their_spec.try_id, run_id="scheduled__2024-01-03")

    assert not ours.adopt(TryRef(mine.try_id, mine.log_path, launcher="kubernetes"))
    outcome = outcome_of(ours, mine.try_id)
    assert outcome.reason == FailureReason.LOST and "never started" in outcome.detail
    pod = pod_named(k8s, name)
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")
    assert pod["metadata"]["labels"]["reflow.io/instance"] == "neighbour"
    # Same pipeline, task, day and try id: the same pod name, but another run.
    twin = try_spec(k8s, "true", try_id=their_spec.try_id, pipeline="sales", run_id="other")
    external_id = f"{k8s.cluster.settings.namespace}/{name}"
    assert not ours.adopt(TryRef(twin.try_id, twin.log_path, external_id=external_id))
    assert "another try" in outcome_of(ours, twin.try_id).detail
    assert pod_named(k8s, name)["metadata"]["labels"]["reflow.io/instance"] == "neighbour"
    theirs.cancel(their_spec.try_id, 0)
    outcome_of(theirs, their_spec.try_id)


def test_a_pod_of_the_same_name_from_another_installation_is_not_taken_for_ours(
    k8s: K8sEnv, launchers: Any
) -> None:
    theirs = launchers(instance="neighbour")
    their_spec = try_spec(k8s, "while true; do sleep 0.1; done", run_id="scheduled__2024-01-03")
    name = theirs.start(their_spec).external_id.split("/")[1]
    ours = launchers()
    mine = try_spec(k8s, "true", try_id=their_spec.try_id)  # the same name, another run
    with pytest.raises(TaskError, match="already exists and is not this try's"):
        ours.start(mine)
    assert ours.watched() == set()
    theirs.cancel(their_spec.try_id, 0)
    outcome_of(theirs, their_spec.try_id)
    wait_until(lambda: pod_named(k8s, name) is None, timeout=15)


def test_a_child_oom_kill_under_a_main_process_that_exits_0_succeeds_with_a_note(
    k8s: K8sEnv, launchers: Any
) -> None:
    """A real node reports a pod whose child was OOM-killed while its main process went
    on to exit 0 as ``Succeeded`` with reason OOMKilled: the phase and exit code decide."""
    if k8s.cluster.real:
        pytest.skip("simulated by the fake API server only")
    launcher = launchers()
    annotations = {SIMULATE: "oom-child", "fake.reflow.io/after": "0.2"}
    spec = try_spec(k8s, "sleep 1; exit 0", pod={"annotations": annotations})
    name = launcher.start(spec).external_id.split("/")[1]
    outcome = outcome_of(launcher, spec.try_id)
    assert (outcome.ok, outcome.exit_code, outcome.reason) == (True, 0, None), outcome
    assert "OOMKilled" in outcome.detail
    assert "OOMKilled" in Path(spec.log_path).read_text()
    pod = pod_named(k8s, name)
    assert pod is not None and pod["status"]["phase"] == "Succeeded"


def test_a_pod_stuck_terminating_ends_the_try_after_grace_and_margin_and_is_forced(
    k8s: K8sEnv, launchers: Any
) -> None:
    if k8s.cluster.real:
        pytest.skip("a lost node is simulated by the fake API server only")
    launcher = launchers()
    launcher.terminating_margin = 1.0
    spec = try_spec(
        k8s,
        "while true; do sleep 0.1; done",
        pod={"annotations": {SIMULATE: "stuck-terminating"}},
        kill_grace=1,
    )
    name = launcher.start(spec).external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    cancelled = time.monotonic()
    launcher.cancel(spec.try_id, 1)
    wait_until(lambda: (pod_named(k8s, name) or {}).get("metadata", {}).get("deletionTimestamp"))

    outcome = outcome_of(launcher, spec.try_id, timeout=30)
    assert time.monotonic() - cancelled >= 2.0  # grace + margin
    assert outcome.reason == FailureReason.ERROR and "still terminating" in outcome.detail
    wait_until(lambda: pod_named(k8s, name) is None, timeout=10)  # force-deleted
    assert "still terminating" in Path(spec.log_path).read_text()


def test_the_sweep_force_deletes_an_orphan_pod_stuck_terminating(
    k8s: K8sEnv, launchers: Any
) -> None:
    if k8s.cluster.real:
        pytest.skip("a lost node is simulated by the fake API server only")
    dead = launchers()
    spec = try_spec(
        k8s, "while true; do sleep 0.1; done", pod={"annotations": {SIMULATE: "stuck-terminating"}}
    )
    name = dead.start(spec).external_id.split("/")[1]
    wait_until(lambda: running(k8s, name), timeout=30)
    dead.cancel(spec.try_id, 1)
    dead.close()  # its scheduler died: the try is recorded lost, the pod still terminating
    sweeper = launchers()
    sweeper.terminating_margin = 0.5
    swept: list[int] = []

    def gone() -> bool:
        swept.append(sweeper.sweep(lambda: set()))
        return pod_named(k8s, name) is None

    wait_until(gone, timeout=20, every=0.3)
    assert sum(swept) == 1


def test_a_label_kubernetes_refuses_fails_the_try_before_anything_is_created(
    k8s: K8sEnv, launchers: Any
) -> None:
    launcher = launchers()
    spec = try_spec(k8s, "true", pod={"labels": {"team": "data eng"}})
    with pytest.raises(
        TaskError, match=r"'team': 'data eng' is not a valid label value.*no spaces"
    ):
        launcher.start(spec)
    assert not k8s.cluster.pods()
    if k8s.cluster.fake is not None:
        assert ("POST", "/api/v1/namespaces/default/pods") not in k8s.cluster.fake.requests()


# -- helpers ----------------------------------------------------------------------------------
class _Background:
    """The test's scheduler in a thread, while the test acts on the cluster."""

    def __init__(self, k8s: K8sEnv) -> None:
        self.stop = threading.Event()
        scheduler = k8s.scheduler()
        self.thread = threading.Thread(
            target=lambda: scheduler.run(self.stop, idle_wait=0.05), daemon=True
        )

    def __enter__(self) -> _Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _spark_home() -> str:
    from pyspark.find_spark_home import _find_spark_home

    return str(_find_spark_home())


def _scheduler_process(k8s: K8sEnv, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``reflow scheduler`` in its own process, configured like the test's scheduler."""
    s, c = k8s.settings, k8s.settings.kubernetes
    toml = tmp_path / "sched-home"
    toml.mkdir()
    lines = [
        "[reflow]",
        f"database_url = {s.database!r}",
        f"pipelines_folder = {str(s.pipelines_path)!r}",
        f"logs_folder = {str(s.logs_path)!r}",
        'launcher = "kubernetes"',
        "heartbeat_interval = 0.5",
        "scheduler_timeout = 3.0",
        "[reflow.kubernetes]",
        f"namespace = {c.namespace!r}",
        f"image = {c.image!r}",
        f"pipelines_folder = {c.pipelines_folder!r}",
        f"python = {c.python!r}",
        # The test's own instance: its pods are this scheduler's, not another installation's.
        f"instance = {c.instance!r}",
        f"startup_timeout = {c.startup_timeout}",
        f"sweep_interval = {c.sweep_interval}",
    ]
    if c.kubeconfig:
        lines.append(f"kubeconfig = {str(c.kubeconfig)!r}")
    if c.context:
        lines.append(f"context = {c.context!r}")
    (toml / "reflow.toml").write_text("\n".join(lines) + "\n")
    return subprocess.Popen(
        [sys.executable, "-m", "reflow.cli", "scheduler", "--home", str(toml)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "scheduler.err").open("wb"),
    )


def test_an_outcome_says_what_the_pod_requested_and_from_its_scheduling_to_its_end(
    k8s: K8sEnv, launchers: Any
) -> None:
    launcher = launchers()
    pod = {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    spec = try_spec(k8s, "sleep 2", pod=pod)
    began = datetime.now(UTC).replace(microsecond=0)  # the API's times are whole seconds
    handle = launcher.start(spec)
    outcome = outcome_of(launcher, spec.try_id, timeout=120)
    assert outcome.ok
    [held] = outcome.held
    assert (held.kind, held.name) == ("pod", handle.external_id.split("/")[1])
    assert (held.cpu, held.memory) == (Decimal("0.25"), Decimal(64 * 2**20))
    assert held.began is not None and held.ended is not None
    # The API's times are the cluster's clock (a real node's may be a little off ours).
    skew = timedelta(seconds=5)
    assert began - skew <= held.began <= held.ended <= outcome.ended_at + skew
    assert held.seconds >= 1  # it slept 2 s; the API's times are whole seconds
    launcher.release([spec.try_id])
