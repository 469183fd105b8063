"""Offline checks of Kubernetes manifests, as the API server of ``KUBERNETES_VERSION`` would
make them: the JSON schema of every kind (kubernetes-validate, strict, so unknown fields
are errors), plus the rules the schemas cannot express (names, references between fields,
enumerations, quantities), for the kinds reflow creates (Pod, PersistentVolumeClaim) and
the kinds of ``deploy/kubernetes`` (Deployment, Service, ServiceAccount, Role, RoleBinding,
ConfigMap, Secret, Namespace; ClusterRole and ClusterRoleBinding too).

The aim is to reject what the API server rejects and nothing it accepts: a stricter rule
here would make tests fail on manifests a cluster takes. So a Pod name may be 253
characters long (the API allows it; the kubelet cuts the hostname at 63), and RBAC object
names follow the API's path-segment rule (``system:reflow`` is a valid Role name).

The input is a plain dict in the API's JSON form (camelCase keys, no ``None`` values): from
YAML, or from the official client's models through
``kubernetes.client.ApiClient().sanitize_for_serialization(obj)`` (not ``obj.to_dict()``,
whose keys are snake_case). Other kinds get the schema and the metadata rules only.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes.utils import parse_quantity
from referencing import Registry, Resource

__all__ = ["KUBERNETES_VERSION", "assert_valid", "problems"]

# A version kubernetes-validate ships strict schemas for (its package data holds
# v1.25.0 .. v1.37.0); env var names follow 1.31's rule (relaxed only from 1.32 on).
KUBERNETES_VERSION = "1.31.0"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_VAR_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# The serialized forms the API accepts: <number><suffix>, suffix binary SI, decimal SI or a
# decimal exponent. parse_quantity alone is laxer (it accepts "1 Gi").
QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)

RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
PROTOCOLS = ("TCP", "UDP", "SCTP")
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute", "")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Filesystem", "Block")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
DEPLOYMENT_STRATEGIES = ("Recreate", "RollingUpdate")
PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
ENV_SOURCES = ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
RBAC_GROUP = "rbac.authorization.k8s.io"
# Resources the kubelet can overcommit; any other (GPUs, hugepages, extended resources)
# must have its request equal to its limit.
OVERCOMMITTABLE = ("cpu", "memory", "ephemeral-storage", "storage")
MAX_ANNOTATIONS = 256 * 1024
MAX_CONFIG_SIZE = 1024 * 1024


def problems(manifest: dict[str, Any]) -> list[str]:
    """Every problem found in ``manifest``, each as ``"path: what is wrong"``; ``[]`` when
    the API server of ``KUBERNETES_VERSION`` would accept it."""
    if not isinstance(manifest, dict):
        raise TypeError(
            f"a manifest is a dict (use ApiClient().sanitize_for_serialization), "
            f"not {type(manifest).__name__}"
        )
    out = _schema_problems(manifest)
    kind = manifest.get("kind")
    _metadata(manifest.get("metadata"), "metadata", out, kind=kind)
    check = _KIND_RULES.get(kind) if isinstance(kind, str) else None
    if check is not None:
        check(manifest, out)
    return out


def assert_valid(manifest: dict[str, Any]) -> None:
    """Raise AssertionError listing every problem of ``manifest``, if it has any."""
    found = problems(manifest)
    if found:
        meta = manifest.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        lines = "\n".join(f"  - {p}" for p in found)
        raise AssertionError(
            f"{manifest.get('kind')} {name!r} is not valid for Kubernetes "
            f"{KUBERNETES_VERSION} ({len(found)} problems):\n{lines}"
        )


# -- schema ---------------------------------------------------------------------------------
def _schema_problems(manifest: dict[str, Any]) -> list[str]:
    kind, api_version = manifest.get("kind"), manifest.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return ["apiVersion and kind are required strings"]
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{kind}: {exc.message}"]
    except kubernetes_validate.ValidationError as first:
        # kubernetes-validate stops at the first error; list them all (or, should its
        # files move, that first one).
        try:
            validator = _validator(kind, api_version)
        except (OSError, ValueError):
            return [_schema_error(first)]
        every = [_schema_error(e) for e in validator.iter_errors(manifest)]
        return sorted(every) or [_schema_error(first)]
    return []


def _schema_error(error: jsonschema.ValidationError) -> str:
    return f"{_path(error.absolute_path)}: {error.message}"


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    """The validator kubernetes_validate.validate builds (same files, same draft), kept to
    list every error rather than the first."""
    folder = importlib.resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{KUBERNETES_VERSION}-local-strict"
    )
    # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes_validate.utils names them.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = json.loads(folder.joinpath(f"{kind.lower()}-{group_version}.json").read_text())
    definitions = json.loads(folder.joinpath("_definitions.json").read_text())
    registry: Registry[Any] = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


# -- small helpers --------------------------------------------------------------------------
def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a mapping, else {} (the schema reports the wrong type)."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of a list, with their index (others are left to the schema)."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dns_label(value: Any, path: str, out: list[str]) -> None:
    if not isinstance(value, str) or len(value) > 63 or not DNS1123_LABEL.match(value):
        out.append(
            f"{path}: {value!r} is not a DNS-1123 label (at most 63 characters: lowercase "
            "letters, digits and '-', starting and ending with a letter or digit)"
        )


def _dns_subdomain(value: Any, path: str, out: list[str]) -> None:
    if not isinstance(value, str) or len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        out.append(
            f"{path}: {value!r} is not a DNS-1123 subdomain (at most 253 characters: "
            "lowercase letters, digits, '-' and '.', each part starting and ending with a "
            "letter or digit)"
        )


def _dns1035_label(value: Any, path: str, out: list[str]) -> None:
    if not isinstance(value, str) or len(value) > 63 or not DNS1035_LABEL.match(value):
        out.append(
            f"{path}: {value!r} is not a DNS-1035 label (at most 63 characters: lowercase "
            "letters, digits and '-', starting with a letter, ending with a letter or digit)"
        )


def _path_segment(value: Any, path: str, out: list[str]) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "%" in value:
        out.append(f"{path}: {value!r} is not a valid name (no '/', no '%', not '.' or '..')")


def _svc_name(value: Any, path: str, out: list[str]) -> None:
    """A named port (IANA service name): what container and probe port names must be."""
    if (
        not isinstance(value, str)
        or len(value) > 15
        or not IANA_SVC_NAME.match(value)
        or "--" in value
        or not re.search("[a-z]", value)
    ):
        out.append(
            f"{path}: {value!r} is not a port name (at most 15 characters: lowercase letters, "
            "digits and '-', at least one letter, no '--', not starting or ending with '-')"
        )


def _port(value: Any, path: str, out: list[str], *, named: bool = False) -> None:
    if named and isinstance(value, str):
        _svc_name(value, path, out)
    elif not _int(value) or not 1 <= value <= 65535:
        out.append(f"{path}: {value!r} is not a port number (1..65535)")


def _enum(value: Any, allowed: tuple[str, ...], path: str, out: list[str]) -> None:
    if value is not None and value not in allowed:
        out.append(f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def _unique(names: list[tuple[str, Any]], what: str, out: list[str]) -> None:
    seen: set[str] = set()
    for path, name in names:
        if repr(name) in seen:
            out.append(f"{path}: duplicate {what} {name!r}")
        seen.add(repr(name))


def _qualified_key(key: Any, path: str, out: list[str]) -> None:
    """A label or annotation key: an optional DNS subdomain prefix and '/', then a name of
    at most 63 characters."""
    if not isinstance(key, str):
        out.append(f"{path}: key {key!r} is not a string")
        return
    prefix, slash, name = key.rpartition("/")
    bad = (
        len(name) > 63
        or not QUALIFIED_NAME.match(name)
        or (slash and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)))
    )
    if bad:
        out.append(
            f"{path}: key {key!r} is not a qualified name (an optional DNS subdomain prefix "
            "and '/', then at most 63 characters of [A-Za-z0-9._-] starting and ending with "
            "a letter or digit)"
        )


def _labels(value: Any, path: str, out: list[str]) -> None:
    for key, label in _dict(value).items():
        _qualified_key(key, path, out)
        text = "" if label is None else label
        valid = isinstance(text, str) and len(text) <= 63
        if not valid or (text and not QUALIFIED_NAME.match(text)):
            out.append(
                f"{path}[{key}]: label value {label!r} is not valid (at most 63 characters of "
                "[A-Za-z0-9._-] starting and ending with a letter or digit, or empty)"
            )


def _annotations(value: Any, path: str, out: list[str]) -> None:
    annotations = _dict(value)
    for key in annotations:
        _qualified_key(key, path, out)
    size = sum(len(str(k)) + len(str(v or "")) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS:
        out.append(f"{path}: {size} bytes in total, more than {MAX_ANNOTATIONS}")


def _selector(value: Any, path: str, out: list[str]) -> None:
    """A LabelSelector (matchLabels and matchExpressions)."""
    selector = _dict(value)
    _labels(selector.get("matchLabels"), f"{path}.matchLabels", out)
    for i, expr in _items(selector.get("matchExpressions")):
        where = f"{path}.matchExpressions[{i}]"
        _qualified_key(expr.get("key"), f"{where}.key", out)
        operator = expr.get("operator")
        _enum(operator, SELECTOR_OPERATORS, f"{where}.operator", out)
        values = expr.get("values") or []
        if operator in ("In", "NotIn") and not values:
            out.append(f"{where}.values: required with operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            out.append(f"{where}.values: must be empty with operator {operator}")


def _non_negative(spec: dict[str, Any], field: str, path: str, out: list[str]) -> None:
    value = spec.get(field)
    if value is not None and (not _int(value) or value < 0):
        out.append(f"{path}.{field}: {value!r} must be an integer >= 0")


# -- metadata -------------------------------------------------------------------------------
def _metadata(value: Any, path: str, out: list[str], *, kind: Any) -> None:
    meta = _dict(value)
    name = meta.get("name")
    if name is None:
        if not meta.get("generateName"):
            out.append(f"{path}.name: required (or generateName)")
    elif kind == "Service":
        _dns1035_label(name, f"{path}.name", out)
    elif kind == "Namespace":
        _dns_label(name, f"{path}.name", out)
    elif kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        _path_segment(name, f"{path}.name", out)
    else:
        _dns_subdomain(name, f"{path}.name", out)
    if meta.get("namespace") is not None:
        _dns_label(meta["namespace"], f"{path}.namespace", out)
    _labels(meta.get("labels"), f"{path}.labels", out)
    _annotations(meta.get("annotations"), f"{path}.annotations", out)


# -- quantities and resources ---------------------------------------------------------------
def _quantity(value: Any, path: str, out: list[str]) -> Decimal | None:
    """The quantity's value, or None (with a problem) when it does not parse or is < 0."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        out.append(f"{path}: {value!r} is not a quantity")
        return None
    try:
        if isinstance(value, str) and not QUANTITY.match(value):
            raise ValueError(value)
        amount = Decimal(parse_quantity(value))
    except (ValueError, ArithmeticError):
        out.append(f"{path}: {value!r} is not a quantity (like 500m, 2, 1.5Gi, 10G)")
        return None
    if amount < 0:
        out.append(f"{path}: {value!r} must not be negative")
        return None
    return amount


