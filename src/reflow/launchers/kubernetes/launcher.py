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
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reflow.core import trylines
from reflow.core.config import KubernetesSettings
from reflow.core.cost import Held
from reflow.core.errors import Fenced, TaskError
from reflow.core.pod import label_value
from reflow.core.spec import Handle, Outcome, TryRef, TrySpec
from reflow.core.states import FailureReason
from reflow.launchers.base import Launcher
from reflow.launchers.kubernetes import usage
from reflow.launchers.kubernetes.api import NamespaceApi, _ApiError, load_client, server_version
from reflow.launchers.kubernetes.fences import (
    _fenced_message,
    check_fence_after_create,
    fence_stands,
    lay_fence,
    sweep_fences,
)
from reflow.launchers.kubernetes.follower import _LogFollower, _position_file, _read_position
from reflow.launchers.kubernetes.manifest import (
    INSTANCE,
    claim_manifests,
    identity,
    name_of_try,
    pod_manifest,
    secret_manifest,
    selector,
    try_selector,
)
from reflow.launchers.kubernetes.outcomes import (
    _NEVER_STARTED,
    _container_started,
    _container_status,
    deleted,
    finished,
    not_starting,
)
from reflow.launchers.kubernetes.watch import PodWatch, _newer, _Pod, _try_id

__all__ = ["KubernetesLauncher", "load_client"]

log = logging.getLogger("reflow.kubernetes")

# scratch() is a generic ephemeral volume: beta (on by default) from Kubernetes 1.21.
MINIMUM_FOR_SCRATCH = (1, 21)
_SCRATCH_NEEDS = (
    "generic ephemeral volumes: Kubernetes 1.21 or newer (on 1.20, every component "
    "started with --feature-gates=GenericEphemeralVolume=true)"
)

