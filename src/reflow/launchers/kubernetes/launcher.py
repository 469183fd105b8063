"""The ``kubernetes`` launcher: one pod per try, through the official Kubernetes client.

A watch thread keeps the latest state of every reflow pod of the namespace; one thread per
try follows its container log into the try's log file (so no volume is shared between the
scheduler, the web server and the pods). The scheduler's thread creates and deletes pods
and turns pod states into outcomes in :meth:`poll`.

A try never recorded as started is fenced by a ConfigMap when it is adopted (see
:meth:`KubernetesLauncher.adopt`): the API server decides, and no pod of it runs after the
try was declared lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reflow.core.config import KubernetesSettings
from reflow.core.errors import ConfigError, Fenced, TaskError
from reflow.core.pod import label_value
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.launchers.kubernetes.manifest import (
    CONTAINER,
    INSTANCE,
    TRY_ID,
    claim_manifests,
    fence_manifest,
    fence_name,
    fence_selector,
    identity,
    name_of_try,
    pod_manifest,
    secret_manifest,
    selector,
    try_selector,
)

log = logging.getLogger("reflow.kubernetes")

_TRANSIENT = {429, 500, 502, 503, 504}
_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
# How long a finished pod's log may take to arrive before the outcome is reported anyway.
_LOG_GRACE = 10.0
_WATCH_SECONDS = 30
# How often a pod that the watch does not see (outside this instance's selector) is read.
_LOOKUP_EVERY = 2.0
_REQUEST_TIMEOUT = (5, 30)
_FENCE_RIGHTS = (
    " (the scheduler's Role needs get, create, delete and list on configmaps: see "
    "deploy/kubernetes/rbac-scheduler.yaml)"
)
_NEVER_STARTED = "never started: no pod of this try exists; fenced, so that none ever runs"


@dataclass
class _Pod:
    """A watched try and what is known of its pod."""

    try_id: int
    name: str
    log_path: Path
    raw: dict[str, Any] | None = None  # the latest pod object seen (API JSON)
    gone: bool = False  # deleted, or never found
    created: float = field(default_factory=time.monotonic)
    terminal_since: float | None = None
    cancelled: bool = False
    delete_grace: float | None = None  # a deletion to (re)send
    stop_by: float | None = None  # a cancelled pod still there then is stuck terminating
    stop_wait: float = 0.0  # the grace period and margin that stop_by allows
    known: bool = True  # False while the pod's name is not known (looked up by labels)
    outside: bool = False  # not under this instance's selector: read, not watched
    ref: TryRef | None = None  # what the store said of an adopted try
    failure: tuple[FailureReason, str] | None = None  # decided by reflow (never started)
    follower: _LogFollower | None = None
    last_lookup: float = 0.0
    fenced: bool = False  # its fence was laid (a try looked up by its labels)


def load_client(settings: KubernetesSettings) -> Any:
    """An ApiClient for the configured cluster: in-cluster, or a kubeconfig context."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError(
            "the kubernetes launcher needs the Kubernetes client: pip install 'reflow[kubernetes]'"
        ) from None
    configuration = client.Configuration()
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (
            settings.context or settings.kubeconfig
        )
    loader: Any = config
    try:
        if in_cluster:
            loader.load_incluster_config(client_configuration=configuration)
        else:
            loader.load_kube_config(
                config_file=str(settings.kubeconfig.expanduser()) if settings.kubeconfig else None,
                context=settings.context,
                client_configuration=configuration,
            )
    except (config.ConfigException, OSError, ValueError) as exc:
        where = "in-cluster" if in_cluster else f"context {settings.context or '(current)'}"
        raise ConfigError(f"kubernetes: cannot load the configuration ({where}): {exc}") from None
    configuration.retries = 0  # retried here, where it is known what is safe to repeat
    return client.ApiClient(configuration)


