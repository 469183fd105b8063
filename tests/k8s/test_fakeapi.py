"""The fake Kubernetes API server, driven by the official client as the launcher drives it:
what it answers, what its kubelet does with pods, and the faults it injects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from .fakeapi import AFTER, SIMULATE, FakeCluster

pytestmark = pytest.mark.k8s

NS = "default"
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z (.*)$")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCluster]:
    cluster = FakeCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def v1(fake: FakeCluster, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(kubeconfig), context="fake", client_configuration=configuration
    )
    api_client = client.ApiClient(configuration)
    try:
        yield client.CoreV1Api(api_client)
    finally:
        api_client.close()


def manifest(
    name: str,
    script: str = "true",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A one-container pod running `sh -c script`, as a launcher would build it."""
    container = {"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def phase(fake: FakeCluster, name: str) -> str | None:
    pod = fake.pod(NS, name)
    return None if pod is None else pod["status"]["phase"]


def wait_phase(fake: FakeCluster, name: str, *phases: str, timeout: float = 10.0) -> dict:
    fake.wait_for(lambda: phase(fake, name) in phases, timeout=timeout)
    pod = fake.pod(NS, name)
    assert pod is not None
    return pod


def reasons(v1: client.CoreV1Api, name: str) -> list[str]:
    events = v1.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
    return [e.reason for e in events.items]


def status_of(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


# --- the API ---------------------------------------------------------------------------------


def test_pods_are_created_read_and_listed_with_selectors(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    created = v1.create_namespaced_pod(NS, manifest("a", "sleep 5", labels={"app": "x"}))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.namespace == NS and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    v1.create_namespaced_pod(NS, manifest("b", "sleep 5", labels={"app": "y"}))
    v1.create_namespaced_pod("other", manifest("c", "sleep 5"))

    assert v1.read_namespaced_pod("a", NS).metadata.labels == {"app": "x"}

    def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod(NS, **kwargs).items]

    assert names() == ["a", "b"]
    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app!=x") == ["b"]
    assert names(label_selector="app") == ["a", "b"]
    assert names(label_selector="app,app in (y, z)") == ["b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    every = v1.list_pod_for_all_namespaces()
    assert [p.metadata.name for p in every.items] == ["a", "b", "c"]
    assert int(every.metadata.resource_version) >= 3

    wait_phase(fake, "a", "Running")
    assert names(field_selector="status.phase=Running,metadata.name=a") == ["a"]

    with pytest.raises(ApiException) as missing:
        v1.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404
    assert status_of(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"},
        "code": 404,
    }


def test_creating_a_pod_twice_is_a_conflict(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, manifest("twice", "sleep 5"))
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, manifest("twice", "sleep 5"))
    assert error.value.status == 409
    assert status_of(error.value)["reason"] == "AlreadyExists"
    assert status_of(error.value)["message"] == 'pods "twice" already exists'


def test_invalid_pods_are_rejected_like_the_apiserver_does(v1: client.CoreV1Api) -> None:
    no_image = manifest("ok-name")
    del no_image["spec"]["containers"][0]["image"]
    bad_label = manifest("labelled", labels={"date": "2024-01-01T00:00:00"})
    too_much = manifest(
        "greedy", container={"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}}
    )
    for pod, field in [
        (manifest("Not_A_Name"), "metadata.name"),
        (no_image, "spec.containers[0].image"),
        (bad_label, "metadata.labels"),
        (too_much, "spec.containers[0].resources.requests"),
    ]:
        with pytest.raises(ApiException) as error:
            v1.create_namespaced_pod(NS, pod)
        body = status_of(error.value)
        assert (error.value.status, body["reason"]) == (422, "Invalid")
        assert [c["field"] for c in body["details"]["causes"]] == [field]
        assert body["message"].startswith(f'Pod "{pod["metadata"]["name"]}" is invalid: {field}')

    unnamed = manifest("")
    del unnamed["metadata"]["name"]
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, unnamed)
    assert "name or generateName is required" in status_of(error.value)["message"]

    unnamed["metadata"]["generateName"] = "job-"
    generated = v1.create_namespaced_pod(NS, unnamed).metadata.name
    assert re.fullmatch(r"job-[a-z0-9]{5}", generated)

    bad_quantity = manifest("q", container={"resources": {"limits": {"memory": "1 GB"}}})
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, bad_quantity)
    assert error.value.status == 400 and "quantities must match" in error.value.body


def test_fail_next_answers_with_a_status_then_serves_again(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    fake.fail_next(count=2, status=500, method="GET", path_contains="/pods")
    v1.create_namespaced_pod(NS, manifest("p", "sleep 5"))  # a POST: not matched
    for _ in range(2):
        with pytest.raises(ApiException) as error:
            v1.read_namespaced_pod("p", NS)
        assert error.value.status == 500
        assert status_of(error.value)["reason"] == "InternalError"
    assert v1.read_namespaced_pod("p", NS).metadata.name == "p"
    fake.fail_next(status=429)
    with pytest.raises(ApiException) as error:
        v1.list_namespaced_pod(NS)
    assert (error.value.status, status_of(error.value)["reason"]) == (429, "TooManyRequests")
    assert v1.list_namespaced_pod(NS).items
    assert ("GET", f"/api/v1/namespaces/{NS}/pods/p") in fake.requests()


def test_fail_next_after_apply_loses_only_the_answer(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    fake.fail_next(status=504, method="POST", path_contains="/pods", after_apply=True)
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, manifest("lost", "sleep 5"))
    assert (error.value.status, status_of(error.value)["reason"]) == (504, "Timeout")
    assert fake.pod(NS, "lost") is not None  # it was created all the same
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, manifest("lost", "sleep 5"))
    assert error.value.status == 409


# --- the kubelet -----------------------------------------------------------------------------


def test_a_pod_runs_its_command_and_fails_with_its_exit_code(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    v1.create_namespaced_pod(NS, manifest("p", "echo hi; exit 3"))
    wait_phase(fake, "p", "Failed")
    pod = v1.read_namespaced_pod("p", NS)
    status = pod.status.container_statuses[0]
    assert status.state.terminated.exit_code == 3
    assert status.state.terminated.reason == "Error"
    assert status.state.terminated.started_at and status.state.terminated.finished_at
    assert pod.status.pod_ip == "127.0.0.1" and pod.spec.node_name == "fake-node"
    assert v1.read_namespaced_pod_log("p", NS) == "hi\n"
    assert reasons(v1, "p") == ["Scheduled", "Pulled", "Created", "Started"]


def test_the_process_gets_env_volumes_and_no_other_environment(
    fake: FakeCluster, v1: client.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONLY_IN_THE_TEST_PROCESS", "1")
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "MESSAGE", "value": "$(GREETING) world, $$(GREETING)"},
        {"name": "OUT", "value": "/scratch/out"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]
    # $(GREETING) is expanded by Kubernetes before sh sees the script; "$MESSAGE" by sh.
    script = 'env > /scratch/env; echo "$MESSAGE" > $OUT; echo $(GREETING) > /scratch/hi; pwd > /scratch/pwd'  # noqa: E501
    pod = manifest(
        "envy",
        script,
        container={"env": env, "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    v1.create_namespaced_pod(NS, pod)
    wait_phase(fake, "envy", "Succeeded")
    scratch = fake.workdir / "pods" / "envy" / "scratch"
    assert (scratch / "out").read_text() == "hello world, $(GREETING)\n"
    assert (scratch / "hi").read_text() == "hello\n"
    seen = dict(line.split("=", 1) for line in (scratch / "env").read_text().splitlines())
    assert seen["OUT"] == str(scratch / "out")
    assert seen["POD"] == "envy" and seen["IP"] == "127.0.0.1"
    assert seen["PASSWORD"] == "fake-secret:db/password"
    assert seen["PATH"] == os.environ["PATH"]
    assert "ONLY_IN_THE_TEST_PROCESS" not in seen
    assert (scratch / "pwd").read_text().strip() == str(fake.workdir / "pods" / "envy")


def test_a_container_without_command_cannot_run(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    pod = manifest("bare")
    del pod["spec"]["containers"][0]["command"]
    v1.create_namespaced_pod(NS, pod)
    terminated = wait_phase(fake, "bare", "Failed")["status"]["containerStatuses"][0]
    assert terminated["state"]["terminated"]["exitCode"] == 128
    assert terminated["state"]["terminated"]["reason"] == "ContainerCannotRun"


def test_a_followed_log_streams_lines_while_the_pod_runs(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    v1.create_namespaced_pod(NS, manifest("talker", "echo one; sleep 0.4; echo two; sleep 0.4"))
    wait_phase(fake, "talker", "Running")
    lines, phases = [], []
    for line in watch.Watch().stream(
        v1.read_namespaced_pod_log, name="talker", namespace=NS, timestamps=True
    ):
        lines.append(line)
        phases.append(phase(fake, "talker"))
    assert [TIMESTAMPED.match(line).group(2) for line in lines] == ["one", "two"]  # type: ignore[union-attr]
    assert phases[0] == "Running"  # the first line came before the end
    assert phase(fake, "talker") == "Succeeded"  # the stream ended with the container


def test_the_log_of_a_container_that_never_started_is_a_bad_request(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    v1.create_namespaced_pod(NS, manifest("pull", annotations={SIMULATE: "image-pull"}))
    fake.wait_for(lambda: "containerStatuses" in fake.pod(NS, "pull")["status"])  # type: ignore[index]
    with pytest.raises(ApiException) as error:
        v1.read_namespaced_pod_log("pull", NS)
    assert error.value.status == 400
    assert status_of(error.value)["message"] in (
        'container "main" in pod "pull" is waiting to start: image can\'t be pulled',
        'container "main" in pod "pull" is waiting to start: trying and failing to pull image',
    )


def test_a_watch_replays_from_a_resource_version_then_streams(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    since = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, manifest("early", "true"))
    wait_phase(fake, "early", "Succeeded")  # all of its events are history now
    seen: list[tuple[str, str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        v1.list_namespaced_pod, NS, resource_version=since, timeout_seconds=10
    ):
        pod = event["object"]
        seen.append((event["type"], pod.metadata.name, pod.status.phase))
        if pod.metadata.name == "early" and pod.status.phase == "Succeeded":
            v1.create_namespaced_pod(NS, manifest("late", "true"))  # a live one
        if pod.metadata.name == "late" and pod.status.phase == "Succeeded":
            stream.stop()
    assert seen[0] == ("ADDED", "early", "Pending")
    assert ("MODIFIED", "early", "Running") in seen
    assert ("ADDED", "late", "Pending") in seen


def test_expired_watches_end_with_410(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, manifest("w", "sleep 5"))
    events = watch.Watch().stream(v1.list_namespaced_pod, NS)  # no timeout: retries a 410 once
    assert next(events)["type"] == "ADDED"
    fake.expire_watches()
    with pytest.raises(ApiException) as error:  # the retry from its last version fails too
        while True:
            next(events)
    assert error.value.status == 410

    old = v1.read_namespaced_pod("w", NS).metadata.resource_version
    fresh = v1.list_namespaced_pod(NS).metadata.resource_version
    assert int(fresh) >= int(old)  # a list is as new as the newest object, at least
    with pytest.raises(ApiException) as error:
        for _ in watch.Watch().stream(
            v1.list_namespaced_pod, NS, resource_version="1", timeout_seconds=5
        ):
            pass
    assert error.value.status == 410 and "too old resource version" in error.value.reason
    v1.delete_namespaced_pod("w", NS, grace_period_seconds=0)
    types = [
        e["type"]
        for e in watch.Watch().stream(
            v1.list_namespaced_pod, NS, resource_version=fresh, timeout_seconds=1
        )
    ]
    assert types == ["DELETED"]


def test_list_items_carry_no_kind_but_reads_and_watch_events_do(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    v1.create_namespaced_pod(NS, manifest("k", "sleep 5"))
    listed = json.loads(v1.list_namespaced_pod(NS, _preload_content=False).data)
    assert (listed["kind"], listed["apiVersion"]) == ("PodList", "v1")
    assert [("kind" in i, "apiVersion" in i) for i in listed["items"]] == [(False, False)]
    read = json.loads(v1.read_namespaced_pod("k", NS, _preload_content=False).data)
    assert (read["kind"], read["apiVersion"]) == ("Pod", "v1")
    event = next(iter(watch.Watch().stream(v1.list_namespaced_pod, NS, timeout_seconds=5)))
    assert (event["raw_object"]["kind"], event["raw_object"]["apiVersion"]) == ("Pod", "v1")


def test_a_label_value_with_a_space_is_refused_as_the_apiserver_does(
    v1: client.CoreV1Api,
) -> None:
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_pod(NS, manifest("spaced", labels={"team": "data eng"}))
    body = status_of(error.value)
    assert (error.value.status, body["reason"]) == (422, "Invalid")
    assert body["message"].startswith(
        'Pod "spaced" is invalid: metadata.labels: Invalid value: "data eng"'
    )


def test_a_pod_relabelled_out_of_a_selector_is_deleted_for_its_watch(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    # As the apiserver's watch cache: the DELETED event carries the object as it last
    # matched, at the version of the change; relabelled back in, it is ADDED.
    v1.create_namespaced_pod(NS, manifest("moved", "sleep 30", labels={"app": "x", "keep": "1"}))
    since = v1.list_namespaced_pod(NS, label_selector="app=x").metadata.resource_version
    out = v1.patch_namespaced_pod("moved", NS, {"metadata": {"labels": {"app": "y"}}})
    assert out.metadata.labels == {"app": "y", "keep": "1"}  # a merge, not a replacement
    back = v1.patch_namespaced_pod("moved", NS, {"metadata": {"labels": {"app": "x"}}})
    events = []
    for event in watch.Watch().stream(
        v1.list_namespaced_pod, NS, label_selector="app=x", resource_version=since
    ):
        raw = event["raw_object"]
        events.append(
            (event["type"], raw["metadata"]["labels"]["app"], raw["metadata"]["resourceVersion"])
        )
        if raw["metadata"]["resourceVersion"] == back.metadata.resource_version:
            break
    deleted = [e for e in events if e[0] == "DELETED"]
    assert deleted == [("DELETED", "x", out.metadata.resource_version)]
    assert events[-1] == ("ADDED", "x", back.metadata.resource_version)
    v1.delete_namespaced_pod("moved", NS, grace_period_seconds=0)


def test_a_pod_patch_merges_metadata_and_a_no_op_keeps_the_version(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    v1.create_namespaced_pod(NS, manifest("meta", "sleep 30", labels={"a": "1", "b": "2"}))
    wait_phase(fake, "meta", "Running")  # the kubelet's updates are done
    patched = v1.patch_namespaced_pod("meta", NS, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert patched.metadata.labels == {"b": "2", "c": "3"}
    again = v1.patch_namespaced_pod("meta", NS, {"metadata": {"labels": {"c": "3"}}})
    assert again.metadata.resource_version == patched.metadata.resource_version
    with pytest.raises(ApiException) as error:  # a JSON patch (a list): not in this fake
        v1.patch_namespaced_pod("meta", NS, [{"op": "add", "path": "/x", "value": 1}])
    assert error.value.status == 415
    with pytest.raises(ApiException) as error:
        v1.patch_namespaced_pod("meta", NS, {"metadata": {"labels": {"c": "x y"}}})
    assert error.value.status == 422
    v1.delete_namespaced_pod("meta", NS, grace_period_seconds=0)


def test_a_deleted_pod_gets_sigterm_then_sigkill_after_its_grace_period(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    script = "trap 'echo term > /scratch/term' TERM; while true; do sleep 0.05; done"
    pod = manifest(
        "stubborn",
        script,
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    v1.create_namespaced_pod(NS, pod)
    wait_phase(fake, "stubborn", "Running")
    since = v1.read_namespaced_pod("stubborn", NS).metadata.resource_version
    started = time.monotonic()
    answer = v1.delete_namespaced_pod(
        "stubborn", NS, body=client.V1DeleteOptions(grace_period_seconds=1)
    )
    assert answer.metadata.deletion_timestamp and answer.metadata.deletion_grace_period_seconds == 1
    fake.wait_for(lambda: fake.pod(NS, "stubborn") is None)
    assert time.monotonic() - started >= 1.0
    assert (fake.workdir / "pods" / "stubborn" / "scratch" / "term").read_text() == "term\n"
    assert fake.deleted_pods() == [f"{NS}/stubborn"]
    events = list(
        watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=since, timeout_seconds=1)
    )
    assert events[-1]["type"] == "DELETED"
    final = events[-1]["object"].status.container_statuses[0].state.terminated
    assert (final.exit_code, final.reason) == (137, "Error")  # 128 + SIGKILL
    assert "Killing" in reasons(v1, "stubborn")

    with pytest.raises(ApiException) as error:
        v1.delete_namespaced_pod("stubborn", NS)
    assert error.value.status == 404


def test_a_forced_deletion_removes_the_pod_at_once_and_still_sends_sigterm(
    fake: FakeCluster, v1: client.CoreV1Api, tmp_path: Path
) -> None:
    marker = tmp_path / "term"
    script = f"trap 'touch {marker}; exit 143' TERM; while true; do sleep 0.05; done"
    v1.create_namespaced_pod(NS, manifest("forced", script))
    wait_phase(fake, "forced", "Running")
    v1.delete_namespaced_pod("forced", NS, grace_period_seconds=0)
    assert fake.pod(NS, "forced") is None
    fake.wait_for(marker.exists, timeout=10)


def test_active_deadline_kills_the_pod(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, manifest("slow", "exec sleep 30", activeDeadlineSeconds=1))
    pod = wait_phase(fake, "slow", "Failed", timeout=5)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    message = "Pod was active on the node longer than the specified deadline"
    assert pod["status"]["message"] == message
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


def simulate(fake: FakeCluster, v1: client.CoreV1Api, simulation: str) -> None:
    """A pod that would sleep, with `simulation` striking after 0.2 s where that applies."""
    env = [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]
    annotations = {SIMULATE: simulation, AFTER: "0.2"}
    v1.create_namespaced_pod(
        NS, manifest("sim", "sleep 30", annotations=annotations, container={"env": env})
    )


def delete_sim(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    v1.delete_namespaced_pod("sim", NS)
    fake.wait_for(lambda: fake.pod(NS, "sim") is None, timeout=10)


def test_simulated_oom_kill(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    simulate(fake, v1, "oom")
    status = wait_phase(fake, "sim", "Failed", timeout=5)["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    delete_sim(fake, v1)


def test_simulated_oom_kill_of_a_child_leaves_a_succeeded_pod_with_reason_oomkilled(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    annotations = {SIMULATE: "oom-child", AFTER: "0.1"}
    v1.create_namespaced_pod(NS, manifest("child", "sleep 0.6; exit 0", annotations=annotations))
    status = wait_phase(fake, "child", "Succeeded", "Failed", timeout=5)["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (status["phase"], terminated["reason"], terminated["exitCode"]) == (
        "Succeeded",
        "OOMKilled",
        0,
    )


def test_simulated_stuck_terminating_pod_stays_until_forced(
    fake: FakeCluster, v1: client.CoreV1Api, tmp_path: Path
) -> None:
    beat = tmp_path / "beat"
    script = f"while true; do date +%s.%N >> {beat}; sleep 0.1; done"
    annotations = {SIMULATE: "stuck-terminating"}
    v1.create_namespaced_pod(NS, manifest("stuck", script, annotations=annotations))
    wait_phase(fake, "stuck", "Running")
    deleted = time.time()
    v1.delete_namespaced_pod("stuck", NS, grace_period_seconds=1)

    def beating_past_grace() -> bool:
        lines = beat.read_text().split() if beat.exists() else []
        return bool(lines) and float(lines[-1]) > deleted + 1.5

    fake.wait_for(beating_past_grace, timeout=10)  # no SIGTERM, no SIGKILL: a lost node
    pod = fake.pod(NS, "stuck")
    assert pod is not None and pod["metadata"]["deletionTimestamp"]
    assert pod["status"]["phase"] == "Running"
    v1.delete_namespaced_pod("stuck", NS, grace_period_seconds=0)
    assert fake.pod(NS, "stuck") is None


def test_simulated_eviction(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    simulate(fake, v1, "evict")
    status = wait_phase(fake, "sim", "Failed", timeout=5)["status"]
    assert status["reason"] == "Evicted"
    assert status["message"].startswith("The node was low on resource: ephemeral-storage.")
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert "Evicted" in reasons(v1, "sim")
    delete_sim(fake, v1)


def test_simulated_image_pull_failure(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    simulate(fake, v1, "image-pull")

    def waiting() -> dict[str, Any]:
        pod = fake.pod(NS, "sim") or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting") or {}

    fake.wait_for(lambda: waiting().get("reason") == "ErrImagePull", timeout=10)
    assert "pull access denied for busybox" in waiting()["message"]
    fake.wait_for(lambda: waiting().get("reason") == "ImagePullBackOff", timeout=10)
    assert phase(fake, "sim") == "Pending"
    assert {"Failed", "BackOff"} <= set(reasons(v1, "sim"))
    delete_sim(fake, v1)


def test_simulated_config_error(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    simulate(fake, v1, "config-error")
    fake.wait_for(lambda: "Failed" in reasons(v1, "sim"), timeout=10)
    status = fake.pod(NS, "sim")["status"]  # type: ignore[index]
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": 'secret "db" not found',
    }
    delete_sim(fake, v1)


def test_simulated_unschedulable_pod(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    simulate(fake, v1, "unschedulable")
    fake.wait_for(lambda: "FailedScheduling" in reasons(v1, "sim"), timeout=10)
    pod = v1.read_namespaced_pod("sim", NS)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    (condition,) = pod.status.conditions
    assert (condition.type, condition.status, condition.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert condition.message == "0/1 nodes are available: 1 Insufficient memory."
    delete_sim(fake, v1)


def test_an_ephemeral_volume_claim_lives_and_dies_with_its_pod(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    template = {
        "metadata": {"labels": {"owner": "reflow"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    pod = manifest(
        "eph",
        "echo data > /work/file; sleep 30",
        container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        volumes=[{"name": "work", "ephemeral": {"volumeClaimTemplate": template}}],
    )
    uid = v1.create_namespaced_pod(NS, pod).metadata.uid
    claim = v1.read_namespaced_persistent_volume_claim("eph-work", NS)
    assert claim.status.phase == "Bound" and claim.metadata.labels == {"owner": "reflow"}
    assert claim.metadata.owner_references[0].uid == uid
    fake.wait_for(lambda: (fake.workdir / "pods" / "eph" / "work" / "file").exists())
    v1.delete_namespaced_pod("eph", NS, grace_period_seconds=1)
    fake.wait_for(lambda: fake.pod(NS, "eph") is None and not fake.claims(NS))


def test_a_secret_feeds_env_and_goes_with_the_pod_that_owns_it(
    fake: FakeCluster, v1: client.CoreV1Api
) -> None:
    created = v1.create_namespaced_secret(
        NS, {"metadata": {"name": "s", "labels": {"a": "b"}}, "stringData": {"TOKEN": "t-1"}}
    )
    assert created.data == {"TOKEN": "dC0x"} and created.type == "Opaque"
    with pytest.raises(ApiException) as bad:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "x"}, "data": {"a/b": "dC0x"}})
    assert bad.value.status == 422
    ref = {"secretKeyRef": {"name": "s", "key": "TOKEN"}}
    pod = manifest(
        "p", 'echo "$TOKEN"; sleep 30', container={"env": [{"name": "TOKEN", "valueFrom": ref}]}
    )
    uid = v1.create_namespaced_pod(NS, pod).metadata.uid
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid}
    patched = v1.patch_namespaced_secret("s", NS, {"metadata": {"ownerReferences": [owner]}})
    assert patched.metadata.owner_references[0].uid == uid
    assert [s.metadata.name for s in v1.list_namespaced_secret(NS, label_selector="a=b").items] == [
        "s"
    ]
    wait_phase(fake, "p", "Running")
    fake.wait_for(lambda: v1.read_namespaced_pod_log("p", NS) == "t-1\n")
    v1.delete_namespaced_pod("p", NS, grace_period_seconds=0)
    fake.wait_for(lambda: not fake.secrets(NS))


def test_a_pod_waits_for_its_missing_claim(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    pod = manifest(
        "needy",
        "cat /data/input",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}],
    )
    v1.create_namespaced_pod(NS, pod)
    fake.wait_for(lambda: "FailedScheduling" in reasons(v1, "needy"))
    time.sleep(0.3)
    pending = v1.read_namespaced_pod("needy", NS)
    assert pending.status.phase == "Pending" and not pending.spec.node_name
    condition = pending.status.conditions[0]
    assert (condition.type, condition.status, condition.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert 'persistentvolumeclaim "shared" not found' in condition.message

    claim = {
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    with pytest.raises(ApiException) as error:
        v1.create_namespaced_persistent_volume_claim(NS, {**claim, "spec": {}})
    assert error.value.status == 422
    (fake.workdir / "claims" / NS / "shared").mkdir(parents=True)  # data already on the volume
    (fake.workdir / "claims" / NS / "shared" / "input").write_text("kept\n")
    v1.create_namespaced_persistent_volume_claim(NS, claim)
    wait_phase(fake, "needy", "Succeeded")
    assert v1.read_namespaced_pod_log("needy", NS) == "kept\n"
    v1.delete_namespaced_persistent_volume_claim("shared", NS)
    assert not v1.list_namespaced_persistent_volume_claim(NS).items


# --- streams and shutdown --------------------------------------------------------------------


def test_drop_connections_cuts_a_followed_log(fake: FakeCluster, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, manifest("long", "echo start; exec sleep 30"))
    wait_phase(fake, "long", "Running")
    lines = watch.Watch().stream(v1.read_namespaced_pod_log, name="long", namespace=NS)
    assert next(lines) == "start"
    fake.drop_connections()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(lines)
    assert phase(fake, "long") == "Running"  # only the connection went


def test_stop_leaves_no_process_and_no_thread(tmp_path: Path) -> None:
    fake = FakeCluster(tmp_path / "cluster").start()
    marker = uuid.uuid4().hex
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    api = config.new_client_from_config(config_file=str(kubeconfig), context="fake")
    v1 = client.CoreV1Api(api)
    pod = manifest(
        "forks", "sleep 60 & sleep 60", container={"env": [{"name": "MARKER", "value": marker}]}
    )
    v1.create_namespaced_pod(NS, pod)

    def follow() -> None:
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            for _ in watch.Watch().stream(v1.list_namespaced_pod, NS, _request_timeout=10):
                pass

    follower = threading.Thread(target=follow, daemon=True)  # a stream open at stop
    follower.start()

    def marked() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if (
                    process.status() != psutil.STATUS_ZOMBIE
                    and process.environ().get("MARKER") == marker
                ):
                    found.append(process)
            except psutil.Error:
                pass
        return found

    fake.wait_for(lambda: len(marked()) == 3)  # sh and its two sleeps
    fake.stop()
    assert not marked()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fake-")]
    follower.join(timeout=5)
    api.close()
