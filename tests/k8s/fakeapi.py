"""A fake one-node Kubernetes cluster for tests: the core/v1 REST API (pods, pod logs,
persistent volume claims, secrets, config maps, events) over plain HTTP on 127.0.0.1, and
a "kubelet" that runs the first container of each pod as a local process group.

    with FakeCluster(tmp_path / "cluster") as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")  # context "fake"
        ...
        cluster.wait_for(lambda: cluster.pod("default", "p")["status"]["phase"] == "Failed")

It answers as the official ``kubernetes`` client expects, and as a real cluster does where
a launcher cares:

- every change is a watch event under a new resourceVersion; a watch replays what came
  after its resourceVersion, then streams; a too old one gets a 410 Expired ERROR event;
  for a watch with a selector, an object that stops matching it (relabelled) is DELETED,
  carrying its previous content under the new resourceVersion, and one that starts
  matching is ADDED; list items carry no apiVersion/kind (the list does);
- PATCH takes a strategic-merge or merge patch of metadata (labels, annotations,
  ownerReferences) of pods and secrets; a patch that changes nothing changes no version;
- errors are Status objects (NotFound, AlreadyExists, Invalid with causes, ...);
- config maps are created, read, listed (label selectors), watched and deleted as stored;
- argv is command + args after Kubernetes' $(VAR) expansion ("$$" becomes "$"); each
  volume is a local folder workdir/pods/{pod}/{volume} (for a claim, a link to
  workdir/claims/{namespace}/{claim}, which outlives pods) and its mount path is rewritten
  to it in argv and env; only PATH, HOME and JAVA_HOME come from this process;
- a DELETE sets deletionTimestamp, the kubelet sends SIGTERM, SIGKILL after the grace
  period, and the pod goes once its process has; a pod without a process goes at once; a
  grace period of 0 removes the object at once and the kubelet still stops the process
  with the pod's own grace period (at least 1 s), as a real kubelet does;
- logs are line records, as containerd writes them: a line shows once complete, a
  process's last unfinished line gets a newline;
- the annotation ``fake.reflow.io/simulate`` picks a failure: ``oom``, ``evict``,
  ``oom-child`` (the kernel kills a child process: a main process that then exits 0 leaves
  the pod Succeeded with reason OOMKilled and exit code 0, as a real kubelet reports it;
  these three after ``fake.reflow.io/after`` seconds, default 0.3), ``image-pull``,
  ``config-error``, ``unschedulable``, ``stuck-terminating`` (a lost node: a graceful
  DELETE only marks the pod, which stays Terminating, its process untouched; a forced one
  removes it); requests above NODE_ALLOCATABLE are unschedulable too.

Not simulated: restarts (restartPolicy is taken as Never), init and other containers (only
the first container runs; the others stay waiting), namespaces as objects (any name is
accepted), probes, limit/continue paging (lists are whole), bookmarks. Pods of the same
name in two namespaces share their folder. Standard library only; everything started
(server, threads, process groups) is gone when ``stop()`` returns.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import hashlib
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["AFTER", "NODE_ALLOCATABLE", "NODE_NAME", "SIMULATE", "FakeCluster"]

Obj = dict[str, Any]

SIMULATE = "fake.reflow.io/simulate"
AFTER = "fake.reflow.io/after"
# Seconds the container stays "ContainerCreating" (an image being pulled) before it starts.
PULL_SECONDS = "fake.reflow.io/pull-seconds"
NODE_NAME = "fake-node"
# What a pod may request in all; more makes it unschedulable ("1 Insufficient memory").
NODE_ALLOCATABLE = {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "100Gi"}
TOKEN = "fake"

_KINDS = {
    "pods": "Pod",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "events": "Event",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
}
_DEFAULT_AFTER = 0.3
_BACKOFF_AFTER = 0.5  # ErrImagePull turns into ImagePullBackOff
_DEADLINE_GRACE_CAP = 2.0  # a real kubelet waits terminationGracePeriodSeconds (30 s default)
_EVICTION_GRACE = 1.0  # the kubelet's grace period for a hard eviction
_LOG_RECORD_MAX = 16 * 1024  # containerd splits longer lines into partial records
_ORPHAN_OUTPUT_WAIT = 1.0  # how long a process that escaped the group may hold the pipe
_POLL = 0.05


# --- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        return _status(self.code, self.reason, self.message, self.details)


class _DecodeError(ValueError):
    """The body does not decode into the API type (the apiserver answers 400)."""


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body.update(message=message, reason=reason)
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _not_found(resource: str, name: str) -> ApiError:
    details = {"name": name, "kind": resource}
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', details)


def _too_old(since: int, current: int) -> Obj:
    return _status(410, "Expired", f"too old resource version: {since} ({current})")


# A field error of a 422 Invalid answer: (field, cause reason, message).
Cause = tuple[str, str, str]


def _without_ephemeral_volumes(pod: Obj) -> list[Cause]:
    """What a server older than 1.21 (without the GenericEphemeralVolume gate) says of a
    generic ephemeral volume: it does not know the field, so the volume has no type."""
    return [
        _required(f"spec.volumes[{i}]", "must specify a volume type")
        for i, volume in enumerate((pod.get("spec") or {}).get("volumes") or [])
        if "ephemeral" in volume
    ]


def _invalid(kind: str, name: str, causes: list[Cause]) -> ApiError:
    texts = [f"{path}: {text}" for path, _, text in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {
        "name": name,
        "group": "",
        "kind": kind,
        "causes": [{"reason": r, "message": t, "field": f} for f, r, t in causes],
    }
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details)


def _required(path: str, detail: str = "") -> Cause:
    return (path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def _bad_value(path: str, value: Any, detail: str) -> Cause:
    return (path, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {detail}")


def _unsupported(path: str, value: Any, supported: Iterable[str]) -> Cause:
    listed = ", ".join(f'"{s}"' for s in supported)
    return (
        path,
        "FieldValueNotSupported",
        f"Unsupported value: {json.dumps(value)}: supported values: {listed}",
    )


# --- names, labels, quantities, selectors --------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
    "[a-z0-9])?)*')"
)
_LABEL_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_NAME_PART_RULE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


def _subdomain_causes(path: str, value: str) -> list[Cause]:
    causes = []
    if len(value) > 253:
        causes.append(_bad_value(path, value, "must be no more than 253 characters"))
    if not _DNS_SUBDOMAIN.fullmatch(value):
        causes.append(_bad_value(path, value, _SUBDOMAIN_RULE))
    return causes


def _dns_label_causes(path: str, value: str) -> list[Cause]:
    if not value:
        return [_required(path)]
    if len(value) > 63:
        return [_bad_value(path, value, "must be no more than 63 characters")]
    return [] if _DNS_LABEL.fullmatch(value) else [_bad_value(path, value, _LABEL_RULE)]


def _label_causes(path: str, labels: dict[str, str]) -> list[Cause]:
    causes = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
            causes.append(_bad_value(path, key, _NAME_PART_RULE))
        if prefix:
            causes.extend(_subdomain_causes(path, prefix))
        if len(value) > 63:
            causes.append(_bad_value(path, value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.fullmatch(value):
            causes.append(_bad_value(path, value, _LABEL_VALUE_RULE))
    return causes


_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?"
)
_QUANTITY_RULE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_SUFFIXES = {
    **{p + "i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")},
    **{p: Decimal(1000) ** (i + 1) for i, p in enumerate("kMGTPE")},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
}


def parse_quantity(value: Any) -> Decimal:
    """A resource quantity ("500m", "2Gi", 1.5) as a number; _DecodeError if malformed."""
    match = None if isinstance(value, bool) else _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        raise _DecodeError(_QUANTITY_RULE)
    number, suffix = Decimal(match[1]), match[2] or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIXES.get(suffix, Decimal(1))


@dataclass(frozen=True)
class _Selector:
    """A labelSelector and a fieldSelector, as list and watch requests give them."""

    labels: tuple[tuple[str, str, frozenset[str]], ...] = ()  # (key, operator, values)
    fields: tuple[tuple[str, bool, str], ...] = ()  # (field, must equal, value)

    def matches(self, obj: Obj) -> bool:
        have = obj.get("metadata", {}).get("labels") or {}
        for key, op, values in self.labels:
            present = key in have
            if (op == "exists" and not present) or (op == "!exists" and present):
                return False
            if op == "in" and have.get(key) not in values:
                return False
            if op == "notin" and present and have[key] in values:
                return False
        return all((_field_value(obj, f) == value) == equal for f, equal, value in self.fields)


_FIELDS = {
    "pods": {
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
        "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
        "status.podIP", "status.nominatedNodeName",
    },
    "persistentvolumeclaims": {"metadata.name", "metadata.namespace"},
    "secrets": {"metadata.name", "metadata.namespace", "type"},
    "configmaps": {"metadata.name", "metadata.namespace"},
    "events": {
        "metadata.name", "metadata.namespace", "involvedObject.kind",
        "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    },
}  # fmt: skip
_LABEL_TERM = re.compile(
    r"\s*(?P<not>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)|\s(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?"
    r"\s*"
)


def _field_value(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in ("source.component" if path == "source" else path).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _split_terms(text: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t for t in terms if t.strip()]


def _parse_selector(resource: str, label_text: str, field_text: str) -> _Selector:
    labels = []
    for term in _split_terms(label_text):
        m = _LABEL_TERM.fullmatch(term)
        if m is None or (m["not"] and (m["op"] or m["set"])):
            raise _bad_request(f"unable to parse requirement: invalid label selector {term!r}")
        if m["set"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            labels.append((m["key"], m["set"], values))
        elif m["op"]:
            labels.append((m["key"], "notin" if m["op"] == "!=" else "in", frozenset([m["value"]])))
        else:
            labels.append((m["key"], "!exists" if m["not"] else "exists", frozenset()))
    fields = []
    for term in filter(None, (t.strip() for t in field_text.split(","))):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        if m is None:
            raise _bad_request(f"invalid field selector: {term!r}")
        if m[1] not in _FIELDS[resource]:
            raise _bad_request(f"field label not supported: {m[1]}")
        fields.append((m[1], m[2] != "!=", m[3]))
    return _Selector(tuple(labels), tuple(fields))


# --- small helpers --------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _rfc3339nano(ns: int) -> str:
    """Go's time.RFC3339Nano, as the kubelet writes log timestamps: trailing zeros cut."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "t", "true")


