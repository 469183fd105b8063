"""The pod (and claims) of one try, as plain Kubernetes manifests.

Pure functions of a rendered :class:`TrySpec` and the launcher's settings: what
``reflow k8s render`` prints is exactly what the launcher creates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from reflow.core.config import KubernetesSettings
from reflow.core.errors import PipelineError, TaskError
from reflow.core.pod import (
    check_label,
    check_quantity,
    check_requests_within_limits,
    deep_merge,
    dns_label,
    is_dns_subdomain,
    label_value,
)
from reflow.core.spec import TrySpec

CONTAINER = "main"
SCRATCH_VOLUME = "reflow-scratch"
MANAGED_BY = "app.kubernetes.io/managed-by"
INSTANCE = "reflow.io/instance"
TRY_ID = "reflow.io/try-id"
# Marks the ConfigMap that fences a try (see fence_manifest).
FENCE = "reflow.io/fence"
# The try's identity, verbatim (labels hold sanitized values).
PIPELINE_NOTE = "reflow.io/pipeline"
RUN_ID_NOTE = "reflow.io/run-id"
TASK_NOTE = "reflow.io/task"
TRY_NUMBER_NOTE = "reflow.io/try-number"
# The pod's own coordinates, from the downward API: SparkSubmit's client mode needs them.
DOWNWARD = {
    "REFLOW_POD_NAME": "metadata.name",
    "REFLOW_POD_NAMESPACE": "metadata.namespace",
    "REFLOW_POD_IP": "status.podIP",
}


# Seconds between the moment reflow has stopped a timed-out pod (timeout + grace) and the
# moment the server's own activeDeadlineSeconds backstop would.
BACKSTOP_MARGIN = 30.0


def selector(settings: KubernetesSettings) -> str:
    """The label selector of every pod this reflow installation creates."""
    return f"{MANAGED_BY}=reflow,{INSTANCE}={label_value(settings.instance)}"


def try_selector(try_id: int) -> str:
    """The label selector of a try's pod, whichever installation instance created it."""
    return f"{MANAGED_BY}=reflow,{TRY_ID}={try_id}"


def fence_selector(settings: KubernetesSettings) -> str:
    """The label selector of the fences this installation lays."""
    return f"{selector(settings)},{FENCE}"


def fence_name(try_id: int, settings: KubernetesSettings) -> str:
    """The name of the ConfigMap that fences a try of this installation. Both the scheduler
    that fences the try and the one that starts it know the try's id and the instance, not
    always its pod's name (a try never recorded as started has none in the store); the
    instance goes in as a hash, so that any value of it gives a valid, distinct name."""
    digest = hashlib.sha256(label_value(settings.instance).encode()).hexdigest()[:10]
    return f"reflow-fence-{try_id}-{digest}"


def fence_manifest(try_id: int, settings: KubernetesSettings) -> dict[str, Any]:
    """The ConfigMap whose existence fences a try: a scheduler that declares lost a try
    never recorded as started creates it first, and a pod of that try must never run."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": fence_name(try_id, settings),
            "namespace": settings.namespace,
            "labels": {
                MANAGED_BY: "reflow",
                INSTANCE: label_value(settings.instance),
                TRY_ID: str(try_id),
                FENCE: "true",
            },
        },
        "data": {
            "reason": (
                f"try {try_id} was declared lost by another scheduler before it was recorded "
                "as started: no pod of it may run"
            )
        },
    }


def pod_name(spec: TrySpec) -> str:
    """A DNS label naming the try: readable, and unique through the try's id."""
    who = spec.labels
    return _name(
        who["pipeline"], who["task"], spec.env.get("REFLOW_DS"), who["try_number"], spec.try_id
    )


def _name(pipeline: Any, task: Any, ds: Any, try_number: Any, try_id: Any) -> str:
    day = str(ds or "").replace("-", "")
    return dns_label(f"{pipeline}-{task}-{day}-{try_number}-{try_id}")


