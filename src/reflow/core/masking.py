"""Secrets never leave the server: values of secret params, and env values of tasks whose
name looks secret or whose template reads a secret param, are shown as ``***`` in pages,
API responses and the logs served."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MASK = "***"
# Env names that hold credentials by convention (AWS_SECRET_ACCESS_KEY, DB_PASSWORD, ...).
_SECRET_NAME = re.compile(
    r"secret|passw(?:or)?d|pwd|token|api[_-]?key|access[_-]?key|private[_-]?key|credential"
    r"|auth",
    re.IGNORECASE,
)
# Shorter values would mask ordinary words and numbers all over a log.
_MIN_SCRUB = 4


def name_looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class Secrets:
    """What is secret in one pipeline: the names of its secret params and the literal
    values of its secret env entries."""

    params: frozenset[str] = frozenset()
    literals: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, structure: Mapping[str, Any] | None, extra: Iterable[str] = ()) -> Secrets:
        """From a pipeline's structure (``Pipeline.structure()`` or the stored one)."""
        structure = structure or {}
        params = set(extra)
        for name, spec in (structure.get("params") or {}).items():
            if isinstance(spec, Mapping) and spec.get("secret"):
                params.add(name)
        literals = set()
        for task in (structure.get("tasks") or {}).values():
            for key, value in ((task or {}).get("env") or {}).items():
                text = str(value)
                if name_looks_secret(key) and "{{" not in text and "{%" not in text:
                    literals.add(text)
        return cls(frozenset(params), frozenset(literals))

    def __bool__(self) -> bool:
        return bool(self.params or self.literals)

    def env_is_secret(self, name: str, value: Any) -> bool:
        """An env entry is secret when its name looks secret or it reads a secret param."""
        if name_looks_secret(name):
            return True
        text = str(value)
        return any(
            re.search(
                rf"\b(?:params|conf)\s*(?:\.\s*{re.escape(p)}\b|\[\s*['\"]{re.escape(p)})", text
            )
            for p in self.params
        )

    def conf(self, conf: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k: (MASK if k in self.params else v) for k, v in (conf or {}).items()}

    def structure(self, structure: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a pipeline structure with secret defaults and env values masked."""
        out = dict(structure)
        params = {}
        for name, spec in (structure.get("params") or {}).items():
            spec = dict(spec)
            if name in self.params and "default" in spec:
                spec["default"] = MASK
            params[name] = spec
        out["params"] = params
        tasks = {}
        for task_id, task in (structure.get("tasks") or {}).items():
            task = dict(task)
            if task.get("env"):
                task["env"] = {
                    k: (MASK if self.env_is_secret(k, v) else v) for k, v in task["env"].items()
                }
            tasks[task_id] = task
        out["tasks"] = tasks
        return out

    def values(self, confs: Iterable[Mapping[str, Any]]) -> list[str]:
        """The secret values to scrub from logs, longest first."""
        found = set(self.literals)
        for conf in confs:
            for name in self.params:
                if name in conf and conf[name] is not None:
                    value = conf[name]
                    found.add(value if isinstance(value, str) else json.dumps(value))
        return sorted((v for v in found if len(v) >= _MIN_SCRUB), key=len, reverse=True)


def scrub(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in ``text`` with ``***``."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