def _resources(value: Any, path: str, out: list[str], *, claim: bool = False) -> None:
    """Container resources (requests <= limits; extended resources: request = limit), or a
    claim's storage request with ``claim``."""
    resources = _dict(value)
    amounts: dict[str, dict[str, Decimal | None]] = {}
    for part in ("requests", "limits"):
        amounts[part] = {
            name: _quantity(q, f"{path}.{part}[{name}]", out)
            for name, q in _dict(resources.get(part)).items()
        }
    requests, limits = amounts["requests"], amounts["limits"]
    if claim:
        if "storage" not in requests:
            out.append(f"{path}.requests[storage]: required")
        elif requests["storage"] == 0:
            out.append(f"{path}.requests[storage]: must be greater than zero")
    for name, request in requests.items():
        limit = limits.get(name)
        if request is not None and limit is not None and request > limit:
            out.append(
                f"{path}.requests[{name}]: {resources['requests'][name]!r} is more than its "
                f"limit {resources['limits'][name]!r}"
            )
        if claim or name in OVERCOMMITTABLE:
            continue
        if name not in limits:
            out.append(f"{path}.limits[{name}]: required: {name!r} cannot be overcommitted")
        elif request is not None and limit is not None and request != limit:
            out.append(
                f"{path}.requests[{name}]: must equal its limit: {name!r} cannot be overcommitted"
            )