def name_of_try(pod: Mapping[str, Any]) -> str | None:
    """The name reflow gives the pod of the try that ``pod`` says it runs (its try-id
    label, identity annotations and ``REFLOW_DS``), or None when it does not say."""
    meta = pod.get("metadata") or {}
    notes = meta.get("annotations") or {}
    try_id = (meta.get("labels") or {}).get(TRY_ID)
    parts = [notes.get(k) for k in (PIPELINE_NOTE, TASK_NOTE, TRY_NUMBER_NOTE)]
    if try_id is None or None in parts:
        return None
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    main = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    env = {e.get("name"): e.get("value") for e in main.get("env") or ()}
    ds = str(env.get("REFLOW_DS") or "").replace("$$", "$")
    return _name(parts[0], parts[1], ds, parts[2], try_id)


def identity(pod: Mapping[str, Any]) -> tuple[str, str, str, str] | None:
    """(pipeline, run id, task, try number) of the try that ``pod`` runs, verbatim."""
    notes = (pod.get("metadata") or {}).get("annotations") or {}
    found = tuple(notes.get(k) for k in (PIPELINE_NOTE, RUN_ID_NOTE, TASK_NOTE, TRY_NUMBER_NOTE))
    return None if None in found else (str(found[0]), str(found[1]), str(found[2]), str(found[3]))


def reflow_labels(spec: TrySpec, settings: KubernetesSettings) -> dict[str, str]:
    who = spec.labels
    return {
        MANAGED_BY: "reflow",
        INSTANCE: label_value(settings.instance),
        "reflow.io/pipeline": label_value(who["pipeline"]),
        "reflow.io/run": label_value(who["run_id"]),
        "reflow.io/task": label_value(who["task"]),
        "reflow.io/try": label_value(who["try_number"]),
        TRY_ID: str(spec.try_id),
    }


def _identity_notes(spec: TrySpec) -> dict[str, str]:
    who = spec.labels
    return {
        PIPELINE_NOTE: who["pipeline"],
        RUN_ID_NOTE: who["run_id"],
        TASK_NOTE: who["task"],
        TRY_NUMBER_NOTE: who["try_number"],
    }


def pod_manifest(spec: TrySpec, settings: KubernetesSettings) -> dict[str, Any]:
    """The pod of ``spec``. Raises TaskError when a rendered option is not valid."""
    options: Mapping[str, Any] = spec.pod or {}
    image = options.get("image") or settings.image
    if not image:
        raise TaskError(
            "no image for the pod: set Pod(image=...) on the task or the pipeline's defaults, "
            "or the image of the kubernetes launcher (reflow.toml, REFLOW_K8S_IMAGE)"
        )
    labels = {
        **settings.labels,
        **_strings(options.get("labels") or {}),
        **reflow_labels(spec, settings),
    }
    annotations = {
        **settings.annotations,
        **_strings(options.get("annotations") or {}),
        **_identity_notes(spec),
    }
    volumes, mounts = _volumes(spec, options, labels)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": str(image),
        "command": [_literal(word) for word in spec.argv],
        "env": [*_env(spec, options, settings), {"name": "REFLOW_POD_IMAGE", "value": str(image)}],
    }
    pull = options.get("image_pull_policy") or settings.image_pull_policy
    if pull:
        container["imagePullPolicy"] = pull
    if env_from := _env_from(options.get("env_from") or ()):
        container["envFrom"] = env_from
    if resources := _resources(options):
        container["resources"] = resources
    if mounts:
        container["volumeMounts"] = mounts
    if spec.cwd:
        container["workingDir"] = spec.cwd
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": math.ceil(spec.kill_grace),
        "containers": [container],
    }
    if spec.timeout is not None:
        # A backstop for when reflow is down: the scheduler itself stops the pod at the
        # timeout, counted from the container's start, then waits the grace period. The
        # server counts from the pod's start, which comes up to startup_timeout earlier:
        # the backstop fires only after all of that and a margin, never in reflow's place.
        pod_spec["activeDeadlineSeconds"] = math.ceil(
            settings.startup_timeout + spec.timeout + spec.kill_grace + BACKSTOP_MARGIN
        )
    if account := options.get("service_account") or settings.service_account:
        pod_spec["serviceAccountName"] = str(account)
    secrets = list(options.get("image_pull_secrets") or settings.image_pull_secrets)
    if secrets:
        pod_spec["imagePullSecrets"] = [{"name": str(s)} for s in secrets]
    if selector_ := options.get("node_selector"):
        pod_spec["nodeSelector"] = _strings(selector_)
    if tolerations := options.get("tolerations"):
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if affinity := options.get("affinity"):
        pod_spec["affinity"] = dict(affinity)
    if volumes:
        pod_spec["volumes"] = volumes
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": pod_spec,
    }
    if override := options.get("pod_override"):
        manifest = deep_merge(manifest, override)
        # reflow's identity and the way it runs tries are not overridable.
        manifest["metadata"]["labels"].update(reflow_labels(spec, settings))
        manifest["metadata"].setdefault("annotations", {}).update(_identity_notes(spec))
        manifest["metadata"]["name"] = pod_name(spec)
        manifest["spec"]["restartPolicy"] = "Never"
    check_labels(manifest["metadata"].get("labels") or {})
    return manifest


