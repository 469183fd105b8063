"""reflow's own lines in a try's log: their form, and the one writer every process that
adds them uses (the scheduler for what the try runs and how it ended, launchers for what
happens to a pod). Each starts with ``[reflow] `` and a UTC timestamp, so that readers and
parsers can tell them from the task's output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "[reflow] "
# How much of the log's end write() reads to see whether it ends with the same lines.
_TAIL = 64 * 1024
_STAMPED = re.compile(r"^\[reflow\] \S+ ")


def is_ours(line: str) -> bool:
    """Is this line of a try's log one of reflow's own (not the task's output)?"""
    return line.startswith(PREFIX)


def task_output(text: str) -> str:
    """A try's log without reflow's own lines: what the task itself wrote."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_ours(line))


def stamp(at: datetime) -> str:
    """``2024-01-03T10:00:00.123Z``: UTC, to the millisecond."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(at: datetime, texts: Iterable[str]) -> list[str]:
    """The texts as lines of reflow's own, stamped ``at``: one line per line of a text, so
    that no part of a multi-line text (a shell script) passes for the task's output."""
    head = f"{PREFIX}{stamp(at)} "
    return [head + part for text in texts for part in (text.splitlines() or [""])]


def write(path: Path, lines: Sequence[str]) -> None:
    """Append stamped lines (:func:`stamped`) to the log at ``path``, in one write.

    They begin a line of their own even when the task's output did not end its last line.
    Lines the log already ends with (an outcome recorded again after its transaction failed)
    are not written again. Raises OSError."""
    if not lines:
        return
    try:
        # Unbuffered append: one write(2), never interleaved with a follower's lines.
        fh = path.open("a+b", buffering=0)
    except FileNotFoundError:  # the try's first line: its folder is made here
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a+b", buffering=0)
    with fh:
        size = fh.seek(0, os.SEEK_END)
        tail = b""
        if size:
            fh.seek(max(0, size - _TAIL))
            tail = fh.read()
        if _ends_with(tail, lines):
            return
        data = ("\n".join(lines) + "\n").encode()
        if tail and not tail.endswith(b"\n"):
            data = b"\n" + data
        fh.write(data)


def _ends_with(tail: bytes, lines: Sequence[str]) -> bool:
    last = tail.decode("utf-8", "replace").splitlines()[-len(lines) :]
    return len(last) == len(lines) and all(
        _STAMPED.match(a) and _STAMPED.sub("", a) == _STAMPED.sub("", b)
        for a, b in zip(last, lines, strict=True)
    )