# -- pods -----------------------------------------------------------------------------------
def _pod(manifest: dict[str, Any], out: list[str]) -> None:
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return  # the schema does not require it; the API does
    name = _dict(manifest.get("metadata")).get("name")
    _pod_spec(spec, "spec", out, pod_name=name if isinstance(name, str) else None)


def _pod_spec(spec: dict[str, Any], path: str, out: list[str], *, pod_name: str | None) -> None:
    volumes = _items(spec.get("volumes"))
    declared = {v["name"] for _, v in volumes if isinstance(v.get("name"), str)}
    groups = ("initContainers", "containers", "ephemeralContainers")
    if not _items(spec.get("containers")):
        out.append(f"{path}.containers: at least one container is required")
    names: list[tuple[str, Any]] = []
    for group in groups:
        for i, container in _items(spec.get(group)):
            where = f"{path}.{group}[{i}]"
            _dns_label(container.get("name"), f"{where}.name", out)
            names.append((f"{where}.name", container.get("name")))
            _container(container, where, declared, out, ephemeral=group == "ephemeralContainers")
    _unique(names, "container name", out)

    for i, volume in volumes:
        _volume(volume, f"{path}.volumes[{i}]", out, pod_name=pod_name)
    _unique([(f"{path}.volumes[{i}].name", v.get("name")) for i, v in volumes], "volume", out)

    _enum(spec.get("restartPolicy"), RESTART_POLICIES, f"{path}.restartPolicy", out)
    _enum(spec.get("dnsPolicy"), DNS_POLICIES, f"{path}.dnsPolicy", out)
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not _int(deadline) or deadline < 1):
        out.append(f"{path}.activeDeadlineSeconds: {deadline!r} must be a positive integer")
    _non_negative(spec, "terminationGracePeriodSeconds", path, out)
    for field in ("serviceAccountName", "serviceAccount"):
        if spec.get(field):
            _dns_subdomain(spec[field], f"{path}.{field}", out)
    for field in ("hostname", "subdomain"):
        if spec.get(field):
            _dns_label(spec[field], f"{path}.{field}", out)
    _labels(spec.get("nodeSelector"), f"{path}.nodeSelector", out)
    for i, toleration in _items(spec.get("tolerations")):
        _toleration(toleration, f"{path}.tolerations[{i}]", out)


