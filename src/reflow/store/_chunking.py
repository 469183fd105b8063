"""Long id lists, bound a chunk at a time: one statement per ``_CHUNK`` ids keeps every
statement within the bound-parameter limits of SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeVar

_CHUNK = 500
_K = TypeVar("_K", int, str, datetime)


def _chunks(ids: Sequence[_K]) -> Iterable[Sequence[_K]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]
