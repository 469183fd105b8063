"""HTML forms generated from a pipeline's params, and the conf read back from them.

Each param becomes an input of its type (checkbox, number, select, text, password for
secrets, JSON for lists and objects) with its default, bounds and pattern, so the browser
checks what it can; the services validate everything again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "conf."
_PARAM_IN_MESSAGE = re.compile(r"param '([^']+)'")


@dataclass
class ParamField:
    name: str
    kind: str  # checkbox | number | select | text | password | json
    type: str
    description: str = ""
    value: str = ""
    checked: bool = False
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: str | None = None
    pattern: str | None = None
    choices: list[tuple[str, str]] = field(default_factory=list)
    placeholder: str = ""
    error: str | None = None

    @property
    def input_name(self) -> str:
        return PREFIX + self.name


def _shown(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "json" or not isinstance(value, str):
        return json.dumps(value)
    return value


def param_fields(
    params: Mapping[str, Mapping[str, Any]],
    submitted: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    schema: Mapping[str, Any] | None = None,
) -> list[ParamField]:
    """One field per param, filled with what was submitted, else the default. Bounds and
    patterns come from the conf's JSON schema when given (it is what validation uses)."""
    out = []
    properties = (schema or {}).get("properties") or {}
    for name, described in params.items():
        spec = {**described}
        for key in ("minimum", "maximum", "pattern"):
            if key in properties.get(name, {}):
                spec[key] = properties[name][key]
        ptype = str(spec.get("type", "object"))
        secret = bool(spec.get("secret"))
        has_default = "default" in spec
        default = spec.get("default")
        f = ParamField(
            name=name,
            kind="text",
            type=ptype,
            description=str(spec.get("description", "")),
            required=not has_default,
            minimum=spec.get("minimum"),
            maximum=spec.get("maximum"),
            pattern=spec.get("pattern"),
            error=(errors or {}).get(name),
        )
        if spec.get("choices") is not None:
            f.kind = "select"
            f.choices = [(json.dumps(c), str(c)) for c in spec["choices"]]
        elif ptype == "bool":
            f.kind = "checkbox"
            f.required = False
        elif ptype in ("int", "float"):
            f.kind = "number"
            f.step = "1" if ptype == "int" else "any"
        elif ptype in ("list", "dict", "object"):
            f.kind = "json"
            f.placeholder = {"list": '["a", "b"]', "dict": '{"key": "value"}'}.get(ptype, "JSON")
        elif ptype == "date":
            f.placeholder = "YYYY-MM-DD"
        elif ptype == "datetime":
            f.placeholder = "YYYY-MM-DDTHH:MM:SS"
        if secret:
            f.kind = "password"
            f.placeholder = "secret: leave empty to keep the default" if has_default else ""
        if submitted is not None and f.input_name in submitted:
            raw = submitted[f.input_name]
            values = raw if isinstance(raw, list) else [raw]
            if f.kind == "checkbox":
                f.checked = "true" in values
            elif f.kind != "password":
                f.value = str(values[-1])
        elif submitted is not None and f.kind == "checkbox":
            f.checked = False
        elif has_default and not secret:
            if f.kind == "checkbox":
                f.checked = bool(default)
            elif f.kind == "select":
                f.value = json.dumps(default)
            else:
                f.value = _shown(default, f.kind)
        out.append(f)
    return out


def conf_from_form(
    params: Mapping[str, Mapping[str, Any]], form: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The conf a submitted form asks for, and per-field errors for values that do not
    even parse. Empty fields are left out: the param's default applies."""
    conf: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in param_fields(params):
        raw = form.get(f.input_name)
        values = raw if isinstance(raw, list) else ([] if raw is None else [raw])
        if f.kind == "checkbox":
            conf[f.name] = "true" in values
            continue
        text = str(values[-1]).strip() if values else ""
        if not text:
            continue
        try:
            conf[f.name] = _parse(f, text)
        except ValueError as exc:
            errors[f.name] = str(exc)
    return conf, errors


def _parse(f: ParamField, text: str) -> Any:
    if f.kind == "select":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("choose one of the listed values") from None
    if f.type == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if f.type == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    if f.type in ("list", "dict"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg}") from None
        wanted = list if f.type == "list" else dict
        if not isinstance(value, wanted):
            raise ValueError(f"must be a JSON {'list' if f.type == 'list' else 'object'}")
        return value
    if f.type == "object":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def field_of_error(message: str) -> str | None:
    """The param a service error message is about ("param 'x': ..."), if any."""
    m = _PARAM_IN_MESSAGE.search(message)
    return m.group(1) if m else None