def _container(
    container: dict[str, Any], path: str, volumes: set[str], out: list[str], *, ephemeral: bool
) -> None:
    if not container.get("image"):
        out.append(f"{path}.image: required")
    _enum(container.get("imagePullPolicy"), PULL_POLICIES, f"{path}.imagePullPolicy", out)

    ports = _items(container.get("ports"))
    for i, port in ports:
        where = f"{path}.ports[{i}]"
        _port(port.get("containerPort"), f"{where}.containerPort", out)
        if port.get("hostPort") not in (None, 0):
            _port(port["hostPort"], f"{where}.hostPort", out)
        if port.get("name") is not None:
            _svc_name(port["name"], f"{where}.name", out)
        _enum(port.get("protocol"), PROTOCOLS, f"{where}.protocol", out)
    named = [(f"{path}.ports[{i}].name", p["name"]) for i, p in ports if p.get("name")]
    _unique(named, "port name", out)

    for i, var in _items(container.get("env")):
        where = f"{path}.env[{i}]"
        if not isinstance(var.get("name"), str) or not ENV_VAR_NAME.match(var["name"]):
            out.append(
                f"{where}.name: {var.get('name')!r} is not a valid environment variable name "
                "(letters, digits, '_', '-', '.', not starting with a digit)"
            )
        source = _dict(var.get("valueFrom"))
        if var.get("value") and "valueFrom" in var:
            out.append(f"{where}.valueFrom: not allowed when value is set")
        if "valueFrom" in var and sum(1 for s in ENV_SOURCES if s in source) != 1:
            out.append(f"{where}.valueFrom: exactly one of {', '.join(ENV_SOURCES)} is required")

    mounts = _items(container.get("volumeMounts"))
    for i, mount in mounts:
        where = f"{path}.volumeMounts[{i}]"
        if not isinstance(mount.get("name"), str) or mount["name"] not in volumes:
            out.append(f"{where}.name: {mount.get('name')!r} is not a volume of the pod")
        mount_path = mount.get("mountPath")
        if not isinstance(mount_path, str) or not mount_path.startswith("/"):
            out.append(f"{where}.mountPath: {mount_path!r} must be an absolute path")
        sub_path = mount.get("subPath")
        if sub_path and (
            not isinstance(sub_path, str) or sub_path.startswith("/") or ".." in sub_path.split("/")
        ):
            out.append(f"{where}.subPath: {sub_path!r} must be a relative path without '..'")
    paths = [(f"{path}.volumeMounts[{i}].mountPath", m.get("mountPath")) for i, m in mounts]
    _unique(paths, "mountPath", out)

    _resources(container.get("resources"), f"{path}.resources", out)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            if ephemeral:
                out.append(f"{path}.{probe}: not allowed in an ephemeral container")
            _probe(_dict(container[probe]), f"{path}.{probe}", out)