def check_labels(labels: Mapping[str, Any]) -> None:
    """Raises TaskError for a label the API server would refuse (``"data eng"``: no
    spaces), naming it, before anything is created (the pipeline's own labels were
    checked when it loaded; these are rendered, and pod_override's)."""
    for key, value in labels.items():
        _rendered(check_label, key, value)


def secret_manifest(spec: TrySpec, settings: KubernetesSettings) -> dict[str, Any] | None:
    """The Secret holding the try's secret env entries (named like its pod), or None when
    it has none: their values stay out of the pod's spec, which more people may read.
    The launcher makes the pod its owner once the pod exists, so they go together."""
    hidden = _hidden_env(spec, settings)
    if not hidden:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": pod_name(spec),
            "namespace": settings.namespace,
            "labels": reflow_labels(spec, settings),
        },
        "type": "Opaque",
        "stringData": {k: str(v) for k, v in spec.env.items() if k in hidden},
    }


def _hidden_env(spec: TrySpec, settings: KubernetesSettings) -> frozenset[str]:
    """The env entries that the pod reads from its Secret."""
    return spec.secret_env if settings.secret_env == "secret" else frozenset()


def claim_manifests(spec: TrySpec, settings: KubernetesSettings) -> list[dict[str, Any]]:
    """Claims that reflow creates before the pod when they do not exist (volumes declared
    with ``Volume.claim(..., size=...)``). They outlive the try: they hold data."""
    out = []
    for volume in (spec.pod or {}).get("volumes") or ():
        if volume["kind"] != "claim" or not volume.get("size"):
            continue
        claim: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": _claim_name(volume),
                "namespace": settings.namespace,
                "labels": {
                    MANAGED_BY: "reflow",
                    INSTANCE: label_value(settings.instance),
                    "reflow.io/pipeline": label_value(spec.labels["pipeline"]),
                },
            },
            "spec": _claim_spec(volume["size"], volume.get("storage_class"), volume),
        }
        out.append(claim)
    return out


# -- parts -------------------------------------------------------------------------------
def _env(
    spec: TrySpec, options: Mapping[str, Any], settings: KubernetesSettings
) -> list[dict[str, Any]]:
    name, hidden = pod_name(spec), _hidden_env(spec, settings)
    env: list[dict[str, Any]] = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}}
        if k in hidden
        else {"name": k, "value": _literal(str(v))}
        for k, v in spec.env.items()
    ]
    env.append({"name": "REFLOW_TRY_ID", "value": str(spec.try_id)})
    if spec.scratch:
        env.append({"name": "REFLOW_SCRATCH", "value": str(spec.scratch["mount"])})
    for name, ref in (options.get("secret_env") or {}).items():
        source, key = str(ref).split("/", 1)
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": source, "key": key}}})
    for name, ref in (options.get("config_map_env") or {}).items():
        source, key = str(ref).split("/", 1)
        env.append({"name": name, "valueFrom": {"configMapKeyRef": {"name": source, "key": key}}})
    for name, path in DOWNWARD.items():
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env