class KubernetesLauncher(Launcher):
    """Runs each try as a pod in ``settings.namespace``; see the module docstring."""

    name = "kubernetes"
    # Seconds a deleted pod may take beyond its grace period before the try is reported
    # ended anyway and the pod force-deleted (a lost node never confirms a deletion).
    terminating_margin = 15.0
    # Seconds a fence is kept: longer than any pause a scheduler may resume from.
    fence_keep = 24 * 3600.0

    def __init__(
        self,
        settings: KubernetesSettings,
        api_client: Any | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        from kubernetes import client

        self.settings = settings
        self.namespace = settings.namespace
        self._api_client = api_client or load_client(settings)
        # Any: requests pass plain manifests and read raw JSON (_preload_content=False).
        self.core: Any = client.CoreV1Api(self._api_client)
        self._clock = clock
        self._selector = selector(settings)
        self._tries: dict[int, _Pod] = {}
        # The latest object of every pod the watch saw, by try id: (pod, deleted, when).
        self._seen: dict[int, tuple[dict[str, Any], bool, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_sweep = 0.0
        # Finished pods the cleanup policy removes, by try id, deleted on release(): a
        # scheduler that dies before recording the outcome finds the pod again on adoption.
        self._unreleased: dict[int, str] = {}
        self._watcher = threading.Thread(target=self._watch, name="reflow-k8s-watch", daemon=True)
        self._watcher.start()

    # -- the interface ---------------------------------------------------------------------
    def start(self, spec: TrySpec) -> Handle:
        """Create the try's claims (when missing), its Secret (when it has secret env) and
        its pod. Raises TaskError when Kubernetes refuses them; transient API errors are
        retried a few times first. Raises Fenced when the try was fenced (see
        :meth:`adopt`), before or while its pod was created: no pod of it is left."""
        manifest = pod_manifest(spec, self.settings)
        name = manifest["metadata"]["name"]
        # A try fenced while its scheduler was paused is mostly fenced by now: nothing is
        # created for it. This only saves work; the check once the pod exists is the one
        # that makes the fence safe (see _check_fence_after_create).
        if self._fence_stands(spec.try_id):
            raise Fenced(_fenced_message(spec.try_id))
        for claim in claim_manifests(spec, self.settings):
            self._ensure_claim(claim)
        secret = secret_manifest(spec, self.settings)
        if secret is not None:
            self._create_secret(secret)
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            created = self._request(
                lambda: self.core.create_namespaced_pod(
                    self.namespace, manifest, _preload_content=False
                ),
            )
        except _ApiError as exc:
            if exc.status != 409:
                if secret is not None:
                    with contextlib.suppress(_ApiError):
                        self._delete_secret(name)
                raise TaskError(f"kubernetes refused pod {name}: {exc}") from None
            created = None
        if created is None:  # 409: ours if an earlier attempt of this very call got through
            created = self._read_pod(name)
            who = spec.labels
            mine = (who["pipeline"], who["run_id"], who["task"], str(who["try_number"]))
            if (
                created is None
                or _try_id(created) != spec.try_id
                or identity(created) != mine
                or (created["metadata"].get("labels") or {}).get(INSTANCE)
                != label_value(self.settings.instance)
            ):
                raise TaskError(f"kubernetes: pod {name} already exists and is not this try's")
        self._check_fence_after_create(spec.try_id, name, secret is not None)
        if secret is not None:
            self._own_secret(name, created)
        t = _Pod(spec.try_id, name, log_path, raw=created)
        _note(log_path, f"pod {self.namespace}/{name} created")
        self._register(t)
        self._follow(t)
        return Handle(spec.try_id, None, self._host(), external_id=f"{self.namespace}/{name}")

    def poll(self) -> list[Outcome]:
        """Outcomes of the tries whose pods ended, failed to start, or vanished."""
        self._wake.clear()
        self._forget_deleted()
        out: list[Outcome] = []
        for t in list(self._tries.values()):
            outcome = self._check(t)
            if outcome is not None:
                out.append(outcome)
                self._forget(t)
        return out

    def release(self, try_ids: Iterable[int]) -> None:
        """Delete the finished pods of these recorded tries that the cleanup policy
        removes. One that cannot be deleted now is left to the sweep."""
        for try_id in try_ids:
            name = self._unreleased.pop(try_id, None)
            if name is None:
                continue
            try:
                self._delete(name, None)
            except _ApiError as exc:
                log.warning("cannot delete finished pod %s: %s", name, exc)

    def cancel(self, try_id: int, grace: float) -> None:
        """Delete the try's pod with ``grace`` seconds to stop; the outcome follows, at the
        latest ``terminating_margin`` seconds after the grace period."""
        t = self._tries.get(try_id)
        if t is None or t.gone:
            return
        t.cancelled = True
        t.delete_grace = grace if t.delete_grace is None else min(t.delete_grace, grace)
        if t.known:
            self._send_delete(t)

    def adopt(self, ref: TryRef) -> bool:
        """Watch the pod of a try started by another scheduler; True if it still exists.

        The pod is found by name when the store has it, else by the try's labels; either
        way it must carry the try's id and the name reflow gives that try. A pod of this
        installation labelled with another ``instance`` (the setting changed) is
        relabelled, so the watch and the sweep see it. No pod: the try is lost.

        A try never recorded as started is fenced before its pod is looked up: its fence
        is created first, then its pods are listed by its labels. A pod found is adopted
        (the fence stays, harmless); none found, the try is reported lost, and a scheduler
        that starts it later deletes the pod it creates (see :meth:`start`)."""
        known = self._tries.get(ref.try_id)
        if known is not None:
            return not known.gone
        namespace, _, name = (ref.external_id or "").rpartition("/")
        t = _Pod(ref.try_id, name, Path(ref.log_path), ref=ref, known=bool(name))
        if name and namespace != self.namespace:
            t.gone = True
            t.failure = (FailureReason.LOST, f"pod {ref.external_id!r} is not in {self.namespace}")
            self._tries[t.try_id] = t
            return False
        t.last_lookup = time.monotonic()
        try:
            pod = self._find(t)
        except _ApiError as exc:  # looked up again by poll()
            log.warning("cannot look up the pod of try %s yet: %s", ref.try_id, exc)
            self._register(t)
            return True
        if pod is None:
            t.gone = True
            if not t.known:
                t.failure = (FailureReason.LOST, _NEVER_STARTED)
            self._register(t)
            return False
        self._take_over(t, pod)
        self._register(t)
        self._follow(t)
        return not t.gone

    def wait(self, timeout: float) -> None:
        if timeout > 0:
            self._wake.wait(timeout)

    def watched(self) -> set[int]:
        return set(self._tries)

    def sweep(self, live: Callable[[], set[int]]) -> int:
        """Delete reflow pods of this installation whose try is not live: running ones
        (orphans of a lost record) and finished ones the cleanup policy removes; and the
        Secrets of such tries that no pod owns; and fences older than ``fence_keep``."""
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self.settings.sweep_interval
        fences = self._sweep_fences()
        try:
            pods = self._list_pods()[0]
            secrets = self._list_secrets()
        except _ApiError as exc:
            log.warning("orphan sweep skipped: %s", exc)
            return fences
        alive = live() | set(self._tries)
        # Reported tries recorded by another scheduler (that adopted them) are its to release.
        for try_id in set(self._unreleased) - alive:
            del self._unreleased[try_id]
        return fences + self._sweep_pods(pods, alive) + self._sweep_secrets(secrets, alive)

    def _sweep_fences(self) -> int:
        """Delete this instance's fences older than ``fence_keep``: a scheduler paused
        longer than that is not expected to resume (its lease was taken long ago)."""
        try:
            body = self._request(
                lambda: self.core.list_namespaced_config_map(
                    self.namespace,
                    label_selector=fence_selector(self.settings),
                    _preload_content=False,
                )
            )
        except _ApiError as exc:
            log.warning("fence sweep skipped: %s", exc)
            return 0
        limit = self._clock() - timedelta(seconds=self.fence_keep)
        removed = 0
        for fence in body.get("items") or ():
            meta = fence.get("metadata") or {}
            try:
                created = datetime.fromisoformat(
                    str(meta.get("creationTimestamp")).replace("Z", "+00:00")
                )
            except ValueError:
                continue
            if created >= limit:
                continue
            with contextlib.suppress(_ApiError):
                self._delete_fence(meta["name"])
                removed += 1
        return removed

    def _sweep_pods(self, pods: list[dict[str, Any]], alive: set[int]) -> int:
        removed = 0
        for pod in pods:
            try_id = _try_id(pod)
            if try_id is None or try_id in alive:
                continue
            if deleting := pod["metadata"].get("deletionTimestamp"):
                removed += self._force_overdue(pod["metadata"]["name"], deleting)
                continue
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed") and not self._cleans(phase == "Succeeded"):
                continue
            name = pod["metadata"]["name"]
            log.warning("deleting pod %s: its try %s is not live", name, try_id)
            with contextlib.suppress(_ApiError):
                self._delete(name, None)
                removed += 1
        return removed

    def _force_overdue(self, name: str, deleting: str) -> int:
        """Force-delete a pod still terminating ``terminating_margin`` seconds past the
        end of its grace period (``deletionTimestamp``): its node is gone or wedged."""
        try:
            due = datetime.fromisoformat(deleting.replace("Z", "+00:00"))
        except ValueError:
            return 0
        if self._clock() < due + timedelta(seconds=self.terminating_margin):
            return 0
        log.warning("force-deleting pod %s: still terminating since %s", name, deleting)
        try:
            self._delete(name, 0)
        except _ApiError:
            return 0
        return 1

    def _sweep_secrets(self, secrets: list[dict[str, Any]], alive: set[int]) -> int:
        """Secrets that no pod owns (its creation or the owner's patch failed)."""
        removed = 0
        for secret in secrets:
            try_id = _try_id(secret)
            if try_id is None or try_id in alive or secret["metadata"].get("ownerReferences"):
                continue
            name = secret["metadata"]["name"]
            log.warning("deleting secret %s: its try %s is not live", name, try_id)
            with contextlib.suppress(_ApiError):
                self._delete_secret(name)
                removed += 1
        return removed

    def close(self) -> None:
        """Stop watching; the pods keep running for a later scheduler to adopt, and the
        finished ones not released stay for it to find."""
        self._stop.set()
        for t in self._tries.values():
            if t.follower is not None:
                t.follower.halt()
        self._tries.clear()
        self._wake.set()

    # -- deciding outcomes -------------------------------------------------------------------
    def _check(self, t: _Pod) -> Outcome | None:
        if t.delete_grace is not None and not t.gone and t.known:
            self._send_delete(t)
        if not t.gone and t.failure is None and (t.raw is None or t.outside):
            self._look_up(t)
            if t.raw is None and not t.gone and t.failure is None:
                return None
        if t.failure is not None:
            return self._outcome(t, None, *t.failure)
        status = (t.raw or {}).get("status") or {}
        phase = status.get("phase")
        container = _container_status(t.raw)
        terminated = (container.get("state") or {}).get("terminated")
        if t.gone or phase in ("Succeeded", "Failed"):
            if not t.gone and not self._log_done(t):
                return None
            if phase not in ("Succeeded", "Failed") and not terminated:
                if t.cancelled:
                    return self._outcome(t, None, FailureReason.ERROR, "pod deleted")
                return self._outcome(
                    t, None, FailureReason.LOST, f"pod {t.name} was deleted outside reflow"
                )
            outcome = self._finished(t, status, terminated or {})
            if not t.gone and self._cleans(outcome.ok):
                self._unreleased[t.try_id] = t.name
            return outcome
        if t.cancelled:
            if t.stop_by is not None and time.monotonic() > t.stop_by:
                return self._abandon(t)
            return None
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason, message = waiting.get("reason"), waiting.get("message") or ""
        if reason in _PULL_ERRORS:
            return self._give_up(t, FailureReason.IMAGE_PULL, f"{reason}: {message}".strip())
        if reason in _CONFIG_ERRORS:
            return self._give_up(t, FailureReason.CONFIG_ERROR, f"{reason}: {message}".strip())
        if phase == "Pending" and time.monotonic() - t.created > self.settings.startup_timeout:
            why = _unscheduled(status) or f"still pending ({reason or 'not started'})"
            return self._give_up(
                t,
                FailureReason.UNSCHEDULABLE,
                f"not started within {self.settings.startup_timeout:g}s: {why}",
            )
        return None

    def _finished(
        self, t: _Pod, status: Mapping[str, Any], terminated: Mapping[str, Any]
    ) -> Outcome:
        code = terminated.get("exitCode")
        why = status.get("reason")
        message = status.get("message") or terminated.get("message") or ""
        if why == "Evicted":
            return self._outcome(t, code, FailureReason.EVICTED, f"evicted: {message}".strip())
        if why == "DeadlineExceeded":
            return self._outcome(t, code, FailureReason.TIMED_OUT, "activeDeadlineSeconds exceeded")
        if terminated.get("reason") == "OOMKilled":
            # Also when the main process exits 0 (the pod "Succeeded") after the kernel
            # killed one of its children for memory: that try did not do its work.
            detail = "OOMKilled: the container hit its memory limit"
            if code == 0:
                detail += " (a process of it was killed; the main process exited 0)"
            return self._outcome(t, code, FailureReason.OOM_KILLED, detail)
        if status.get("phase") == "Succeeded" and code in (0, None):
            return self._outcome(t, 0, None, "")
        detail = f"exit code {code}" if code is not None else "pod failed"
        if terminated.get("reason") not in (None, "Error", "Completed"):
            detail += f" ({terminated['reason']})"
        if message:
            detail += f": {message}"
        return self._outcome(t, code, FailureReason.ERROR, detail)

    def _abandon(self, t: _Pod) -> Outcome:
        """A cancelled pod still there after its grace period and the margin (its node
        never confirms the deletion): force-deleted, left to the sweep if that fails too,
        and the try reported ended."""
        try:
            self._delete(t.name, 0)
        except _ApiError as exc:
            log.warning("cannot force-delete pod %s: %s", t.name, exc)
        return self._outcome(
            t,
            None,
            FailureReason.ERROR,
            f"pod still terminating {t.stop_wait:g}s after its deletion: force-deleted",
        )

    def _give_up(self, t: _Pod, reason: FailureReason, detail: str) -> Outcome:
        """A pod that cannot start: deleted, and the try fails with ``reason``."""
        with contextlib.suppress(_ApiError):
            self._delete(t.name, 0)
        return self._outcome(t, None, reason, detail)

    def _outcome(
        self, t: _Pod, code: int | None, reason: FailureReason | None, detail: str
    ) -> Outcome:
        if reason is not None and detail:
            _note(t.log_path, f"pod {t.name or '(none)'}: {reason.value}: {detail}")
        return Outcome(t.try_id, code, reason, self._clock(), detail)

    def _cleans(self, succeeded: bool) -> bool:
        policy = self.settings.cleanup
        return policy == "always" or (policy == "on_success" and succeeded)

    def _log_done(self, t: _Pod) -> bool:
        """Has the log of a finished pod been written (or waited for long enough)?"""
        if t.terminal_since is None:
            t.terminal_since = time.monotonic()
        follower = t.follower
        if follower is None or not follower.is_alive():
            return True
        follower.nudge.set()
        return time.monotonic() - t.terminal_since > _LOG_GRACE

    # -- pods -------------------------------------------------------------------------------
    def _register(self, t: _Pod) -> None:
        """Watch ``t``, with what the watch already saw of its pod."""
        with self._lock:
            seen = self._seen.get(t.try_id)
            if t.known and seen is not None and seen[0]["metadata"].get("name") == t.name:
                t.raw = seen[0] if seen[1] else _newer(t.raw, seen[0])
                t.gone = t.gone or seen[1]
            self._tries[t.try_id] = t

    def _follow(self, t: _Pod) -> None:
        """Follow the log of ``t``'s pod; an adopted try's after what was written of it."""
        resume_after = _read_position(t.log_path) if t.ref is not None else None
        t.follower = _LogFollower(self, t, resume_after)
        t.follower.start()

    def _find(self, t: _Pod) -> dict[str, Any] | None:
        """The pod of an adopted try, read by name, or listed by the try's labels when
        the name is not known; None when there is no such pod."""
        if t.known:
            pod = self._read_pod(t.name)
            if pod is not None and not self._is_this_try(pod, t):
                t.failure = (FailureReason.LOST, f"pod {t.name} now runs another try")
                return None
            return pod
        if not t.fenced:  # first: see _check_fence_after_create
            self._lay_fence(t.try_id)
            t.fenced = True
        # Not from a cache: a list without resourceVersion reads the latest state.
        body = self._request(
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=try_selector(t.try_id), _preload_content=False
            )
        )
        found = [pod for pod in body.get("items") or () if self._is_this_try(pod, t)]
        if not found:
            return None
        found.sort(key=lambda pod: bool(pod["metadata"].get("deletionTimestamp")))
        first: dict[str, Any] = found[0]
        t.name, t.known = first["metadata"]["name"], True
        return first

    def _is_this_try(self, pod: Mapping[str, Any], t: _Pod) -> bool:
        """Does ``pod`` run ``t``? It carries the try's id and the name reflow gives the
        try it runs; one labelled with another instance must also name the try's
        pipeline, run, task and try number as the try's log path does, or it may be
        another installation's (whose database has a try of that id too)."""
        meta = pod.get("metadata") or {}
        if _try_id(pod) != t.try_id or meta.get("name") != name_of_try(pod):
            return False
        if (meta.get("labels") or {}).get(INSTANCE) == label_value(self.settings.instance):
            return True
        who = identity(pod)
        if who is None:
            return False
        pipeline, run_id, task, number = who
        tail = "/".join((pipeline, run_id, task, f"try-{number}.log"))
        return t.log_path.as_posix().endswith("/" + tail)

    def _take_over(self, t: _Pod, pod: dict[str, Any]) -> None:
        """Watch ``pod`` for ``t``: relabelled first when another instance made it, so
        that this one's watch and sweep see it; read by name when that fails."""
        ours = label_value(self.settings.instance)
        if (pod["metadata"].get("labels") or {}).get(INSTANCE) != ours and not t.outside:
            patch = {"metadata": {"labels": {INSTANCE: ours}}}
            try:
                pod = self._request(
                    lambda: self.core.patch_namespaced_pod(
                        t.name, self.namespace, patch, _preload_content=False
                    )
                )
                log.info("pod %s of try %s taken over by instance %s", t.name, t.try_id, ours)
            except _ApiError as exc:
                if exc.status == 404:
                    with self._lock:
                        t.gone = True
                    return
                log.warning(
                    "cannot relabel pod %s for instance %s (%s): it is read every %gs instead",
                    t.name,
                    ours,
                    exc,
                    _LOOKUP_EVERY,
                )
                t.outside = True
        with self._lock:
            t.raw = _newer(t.raw, pod)

    def _forget_deleted(self) -> None:
        """Drop deleted pods the watch saw a while ago (live ones go at the next list)."""
        limit = time.monotonic() - 60
        with self._lock:
            old = [i for i, (_, deleted, at) in self._seen.items() if deleted and at < limit]
            for try_id in old:
                del self._seen[try_id]

    def _forget(self, t: _Pod) -> None:
        with self._lock:
            self._tries.pop(t.try_id, None)
        if t.follower is not None:
            t.follower.halt()
        with contextlib.suppress(OSError):
            _position_file(t.log_path).unlink()

    def _look_up(self, t: _Pod) -> None:
        """Read the pod of a try the watch cannot tell about (yet): an adopted one whose
        first look-up failed, or one outside this instance's selector."""
        if time.monotonic() - t.last_lookup < _LOOKUP_EVERY:
            return
        t.last_lookup = time.monotonic()
        try:
            pod = self._find(t)
        except _ApiError:
            return
        if pod is None:
            with self._lock:
                t.gone = True
            if not t.known:
                t.failure = (FailureReason.LOST, _NEVER_STARTED)
            return
        self._take_over(t, pod)
        if t.follower is None:
            self._follow(t)

    def _send_delete(self, t: _Pod) -> None:
        grace = t.delete_grace
        try:
            self._delete(t.name, grace)
        except _ApiError as exc:  # sent again on the next poll
            log.warning("cannot delete pod %s yet: %s", t.name, exc)
            return
        t.delete_grace = None
        # From now on the pod has its grace period and the margin to go.
        wait = max(0.0, grace or 0.0) + self.terminating_margin
        if t.stop_by is None or time.monotonic() + wait < t.stop_by:
            t.stop_by, t.stop_wait = time.monotonic() + wait, wait

    def _delete(self, name: str, grace: float | None) -> None:
        seconds = None if grace is None else max(0, round(grace))
        try:
            self._request(
                lambda: self.core.delete_namespaced_pod(
                    name,
                    self.namespace,
                    grace_period_seconds=seconds,
                    _preload_content=False,
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise

    def _read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = self._request(
                lambda: self.core.read_namespaced_pod(name, self.namespace, _preload_content=False)
            )
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return pod

    def _list_pods(self) -> tuple[list[dict[str, Any]], str]:
        body = self._request(
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=self._selector, _preload_content=False
            )
        )
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    def _list_secrets(self) -> list[dict[str, Any]]:
        body = self._request(
            lambda: self.core.list_namespaced_secret(
                self.namespace, label_selector=self._selector, _preload_content=False
            )
        )
        return list(body.get("items") or [])

    def _ensure_claim(self, claim: dict[str, Any]) -> None:
        name = claim["metadata"]["name"]
        try:
            self._request(
                lambda: self.core.create_namespaced_persistent_volume_claim(
                    self.namespace, claim, _preload_content=False
                )
            )
            log.info("created claim %s", name)
        except _ApiError as exc:
            if exc.status != 409:  # it exists already: the point of a per-date claim
                raise TaskError(f"kubernetes refused claim {name}: {exc}") from None

    def _create_secret(self, secret: dict[str, Any]) -> None:
        name = secret["metadata"]["name"]
        try:
            self._request(
                lambda: self.core.create_namespaced_secret(
                    self.namespace, secret, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 409:
                raise TaskError(f"kubernetes refused secret {name}: {exc}") from None
            # Left by an earlier attempt of this very call: the values are the same.
            self._request(
                lambda: self.core.replace_namespaced_secret(
                    name, self.namespace, secret, _preload_content=False
                )
            )

    def _delete_secret(self, name: str) -> None:
        try:
            self._request(
                lambda: self.core.delete_namespaced_secret(
                    name, self.namespace, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise

    # -- fences ------------------------------------------------------------------------------
    def _lay_fence(self, try_id: int) -> None:
        """Create the try's fence; one that exists already (409) is as good."""
        fence = fence_manifest(try_id, self.settings)
        try:
            self._request(
                lambda: self.core.create_namespaced_config_map(
                    self.namespace, fence, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 409:
                log.warning(
                    "cannot fence try %s (config map %s): %s; it is looked up again later",
                    try_id,
                    fence["metadata"]["name"],
                    exc,
                )
                raise
        log.info("try %s, never recorded as started, is fenced", try_id)

    def _fence_stands(self, try_id: int) -> bool:
        """Is the try fenced? A GET by name: the API server's latest state, not a cache."""
        name = fence_name(try_id, self.settings)
        try:
            self._request(
                lambda: self.core.read_namespaced_config_map(
                    name, self.namespace, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status == 404:
                return False
            hint = _FENCE_RIGHTS if exc.status == 403 else ""
            raise TaskError(
                f"kubernetes: cannot read the fence {name} of try {try_id}: {exc}{hint}"
            ) from None
        return True

    def _check_fence_after_create(self, try_id: int, name: str, secret: bool) -> None:
        """Delete the pod just created, and raise Fenced, if the try is fenced now.

        The API server orders every write and un-cached read. The adopter creates the fence,
        then lists the try's pods; this created the pod, and reads the fence now:
        - pod created before the adopter's list: the list finds it, and the try is adopted;
        - pod created after it: so was this read, which comes after the fence's creation
          and finds it; the pod goes before the try is reported started anywhere.
        Both can hold at once (pod before the list, fence before this read): the adopter
        then sees its pod deleted and reports the try lost. No interleaving leaves a pod
        that its try's owner does not know of. The check before the create cannot give
        this: a fence may come right after it."""
        try:
            fenced = self._fence_stands(try_id)
        except TaskError as exc:  # unknown: the pod may not stay
            self._withdraw(name, secret)
            raise TaskError(f"{exc}; pod {name} deleted") from None
        if fenced:
            self._withdraw(name, secret)
            raise Fenced(f"{_fenced_message(try_id)}; its pod {name}, just created, was deleted")

    def _withdraw(self, name: str, secret: bool) -> None:
        """Delete a pod that must not run, at once, and its Secret (not owned by it yet).
        What cannot be deleted now is the sweep's: its try is not live."""
        try:
            self._delete(name, 0)
        except _ApiError as exc:
            log.warning("cannot delete pod %s of a fenced try: %s", name, exc)
        if secret:
            with contextlib.suppress(_ApiError):
                self._delete_secret(name)

    def _delete_fence(self, name: str) -> None:
        try:
            self._request(
                lambda: self.core.delete_namespaced_config_map(
                    name, self.namespace, _preload_content=False
                )
            )
        except _ApiError as exc:
            if exc.status != 404:
                raise

    def _own_secret(self, name: str, pod: Mapping[str, Any]) -> None:
        """Make the pod the owner of its Secret: Kubernetes deletes the Secret with it.
        When that fails the sweep deletes the Secret after the try."""
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
        try:
            self._request(
                lambda: self.core.patch_namespaced_secret(
                    name,
                    self.namespace,
                    {"metadata": {"ownerReferences": [owner]}},
                    _preload_content=False,
                )
            )
        except _ApiError as exc:
            log.warning("cannot make pod %s the owner of its secret: %s", name, exc)

    def _request(self, call: Callable[[], Any], attempts: int = 4) -> Any:
        """One API call returning JSON; transient failures (connection loss, 429, 5xx)
        are retried with backoff, anything else raises _ApiError at once."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delay = 0.2
        for attempt in range(attempts):
            try:
                response = call()
                data = response.data
                return json.loads(data) if data else {}
            except ApiException as exc:
                error = _ApiError.of(exc)
                if exc.status not in _TRANSIENT or attempt == attempts - 1:
                    raise error from None
            except (HTTPError, OSError) as exc:
                if attempt == attempts - 1:
                    raise _ApiError(0, f"cannot reach the API server: {exc}") from None
            time.sleep(delay)
            delay *= 2.5
        raise AssertionError("unreachable")

    def _host(self) -> str:
        return self.settings.context or "kubernetes"

    # -- the watch thread ---------------------------------------------------------------------
    def _watch(self) -> None:
        """Keep the latest object of every watched try's pod, from a list then a watch;
        a 410 (history expired) or a lost connection starts again from a fresh list."""
        from kubernetes import watch as watch_module

        watch: Any = watch_module

        backoff = 0.5
        while not self._stop.is_set():
            try:
                pods, version = self._list_pods()
                self._take_list(pods, version)
                stream: Any = watch.Watch()
                for event in stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self._selector,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5, _WATCH_SECONDS + 10),
                ):
                    if self._stop.is_set():
                        stream.stop()
                        break
                    backoff = 0.5
                    self._take_event(event["type"], event.get("raw_object") or {})
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.debug("pod watch restarts after: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _take_list(self, pods: list[dict[str, Any]], version: str) -> None:
        by_id = {i: pod for pod in pods if (i := _try_id(pod)) is not None}
        with self._lock:
            self._seen = {i: (pod, False, time.monotonic()) for i, pod in by_id.items()}
            for try_id, t in self._tries.items():
                if not t.known or t.outside:
                    continue
                pod = by_id.get(try_id)
                if pod is not None and pod["metadata"].get("name") == t.name:
                    t.raw = _newer(t.raw, pod)
                elif t.raw is not None and not _newer_than(t.raw, version):
                    t.gone = True  # it was seen, and is gone now
        self._wake.set()

    def _take_event(self, kind: str, pod: dict[str, Any]) -> None:
        try_id = _try_id(pod)
        if try_id is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        deleted = kind == "DELETED"
        with self._lock:
            # Kept for a try registered just after this event (its pod was created by
            # this scheduler and the watch was quicker than the create's answer).
            self._seen[try_id] = (pod, deleted, time.monotonic())
            t = self._tries.get(try_id)
            if t is None or not t.known or pod.get("metadata", {}).get("name") != t.name:
                return
            t.raw = _newer(t.raw, pod) if not deleted else pod
            t.gone = t.gone or deleted
        if t.follower is not None:
            t.follower.nudge.set()
        self._wake.set()

    def _container_state(self, t: _Pod) -> str:
        """``waiting``, ``running``, ``terminated`` or ``gone``, for the log follower."""
        with self._lock:
            raw, gone = t.raw, t.gone
        if gone:
            return "gone"
        state = _container_status(raw).get("state") or {}
        if "terminated" in state:
            return "terminated"
        if "running" in state:
            return "running"
        return "waiting"


class _LogFollower(threading.Thread):
    """Appends the container's log to the try's log file while the pod runs. Each line is
    asked for with its timestamp, so a broken stream (or a new scheduler) resumes after
    the last line written, with nothing lost or repeated: the position is the last
    timestamp and how many lines carried it."""

    def __init__(
        self, launcher: KubernetesLauncher, t: _Pod, resume_after: tuple[str, int] | None
    ) -> None:
        super().__init__(name=f"reflow-k8s-log-{t.try_id}", daemon=True)
        self.launcher = launcher
        self.t = t
        self.last: str | None = resume_after[0] if resume_after else None
        self.count = resume_after[1] if resume_after else 0
        self.stop = threading.Event()
        self._writing = threading.Lock()
        self.nudge = threading.Event()
        self._partial = b""
        self._resume: tuple[str | None, int] = (None, 0)
        self._seen_at_resume = 0

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        launcher = self.launcher
        while not self.stop.is_set():
            state = launcher._container_state(self.t)
            if state == "gone":
                break
            if state == "waiting":
                self.nudge.wait(0.5)
                self.nudge.clear()
                continue
            # Each stream starts at the beginning: lines up to the position are skipped.
            self._resume, self._seen_at_resume, self._partial = (self.last, self.count), 0, b""
            try:
                response = launcher.core.read_namespaced_pod_log(
                    self.t.name,
                    launcher.namespace,
                    container=CONTAINER,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                    _request_timeout=(5, 300),
                )
                try:
                    for chunk in response.stream(65536):
                        self._feed(chunk)
                        if self.stop.is_set():
                            break
                finally:
                    response.release_conn()
                self._flush_partial()
            except ApiException as exc:
                if exc.status == 404:
                    break
            except (HTTPError, OSError):
                pass
            if state == "terminated":  # began after the end: it had everything
                break
            # The stream ended: the container did (the watch says so at once), or the
            # connection broke (streamed again, after a pause).
            self.nudge.wait(0.2)
            self.nudge.clear()
        launcher._wake.set()

    def _feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        self._write(lines)

    def _flush_partial(self) -> None:
        if self._partial:
            lines, self._partial = [self._partial], b""
            self._write(lines)

    def halt(self) -> None:
        """Stop; once this returns the follower writes nothing more, so that whoever
        follows the pod next (a new scheduler) resumes from what it wrote."""
        with self._writing:
            self.stop.set()

    def _write(self, lines: list[bytes]) -> None:
        with self._writing:
            if not self.stop.is_set():
                self._write_locked(lines)

    def _write_locked(self, lines: list[bytes]) -> None:
        out = []
        resume_key, resume_count = self._resume
        for line in lines:
            stamp, _, text = line.partition(b" ")
            key = _stamp_key(stamp.decode("ascii", "replace"))
            if resume_key is not None:
                if key < resume_key:
                    continue
                if key == resume_key:
                    self._seen_at_resume += 1
                    if self._seen_at_resume <= resume_count:
                        continue
            if key == self.last:
                self.count += 1
            else:
                self.last, self.count = key, 1
            out.append(text + b"\n")
        if not out:
            return
        with self.t.log_path.open("ab") as fh:
            fh.writelines(out)
        with contextlib.suppress(OSError):
            _position_file(self.t.log_path).write_text(f"{self.last} {self.count}")


class _ApiError(TaskError):
    """A Kubernetes API failure, with its status (0: no answer) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def of(cls, exc: Any) -> _ApiError:
        message = str(exc.reason or "")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(exc.body).get("message") or message
        return cls(int(exc.status or 0), f"{exc.status} {message}".strip())


# -- helpers -------------------------------------------------------------------------------------
def _fenced_message(try_id: int) -> str:
    return f"try {try_id} was declared lost by another scheduler (and retried): it must not start"


def _try_id(pod: Mapping[str, Any] | None) -> int | None:
    value = ((pod or {}).get("metadata") or {}).get("labels", {}).get(TRY_ID)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _newer_than(pod: Mapping[str, Any], version: str) -> bool:
    """Is ``pod`` a later version than a list at ``version`` (the list predates it)?"""
    try:
        return int(pod["metadata"]["resourceVersion"]) > int(version)
    except (KeyError, TypeError, ValueError):
        return False


def _newer(mine: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    """The later of two versions of one pod (resource versions compare as integers on
    every API server in use; when they do not, the one just received wins)."""
    if mine is None:
        return other
    try:
        a = int(mine["metadata"]["resourceVersion"])
        b = int(other["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return other
    return mine if a > b else other


def _container_status(pod: Mapping[str, Any] | None) -> dict[str, Any]:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def _unscheduled(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "unschedulable")
    return ""


def _stamp_key(stamp: str) -> str:
    """An RFC 3339 timestamp that sorts as text: the fraction padded to nanoseconds."""
    main, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{main}.{rest.ljust(9, '0')}" if dot else f"{main}.000000000"


def _position_file(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".k8s-position")


def _read_position(log_path: Path) -> tuple[str, int] | None:
    """Where an earlier scheduler's follower stopped: (timestamp key, lines at it)."""
    try:
        key, _, count = _position_file(log_path).read_text().strip().partition(" ")
        return (key, int(count or 1)) if key else None
    except (OSError, ValueError):
        return None


def _note(log_path: Path, message: str) -> None:
    """A line of reflow's own in the try's log."""
    with contextlib.suppress(OSError), log_path.open("a") as fh:
        fh.write(f"reflow: {message}\n")