def _probe(probe: dict[str, Any], path: str, out: list[str]) -> None:
    handlers = [h for h in PROBE_HANDLERS if h in probe]
    if len(handlers) != 1:
        out.append(f"{path}: exactly one of {', '.join(PROBE_HANDLERS)} is required")
    for handler in ("httpGet", "tcpSocket"):
        if handler in probe:
            port = _dict(probe[handler]).get("port")
            _port(port, f"{path}.{handler}.port", out, named=True)


def _toleration(toleration: dict[str, Any], path: str, out: list[str]) -> None:
    operator = toleration.get("operator")
    _enum(operator, TOLERATION_OPERATORS, f"{path}.operator", out)
    _enum(toleration.get("effect"), TAINT_EFFECTS, f"{path}.effect", out)
    if toleration.get("key"):
        _qualified_key(toleration["key"], f"{path}.key", out)
    elif operator != "Exists":
        out.append(f"{path}.operator: must be Exists when key is empty")
    if operator == "Exists" and toleration.get("value"):
        out.append(f"{path}.value: must be empty when operator is Exists")
    if toleration.get("tolerationSeconds") is not None and toleration.get("effect") != "NoExecute":
        out.append(f"{path}.tolerationSeconds: only allowed with effect NoExecute")


def _volume(volume: dict[str, Any], path: str, out: list[str], *, pod_name: str | None) -> None:
    name = volume.get("name")
    _dns_label(name, f"{path}.name", out)
    sources = [key for key in volume if key != "name"]
    if len(sources) != 1:
        out.append(f"{path}: exactly one volume source is required, not {sources or 'none'}")
    size = _dict(volume.get("emptyDir")).get("sizeLimit")
    if size is not None:
        _quantity(size, f"{path}.emptyDir.sizeLimit", out)
    if "ephemeral" in volume:
        template = _dict(_dict(volume["ephemeral"]).get("volumeClaimTemplate"))
        where = f"{path}.ephemeral.volumeClaimTemplate"
        if not isinstance(template.get("spec"), dict):
            out.append(f"{where}.spec: required")
        else:
            _claim_spec(template["spec"], f"{where}.spec", out)
        meta = _dict(template.get("metadata"))
        _labels(meta.get("labels"), f"{where}.metadata.labels", out)
        _annotations(meta.get("annotations"), f"{where}.metadata.annotations", out)
        if pod_name and isinstance(name, str):
            # The claim the API creates is named <pod>-<volume>.
            _dns_subdomain(f"{pod_name}-{name}", f"{path}.name (claim name <pod>-<volume>)", out)


# -- claims ---------------------------------------------------------------------------------
def _claim(manifest: dict[str, Any], out: list[str]) -> None:
    _claim_spec(_dict(manifest.get("spec")), "spec", out)


def _claim_spec(spec: dict[str, Any], path: str, out: list[str]) -> None:
    modes = spec.get("accessModes")
    if not modes:
        out.append(f"{path}.accessModes: at least one access mode is required")
    elif isinstance(modes, list):
        for i, mode in enumerate(modes):
            _enum(mode, ACCESS_MODES, f"{path}.accessModes[{i}]", out)
        if "ReadWriteOncePod" in modes and len(modes) > 1:
            out.append(f"{path}.accessModes: ReadWriteOncePod cannot be combined with others")
    _enum(spec.get("volumeMode"), VOLUME_MODES, f"{path}.volumeMode", out)
    _resources(spec.get("resources"), f"{path}.resources", out, claim=True)
    storage_class = spec.get("storageClassName")
    if storage_class:  # "" asks for a claim without a class
        _dns_subdomain(storage_class, f"{path}.storageClassName", out)
    _selector(spec.get("selector"), f"{path}.selector", out)


