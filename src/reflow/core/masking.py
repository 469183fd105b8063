"""Secrets never leave the server: values of secret params, and env values of tasks whose
name looks secret or whose template reads a secret param, are shown as ``***`` in pages,
API responses and the logs served."""

from __future__ import annotations

import codecs
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
        literals = set()
        for name, spec in (structure.get("params") or {}).items():
            if isinstance(spec, Mapping) and (spec.get("secret") or name in params):
                params.add(name)
                # A run older than the param renders with its default: mask that too.
                default = spec.get("default")
                if default is not None:
                    literals.add(default if isinstance(default, str) else json.dumps(default))
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


@dataclass(frozen=True)
class Masked:
    """A masked piece of a log: its text, and how many bytes of the input it covers."""

    text: str
    used: int


class LogMask:
    """Masks secret values in a log read piece by piece, at any byte offsets.

    A piece never ends inside a secret value: when the input may go on (the try still
    writes, or only part of the log was read), bytes that could be the start of a value
    are held back for the next piece; a piece ends on a whole UTF-8 character too.
    """

    def __init__(self, values: Iterable[str]) -> None:
        found = {v.encode() for v in values if v}
        self._values = sorted(found, key=len, reverse=True)
        # At one position the longest value wins, as in :func:`scrub`.
        self._pattern = (
            re.compile(b"|".join(re.escape(v) for v in self._values)) if self._values else None
        )

    @property
    def lookahead(self) -> int:
        """Bytes to read past a piece's end to see every value that starts inside it."""
        return max((len(v) for v in self._values), default=1) - 1

    def _partial_tail(self, data: bytes) -> int:
        """Length of the longest end of ``data`` that begins a value without completing it."""
        longest = 0
        for value in self._values:
            for n in range(min(len(value) - 1, len(data)), longest, -1):
                if data.endswith(value[:n]):
                    longest = n
                    break
        return longest

    def take(
        self,
        data: bytes,
        limit: int,
        *,
        ends: bool,
        whole_lines: bool = False,
        before: int = 0,
    ) -> Masked:
        """Mask at most about ``limit`` bytes of ``data`` after its first ``before`` bytes.

        ``data`` is what was read: up to :attr:`lookahead` bytes before the piece (so that
        a value the piece begins inside of is still recognised), then ``limit`` plus
        :attr:`lookahead` bytes, or fewer at the end of the log. ``ends`` says that the
        log is complete and ``data`` reaches its end. With ``whole_lines``, a piece that is
        not the last ends at a line end when it has one, and is empty while the log's last
        line is still being written."""
        # A value that begins before the piece and ends inside it: its end is masked too.
        head = 0
        for value in self._values:
            end = before + len(value) - 1
            at = data.find(value, max(0, before - len(value) + 1), end)
            while at >= 0:
                head = max(head, at + len(value) - before)
                at = data.find(value, at + 1, end)
        found = self._pattern.finditer(data, before + head) if self._pattern else ()
        matches = [(m.start() - before, m.end() - before) for m in found]
        if head:
            matches.insert(0, (0, head))
        body = data[before:]
        cut = min(limit, len(body))
        if not ends:
            # The log goes on: its last bytes may begin a value that the next ones complete.
            cut = min(cut, len(body) - min(len(body), self._partial_tail(data)))
        last = ends and cut == len(body)
        if whole_lines and not last and cut > 0:
            newline = body.rfind(b"\n", 0, cut)
            if newline >= 0:
                cut = newline + 1
            elif len(body) <= limit:
                cut = 0
        for start, end in matches:
            if start < cut < end:
                cut = start if start > 0 else end
                break
        out = bytearray()
        done = 0
        for start, end in matches:
            if end > cut:
                break
            out += body[done:start] + MASK.encode()
            done = end
        out += body[done:cut]
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(bytes(out), final=ends and cut == len(body))
        pending = len(decoder.getstate()[0])
        if pending and pending < cut:
            cut -= pending  # a character cut in two begins the next piece
        elif pending and cut < len(body):
            # ``limit`` is shorter than this one character: take all of it.
            return self.take(data, limit + 1, ends=ends, whole_lines=whole_lines, before=before)
        elif pending and not ends:
            return Masked("", 0)  # only the start of a character so far
        elif pending:
            text += decoder.decode(b"", final=True)
        return Masked(text, cut)