# How long a finished pod's log may take to arrive before the outcome is reported anyway.
_LOG_GRACE = 10.0
# How often a pod that the watch does not see (outside this instance's selector) is read.
_LOOKUP_EVERY = 2.0


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
        self._api = NamespaceApi(self.core, self.namespace, self._selector)
        self._tries: dict[int, _Pod] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_sweep = 0.0
        # Finished pods the cleanup policy removes, by try id, deleted on release(): a
        # scheduler that dies before recording the outcome finds the pod again on adoption.
        self._unreleased: dict[int, str] = {}
        self.server = server_version(self._api_client)
        if self.server is not None and self.server < MINIMUM_FOR_SCRATCH:
            log.warning(
                "kubernetes: the API server is %d.%d; scratch() needs %s",
                *self.server,
                _SCRATCH_NEEDS,
            )
        self._watch = PodWatch(self._api, self._tries, self._lock, self._wake, self._stop)
        self._watcher = threading.Thread(
            target=self._watch.run, name="reflow-k8s-watch", daemon=True
        )
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
        # that makes the fence safe (see check_fence_after_create).
        if fence_stands(self._api, self.settings, spec.try_id):
            raise Fenced(_fenced_message(spec.try_id))
        for claim in claim_manifests(spec, self.settings):
            self._api.ensure_claim(claim)
        secret = secret_manifest(spec, self.settings)
        if secret is not None:
            self._api.create_secret(secret)
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            created = self._api.create_pod(manifest)
        except _ApiError as exc:
            if exc.status != 409:
                if secret is not None:
                    with contextlib.suppress(_ApiError):
                        self._api.delete_secret(name)
                raise TaskError(
                    f"kubernetes refused pod {name}: {self._why(manifest, exc)}"
                ) from None
            created = None
        if created is None:  # 409: ours if an earlier attempt of this very call got through
            created = self._api.read_pod(name)
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
        check_fence_after_create(self._api, self.settings, spec.try_id, name, secret is not None)
        if secret is not None:
            self._api.own_secret(name, created)
        t = _Pod(spec.try_id, name, log_path, raw=created)
        _note(log_path, f"pod {self.namespace}/{name} created")
        self._watch.register(t)
        self._follow(t)
        return Handle(spec.try_id, None, self._host(), external_id=f"{self.namespace}/{name}")

    def _why(self, manifest: dict[str, Any], exc: _ApiError) -> str:
        """The server's refusal, and the likely cause when the server is too old for what
        the pod asks."""
        ephemeral = any("ephemeral" in v for v in manifest["spec"].get("volumes") or [])
        if ephemeral and self.server is not None and self.server < MINIMUM_FOR_SCRATCH:
            major, minor = self.server
            return f"scratch() needs {_SCRATCH_NEEDS}; the server is {major}.{minor} ({exc})"
        return str(exc)

    def running_since(self, try_id: int) -> datetime | None:
        """The container's own start (``startedAt``), as the watch last saw the pod; now
        while it has not started (scheduling, image pull: startup_timeout governs that)."""
        with self._lock:
            t = self._tries.get(try_id)
            raw = t.raw if t is not None else None
        if raw is None:
            return None
        started = _container_started(raw)
        if started is not None:
            return started
        state = _container_status(raw).get("state") or {}
        if "waiting" in state or not state:
            return self._clock()
        return None

    def poll(self) -> list[Outcome]:
        """Outcomes of the tries whose pods ended, failed to start, or vanished."""
        self._wake.clear()
        self._watch.forget_deleted()
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
                self._api.delete_pod(name, None)
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
            self._watch.register(t)
            return True
        if pod is None:
            t.gone = True
            if not t.known:
                t.failure = (FailureReason.LOST, _NEVER_STARTED)
            self._watch.register(t)
            return False
        self._take_over(t, pod)
        self._watch.register(t)
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
        fences = sweep_fences(self._api, self.settings, self._clock, self.fence_keep)
        try:
            pods = self._api.list_pods()[0]
            secrets = self._api.list_secrets()
        except _ApiError as exc:
            log.warning("orphan sweep skipped: %s", exc)
            return fences
        alive = live() | set(self._tries)
        # Reported tries recorded by another scheduler (that adopted them) are its to release.
        for try_id in set(self._unreleased) - alive:
            del self._unreleased[try_id]
        return fences + self._sweep_pods(pods, alive) + self._sweep_secrets(secrets, alive)

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
                self._api.delete_pod(name, None)
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
            self._api.delete_pod(name, 0)
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
                self._api.delete_secret(name)
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
                return self._outcome(t, None, *deleted(t.name, t.cancelled))
            outcome = self._outcome(t, *finished(status, terminated or {}))
            if not t.gone and self._cleans(outcome.ok):
                self._unreleased[t.try_id] = t.name
            return outcome
        if t.cancelled:
            if t.stop_by is not None and time.monotonic() > t.stop_by:
                return self._abandon(t)
            return None
        pending_for = time.monotonic() - t.created
        stuck = not_starting(status, container, pending_for, self.settings.startup_timeout)
        if stuck is not None:
            return self._give_up(t, *stuck)
        return None

    def _abandon(self, t: _Pod) -> Outcome:
        """A cancelled pod still there after its grace period and the margin (its node
        never confirms the deletion): force-deleted, left to the sweep if that fails too,
        and the try reported ended."""
        try:
            self._api.delete_pod(t.name, 0)
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
            self._api.delete_pod(t.name, 0)
        return self._outcome(t, None, reason, detail)

    def _outcome(
        self, t: _Pod, code: int | None, reason: FailureReason | None, detail: str
    ) -> Outcome:
        if detail:
            what = reason.value if reason is not None else "succeeded"
            _note(t.log_path, f"pod {t.name or '(none)'}: {what}: {detail}")
        started = _container_started(t.raw) if t.raw is not None else None
        now = self._clock()
        # What the pod held (a try whose pod was never seen held nothing that is known).
        # Accounting never stands in the way of an outcome: a pod it cannot read is left out.
        pods: tuple[Held, ...] = ()
        if t.raw is not None:
            try:
                pods = (usage.held(t.raw, now),)
            except Exception as exc:
                log.warning("pod %s: what it held is not recorded: %s", t.name, exc)
        return Outcome(t.try_id, code, reason, now, detail, started, held=pods)

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
    def _follow(self, t: _Pod) -> None:
        """Follow the log of ``t``'s pod; an adopted try's after what was written of it."""
        resume_after = _read_position(t.log_path) if t.ref is not None else None
        t.follower = _LogFollower(
            self._api,
            t.try_id,
            t.name,
            t.log_path,
            lambda: self._watch.container_state(t),
            self._wake,
            resume_after,
        )
        t.follower.start()

    def _find(self, t: _Pod) -> dict[str, Any] | None:
        """The pod of an adopted try, read by name, or listed by the try's labels when
        the name is not known; None when there is no such pod."""
        if t.known:
            pod = self._api.read_pod(t.name)
            if pod is not None and not self._is_this_try(pod, t):
                t.failure = (FailureReason.LOST, f"pod {t.name} now runs another try")
                return None
            return pod
        if not t.fenced:  # first: see check_fence_after_create
            lay_fence(self._api, self.settings, t.try_id)
            t.fenced = True
        # Not from a cache: a list without resourceVersion reads the latest state.
        pods = self._api.pods_labelled(try_selector(t.try_id))
        found = [pod for pod in pods if self._is_this_try(pod, t)]
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
                pod = self._api.patch_pod(t.name, patch)
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
            self._api.delete_pod(t.name, grace)
        except _ApiError as exc:  # sent again on the next poll
            log.warning("cannot delete pod %s yet: %s", t.name, exc)
            return
        t.delete_grace = None
        # From now on the pod has its grace period and the margin to go.
        wait = max(0.0, grace or 0.0) + self.terminating_margin
        if t.stop_by is None or time.monotonic() + wait < t.stop_by:
            t.stop_by, t.stop_wait = time.monotonic() + wait, wait

    def _host(self) -> str:
        return self.settings.context or "kubernetes"


def _note(log_path: Path, message: str) -> None:
    """A line of reflow's own in the try's log (see ``core.trylines``)."""
    with contextlib.suppress(OSError):
        trylines.write(log_path, trylines.stamped(datetime.now(UTC), [message]))