# -- workloads and services -----------------------------------------------------------------
def _deployment(manifest: dict[str, Any], out: list[str]) -> None:
    spec = _dict(manifest.get("spec"))
    for field in ("replicas", "minReadySeconds", "revisionHistoryLimit"):
        _non_negative(spec, field, "spec", out)
    selector = _dict(spec.get("selector"))
    _selector(selector, "spec.selector", out)
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        out.append("spec.selector: must not be empty")
    template = _dict(spec.get("template"))
    labels = _dict(_dict(template.get("metadata")).get("labels"))
    _metadata_of_template(template, "spec.template.metadata", out)
    if not _matches(selector, labels):
        out.append("spec.selector: does not match the labels of spec.template.metadata")
    strategy = _dict(spec.get("strategy"))
    _enum(strategy.get("type"), DEPLOYMENT_STRATEGIES, "spec.strategy.type", out)
    if strategy.get("type") == "Recreate" and "rollingUpdate" in strategy:
        out.append("spec.strategy.rollingUpdate: not allowed with type Recreate")
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, dict):
        out.append("spec.template.spec: required")
        return
    _pod_spec(pod_spec, "spec.template.spec", out, pod_name=None)
    if pod_spec.get("restartPolicy") not in (None, "Always"):
        out.append("spec.template.spec.restartPolicy: a Deployment's pods must use Always")
    if "activeDeadlineSeconds" in pod_spec:
        out.append("spec.template.spec.activeDeadlineSeconds: not allowed in a Deployment")


def _metadata_of_template(template: dict[str, Any], path: str, out: list[str]) -> None:
    meta = _dict(template.get("metadata"))
    _labels(meta.get("labels"), f"{path}.labels", out)
    _annotations(meta.get("annotations"), f"{path}.annotations", out)


