"""Where a try runs on Kubernetes: the pod options of a task, and its scratch space.

These are plain declarations. Every string in them is a template rendered with the run
context (``claim_name="spark-pv-claim-{{ ds_nodash }}"`` gives each date its own claim);
the kubernetes launcher turns the rendered options into a pod manifest. The local launcher
ignores them, except :func:`scratch`, which it provides as a temporary folder::

    Shell(
        "ingest",
        "ingest --day {{ ds }} --tmp \"$REFLOW_SCRATCH\"",
        scratch=scratch("20Gi", storage_class="gp3"),
        pod=Pod(
            image="registry.example.com/etl:1.4",
            requests={"cpu": "1", "memory": "4Gi", "ephemeral-storage": "2Gi"},
            limits={"memory": "4Gi", "ephemeral-storage": "4Gi"},
            volumes=[Volume.claim("data", "events-{{ ds_nodash }}", "/data", size="50Gi")],
        ),
    )
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Any, TypeGuard

from reflow.core.errors import PipelineError

_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
VOLUME_KINDS = ("claim", "config_map", "secret", "empty_dir")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_quantity(value: Any, what: str) -> None:
    """A Kubernetes quantity (``"500m"``, ``"4Gi"``, ``2``); templates are checked later."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PipelineError(f"{what}: expected a quantity such as '4Gi' or 2, got {value!r}")
    if _templated(value):
        return
    if not _QUANTITY.match(str(value)):
        raise PipelineError(f"{what}: {value!r} is not a Kubernetes quantity (e.g. '4Gi', '500m')")


_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
}


def quantity(value: str | int | float) -> Decimal:
    """The amount a Kubernetes quantity stands for (``"4Gi"`` -> 4294967296)."""
    text = str(value)
    match = _QUANTITY.match(text)
    if match is None:
        raise PipelineError(f"{value!r} is not a Kubernetes quantity (e.g. '4Gi', '500m')")
    suffix = match.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(text)
    return Decimal(text[: len(text) - len(suffix)]) * _SUFFIXES[suffix]


def check_requests_within_limits(
    requests: Mapping[str, Any], limits: Mapping[str, Any], where: str = "pod"
) -> None:
    """The server refuses a pod requesting more of a resource than its limit allows: say so
    when the pipeline loads (templated amounts are checked once rendered)."""
    for resource, limit in limits.items():
        request = requests.get(resource)
        if request is None or _templated(request) or _templated(limit):
            continue
        if quantity(request) > quantity(limit):
            raise PipelineError(
                f"{where} requests {resource!r} {request} exceed its limit {limit} "
                "(Kubernetes refuses such a pod)"
            )


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")