def _env_from(refs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ref in refs:
        kind, _, name = str(ref).partition(":")
        key = "secretRef" if kind == "secret" else "configMapRef"
        out.append({key: {"name": name}})
    return out


def _resources(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in ("requests", "limits"):
        amounts = options.get(what) or {}
        for resource, amount in amounts.items():
            _check_rendered_quantity(amount, f"pod {what} {resource!r}")
        if amounts:
            out[what] = {str(k): str(v) for k, v in amounts.items()}
    _rendered(check_requests_within_limits, out.get("requests", {}), out.get("limits", {}))
    return out


def _volumes(
    spec: TrySpec, options: Mapping[str, Any], labels: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for volume in options.get("volumes") or ():
        kind, name = volume["kind"], volume["name"]
        entry: dict[str, Any] = {"name": name}
        if kind == "claim":
            entry["persistentVolumeClaim"] = {"claimName": _claim_name(volume)}
            if volume.get("read_only"):
                entry["persistentVolumeClaim"]["readOnly"] = True
        elif kind == "config_map":
            entry["configMap"] = {"name": str(volume["source"])}
        elif kind == "secret":
            entry["secret"] = {"secretName": str(volume["source"])}
        else:
            empty: dict[str, Any] = {}
            if volume.get("size"):
                _check_rendered_quantity(volume["size"], f"volume {name!r} size")
                empty["sizeLimit"] = str(volume["size"])
            if volume.get("medium"):
                empty["medium"] = volume["medium"]
            entry["emptyDir"] = empty
        volumes.append(entry)
        mount: dict[str, Any] = {"name": name, "mountPath": str(volume["mount"])}
        if volume.get("read_only"):
            mount["readOnly"] = True
        if volume.get("sub_path"):
            mount["subPath"] = str(volume["sub_path"])
        mounts.append(mount)
    if spec.scratch:
        template_labels = {k: v for k, v in labels.items() if k.startswith("reflow.io/")}
        volumes.append(
            {
                "name": SCRATCH_VOLUME,
                "ephemeral": {
                    "volumeClaimTemplate": {
                        "metadata": {"labels": template_labels},
                        "spec": _claim_spec(
                            spec.scratch["size"], spec.scratch.get("storage_class"), None
                        ),
                    }
                },
            }
        )
        mounts.append({"name": SCRATCH_VOLUME, "mountPath": str(spec.scratch["mount"])})
    return volumes, mounts


def _claim_name(volume: Mapping[str, Any]) -> str:
    name = str(volume["source"])
    if not is_dns_subdomain(name):
        raise TaskError(
            f"volume {volume['name']!r}: claim name {name!r} is not a valid Kubernetes name "
            "(lowercase letters, digits, '-' and '.')"
        )
    return name


def _claim_spec(size: Any, storage_class: Any, volume: Mapping[str, Any] | None) -> dict[str, Any]:
    _check_rendered_quantity(size, "claim size")
    spec: dict[str, Any] = {
        "accessModes": list(volume["access_modes"]) if volume else ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(size)}},
    }
    if storage_class:
        spec["storageClassName"] = str(storage_class)
    return spec


def _rendered(check: Callable[..., None], *args: Any) -> None:
    """A load-time check on rendered values: a failure fails the try, not the pipeline."""
    try:
        check(*args)
    except PipelineError as exc:
        raise TaskError(str(exc)) from None


def _check_rendered_quantity(value: Any, what: str) -> None:
    try:
        check_quantity(value, what)
    except PipelineError as exc:  # raised as a definition error; here the try fails
        raise TaskError(str(exc)) from None
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        raise TaskError(f"{what}: {value!r} is not a Kubernetes quantity")


def _literal(text: str) -> str:
    """``text`` escaped from Kubernetes' own expansion of ``$(VAR)`` in commands and env
    values (``$$`` is its escape): a try runs exactly the command reflow rendered."""
    return text.replace("$", "$$")


def _strings(mapping: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in mapping.items()}