def _matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    for key, value in _dict(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return False
    for _, expr in _items(selector.get("matchExpressions")):
        key, operator, values = expr.get("key"), expr.get("operator"), expr.get("values")
        if not isinstance(key, str) or not isinstance(values, list | None):
            return False
        values = values or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _service(manifest: dict[str, Any], out: list[str]) -> None:
    spec = _dict(manifest.get("spec"))
    service_type = spec.get("type", "ClusterIP")
    _enum(service_type, SERVICE_TYPES, "spec.type", out)
    _labels(spec.get("selector"), "spec.selector", out)
    if service_type == "ExternalName":
        if not spec.get("externalName"):
            out.append("spec.externalName: required for type ExternalName")
        return
    ports = _items(spec.get("ports"))
    if not ports and spec.get("clusterIP") != "None":
        out.append("spec.ports: at least one port is required")
    for i, port in ports:
        where = f"spec.ports[{i}]"
        if port.get("name") is not None and port["name"] != "":
            _dns_label(port["name"], f"{where}.name", out)
        elif len(ports) > 1:
            out.append(f"{where}.name: required when the service has several ports")
        _port(port.get("port"), f"{where}.port", out)
        if port.get("targetPort") is not None:
            _port(port["targetPort"], f"{where}.targetPort", out, named=True)
        if port.get("nodePort") is not None:
            if service_type not in ("NodePort", "LoadBalancer"):
                out.append(f"{where}.nodePort: only for types NodePort and LoadBalancer")
            _port(port["nodePort"], f"{where}.nodePort", out)
        _enum(port.get("protocol"), PROTOCOLS, f"{where}.protocol", out)
    _unique([(f"spec.ports[{i}].name", p.get("name")) for i, p in ports], "port name", out)
    pairs = [(f"spec.ports[{i}]", (p.get("port"), p.get("protocol", "TCP"))) for i, p in ports]
    _unique(pairs, "(port, protocol)", out)


# -- RBAC -----------------------------------------------------------------------------------
def _role(manifest: dict[str, Any], out: list[str]) -> None:
    namespaced = manifest.get("kind") == "Role"
    for i, rule in _items(manifest.get("rules")):
        where = f"rules[{i}]"
        verbs = rule.get("verbs")
        if not verbs or (isinstance(verbs, list) and any(not v for v in verbs)):
            out.append(f"{where}.verbs: at least one verb is required, none empty")
        if rule.get("nonResourceURLs"):
            if namespaced:
                out.append(f"{where}.nonResourceURLs: not allowed in a Role (namespaced)")
            if rule.get("apiGroups") or rule.get("resources"):
                out.append(f"{where}: nonResourceURLs cannot be mixed with apiGroups/resources")
            continue
        if not rule.get("apiGroups"):
            out.append(f"{where}.apiGroups: resource rules need at least one API group")
        resources = rule.get("resources")
        if not resources or (isinstance(resources, list) and any(not r for r in resources)):
            out.append(f"{where}.resources: at least one resource is required, none empty")


def _binding(manifest: dict[str, Any], out: list[str]) -> None:
    namespaced = manifest.get("kind") == "RoleBinding"
    ref = _dict(manifest.get("roleRef"))
    if ref.get("apiGroup") != RBAC_GROUP:
        out.append(f"roleRef.apiGroup: must be {RBAC_GROUP!r}")
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    _enum(ref.get("kind"), kinds, "roleRef.kind", out)
    _path_segment(ref.get("name"), "roleRef.name", out)
    for i, subject in _items(manifest.get("subjects")):
        where = f"subjects[{i}]"
        kind = subject.get("kind")
        _enum(kind, ("ServiceAccount", "User", "Group"), f"{where}.kind", out)
        if kind == "ServiceAccount":
            _dns_subdomain(subject.get("name"), f"{where}.name", out)
            if subject.get("apiGroup"):
                out.append(f"{where}.apiGroup: must be empty for a ServiceAccount")
            if subject.get("namespace"):
                _dns_label(subject["namespace"], f"{where}.namespace", out)
            elif not namespaced:
                out.append(f"{where}.namespace: required for a ServiceAccount")
        elif kind in ("User", "Group"):
            if not subject.get("name"):
                out.append(f"{where}.name: required")
            if subject.get("apiGroup") != RBAC_GROUP:
                out.append(f"{where}.apiGroup: must be {RBAC_GROUP!r} for a {kind}")


# -- configuration --------------------------------------------------------------------------
def _config_keys(keys: Iterable[Any], path: str, out: list[str]) -> None:
    for key in keys:
        if (
            not isinstance(key, str)
            or len(key) > 253
            or key in (".", "..")
            or not CONFIG_KEY.match(key)
        ):
            out.append(f"{path}: key {key!r} is not valid (letters, digits, '-', '_', '.')")


def _config_map(manifest: dict[str, Any], out: list[str]) -> None:
    data, binary = _dict(manifest.get("data")), _dict(manifest.get("binaryData"))
    _config_keys(data, "data", out)
    _config_keys(binary, "binaryData", out)
    for key in data.keys() & binary.keys():
        out.append(f"binaryData: key {key!r} is also in data")
    for key, value in binary.items():
        _base64(value, f"binaryData[{key}]", out)
    _size(list(data.values()) + list(binary.values()), out)


def _secret(manifest: dict[str, Any], out: list[str]) -> None:
    data, string_data = _dict(manifest.get("data")), _dict(manifest.get("stringData"))
    _config_keys(data, "data", out)
    _config_keys(string_data, "stringData", out)
    for key, value in data.items():
        _base64(value, f"data[{key}]", out)
    _size(list(data.values()) + list(string_data.values()), out)


def _base64(value: Any, path: str, out: list[str]) -> None:
    try:
        base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        out.append(f"{path}: not base64")


def _size(values: list[Any], out: list[str]) -> None:
    size = sum(len(str(v or "")) for v in values)
    if size > MAX_CONFIG_SIZE:
        out.append(f"data: {size} bytes in total, more than {MAX_CONFIG_SIZE}")


_KIND_RULES = {
    "Pod": _pod,
    "PersistentVolumeClaim": _claim,
    "Deployment": _deployment,
    "Service": _service,
    "Role": _role,
    "ClusterRole": _role,
    "RoleBinding": _binding,
    "ClusterRoleBinding": _binding,
    "ConfigMap": _config_map,
    "Secret": _secret,
    # ServiceAccount and Namespace: the metadata rules are all there is.
}