def check_label(key: Any, value: Any, what: str = "pod labels") -> None:
    """A label Kubernetes accepts: ``[prefix/]name`` with a DNS-subdomain prefix, a name and
    a value of at most 63 letters, digits, ``-_.`` that start and end alphanumeric (an
    empty value too); templated values are checked once rendered."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise PipelineError(f"{what}: keys and values must be strings, got {key!r}: {value!r}")
    prefix, _, name = key.rpartition("/")
    if (prefix and not is_dns_subdomain(prefix)) or not _LABEL_NAME.match(name):
        raise PipelineError(
            f"{what}: {key!r} is not a valid label key (an optional DNS prefix and '/', then "
            "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
        )
    if _templated(value):
        return
    if value and not _LABEL_NAME.match(value):
        raise PipelineError(
            f"{what} {key!r}: {value!r} is not a valid label value (at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending alphanumeric; no spaces)"
        )


def _check_path(value: Any, what: str) -> None:
    if not isinstance(value, str) or not (value.startswith("/") or _templated(value)):
        raise PipelineError(f"{what}: expected an absolute path, got {value!r}")


@dataclass(frozen=True)
class Scratch:
    """Per-try scratch space: a generic ephemeral volume on Kubernetes (the claim lives and
    dies with the pod), a temporary folder locally. ``REFLOW_SCRATCH`` holds its path."""

    size: str
    storage_class: str | None = None
    mount: str = "/scratch"

    def __post_init__(self) -> None:
        check_quantity(self.size, "scratch size")
        _check_path(self.mount, "scratch mount")


def scratch(size: str, storage_class: str | None = None, mount: str = "/scratch") -> Scratch:
    """Declare per-try scratch space of ``size`` mounted at ``mount``."""
    return Scratch(size, storage_class, mount)


@dataclass(frozen=True)
class Volume:
    """A volume mounted in the try's pod. Build one with the class methods."""

    name: str
    kind: str
    mount: str
    source: str | None = None
    read_only: bool = False
    sub_path: str | None = None
    # claim: created by reflow when missing if a size is given; empty_dir: size limit
    size: str | None = None
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    medium: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _DNS_LABEL.match(self.name):
            raise PipelineError(
                f"volume name {self.name!r}: use lowercase letters, digits and '-' (max 63)"
            )
        if self.kind not in VOLUME_KINDS:
            raise PipelineError(f"volume {self.name!r}: unknown kind {self.kind!r}")
        _check_path(self.mount, f"volume {self.name!r} mount")
        if self.kind != "empty_dir" and not (isinstance(self.source, str) and self.source):
            raise PipelineError(f"volume {self.name!r}: needs the name of its {self.kind}")
        if self.size is not None:
            check_quantity(self.size, f"volume {self.name!r} size")
        object.__setattr__(self, "access_modes", tuple(self.access_modes))
        bad = [m for m in self.access_modes if m not in ACCESS_MODES]
        if not self.access_modes or bad:
            raise PipelineError(
                f"volume {self.name!r}: access modes must be among {', '.join(ACCESS_MODES)}"
            )
        if self.medium not in (None, "", "Memory"):
            raise PipelineError(f"volume {self.name!r}: medium must be 'Memory' or empty")

    @classmethod
    def claim(
        cls,
        name: str,
        claim_name: str,
        mount: str,
        *,
        size: str | None = None,
        storage_class: str | None = None,
        access_modes: Sequence[str] = ("ReadWriteOnce",),
        read_only: bool = False,
        sub_path: str | None = None,
    ) -> Volume:
        """A persistent volume claim, by (templated) name. With ``size``, reflow creates the
        claim before the pod when it does not exist yet; it never deletes it."""
        return cls(
            name,
            "claim",
            mount,
            claim_name,
            read_only,
            sub_path,
            size,
            storage_class,
            tuple(access_modes),
        )

    @classmethod
    def config_map(
        cls, name: str, config_map: str, mount: str, *, sub_path: str | None = None
    ) -> Volume:
        return cls(name, "config_map", mount, config_map, True, sub_path)

    @classmethod
    def secret(cls, name: str, secret: str, mount: str, *, sub_path: str | None = None) -> Volume:
        return cls(name, "secret", mount, secret, True, sub_path)

    @classmethod
    def empty_dir(
        cls, name: str, mount: str, *, size_limit: str | None = None, memory: bool = False
    ) -> Volume:
        return cls(name, "empty_dir", mount, size=size_limit, medium="Memory" if memory else None)