def _int_param(query: dict[str, str], name: str, minimum: int = 0) -> int | None:
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        raise _bad_request(f"{name}: invalid integer {query[name]!r}") from None
    if value < minimum:
        raise _bad_request(f"{name}: must be greater than or equal to {minimum}")
    return value


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, sig)


def _expand(text: str, values: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command, args and env values ("$$" gives "$")."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(values.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(text[i : i + 2])
            i += 2
    return "".join(out)


def _mount_rewriter(mounts: list[tuple[str, str]]) -> Callable[[str], str]:
    """Replaces each mount path used as a path prefix ("/scratch/x") with its local folder."""
    local = {path.rstrip("/"): folder for path, folder in mounts if path.rstrip("/")}
    if not local:
        return lambda text: text
    alternatives = "|".join(re.escape(p) for p in sorted(local, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({alternatives})(?![\w.-])")
    return lambda text: pattern.sub(lambda m: local[m[1]], text)


def _split_log(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cuts output into log records (lines, or 16 KiB parts of longer lines) and the rest."""
    records = []
    while True:
        newline = buffer.find(b"\n", 0, _LOG_RECORD_MAX)
        if newline >= 0:
            cut = newline + 1
        elif len(buffer) >= _LOG_RECORD_MAX:
            cut = _LOG_RECORD_MAX
        else:
            return records, buffer
        records.append(buffer[:cut])
        buffer = buffer[cut:]


def _claim_names(pod: Obj) -> list[str]:
    """The claims a pod's volumes need: persistentVolumeClaim ones and generic ephemeral."""
    names = []
    for volume in pod["spec"].get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            names.append(volume["persistentVolumeClaim"]["claimName"])
        elif "ephemeral" in volume:
            names.append(f"{pod['metadata']['name']}-{volume['name']}")
    return names


def _image_repository(image: str) -> str:
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def _image_id(image: str) -> str:
    digest = hashlib.sha256(image.encode()).hexdigest()
    return f"{_image_repository(image)}@sha256:{digest}"


def _set_condition(
    status: Obj, kind: str, value: bool, reason: str | None = None, message: str | None = None
) -> None:
    conditions = status.setdefault("conditions", [])
    text = "True" if value else "False"
    old = next((c for c in conditions if c["type"] == kind), None)
    new: Obj = {"type": kind, "status": text, "lastProbeTime": None}
    changed = old is None or old.get("status") != text
    new["lastTransitionTime"] = _now() if changed or old is None else old["lastTransitionTime"]
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if old is None:
        conditions.append(new)
    else:
        conditions[conditions.index(old)] = new


def _container_status(
    container: Obj, state: Obj, *, container_id: str = "", started: bool = False
) -> Obj:
    status: Obj = {
        "name": container["name"],
        "image": container["image"],
        "imageID": _image_id(container["image"]) if container_id else "",
        "ready": "running" in state,
        "restartCount": 0,
        "started": started,
        "state": state,
    }
    if container_id:
        status["containerID"] = container_id
    return status


# --- validation and defaults -----------------------------------------------------------------

_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_FIELD_REFS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
    "spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP",
    "status.podIPs",
)  # fmt: skip
_STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_SERVER_METADATA = (
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink",
)  # fmt: skip


def _check_strings(path: str, values: Any) -> None:
    """Raises like the apiserver's JSON decoder when a string field holds something else."""
    items = values.items() if isinstance(values, dict) else enumerate(values or [])
    for key, value in items:
        if not isinstance(value, str):
            kind = "number" if isinstance(value, int | float) else type(value).__name__
            raise _DecodeError(
                f"json: cannot unmarshal {kind} into Go struct field {path} "
                f"of type string (at {key!r})"
            )


def _is_extended(resource: str) -> bool:
    return "/" in resource


def _resource_causes(resources: Obj, path: str) -> list[Cause]:
    causes = []
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    for kind, values in (("limits", limits), ("requests", requests)):
        for name, raw in values.items():
            where = f"{path}.{kind}[{name}]"
            standard = name in _STANDARD_RESOURCES or name.startswith("hugepages-")
            if not standard and not _is_extended(name):
                rule = "must be a standard resource type or fully qualified"
                causes.append(_bad_value(where, name, rule))
            amount = parse_quantity(raw)
            if amount < 0:
                causes.append(_bad_value(where, str(raw), "must be greater than or equal to 0"))
            if _is_extended(name) and amount != amount.to_integral_value():
                causes.append(_bad_value(where, str(raw), "must be an integer"))
    for name, raw in requests.items():
        if name not in limits:
            if _is_extended(name):
                causes.append(
                    _required(
                        f"{path}.limits", "Limit must be set for non overcommitable resources"
                    )
                )
        elif _is_extended(name) and parse_quantity(raw) != parse_quantity(limits[name]):
            causes.append(
                _bad_value(
                    f"{path}.requests[{name}]",
                    str(raw),
                    f"must be equal to {name} limit of {limits[name]}",
                )
            )
        elif parse_quantity(raw) > parse_quantity(limits[name]):
            causes.append(
                _bad_value(
                    f"{path}.requests",
                    str(raw),
                    f"must be less than or equal to {name} limit of {limits[name]}",
                )
            )
    return causes


def _claim_spec_causes(spec: Obj, path: str) -> list[Cause]:
    causes = []
    modes = spec.get("accessModes") or []
    if not modes:
        causes.append(_required(f"{path}.accessModes", "at least 1 access mode is required"))
    causes += [
        _unsupported(f"{path}.accessModes", m, _ACCESS_MODES)
        for m in modes
        if m not in _ACCESS_MODES
    ]
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if storage is None:
        causes.append(_required(f"{path}.resources[storage]"))
    elif parse_quantity(storage) <= 0:
        causes.append(
            _bad_value(f"{path}.resources[storage]", str(storage), "must be greater than zero")
        )
    return causes


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _secret_causes(secret: Obj) -> list[Cause]:
    causes = []
    for field_name in ("data", "stringData"):
        values = secret.get(field_name) or {}
        if not isinstance(values, dict):
            causes.append(_bad_value(field_name, values, "must be an object"))
            continue
        for key, value in values.items():
            path = f"{field_name}[{key}]"
            if len(key) > 253 or not _SECRET_KEY.fullmatch(key):
                rule = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
                causes.append(_bad_value(path, key, rule))
            if not isinstance(value, str):
                causes.append(_bad_value(path, value, "must be a string"))
            elif field_name == "data":
                try:
                    base64.b64decode(value, validate=True)
                except binascii.Error:
                    causes.append(_bad_value(path, "<value>", "must be base64"))
    return causes


def _config_map_causes(config_map: Obj) -> list[Cause]:
    causes = []
    values = config_map.get("data") or {}
    if not isinstance(values, dict):
        return [_bad_value("data", values, "must be an object")]
    for key, value in values.items():
        if len(key) > 253 or not _SECRET_KEY.fullmatch(key):
            rule = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            causes.append(_bad_value(f"data[{key}]", key, rule))
        if not isinstance(value, str):
            causes.append(_bad_value(f"data[{key}]", value, "must be a string"))
    return causes


def _fold_string_data(secret: Obj) -> None:
    """As the apiserver stores a secret: ``stringData`` merged into ``data``, base64."""
    data = dict(secret.get("data") or {})
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(value.encode()).decode()
    secret["data"] = data
    secret.setdefault("type", "Opaque")


def _metadata_causes(meta: Obj) -> list[Cause]:
    """Labels and annotations (names are checked once generateName has made one)."""
    _check_strings("ObjectMeta.metadata.labels", meta.get("labels"))
    _check_strings("ObjectMeta.metadata.annotations", meta.get("annotations"))
    return _label_causes("metadata.labels", meta.get("labels") or {})


def _pod_causes(pod: Obj) -> list[Cause]:
    """What the apiserver's validation says of a pod (a useful subset); _DecodeError if the
    body would not even decode."""
    causes = _metadata_causes(pod["metadata"])
    spec = pod.get("spec") or {}
    volume_names: set[str] = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        path = f"spec.volumes[{i}]"
        name = volume.get("name", "")
        causes += _dns_label_causes(f"{path}.name", name)
        if name in volume_names:
            causes.append((f"{path}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        volume_names.add(name)
        if "persistentVolumeClaim" in volume and not volume["persistentVolumeClaim"].get(
            "claimName"
        ):
            causes.append(_required(f"{path}.persistentVolumeClaim.claimName"))
        if "ephemeral" in volume:
            template = volume["ephemeral"].get("volumeClaimTemplate")
            where = f"{path}.ephemeral.volumeClaimTemplate"
            if not template:
                causes.append(_required(where))
            else:
                causes += _claim_spec_causes(template.get("spec") or {}, f"{where}.spec")
    containers = spec.get("containers") or []
    if not containers:
        causes.append(_required("spec.containers"))
    container_names: set[str] = set()
    for i, container in enumerate(containers):
        path = f"spec.containers[{i}]"
        name = container.get("name", "")
        causes += _dns_label_causes(f"{path}.name", name)
        if name in container_names:
            causes.append((f"{path}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        container_names.add(name)
        if not container.get("image"):
            causes.append(_required(f"{path}.image"))
        _check_strings("Container.spec.containers.command", container.get("command") or [])
        _check_strings("Container.spec.containers.args", container.get("args") or [])
        for j, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volume_names:
                message = f'Not found: "{mount.get("name", "")}"'
                causes.append((f"{path}.volumeMounts[{j}].name", "FieldValueNotFound", message))
            if not mount.get("mountPath"):
                causes.append(_required(f"{path}.volumeMounts[{j}].mountPath"))
        for j, env in enumerate(container.get("env") or []):
            if not env.get("name"):
                causes.append(_required(f"{path}.env[{j}].name"))
            if "value" in env:
                _check_strings("EnvVar.spec.containers.env.value", {env.get("name"): env["value"]})
            ref = (env.get("valueFrom") or {}).get("fieldRef")
            if ref and not _supported_field_ref(ref.get("fieldPath", "")):
                where = f"{path}.env[{j}].valueFrom.fieldRef.fieldPath"
                causes.append(_unsupported(where, ref.get("fieldPath", ""), _FIELD_REFS))
        causes += _resource_causes(container.get("resources") or {}, f"{path}.resources")
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in _RESTART_POLICIES:
        causes.append(_unsupported("spec.restartPolicy", policy, _RESTART_POLICIES))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and not (isinstance(deadline, int) and 1 <= deadline <= 2**31 - 1):
        causes.append(
            _bad_value(
                "spec.activeDeadlineSeconds",
                deadline,
                "must be between 1 and 2147483647, inclusive",
            )
        )
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        causes.append(
            _bad_value(
                "spec.terminationGracePeriodSeconds", grace, "must be greater than or equal to 0"
            )
        )
    return causes


def _supported_field_ref(path: str) -> bool:
    return path in _FIELD_REFS or bool(
        re.fullmatch(r"metadata\.(labels|annotations)\['[^']+'\]", path)
    )


def _apply_pod_defaults(pod: Obj) -> None:
    """The defaults the apiserver fills in (the ones a launcher may read back)."""
    spec = pod["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    for container in spec["containers"]:
        image = container["image"]
        tag = "" if "@" in image else image[len(_image_repository(image)) + 1 :]
        container.setdefault(
            "imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent"
        )
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        if resources.get("limits"):
            requests = resources.setdefault("requests", {})
            for name, amount in resources["limits"].items():
                requests.setdefault(name, amount)


def _qos_class(pod: Obj) -> str:
    any_set, guaranteed = False, True
    for container in pod["spec"]["containers"]:
        limits = container["resources"].get("limits") or {}
        requests = container["resources"].get("requests") or {}
        for name in ("cpu", "memory"):
            any_set = any_set or name in limits or name in requests
            if name not in limits or parse_quantity(limits[name]) != parse_quantity(
                requests.get(name, limits[name])
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _insufficient(pod: Obj) -> list[str]:
    """The resources the pod requests more of than the fake node has."""
    totals: dict[str, Decimal] = {}
    for container in pod["spec"]["containers"]:
        for name, amount in (container["resources"].get("requests") or {}).items():
            totals[name] = totals.get(name, Decimal(0)) + parse_quantity(amount)
    node = {name: parse_quantity(amount) for name, amount in NODE_ALLOCATABLE.items()}
    return sorted(name for name, total in totals.items() if total > node.get(name, Decimal(0)))


def _decode(body: bytes, kind: str) -> Obj:
    try:
        obj = json.loads(body or b"null")
    except ValueError as error:
        raise _bad_request(f"the body of the request was in an unknown format: {error}") from None
    if not isinstance(obj, dict) or obj.get("kind", kind) != kind:
        raise _bad_request(f"the object provided is unrecognized (must be of type {kind})")
    obj["kind"], obj["apiVersion"] = kind, "v1"
    if not isinstance(obj.get("metadata", {}), dict):
        raise _bad_request("metadata must be an object")
    meta = obj.setdefault("metadata", {})
    for server_field in _SERVER_METADATA:  # the server sets these, whatever the client says
        meta.pop(server_field, None)
    obj.pop("status", None)
    return obj


# --- the state of the kubelet --------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """One entry of the watch history."""

    rv: int
    resource: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj  # published objects are never mutated
    old: Obj | None

    def seen_through(
        self, resource: str, namespace: str | None, selector: _Selector
    ) -> tuple[str, Obj] | None:
        """The event a watch with this selector gets for the change, if any: an object that
        starts (stops) matching is ADDED (DELETED) for it, as with a real apiserver."""
        if self.resource != resource or namespace not in (None, self.namespace):
            return None
        now = selector.matches(self.obj)
        if self.type != "MODIFIED":
            return (self.type, self.obj) if now else None
        before = self.old is not None and selector.matches(self.old)
        if now:
            return ("MODIFIED" if before else "ADDED", self.obj)
        if not before or self.old is None:
            return None
        # What it was when it last matched, at the version of the change (as the cacher).
        meta = {**self.old["metadata"], "resourceVersion": str(self.rv)}
        return ("DELETED", {**self.old, "metadata": meta})


@dataclass(eq=False)
class _PodRuntime:
    """What the kubelet knows of one pod (one incarnation of a name); times are monotonic."""

    namespace: str
    name: str
    uid: str
    pod: Obj  # as created: the spec never changes
    proc: subprocess.Popen[bytes] | None = None
    container_id: str = ""
    log: list[tuple[int, bytes]] = field(default_factory=list)  # (unix ns, record)
    log_closed: bool = False  # the container is gone and all its output is in `log`
    finished: bool = False  # no process any more, final status written
    removed: bool = False  # the pod object is gone from the API
    delete_requested: bool = False
    deleting: bool = False  # remove the pod once its process is gone
    cause: str | None = None  # why the kubelet kills the container: oom, evict, deadline
    deadline_at: float | None = None
    simulate_at: float | None = None
    term_at: float | None = None
    kill_at: float | None = None
    term_sent: bool = False
    kill_sent: bool = False
    child_oom: bool = False  # oom-child: a child was killed, the main process lives on
    wedged: bool = False  # stuck-terminating: the node no longer reports anything

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def simulation(self) -> str:
        return (self.pod["metadata"].get("annotations") or {}).get(SIMULATE, "")

    @property
    def container(self) -> Obj:
        return self.pod["spec"]["containers"][0]

    @property
    def running(self) -> bool:
        return self.proc is not None and not self.finished


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path_contains: str
    after_apply: bool  # the request takes effect, then its answer is "lost"

    def error(self) -> ApiError:
        reason = _REASONS.get(self.status, HTTPStatus(self.status).phrase)
        message = f"injected by FakeCluster.fail_next ({self.status})"
        if self.status == 500:
            message = f"Internal error occurred: {message}"
        return ApiError(self.status, reason, message)


class _Stream:
    """An open streaming response (watch or followed log), so that it can be expired or cut."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.expired = False  # a watch: send the 410 ERROR event and end
        self.dropped = False  # end without the final chunk

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            return bool(readable) and self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


@dataclass
class _LogOptions:
    timestamps: bool = False
    since_ns: int | None = None
    tail_lines: int | None = None
    limit_bytes: int | None = None

    @classmethod
    def parse(cls, query: dict[str, str]) -> _LogOptions:
        options = cls(timestamps=_flag(query, "timestamps"))
        options.tail_lines = _int_param(query, "tailLines")
        options.limit_bytes = _int_param(query, "limitBytes", minimum=1)
        since_seconds = _int_param(query, "sinceSeconds", minimum=1)
        if since_seconds is not None and "sinceTime" in query:
            raise _bad_request("at most one of `sinceTime` or `sinceSeconds` may be specified")
        if since_seconds is not None:
            options.since_ns = time.time_ns() - since_seconds * 1_000_000_000
        elif "sinceTime" in query:
            try:
                since = datetime.fromisoformat(query["sinceTime"])
            except ValueError:
                raise _bad_request(f"sinceTime: invalid time {query['sinceTime']!r}") from None
            options.since_ns = int(since.timestamp()) * 1_000_000_000
        return options

    def select(self, records: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if self.since_ns is not None:
            records = [r for r in records if r[0] >= self.since_ns]
        if self.tail_lines is None:
            return records
        lines = 0
        for i in range(len(records) - 1, -1, -1):
            if records[i][1].endswith(b"\n"):
                lines += 1
                if lines > self.tail_lines:
                    return records[i + 1 :]
        return records

    def render(self, record: tuple[int, bytes]) -> bytes:
        stamp, data = record
        return _rfc3339nano(stamp).encode() + b" " + data if self.timestamps else data


@dataclass
class _Reply:
    code: int
    body: bytes
    content_type: str = "application/json"


@dataclass
class _StreamReply:
    content_type: str
    produce: Callable[[_Stream], Iterator[bytes]]


def _json_reply(code: int, obj: Obj) -> _Reply:
    return _Reply(code, json.dumps(obj, separators=(",", ":")).encode())


def _event_line(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


# --- the cluster ---------------------------------------------------------------------------

_RESOURCES = "(pods|persistentvolumeclaims|events|secrets|configmaps)"
_ITEM = re.compile(rf"/api/v1/namespaces/([^/]+)/{_RESOURCES}/([^/]+)")
_COLLECTION = re.compile(rf"/api/v1/namespaces/([^/]+)/{_RESOURCES}")
_ALL_NAMESPACES = re.compile(rf"/api/v1/{_RESOURCES}")
_LOG = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log")


class FakeCluster:
    """A one-node cluster: the API server, its watch history, and the kubelet's processes."""

    def __init__(self, workdir: Path, *, node_ip: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.node_ip = node_ip
        self.url = ""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every change
        self._rv = 1000  # as etcd's revision, never 0: "0" means "any version" to a watch
        self._oldest_watchable = self._rv  # older ones are too old (expire_watches moves it)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in _KINDS}
        self._history: list[_Change] = []
        self._runtimes: dict[tuple[str, str], _PodRuntime] = {}
        self._every_runtime: list[_PodRuntime] = []
        self._kubelets: list[threading.Thread] = []
        self._streams: set[_Stream] = set()
        self._faults: list[_Fault] = []
        self._hooks: list[tuple[str, str, Callable[[], None]]] = []
        self._requests: list[tuple[str, str]] = []
        self._deleted_pods: list[str] = []
        self._event_stamp = 0
        self._stopping = False
        self._server: _Server | None = None
        self._serving: threading.Thread | None = None
        # The Kubernetes version served; before 1.21 a pod with a generic ephemeral volume
        # is refused as a real 1.20 server without its feature gate refuses it.
        self.version = (1, 31)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeCluster:
        """Serves in a daemon thread; returns self (also a context manager)."""
        if self._server is not None:
            raise RuntimeError("the fake cluster is started already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._serving = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL},
            name="fake-k8s-server",
            daemon=True,
        )
        self._serving.start()
        return self

    def stop(self) -> None:
        """Kills every pod process group, cuts open streams and stops serving."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            processes = [rt.proc for rt in self._every_runtime if rt.running and rt.proc]
            streams = list(self._streams)
            for stream in streams:
                stream.dropped = True
            self._changed.notify_all()
        for process in processes:
            _killpg(process.pid, signal.SIGKILL)
        for stream in streams:
            stream.cut()
        for thread in self._kubelets:
            thread.join(timeout=10)
        if self._server is not None and self._serving is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._serving.join(timeout=10)

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def write_kubeconfig(
        self, path: Path, context: str = "fake", namespace: str = "default"
    ) -> Path:
        """A kubeconfig with one cluster (this server, no TLS), one user (token) and one
        context, current. Written as JSON, which is YAML."""
        if not self.url:
            raise RuntimeError("start() the fake cluster before writing its kubeconfig")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    # --- inspection ---------------------------------------------------------------------------

    def pods(self, namespace: str | None = None) -> list[Obj]:
        return self._copies("pods", namespace)

    def pod(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return copy.deepcopy(self._objects["pods"].get((namespace, name)))

    def claims(self, namespace: str | None = None) -> list[Obj]:
        return self._copies("persistentvolumeclaims", namespace)

    def secrets(self, namespace: str | None = None) -> list[Obj]:
        return self._copies("secrets", namespace)

    def config_maps(self, namespace: str | None = None) -> list[Obj]:
        return self._copies("configmaps", namespace)

    def events(self, namespace: str | None = None) -> list[Obj]:
        return self._copies("events", namespace)

    def deleted_pods(self) -> list[str]:
        """The pods a DELETE was accepted for, as "namespace/name", in order."""
        with self._lock:
            return list(self._deleted_pods)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path without the query) of every request, in order."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            time.sleep(0.02)

    def _copies(self, resource: str, namespace: str | None) -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in self._objects[resource].items()
                if namespace in (None, ns)
            ]

    # --- fault injection ------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        method: str | None = None,
        path_contains: str = "",
        *,
        after_apply: bool = False,
    ) -> None:
        """The next `count` matching requests get `status` with a Status body. With
        `after_apply` each request takes effect first, as when only the answer is lost."""
        with self._lock:
            method = method.upper() if method else None
            self._faults.append(_Fault(count, status, method, path_contains, after_apply))

    def after_next(self, method: str, path_contains: str, action: Callable[[], None]) -> None:
        """Runs `action` once, in the server, right after the next matching request took
        effect and before it is answered: what another client did at that very moment."""
        with self._lock:
            self._hooks.append((method.upper(), path_contains, action))

    def backdate(self, resource: str, namespace: str, name: str, seconds: float) -> None:
        """Moves an object's creationTimestamp `seconds` into the past, as if it had been
        created then (a new resourceVersion, a MODIFIED event)."""
        with self._lock:
            obj = copy.deepcopy(self._objects[resource][(namespace, name)])
            created = datetime.fromisoformat(obj["metadata"]["creationTimestamp"])
            earlier = time.gmtime(created.timestamp() - seconds)
            obj["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", earlier)
            self._publish_locked(resource, obj, "MODIFIED")

    def expire_watches(self) -> None:
        """Every open watch gets a 410 Expired ERROR event and ends; watching from any
        resourceVersion seen so far gets the same at once (a fresh list gives a good one)."""
        with self._lock:
            self._rv += 1  # a compaction: what lists return from now on stays watchable
            self._oldest_watchable = self._rv
            for stream in self._streams:
                stream.expired = True
            self._changed.notify_all()

    def drop_connections(self) -> None:
        """Closes every open streaming response (watches, followed logs) abruptly."""
        with self._lock:
            streams = list(self._streams)
            for stream in streams:
                stream.dropped = True
            self._changed.notify_all()
        for stream in streams:
            stream.cut()

    # --- serving (called by the request handler) --------------------------------------------

    def _serve(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        auth: str | None,
        content_type: str = "",
    ) -> _Reply | _StreamReply:
        with self._lock:
            self._requests.append((method, path))
            fault = self._take_fault_locked(method, path)
        if auth is not None and auth != f"Bearer {TOKEN}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if self._stopping:
            raise ApiError(503, "ServiceUnavailable", "the server is shutting down")
        if fault is not None:
            if fault.after_apply:  # done, whatever the outcome; a stream is never started
                with contextlib.suppress(ApiError):
                    self._route(method, path.rstrip("/") or "/", query, body, content_type)
            raise fault.error()
        reply = self._route(method, path.rstrip("/") or "/", query, body, content_type)
        with self._lock:
            hook = next((h for h in self._hooks if h[0] == method and h[1] in path), None)
            if hook is not None:
                self._hooks.remove(hook)
        if hook is not None:
            hook[2]()
        return reply

    def _take_fault_locked(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method in (None, method) and fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str = ""
    ) -> _Reply | _StreamReply:
        handlers: list[tuple[re.Pattern[str] | str, dict[str, Callable[..., Any]]]] = [
            ("/api", {"GET": self._api_versions}),
            ("/api/v1", {"GET": self._api_resources}),
            ("/version", {"GET": self._version}),
            (_LOG, {"GET": lambda ns, name: self._read_log(ns, name, query)}),
            (_ITEM, {
                "GET": self._get,
                "PUT": lambda ns, res, name: self._replace(ns, res, name, body),
                "PATCH": lambda ns, res, name: self._patch(ns, res, name, body, content_type),
                "DELETE": lambda ns, res, name: self._delete(ns, res, name, query, body),
            }),
            (_COLLECTION, {
                "GET": lambda ns, res: self._list(res, ns, query),
                "POST": lambda ns, res: self._create(ns, res, query, body),
            }),
            (_ALL_NAMESPACES, {"GET": lambda res: self._list(res, None, query)}),
        ]  # fmt: skip
        for pattern, methods in handlers:
            if isinstance(pattern, str):
                match = () if path == pattern else None
            else:
                found = pattern.fullmatch(path)
                match = found.groups() if found else None
            if match is None:
                continue
            if method not in methods:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            return methods[method](*match)
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    def _api_versions(self) -> _Reply:
        address = self.url.removeprefix("http://")
        cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]
        return _json_reply(
            200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": cidrs}
        )

    def _api_resources(self) -> _Reply:
        def resource(name: str, singular: str, kind: str, verbs: list[str]) -> Obj:
            return {
                "name": name,
                "singularName": singular,
                "namespaced": True,
                "kind": kind,
                "verbs": verbs,
            }

        crud = ["create", "delete", "get", "list", "watch"]
        resources = [
            resource("events", "event", "Event", ["get", "list", "watch"]),
            resource(
                "persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", crud
            ),
            resource("pods", "pod", "Pod", [*crud, "patch"]),
            resource("pods/log", "", "Pod", ["get"]),
            resource("secrets", "secret", "Secret", [*crud, "patch", "update"]),
            resource("configmaps", "configmap", "ConfigMap", crud),
        ]
        return _json_reply(
            200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        )

    def _version(self) -> _Reply:
        major, minor = self.version
        info = {
            "major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0-fake",
            "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64",
        }  # fmt: skip
        return _json_reply(200, info)

    def _get(self, namespace: str, resource: str, name: str) -> _Reply:
        with self._lock:
            obj = self._objects[resource].get((namespace, name))
            if obj is None:
                raise _not_found(resource, name)
            return _json_reply(200, obj)

    def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> Any:
        selector = _parse_selector(
            resource, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        if _flag(query, "watch"):
            return self._watch(resource, namespace, selector, query)
        with self._lock:
            items = [
                {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                for (ns, _), obj in sorted(self._objects[resource].items())
                if namespace in (None, ns) and selector.matches(obj)
            ]
            metadata = {"resourceVersion": str(self._rv)}
        kind = _KINDS[resource] + "List"
        return _json_reply(
            200, {"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items}
        )

    def _watch(
        self, resource: str, namespace: str | None, selector: _Selector, query: dict[str, str]
    ) -> _StreamReply:
        since = query.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise _bad_request(f'resourceVersion: Invalid value: "{since}": must be an integer')
        timeout = _int_param(query, "timeoutSeconds")
        # allowWatchBookmarks is accepted; bookmarks are optional and this server sends none.

        def produce(stream: _Stream) -> Iterator[bytes]:
            yield from self._watch_events(stream, resource, namespace, selector, since, timeout)

        return _StreamReply("application/json", produce)

    def _watch_events(
        self,
        stream: _Stream,
        resource: str,
        namespace: str | None,
        selector: _Selector,
        since: str,
        timeout: int | None,
    ) -> Iterator[bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if since in ("", "0"):  # the current state as ADDED events, then what changes
                initial = [
                    _event_line("ADDED", obj)
                    for (ns, _), obj in sorted(self._objects[resource].items())
                    if namespace in (None, ns) and selector.matches(obj)
                ]
                cursor = len(self._history)
            elif int(since) < self._oldest_watchable:
                initial, cursor = [_event_line("ERROR", _too_old(int(since), self._rv))], -1
            else:
                initial = []
                cursor = bisect.bisect_right(self._history, int(since), key=lambda c: c.rv)
        yield from initial
        while cursor >= 0:
            with self._lock:
                while not (stream.expired or stream.dropped or self._stopping):
                    if cursor < len(self._history):
                        break
                    remaining = 1.0 if deadline is None else deadline - time.monotonic()
                    if remaining <= 0 or stream.client_gone():
                        return
                    self._changed.wait(min(remaining, 1.0))
                if stream.dropped or self._stopping:
                    return
                if stream.expired:
                    lines = [_event_line("ERROR", _too_old(self._oldest_watchable - 1, self._rv))]
                    changes, cursor = [], -1
                else:
                    lines, changes = [], self._history[cursor:]
                    cursor = len(self._history)
            for change in changes:
                event = change.seen_through(resource, namespace, selector)
                if event is not None:
                    lines.append(_event_line(*event))
            yield from lines

    def _open_stream(self, stream: _Stream) -> bool:
        with self._lock:
            if self._stopping:
                return False
            self._streams.add(stream)
            return True

    def _close_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    # --- pod logs ---------------------------------------------------------------------------

    def _read_log(self, namespace: str, name: str, query: dict[str, str]) -> Any:
        options = _LogOptions.parse(query)
        with self._lock:
            pod = self._objects["pods"].get((namespace, name))
            if pod is None:
                raise _not_found("pods", name)
            runtime = self._runtimes[(namespace, name)]
            names = [c["name"] for c in pod["spec"]["containers"]]
            container = query.get("container", "")
            if not container:
                if len(names) != 1:
                    raise _bad_request(
                        f"a container name must be specified for pod {name}, "
                        f"choose one of: [{' '.join(names)}]"
                    )
                container = names[0]
            if container not in names:
                raise _bad_request(f"container {container} is not valid for pod {name}")
            if not pod["spec"].get("nodeName"):
                return _Reply(200, b"", "text/plain")  # no node: the apiserver streams nothing
            statuses = {s["name"]: s for s in pod["status"].get("containerStatuses") or []}
            state = statuses.get(container, {}).get("state", {})
            if "running" not in state and "terminated" not in state:
                raise _bad_request(_waiting_message(container, name, state.get("waiting")))
            if not _flag(query, "follow"):
                records = options.select(runtime.log)
                body = b"".join(options.render(r) for r in records)
                return _Reply(200, body[: options.limit_bytes], "text/plain")

        def produce(stream: _Stream) -> Iterator[bytes]:
            yield from self._follow_log(stream, runtime, options)

        return _StreamReply("text/plain", produce)

    def _follow_log(
        self, stream: _Stream, runtime: _PodRuntime, options: _LogOptions
    ) -> Iterator[bytes]:
        budget = options.limit_bytes
        with self._lock:
            records, cursor = options.select(list(runtime.log)), len(runtime.log)
        while True:
            for record in records:
                data = options.render(record)
                if budget is not None:
                    data, budget = data[:budget], budget - len(data[:budget])
                yield data
                if budget == 0:
                    return
            with self._lock:
                while cursor == len(runtime.log) and not runtime.log_closed:
                    if stream.dropped or self._stopping or stream.client_gone():
                        return
                    self._changed.wait(1.0)
                if stream.dropped or self._stopping:
                    return
                records, cursor = runtime.log[cursor:], len(runtime.log)
            if not records:
                return  # the container is gone and everything was sent

    # --- create and delete -----------------------------------------------------------------

    def _create(self, namespace: str, resource: str, query: dict[str, str], body: bytes) -> Any:
        if resource == "events":
            raise ApiError(405, "MethodNotAllowed", "this fake records events itself")
        kind = _KINDS[resource]
        obj = _decode(body, kind)
        try:
            if resource == "pods":
                causes = _pod_causes(obj)
            elif resource == "secrets":
                causes = _metadata_causes(obj["metadata"]) + _secret_causes(obj)
            elif resource == "configmaps":
                causes = _metadata_causes(obj["metadata"]) + _config_map_causes(obj)
            else:
                causes = _metadata_causes(obj["metadata"])
                causes += _claim_spec_causes(obj.get("spec") or {}, "spec")
        except _DecodeError as error:
            raise _bad_request(
                f'{kind} in version "v1" cannot be handled as a {kind}: {error}'
            ) from None
        dry_run = query.get("dryRun") == "All"
        with self._lock:
            if self._stopping:  # stop() joins the kubelets it knows: no new ones
                raise ApiError(503, "ServiceUnavailable", "the server is shutting down")
            name = self._assign_name_locked(resource, namespace, obj)
            if name:
                causes = _subdomain_causes("metadata.name", name) + causes
            else:
                causes.insert(0, _required("metadata.name", "name or generateName is required"))
            if resource == "pods" and self.version < (1, 21):
                causes += _without_ephemeral_volumes(obj)
            if causes:
                raise _invalid(kind, name, causes)
            if (namespace, name) in self._objects[resource]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{name}" already exists',
                    {"name": name, "kind": resource},
                )
            if resource == "pods":
                return _json_reply(201, self._create_pod_locked(obj, dry_run))
            if resource in ("secrets", "configmaps"):
                meta = obj["metadata"]
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
                if resource == "secrets":
                    _fold_string_data(obj)
                return _json_reply(
                    201, obj if dry_run else self._publish_locked(resource, obj, "ADDED")
                )
            claim = self._claim_object(namespace, name, obj["metadata"], obj["spec"])
            return _json_reply(
                201,
                claim
                if dry_run
                else self._publish_locked("persistentvolumeclaims", claim, "ADDED"),
            )

    def _assign_name_locked(self, resource: str, namespace: str, obj: Obj) -> str:
        meta = obj["metadata"]
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        meta["namespace"] = namespace
        name = meta.get("name") or ""
        while not name and meta.get("generateName"):
            suffix = "".join("bcdfghjklmnpqrstvwxz2456789"[b % 27] for b in uuid.uuid4().bytes[:5])
            candidate = meta["generateName"] + suffix
            if (namespace, candidate) not in self._objects[resource]:
                name = candidate
        meta["name"] = name
        return name

    def _create_pod_locked(self, pod: Obj, dry_run: bool) -> Obj:
        meta = pod["metadata"]
        _apply_pod_defaults(pod)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        pod["status"] = {"phase": "Pending", "qosClass": _qos_class(pod)}
        if dry_run:
            return pod
        stored = self._publish_locked("pods", pod, "ADDED")
        namespace, name = meta["namespace"], meta["name"]
        # The ephemeral volume controller makes the claims of generic ephemeral volumes.
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": name,
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for volume in pod["spec"].get("volumes") or []:
            if "ephemeral" not in volume:
                continue
            claim_name = f"{name}-{volume['name']}"
            if (namespace, claim_name) in self._objects["persistentvolumeclaims"]:
                continue
            template = volume["ephemeral"]["volumeClaimTemplate"]
            claim_meta = copy.deepcopy(template.get("metadata") or {})
            claim_meta["ownerReferences"] = [owner]
            claim = self._claim_object(namespace, claim_name, claim_meta, template["spec"])
            self._publish_locked("persistentvolumeclaims", claim, "ADDED")
        runtime = _PodRuntime(namespace, name, meta["uid"], copy.deepcopy(stored))
        self._runtimes[runtime.key] = runtime
        self._every_runtime.append(runtime)
        kubelet = threading.Thread(
            target=self._kubelet, args=(runtime,), name=f"fake-kubelet-{name}", daemon=True
        )
        self._kubelets.append(kubelet)
        kubelet.start()
        return stored

    @staticmethod
    def _claim_object(namespace: str, name: str, metadata: Obj, spec: Obj) -> Obj:
        """A claim as stored once bound (this cluster provisions every claim at once)."""
        uid = str(uuid.uuid4())
        meta = {**copy.deepcopy(metadata), "name": name, "namespace": namespace, "uid": uid}
        meta["creationTimestamp"] = _now()
        meta["finalizers"] = ["kubernetes.io/pvc-protection"]
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            "pv.kubernetes.io/bind-completed": "yes",
        }
        spec = copy.deepcopy(spec)
        spec.setdefault("storageClassName", "standard")
        spec.setdefault("volumeMode", "Filesystem")
        spec["volumeName"] = f"pvc-{uid}"
        status = {
            "phase": "Bound",
            "accessModes": list(spec["accessModes"]),
            "capacity": {"storage": str(spec["resources"]["requests"]["storage"])},
        }
        return {
            "kind": "PersistentVolumeClaim",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": spec,
            "status": status,
        }

    def _replace(self, namespace: str, resource: str, name: str, body: bytes) -> _Reply:
        """PUT, for secrets only: the whole object anew (no resourceVersion check)."""
        if resource != "secrets":
            raise ApiError(405, "MethodNotAllowed", f"this fake does not update {resource}")
        obj = _decode(body, "Secret")
        causes = _metadata_causes(obj["metadata"]) + _secret_causes(obj)
        if obj["metadata"].get("name") not in (None, name):
            causes.append(_bad_value("metadata.name", obj["metadata"]["name"], "must match URL"))
        if causes:
            raise _invalid("Secret", name, causes)
        with self._lock:
            old = self._objects[resource].get((namespace, name))
            if old is None:
                raise _not_found(resource, name)
            meta = obj["metadata"]
            meta.update(
                name=name,
                namespace=namespace,
                uid=old["metadata"]["uid"],
                creationTimestamp=old["metadata"]["creationTimestamp"],
            )
            _fold_string_data(obj)
            return _json_reply(200, self._publish_locked(resource, obj, "MODIFIED"))

    def _patch(
        self, namespace: str, resource: str, name: str, body: bytes, content_type: str
    ) -> _Reply:
        """A strategic-merge or merge patch of the metadata (labels, annotations, owners)
        of a pod or secret: maps merge key by key (null removes one); owners merge by uid
        in a strategic merge and are replaced in a merge patch."""
        if resource not in ("pods", "secrets"):
            raise ApiError(405, "MethodNotAllowed", f"this fake does not patch {resource}")
        kind = content_type.split(";")[0].strip()
        if kind not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({kind or 'no content type'}"
                "): this fake takes strategic-merge and merge patches",
            )
        try:
            patch = json.loads(body or b"null")
        except ValueError:
            raise _bad_request("the body of the request was in an unknown format") from None
        if not isinstance(patch, dict) or set(patch) - {"metadata"}:
            raise ApiError(415, "UnsupportedMediaType", "this fake patches metadata only")
        changes = patch.get("metadata") or {}
        allowed = {"labels", "annotations", "ownerReferences"}
        if not isinstance(changes, dict) or set(changes) - allowed:
            raise _bad_request(f"this fake patches only metadata {sorted(allowed)}")
        with self._lock:
            old = self._objects[resource].get((namespace, name))
            if old is None:
                raise _not_found(resource, name)
            obj = copy.deepcopy(old)
            meta = obj["metadata"]
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                elif key == "ownerReferences":
                    if not isinstance(value, list):
                        raise _bad_request("metadata.ownerReferences must be a list")
                    if kind == "application/strategic-merge-patch+json":
                        by_uid = {o.get("uid"): o for o in meta.get(key) or []}
                        by_uid.update({o.get("uid"): o for o in value})
                        value = list(by_uid.values())
                    meta[key] = value
                else:
                    if not isinstance(value, dict):
                        raise _bad_request(f"metadata.{key} must be an object")
                    merged = {**(meta.get(key) or {}), **value}
                    meta[key] = {k: v for k, v in merged.items() if v is not None}
            if obj == old:  # nothing changed: no new version, no event
                return _json_reply(200, old)
            kind_name = _KINDS[resource]
            causes = _metadata_causes(obj["metadata"])
            for i, owner in enumerate(obj["metadata"].get("ownerReferences") or []):
                for required in ("apiVersion", "kind", "name", "uid"):
                    if not owner.get(required):
                        path = f"metadata.ownerReferences[{i}].{required}"
                        causes.append(_required(path, f"{required} must not be empty"))
            if causes:
                raise _invalid(kind_name, name, causes)
            return _json_reply(200, self._publish_locked(resource, obj, "MODIFIED"))

    def _delete(
        self, namespace: str, resource: str, name: str, query: dict[str, str], body: bytes
    ) -> _Reply:
        # As the apiserver does: DeleteOptions from a body if there is one, else the query.
        if body.strip():
            try:
                options = json.loads(body)
            except ValueError:
                raise _bad_request("the body of the request was in an unknown format") from None
            if not isinstance(options, dict):
                raise _bad_request("DeleteOptions must be an object")
        else:
            options = {}
            grace = _int_param(query, "gracePeriodSeconds", minimum=-(2**31))
            if grace is not None:
                options["gracePeriodSeconds"] = grace
        with self._lock:
            obj = self._objects[resource].get((namespace, name))
            if obj is None:
                raise _not_found(resource, name)
            preconditions = options.get("preconditions") or {}
            for key, have in (
                ("uid", obj["metadata"]["uid"]),
                ("resourceVersion", obj["metadata"]["resourceVersion"]),
            ):
                if preconditions.get(key) not in (None, have):
                    field_name = "UID" if key == "uid" else "ResourceVersion"
                    raise ApiError(
                        409,
                        "Conflict",
                        f"Precondition failed: {field_name} in "
                        f"precondition: {preconditions[key]}, {field_name} in object "
                        f"meta: {have}",
                        {"name": name, "kind": resource},
                    )
            if resource == "pods":
                return _json_reply(200, self._delete_pod_locked(namespace, name, options))
            if resource == "persistentvolumeclaims":
                return _json_reply(200, self._delete_claim_locked(obj))
            return _json_reply(200, self._publish_locked(resource, copy.deepcopy(obj), "DELETED"))

    def _delete_pod_locked(self, namespace: str, name: str, options: Obj) -> Obj:
        runtime = self._runtimes[(namespace, name)]
        pod = self._objects["pods"][(namespace, name)]
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = max(0, int(grace))
        if not runtime.delete_requested:
            runtime.delete_requested = True
            self._deleted_pods.append(f"{namespace}/{name}")
        now = time.monotonic()
        if runtime.simulation == "stuck-terminating" and grace > 0:
            # A lost node: the API marks the pod, and nothing ever confirms its end.
            if not runtime.wedged:

                def terminating(pod: Obj) -> None:
                    deadline = time.gmtime(time.time() + grace)
                    pod["metadata"]["deletionTimestamp"] = time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", deadline
                    )
                    pod["metadata"]["deletionGracePeriodSeconds"] = grace

                self._update_pod_locked(runtime, terminating)
                runtime.wedged = True
            return self._objects["pods"][(namespace, name)]
        if not runtime.running or grace == 0:
            if runtime.running:
                # A forced deletion: the object goes now, and the kubelet, left with no grace
                # period from the API, stops the container with the pod's own (at least 1 s).
                own = max(1, pod["spec"].get("terminationGracePeriodSeconds", 30))
                runtime.deleting = True
                runtime.term_at = min(runtime.term_at or math.inf, now)
                runtime.kill_at = min(runtime.kill_at or math.inf, now + own)
                self._changed.notify_all()
            return self._remove_pod_locked(runtime)
        current = pod["metadata"].get("deletionGracePeriodSeconds")
        if current is None or grace < current:  # a deletion may shorten the grace period only

            def mark(pod: Obj) -> None:
                deadline = time.gmtime(time.time() + grace)
                pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", deadline)
                pod["metadata"]["deletionGracePeriodSeconds"] = grace

            self._update_pod_locked(runtime, mark)
            runtime.kill_at = min(runtime.kill_at or math.inf, now + grace)
        if not runtime.deleting:
            runtime.deleting = True
            runtime.term_at = min(runtime.term_at or math.inf, now)
            self._pod_event_locked(
                runtime, "Normal", "Killing", f"Stopping container {runtime.container['name']}"
            )
        self._changed.notify_all()
        return self._objects["pods"][(namespace, name)]

    def _remove_pod_locked(self, runtime: _PodRuntime) -> Obj:
        pod = copy.deepcopy(self._objects["pods"][runtime.key])
        pod["metadata"].setdefault("deletionTimestamp", _now())
        pod["metadata"].setdefault("deletionGracePeriodSeconds", 0)
        final = self._publish_locked("pods", pod, "DELETED")
        runtime.removed = True
        del self._runtimes[runtime.key]
        # The garbage collector deletes what the pod owned: its ephemeral claims.
        for claim in list(self._objects["persistentvolumeclaims"].values()):
            owners = claim["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == runtime.uid for o in owners):
                self._delete_claim_locked(claim)
        for secret in list(self._objects["secrets"].values()):  # and the secrets it owned
            owners = secret["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == runtime.uid for o in owners):
                self._publish_locked("secrets", copy.deepcopy(secret), "DELETED")
        self._release_claims_locked()
        return final

    def _delete_claim_locked(self, claim: Obj) -> Obj:
        namespace, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
        if not self._claim_in_use_locked(namespace, name):
            return self._drop_claim_locked(claim)
        if "deletionTimestamp" in claim["metadata"]:
            return claim
        # kubernetes.io/pvc-protection: the claim waits for the pods that use it
        claim = copy.deepcopy(claim)
        claim["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
        return self._publish_locked("persistentvolumeclaims", claim, "MODIFIED")

    def _drop_claim_locked(self, claim: Obj) -> Obj:
        claim = copy.deepcopy(claim)
        claim["metadata"].setdefault("deletionTimestamp", _now())
        claim["metadata"].pop("finalizers", None)
        return self._publish_locked("persistentvolumeclaims", claim, "DELETED")

    def _claim_in_use_locked(self, namespace: str, name: str) -> bool:
        return any(
            ns == namespace
            and pod["spec"].get("nodeName")
            and pod["status"].get("phase") not in ("Succeeded", "Failed")
            and name in _claim_names(pod)
            for (ns, _), pod in self._objects["pods"].items()
        )

    def _release_claims_locked(self) -> None:
        for (namespace, name), claim in list(self._objects["persistentvolumeclaims"].items()):
            if "deletionTimestamp" in claim["metadata"] and not self._claim_in_use_locked(
                namespace, name
            ):
                self._drop_claim_locked(claim)

    # --- the store ------------------------------------------------------------------------

    def _publish_locked(self, resource: str, obj: Obj, change: str) -> Obj:
        """Stores (or removes) an object under a new resourceVersion and records the change
        for watches. The object must not be mutated afterwards."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        store = self._objects[resource]
        old = store.get(key)
        if change == "DELETED":
            store.pop(key, None)
        else:
            store[key] = obj
        self._history.append(_Change(self._rv, resource, key[0], change, obj, old))
        self._changed.notify_all()
        return obj

    def _update_pod_locked(self, runtime: _PodRuntime, mutate: Callable[[Obj], None]) -> None:
        if runtime.removed or runtime.wedged:
            return
        pod = copy.deepcopy(self._objects["pods"][runtime.key])
        mutate(pod)
        self._publish_locked("pods", pod, "MODIFIED")

    def _event_locked(
        self,
        namespace: str,
        involved: Obj,
        kind: str,
        reason: str,
        message: str,
        component: str,
    ) -> None:
        now = _now()
        # Named "<object>.<unix nanoseconds in hex>" as by client-go, so they list in order.
        self._event_stamp = max(time.time_ns(), self._event_stamp + 1)
        event = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{involved['name']}.{self._event_stamp:x}",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now,
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": component, "host": NODE_NAME},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": kind,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME,
        }
        self._publish_locked("events", event, "ADDED")

    def _pod_event_locked(
        self,
        runtime: _PodRuntime,
        kind: str,
        reason: str,
        message: str,
        component: str = "kubelet",
        container: bool = True,
    ) -> None:
        involved = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": runtime.name,
            "namespace": runtime.namespace,
            "uid": runtime.uid,
        }
        if container and component == "kubelet":
            involved["fieldPath"] = f"spec.containers{{{runtime.container['name']}}}"
        self._event_locked(runtime.namespace, involved, kind, reason, message, component)

    # --- the kubelet (one thread per pod) ---------------------------------------------------

    def _kubelet(self, runtime: _PodRuntime) -> None:
        try:
            if not self._schedule(runtime) or not self._admit(runtime):
                return
            if runtime.simulation in ("image-pull", "config-error"):
                self._stay_waiting(runtime)
            elif self._pulled(runtime) and self._start_container(runtime):
                self._finish(runtime, self._supervise(runtime))
        except Exception as error:  # a bug of the fake: fail the pod visibly, leave nothing
            traceback.print_exc()
            if runtime.proc is not None:
                _killpg(runtime.proc.pid, signal.SIGKILL)
                self._finish(runtime, b"")
            else:
                with self._lock:
                    self._cannot_start_locked(runtime, "StartError", f"fake kubelet: {error!r}")

    def _pulled(self, runtime: _PodRuntime) -> bool:
        """Waits the pod's ``fake.reflow.io/pull-seconds`` (its image being pulled); False
        when the pod goes meanwhile."""
        annotations = runtime.pod["metadata"].get("annotations") or {}
        until = time.monotonic() + float(annotations.get(PULL_SECONDS) or 0)
        with self._lock:
            while not (runtime.removed or self._stopping or runtime.delete_requested):
                left = until - time.monotonic()
                if left <= 0:
                    return True
                self._changed.wait(min(left, 0.1))
        return False

    def _schedule(self, runtime: _PodRuntime) -> bool:
        """Binds the pod to the node, once its claims exist; False if that never happens."""
        reported = None
        with self._lock:
            while not (runtime.removed or self._stopping):
                reason, for_good = self._unschedulable_locked(runtime)
                if reason is None:

                    def bind(pod: Obj) -> None:
                        pod["spec"]["nodeName"] = NODE_NAME
                        _set_condition(pod["status"], "PodScheduled", True)

                    self._update_pod_locked(runtime, bind)
                    self._pod_event_locked(
                        runtime,
                        "Normal",
                        "Scheduled",
                        f"Successfully assigned {runtime.namespace}/{runtime.name} to {NODE_NAME}",
                        component="default-scheduler",
                    )
                    return True
                if reason != reported:
                    reported = reason

                    def unschedulable(pod: Obj, reason: str = reason) -> None:
                        _set_condition(
                            pod["status"], "PodScheduled", False, "Unschedulable", reason
                        )

                    self._update_pod_locked(runtime, unschedulable)
                    self._pod_event_locked(
                        runtime,
                        "Warning",
                        "FailedScheduling",
                        reason,
                        component="default-scheduler",
                    )
                if for_good:
                    return False
                self._changed.wait(1.0)  # a claim may appear
        return False

    def _unschedulable_locked(self, runtime: _PodRuntime) -> tuple[str | None, bool]:
        """Why the scheduler cannot place the pod, and whether that can change."""
        prefix = "0/1 nodes are available: "
        if runtime.simulation == "unschedulable":
            return prefix + "1 Insufficient memory.", True
        short = _insufficient(runtime.pod)
        if short:
            return prefix + ", ".join(f"1 Insufficient {name}" for name in short) + ".", True
        for claim_name in _claim_names(runtime.pod):
            claim = self._objects["persistentvolumeclaims"].get((runtime.namespace, claim_name))
            if claim is None:
                return prefix + f'persistentvolumeclaim "{claim_name}" not found.', False
            if "deletionTimestamp" in claim["metadata"]:
                return prefix + f'persistentvolumeclaim "{claim_name}" is being deleted.', False
        return None, False

    def _admit(self, runtime: _PodRuntime) -> bool:
        """The kubelet takes the pod: start time, IPs, containers "ContainerCreating"."""
        with self._lock:
            if runtime.removed or self._stopping:
                return False
            containers = runtime.pod["spec"]["containers"]
            names = " ".join(c["name"] for c in containers)

            def admit(pod: Obj) -> None:
                status = pod["status"]
                ips = [{"ip": self.node_ip}]
                status.update(hostIP=self.node_ip, hostIPs=ips, podIP=self.node_ip, podIPs=ips)
                status["startTime"] = _now()
                _set_condition(status, "PodReadyToStartContainers", True)
                _set_condition(status, "Initialized", True)
                unready = f"containers with unready status: [{names}]"
                _set_condition(status, "Ready", False, "ContainersNotReady", unready)
                _set_condition(status, "ContainersReady", False, "ContainersNotReady", unready)
                status["containerStatuses"] = [
                    _container_status(c, {"waiting": {"reason": "ContainerCreating"}})
                    for c in containers
                ]

            self._update_pod_locked(runtime, admit)
            deadline = runtime.pod["spec"].get("activeDeadlineSeconds")
            if deadline is not None:
                runtime.deadline_at = time.monotonic() + deadline
            return True

    def _stay_waiting(self, runtime: _PodRuntime) -> None:
        """A container that cannot start: its waiting reason until the pod goes or its
        deadline passes."""
        container = runtime.container
        image = container["image"]
        with self._lock:
            if runtime.removed or self._stopping:
                runtime.finished = True
                return
            if runtime.simulation == "image-pull":
                message = (
                    "rpc error: code = Unknown desc = Error response from daemon: pull access "
                    f"denied for {_image_repository(image)}, repository does not exist or may "
                    "require 'docker login': denied: requested access to the resource is denied"
                )
                self._pod_event_locked(runtime, "Normal", "Pulling", f'Pulling image "{image}"')
                self._pod_event_locked(
                    runtime, "Warning", "Failed", f'Failed to pull image "{image}": {message}'
                )
                self._pod_event_locked(runtime, "Warning", "Failed", "Error: ErrImagePull")
                self._set_waiting_locked(runtime, "ErrImagePull", message)
                backoff_at: float | None = time.monotonic() + _BACKOFF_AFTER
            else:
                message = f'secret "{_first_secret(container)}" not found'
                self._pod_event_locked(
                    runtime,
                    "Normal",
                    "Pulled",
                    f'Container image "{image}" already present on machine',
                )
                self._pod_event_locked(runtime, "Warning", "Failed", f"Error: {message}")
                self._set_waiting_locked(runtime, "CreateContainerConfigError", message)
                backoff_at = None
            while not (runtime.removed or self._stopping):
                now = time.monotonic()
                if backoff_at is not None and now >= backoff_at:
                    backoff_at = None
                    backoff = f'Back-off pulling image "{image}"'
                    self._pod_event_locked(runtime, "Normal", "BackOff", backoff)
                    self._pod_event_locked(runtime, "Warning", "Failed", "Error: ImagePullBackOff")
                    self._set_waiting_locked(runtime, "ImagePullBackOff", backoff)
                if runtime.deadline_at is not None and now >= runtime.deadline_at:
                    runtime.cause = "deadline"
                    self._pod_event_locked(
                        runtime, "Normal", "DeadlineExceeded", _DEADLINE_MESSAGE, container=False
                    )
                    self._update_pod_locked(runtime, lambda pod: _terminal(pod, "deadline"))
                    break
                wakes = [t - now for t in (backoff_at, runtime.deadline_at) if t is not None]
                self._changed.wait(min([1.0, *wakes]))
            runtime.finished = True
            self._release_claims_locked()

    def _set_waiting_locked(self, runtime: _PodRuntime, reason: str, message: str) -> None:
        def waiting(pod: Obj) -> None:
            state = {"waiting": {"reason": reason, "message": message}}
            pod["status"]["containerStatuses"][0] = _container_status(runtime.container, state)

        self._update_pod_locked(runtime, waiting)

    def _start_container(self, runtime: _PodRuntime) -> bool:
        """Starts the first container as a process group; False if it could not start."""
        container = runtime.container
        if not container.get("command"):
            with self._lock:
                self._cannot_start_locked(
                    runtime,
                    "ContainerCannotRun",
                    "no command specified: the image has no entrypoint in this fake cluster",
                )
            return False
        argv, env, cwd = self._process_setup(runtime)
        with self._lock:
            if runtime.removed or self._stopping:
                return False
            try:
                runtime.proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,  # one pipe keeps stdout and stderr in order
                    start_new_session=True,
                )
            except OSError as error:
                why = {
                    FileNotFoundError: "executable file not found in $PATH",
                    PermissionError: "permission denied",
                }.get(type(error), str(error))
                message = (
                    "failed to create containerd task: failed to create shim task: OCI runtime "
                    "create failed: runc create failed: unable to start container process: "
                    f'exec: "{argv[0]}": {why}: unknown'
                )
                self._cannot_start_locked(runtime, "StartError", message)
                return False
            runtime.container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
            image, name = container["image"], container["name"]
            self._pod_event_locked(
                runtime, "Normal", "Pulled", f'Container image "{image}" already present on machine'
            )
            self._pod_event_locked(runtime, "Normal", "Created", f"Created container: {name}")
            self._pod_event_locked(runtime, "Normal", "Started", f"Started container: {name}")

            def running(pod: Obj) -> None:
                status = pod["status"]
                status["phase"] = "Running"
                state = {"running": {"startedAt": _now()}}
                status["containerStatuses"][0] = _container_status(
                    container, state, container_id=runtime.container_id, started=True
                )
                ready = all("running" in s["state"] for s in status["containerStatuses"])
                _set_condition(status, "Ready", ready, None if ready else "ContainersNotReady")
                _set_condition(
                    status, "ContainersReady", ready, None if ready else "ContainersNotReady"
                )

            self._update_pod_locked(runtime, running)
            if runtime.simulation in ("oom", "evict", "oom-child"):
                annotations = runtime.pod["metadata"].get("annotations") or {}
                try:
                    after = float(annotations.get(AFTER, _DEFAULT_AFTER))
                except ValueError:
                    after = _DEFAULT_AFTER
                runtime.simulate_at = time.monotonic() + after
            return True

    def _cannot_start_locked(self, runtime: _PodRuntime, reason: str, message: str) -> None:
        now = _now()

        def failed(pod: Obj) -> None:
            state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": reason,
                    "message": message,
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
            statuses = pod["status"].get("containerStatuses") or [
                _container_status(c, {"waiting": {"reason": "ContainerCreating"}})
                for c in runtime.pod["spec"]["containers"]
            ]
            statuses[0] = _container_status(runtime.container, state)
            pod["status"]["containerStatuses"] = statuses
            _terminal(pod, None)

        if runtime.removed:
            runtime.log_closed = runtime.finished = True
            return

        self._pod_event_locked(runtime, "Warning", "Failed", f"Error: {message}")
        self._update_pod_locked(runtime, failed)
        runtime.log_closed = runtime.finished = True
        if runtime.deleting and not runtime.removed:
            self._remove_pod_locked(runtime)
        self._release_claims_locked()

    def _process_setup(self, runtime: _PodRuntime) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory of the container's process: volumes are
        local folders, and their mount paths are rewritten to them."""
        container = runtime.container
        pod_dir = self.workdir / "pods" / runtime.name
        pod_dir.mkdir(parents=True, exist_ok=True)
        folders = {
            v["name"]: self._volume_folder(runtime, v, pod_dir)
            for v in runtime.pod["spec"].get("volumes") or []
        }
        mounts = []
        for mount in container.get("volumeMounts") or []:
            folder = folders[mount["name"]]
            if mount.get("subPath"):
                folder = folder / mount["subPath"]
                folder.mkdir(parents=True, exist_ok=True)
            mounts.append((mount["mountPath"], str(folder)))
        rewrite = _mount_rewriter(mounts)
        values: dict[str, str] = {}
        for item in container.get("env") or []:
            if "valueFrom" in item:
                values[item["name"]] = self._value_from(runtime, item["valueFrom"])
            else:
                values[item["name"]] = _expand(item.get("value", ""), values)
        words = container["command"] + (container.get("args") or [])
        argv = [rewrite(_expand(word, values)) for word in words]
        env = {k: os.environ[k] for k in ("PATH", "HOME", "JAVA_HOME") if k in os.environ}
        env.update({name: rewrite(value) for name, value in values.items()})
        cwd = pod_dir
        if container.get("workingDir"):
            wanted = Path(rewrite(container["workingDir"]))
            cwd = wanted if wanted.is_dir() else pod_dir
        return argv, env, cwd

    def _volume_folder(self, runtime: _PodRuntime, volume: Obj, pod_dir: Path) -> Path:
        """workdir/pods/{pod}/{volume}: a fresh folder, or for a claim a link to the claim's
        folder workdir/claims/{namespace}/{claim}, whose data outlives the pod."""
        path = pod_dir / volume["name"]
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)  # like an emptyDir, a volume starts empty with each pod
        claim = None
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
        elif "ephemeral" in volume:
            claim = f"{runtime.name}-{volume['name']}"
        if claim is None:
            path.mkdir(parents=True)
        else:
            target = self.workdir / "claims" / runtime.namespace / claim
            target.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target, target_is_directory=True)
        return path

    def _value_from(self, runtime: _PodRuntime, source: Obj) -> str:
        if "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath", "")
            meta = runtime.pod["metadata"]
            found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if found:
                return (meta.get(found[1]) or {}).get(found[2], "")
            return {
                "metadata.name": runtime.name,
                "metadata.namespace": runtime.namespace,
                "metadata.uid": runtime.uid,
                "spec.nodeName": NODE_NAME,
                "spec.serviceAccountName": runtime.pod["spec"].get("serviceAccountName", ""),
            }.get(path, self.node_ip)  # status.podIP(s), status.hostIP(s)
        ref = source.get("secretKeyRef")
        if ref is not None:
            with self._lock:
                secret = self._objects["secrets"].get((runtime.namespace, ref.get("name")))
            if secret is not None and ref.get("key") in (secret.get("data") or {}):
                return base64.b64decode(secret["data"][ref["key"]]).decode()
        for key in ("secretKeyRef", "configMapKeyRef"):  # one this cluster does not hold
            if key in source:
                return f"fake-secret:{source[key].get('name')}/{source[key].get('key')}"
        if "resourceFieldRef" in source:
            return _resource_field(runtime.container, source["resourceFieldRef"])
        return ""

    def _supervise(self, runtime: _PodRuntime) -> bytes:
        """Copies the process's output into the log until it exits and its output ends,
        killing it when a deadline, a simulation or a deletion says so. Returns the
        unfinished last line."""
        process = runtime.proc
        assert process is not None and process.stdout is not None
        pipe = process.stdout.fileno()
        rest, ended, exited_at = b"", False, None
        while True:
            with self._lock:
                wake = self._apply_kills_locked(runtime)
            timeout = _POLL if wake is None else max(0.0, min(wake, _POLL))
            readable, _, _ = select.select([] if ended else [pipe], [], [], timeout)
            if readable:
                data = os.read(pipe, 65536)
                if data:
                    records, rest = _split_log(rest + data)
                    self._append_log(runtime, records)
                else:
                    ended = True
            if exited_at is None and process.poll() is not None:
                exited_at = time.monotonic()
                _killpg(process.pid, signal.SIGKILL)  # a container ends with its main process
            if exited_at is not None and (
                ended or time.monotonic() - exited_at > _ORPHAN_OUTPUT_WAIT
            ):
                process.stdout.close()
                return rest

    def _append_log(self, runtime: _PodRuntime, records: list[bytes]) -> None:
        if records:
            stamp = time.time_ns()
            with self._lock:
                runtime.log.extend((stamp, record) for record in records)
                self._changed.notify_all()

    def _apply_kills_locked(self, runtime: _PodRuntime) -> float | None:
        """Sends the signals that are due; returns the seconds until the next one."""
        now = time.monotonic()
        assert runtime.proc is not None
        if runtime.cause is None and runtime.proc.returncode is None and not runtime.removed:
            if (
                runtime.simulate_at is not None
                and now >= runtime.simulate_at
                and runtime.simulation == "oom-child"
            ):
                runtime.simulate_at, runtime.child_oom = None, True
                involved = {"kind": "Node", "name": NODE_NAME, "uid": NODE_NAME}
                self._event_locked(
                    "default",
                    involved,
                    "Warning",
                    "OOMKilling",
                    f"Memory cgroup out of memory: Killed process {runtime.proc.pid + 1} (child)",
                    "kernel-monitor",
                )
            elif runtime.simulate_at is not None and now >= runtime.simulate_at:
                runtime.cause = runtime.simulation
                if runtime.cause == "evict":
                    runtime.term_at = now
                    runtime.kill_at = now + _EVICTION_GRACE
                    self._pod_event_locked(
                        runtime,
                        "Warning",
                        "Evicted",
                        _evicted_message(runtime.container["name"]),
                        container=False,
                    )
                    self._pod_event_locked(
                        runtime,
                        "Normal",
                        "Killing",
                        f"Stopping container {runtime.container['name']}",
                    )
                else:  # the kernel kills at once; node-problem-detector reports it on the node
                    runtime.kill_at = now
                    involved = {"kind": "Node", "name": NODE_NAME, "uid": NODE_NAME}
                    program = os.path.basename(runtime.container["command"][0])
                    self._event_locked(
                        "default",
                        involved,
                        "Warning",
                        "OOMKilling",
                        f"Memory cgroup out of memory: Killed process {runtime.proc.pid} "
                        f"({program})",
                        "kernel-monitor",
                    )
            elif runtime.deadline_at is not None and now >= runtime.deadline_at:
                runtime.cause = "deadline"
                runtime.term_at = min(runtime.term_at or math.inf, now)
                grace = max(1, runtime.pod["spec"].get("terminationGracePeriodSeconds", 30))
                runtime.kill_at = min(
                    runtime.kill_at or math.inf, now + min(grace, _DEADLINE_GRACE_CAP)
                )
                self._pod_event_locked(
                    runtime, "Normal", "DeadlineExceeded", _DEADLINE_MESSAGE, container=False
                )
                self._pod_event_locked(
                    runtime, "Normal", "Killing", f"Stopping container {runtime.container['name']}"
                )
        if runtime.term_at is not None and not runtime.term_sent and now >= runtime.term_at:
            runtime.term_sent = True
            _killpg(runtime.proc.pid, signal.SIGTERM)
        if runtime.kill_at is not None and not runtime.kill_sent and now >= runtime.kill_at:
            runtime.kill_sent = True
            _killpg(runtime.proc.pid, signal.SIGKILL)
        upcoming = [
            moment - now
            for moment, pending in (
                (runtime.simulate_at, runtime.cause is None),
                (runtime.deadline_at, runtime.cause is None),
                (runtime.term_at, not runtime.term_sent),
                (runtime.kill_at, not runtime.kill_sent),
            )
            if moment is not None and pending
        ]
        return min(upcoming) if upcoming else None

    def _finish(self, runtime: _PodRuntime, rest: bytes) -> None:
        """The process is gone: close the log, write the final status, maybe remove the pod."""
        assert runtime.proc is not None
        code = runtime.proc.wait()
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N
        with self._lock:
            if rest:  # containerd ends the last line at end of output
                runtime.log.append((time.time_ns(), rest + b"\n"))
            runtime.log_closed = True
            finished_at = _now()

            def terminated(pod: Obj) -> None:
                status = pod["status"]
                old = status["containerStatuses"][0]
                started_at = old["state"].get("running", {}).get("startedAt")
                state: Obj = {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": started_at,
                    "finishedAt": finished_at,
                }
                if runtime.cause == "oom":
                    state.update(exitCode=137, reason="OOMKilled")
                elif runtime.child_oom:  # the container's cgroup saw an OOM kill
                    state["reason"] = "OOMKilled"
                elif runtime.cause == "evict":
                    state = {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                    }
                state["containerID"] = runtime.container_id
                status["containerStatuses"][0] = _container_status(
                    runtime.container, {"terminated": state}, container_id=runtime.container_id
                )
                _terminal(pod, runtime.cause, exit_code)

            self._update_pod_locked(runtime, terminated)
            runtime.finished = True
            if runtime.deleting and not runtime.removed:
                self._remove_pod_locked(runtime)
            self._release_claims_locked()


_DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def _evicted_message(container: str) -> str:
    return (
        "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: "
        f"9Mi. Container {container} was using 20Gi, request is 0, has larger consumption of "
        "ephemeral-storage. "
    )


def _terminal(pod: Obj, cause: str | None, exit_code: int = 1) -> None:
    """Phase, reason and conditions of a pod whose containers will not run again."""
    status = pod["status"]
    status["phase"] = "Succeeded" if exit_code == 0 and cause is None else "Failed"
    if cause == "deadline":
        status.update(reason="DeadlineExceeded", message=_DEADLINE_MESSAGE)
    elif cause == "evict":
        message = _evicted_message(pod["spec"]["containers"][0]["name"])
        status.update(reason="Evicted", message=message)
        _set_condition(status, "DisruptionTarget", True, "TerminationByKubelet", message)
    _set_condition(status, "PodReadyToStartContainers", False)
    _set_condition(status, "Ready", False, "PodCompleted")
    _set_condition(status, "ContainersReady", False, "PodCompleted")


def _waiting_message(container: str, pod: str, waiting: Obj | None) -> str:
    """What the kubelet answers for the log of a container that has not started."""
    reason = (waiting or {}).get("reason") or "ContainerCreating"
    why = {
        "ErrImagePull": "image can't be pulled",
        "ImagePullBackOff": "trying and failing to pull image",
    }.get(reason, reason)
    return f'container "{container}" in pod "{pod}" is waiting to start: {why}'


def _first_secret(container: Obj) -> str:
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref.get("name"):
            return str(ref["name"])
    for item in container.get("envFrom") or []:
        if (item.get("secretRef") or {}).get("name"):
            return str(item["secretRef"]["name"])
    return "x"


def _resource_field(container: Obj, ref: Obj) -> str:
    """A resourceFieldRef: the container's limit or request, else the node's capacity."""
    kind, _, name = ref.get("resource", "").partition(".")
    resources = container.get("resources") or {}
    amount = (resources.get(kind) or {}).get(name) or NODE_ALLOCATABLE.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(amount) / divisor))


# --- HTTP --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold each response back by tens of milliseconds.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # FakeCluster.requests() has the traffic

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cluster = self.server.cluster
        try:
            reply = cluster._serve(
                method,
                url.path,
                query,
                body,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type") or "",
            )
        except ApiError as error:
            reply = _json_reply(error.code, error.status())
        except Exception as error:  # a bug of the fake: answer 500 and show it
            traceback.print_exc()
            reply = _json_reply(
                500, _status(500, "InternalError", f"Internal error occurred: {error!r}")
            )
        if isinstance(reply, _Reply):
            self.send_response(reply.code)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        else:
            self._stream(reply)

    def _stream(self, reply: _StreamReply) -> None:
        cluster = self.server.cluster
        stream = _Stream(self.connection)
        if not cluster._open_stream(stream):
            self.close_connection = True
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in reply.produce(stream):
                if chunk:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            if stream.dropped:
                self.close_connection = True
            else:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client went away, or the stream was cut
        except Exception:
            traceback.print_exc()
            self.close_connection = True
        finally:
            cluster._close_stream(stream)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its connections, to close them all on stop."""

    daemon_threads = True

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skips HTTPServer's getfqdn() lookup
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="fake-k8s-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections.items())
        for _, sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread, _ in connections:
            thread.join(timeout=10)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away
        super().handle_error(request, client_address)
