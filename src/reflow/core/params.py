"""Typed run parameters: defaults, validation and the JSON schema of a pipeline's conf.

A run's conf is the params' defaults overlaid with the conf given at trigger/backfill time,
validated here (with pydantic) before anything is written. Validation is strict: a value of
the wrong type is refused, never coerced (``"5"`` is not an int), except that an int is a
valid float. A conf is JSON, so dates and date-times are given as ISO 8601 strings.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from reflow.core.errors import ConfError

_MISSING: Any = object()
_TYPES: dict[str, type] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "date": date,
    "datetime": datetime,
}


@dataclass(frozen=True)
class Param:
    """One run parameter. The type is inferred from the default when not given."""

    default: Any = _MISSING
    type: builtins.type | None = None
    description: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    secret: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def resolved_type(self) -> builtins.type:
        if self.type is not None:
            return self.type
        if self.required or self.default is None:
            return object
        return type(self.default)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, part of the pipeline's structure and version."""
        out: dict[str, Any] = {"type": self.resolved_type.__name__}
        if not self.required:
            out["default"] = _jsonable(self.default)
        for key in ("description", "choices", "minimum", "maximum", "pattern", "secret"):
            value = getattr(self, key)
            # `0 in (None, "", False)` is true: compare by identity so bounds of 0 stay.
            if value is None or value is False or value == "":
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ParamSet:
    """The params of one pipeline, compiled into a pydantic model once."""

    def __init__(self, params: Mapping[str, Param | Any] | None = None) -> None:
        self.params: dict[str, Param] = {
            name: p if isinstance(p, Param) else Param(default=p)
            for name, p in (params or {}).items()
        }
        for name in self.params:
            if not name.isidentifier():
                raise ConfError(f"param name {name!r} is not a valid identifier")
        self._model: Any = None

    def _compiled(self) -> Any:
        if self._model is None:
            self._model = _build_model(self.params)
        return self._model

    def check_defaults(self) -> None:
        """Raise ConfError unless every default satisfies its own param."""
        for name, param in self.params.items():
            if param.required:
                continue
            try:
                _validate(_build_model({name: param}), {name: param.default})
            except Exception as exc:  # pydantic ValidationError, re-worded below
                raise ConfError(
                    f"default of param {name!r}: {_first_error(exc, self.params, with_loc=False)}"
                ) from None

    def resolve(self, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``conf``, validated; returns JSON-able values."""
        conf = dict(conf or {})
        unknown = sorted(set(conf) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise ConfError(f"unknown param {', '.join(unknown)} (known params: {known})")
        defaults = {name: p.default for name, p in self.params.items() if not p.required}
        try:
            model = _validate(self._compiled(), {**defaults, **conf})
        except Exception as exc:
            raise ConfError(_first_error(exc, self.params)) from None
        return dict(model.model_dump(mode="json", by_alias=True))

    def render(self, conf: Mapping[str, Any]) -> dict[str, Any]:
        """The params a try sees when its run was created with ``conf`` under an earlier
        version of these params (core.edits): the run's values of the params still
        declared, the defaults of those added since; params removed since are left out
        (the run keeps them in its history). Raises ConfError saying which param no longer
        validates, and why."""
        kept = {name: value for name, value in conf.items() if name in self.params}
        try:
            return self.resolve(kept)
        except ConfError as exc:
            raise ConfError(
                f"the run's conf no longer matches the pipeline's params: {exc}"
            ) from None

    def json_schema(self) -> dict[str, Any]:
        return dict(self._compiled().model_json_schema())

    def describe(self) -> dict[str, Any]:
        return {name: p.describe() for name, p in sorted(self.params.items())}

    def secret_names(self) -> set[str]:
        return {name for name, p in self.params.items() if p.secret}


def _build_model(params: Mapping[str, Param]) -> Any:
    from typing import Annotated, Literal

    from pydantic import ConfigDict, Field, create_model

    # Fields get neutral names with the param's name as alias: a param may then be called
    # anything, even a name pydantic's BaseModel uses itself (schema, copy, model_config).
    fields: dict[str, Any] = {}
    for index, (name, p) in enumerate(params.items()):
        annotation: Any = p.resolved_type
        if annotation is object:
            annotation = Any
        if p.choices is not None:
            annotation = Literal[tuple(p.choices)]
        elif not p.required and p.default is None:
            annotation = annotation | None
        constraints: dict[str, Any] = {}
        if p.minimum is not None:
            constraints["ge"] = p.minimum
        if p.maximum is not None:
            constraints["le"] = p.maximum
        if p.pattern is not None:
            constraints["pattern"] = p.pattern
        default = ... if p.required else p.default
        fields[f"p{index}"] = (
            Annotated[
                annotation,
                Field(alias=name, title=name, description=p.description or None, **constraints),
            ],
            default,
        )
    config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    return create_model("Conf", __config__=config, **fields)


def _json_default(value: Any) -> Any:
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON")


def _validate(model: Any, conf: Mapping[str, Any]) -> Any:
    """Validate ``conf`` as the JSON it is stored as, in strict mode: no value is coerced
    from another type (``"5"`` is no int, ``1`` no bool), an int is a valid float, and
    dates and date-times are ISO 8601 strings."""
    try:
        text = json.dumps(dict(conf), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfError(f"conf is not JSON: {exc}") from None
    return model.model_validate_json(text)


def _first_error(
    exc: Exception, params: Mapping[str, Param] | None = None, with_loc: bool = True
) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        loc = err.get("loc", ())
        where = ".".join(str(x) for x in loc) or "conf"
        msg = err.get("msg", "invalid")
        if "input" in err and str(err.get("type", "")).endswith(("_type", "_parsing")):
            param = (params or {}).get(str(loc[0])) if loc else None
            expected = f"expected {param.resolved_type.__name__}, " if param is not None else ""
            msg = f"{msg} ({expected}given {_jsonable(err['input'])!r})"
        parts.append(f"param {where!r}: {msg}" if with_loc else msg)
    return "; ".join(parts)


def parse_type(name: str) -> type:
    """Map a type name used in JSON/YAML definitions to a Python type."""
    try:
        return _TYPES[name]
    except KeyError:
        raise ConfError(f"unknown param type {name!r}") from None