@dataclass(frozen=True)
class Pod:
    """Kubernetes options of a task's pod. Unset options come from the pipeline's default
    ``pod`` and then from the launcher's configuration (namespace, image, ...).

    ``secret_env`` / ``config_map_env`` map a variable to ``"name/key"``; ``env_from``
    takes ``"secret:name"`` or ``"configmap:name"``. ``pod_override`` (a dict, or a path to
    a YAML file relative to the pipeline file) is deep-merged into the manifest last.
    """

    image: str | None = None
    image_pull_policy: str | None = None
    image_pull_secrets: Sequence[str] = ()
    requests: Mapping[str, str | int | float] = field(default_factory=dict)
    limits: Mapping[str, str | int | float] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)
    config_map_env: Mapping[str, str] = field(default_factory=dict)
    env_from: Sequence[str] = ()
    volumes: Sequence[Volume] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] | None = None
    service_account: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_override: Mapping[str, Any] | str | None = None

    def __post_init__(self) -> None:
        for name in ("image_pull_secrets", "env_from", "volumes", "tolerations"):
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise PipelineError(f"pod {name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.image_pull_policy not in (None, *PULL_POLICIES):
            raise PipelineError(
                f"pod image_pull_policy must be one of {', '.join(PULL_POLICIES)}, "
                f"got {self.image_pull_policy!r}"
            )
        for what in ("requests", "limits"):
            for resource, amount in getattr(self, what).items():
                check_quantity(amount, f"pod {what} {resource!r}")
        check_requests_within_limits(self.requests, self.limits)
        for key, value in self.labels.items():
            check_label(key, value)
        for var, ref in {**self.secret_env, **self.config_map_env}.items():
            if not isinstance(ref, str) or ref.count("/") != 1 or ref.startswith("/"):
                raise PipelineError(f"pod env {var!r}: expected 'name/key', got {ref!r}")
        for ref in self.env_from:
            kind, _, name = str(ref).partition(":")
            if kind not in ("secret", "configmap") or not name:
                raise PipelineError(
                    f"pod env_from {ref!r}: expected 'secret:NAME' or 'configmap:NAME'"
                )
        seen: set[str] = set()
        for volume in self.volumes:
            if not isinstance(volume, Volume):
                raise PipelineError(f"pod volumes: expected Volume(...), got {volume!r}")
            if volume.name in seen:
                raise PipelineError(f"pod volumes: duplicate volume name {volume.name!r}")
            seen.add(volume.name)
        if self.pod_override is not None and not isinstance(self.pod_override, Mapping | str):
            raise PipelineError("pod_override must be a dict or the path of a YAML file")

    def merged_over(self, base: Pod | None) -> Pod:
        """This pod's options over ``base`` (a pipeline default): set values win, mappings
        are merged key by key, a volume replaces the default's volume of the same name."""
        if base is None:
            return self
        changes: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(base, f.name)
            if f.name == "volumes":
                names = {v.name for v in mine}
                changes[f.name] = (*(v for v in theirs if v.name not in names), *mine)
            elif f.name == "pod_override":
                if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
                    changes[f.name] = deep_merge(theirs, mine)
                else:
                    changes[f.name] = mine if mine is not None else theirs
            elif isinstance(mine, Mapping) and isinstance(theirs, Mapping):
                changes[f.name] = {**theirs, **mine}
            elif isinstance(mine, tuple):
                changes[f.name] = mine or theirs
            else:
                changes[f.name] = mine if mine is not None else theirs
        return replace(self, **changes)

    def to_plain(self) -> dict[str, Any]:
        """Plain data (dicts, lists, strings) to render with the run context."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "volumes":
                value = [volume_plain(v) for v in value]
            elif isinstance(value, Mapping):
                value = _plain_mapping(value)
            elif isinstance(value, tuple):
                value = [_plain_mapping(v) if isinstance(v, Mapping) else v for v in value]
            out[f.name] = value
        return out


def volume_plain(volume: Volume) -> dict[str, Any]:
    return {f.name: _listed(getattr(volume, f.name)) for f in fields(volume)}


def scratch_plain(value: Scratch) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _plain_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): _plain_mapping(v) if isinstance(v, Mapping) else _listed(v)
        for k, v in value.items()
    }


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base``: mappings recursively, lists of named items (such as
    containers or volumes) item by item, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        mine = out.get(key)
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(mine, value)
        elif _named_list(mine) and _named_list(value):
            merged = {item["name"]: item for item in mine}
            for item in value:
                old = merged.get(item["name"])
                merged[item["name"]] = deep_merge(old, item) if old is not None else item
            out[key] = list(merged.values())
        else:
            out[key] = value
    return out


def _named_list(value: Any) -> TypeGuard[list[Mapping[str, Any]]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, Mapping) and isinstance(i.get("name"), str) for i in value)
    )


# -- names Kubernetes accepts ------------------------------------------------------------
_LABEL_MAX = 63
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _shorten(text: str, original: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-.')}-{digest}"


def label_value(value: str) -> str:
    """``value`` as a Kubernetes label value: lowercase ``[a-z0-9-.]``, starting and ending
    with a letter or digit, at most 63 characters (a hash suffix keeps long ones apart)."""
    text = re.sub(r"[^a-z0-9.-]+", "-", value.lower()).strip("-.")
    return _shorten(text, value, _LABEL_MAX) or hashlib.sha256(value.encode()).hexdigest()[:8]


def dns_label(value: str, limit: int = 63) -> str:
    """``value`` as a DNS label (pod names): lowercase ``[a-z0-9-]``, at most ``limit``."""
    text = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", value.lower())).strip("-")
    return _shorten(text, value, limit) or "x" + hashlib.sha256(value.encode()).hexdigest()[:8]


def is_dns_subdomain(value: str) -> bool:
    """Can ``value`` name a Kubernetes object such as a claim?"""
    return bool(_SUBDOMAIN.match(value))
