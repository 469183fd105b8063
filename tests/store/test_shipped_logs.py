"""Reading a shipped log (``logs_url``) while its scheduler replaces the partial copy with
the final one, against a real S3-protocol server on loopback (moto), and a follower that
never serves a byte twice whatever copies it finds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from reflow.core.masking import LogMask
from reflow.services.logs import TryLog
from reflow.store.logs import PART, Copy, RemoteLogs
from tests.s3 import S3Server, s3

__all__ = ["s3"]  # the fixture


@pytest.fixture
def remote(s3: S3Server) -> Iterator[RemoteLogs]:
    yield RemoteLogs(f"s3://{s3.bucket}/logs", s3.options)


def test_a_look_while_the_final_copy_replaces_the_partial_one_still_finds_the_log(
    remote: RemoteLogs, s3: S3Server
) -> None:
    location = f"s3://{s3.bucket}/logs/p/run/t/try-1.log"
    remote.put(location, b"first\n", final=False)
    fs, path = remote._path(location)
    info = fs.info
    calls: list[str] = []

    def info_then_ship(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        try:
            return info(name, **kwargs)
        finally:
            if len(calls) == 1:
                # The scheduler ships the final copy between the reader's two looks: the
                # final copy was not there yet, and now the partial one is gone.
                remote.put(location, b"first\nlast\n", final=True)

    fs.info = info_then_ship
    try:
        found = remote.look(location)
    finally:
        del fs.info
    assert calls[:2] == [path, path + PART]
    assert found is not None, "a shipped log looked unshipped"
    name, copy = found
    assert (name, copy) == (path, Copy(11, True))
    assert remote.read(location, name, 6, 11) == b"last\n"


class Script:
    """A log source that shows, look after look, the copies of a script: (size, final)."""

    def __init__(self, text: bytes, looks: list[tuple[int, bool]]) -> None:
        self.text = text
        self.looks = looks
        self.seen = 0

    @property
    def where(self) -> str:
        return "scripted"

    def look(self) -> Copy:
        size, final = self.looks[min(self.seen, len(self.looks) - 1)]
        self.seen += 1
        return Copy(size, final)

    def read(self, start: int, end: int) -> bytes:
        return self.text[start:end]


class ScriptedLog(TryLog):
    """A try's log over a scripted source; the try ends with the last look."""

    def __init__(self, source: Script, secrets: list[str]) -> None:
        self.source = self.script = source
        self.mask = LogMask(secrets)
        self.attempt: Any = SimpleNamespace(ended_at=None)

    def refresh(self) -> None:
        if self.script.seen >= len(self.script.looks) - 1:
            self.attempt = SimpleNamespace(ended_at=datetime.now(UTC))


@pytest.mark.parametrize("secrets", [[], ["hunter22"]])
def test_a_follower_that_finds_no_copy_or_an_older_one_waits_where_it_is(
    secrets: list[str],
) -> None:
    text = b"first hunter22\nwaiting\nwaiting\nlast\n"
    looks = [
        (15, False),  # the partial copy: the first line
        (0, False),  # no copy found (a look between two stores)
        (23, False),
        (15, False),  # an older copy (a slow replica, a late partial store)
        (len(text), True),  # the final copy
    ]
    followed = "".join(ScriptedLog(Script(text, looks), secrets).stream(follow=True, poll=0))
    expected = text.decode().replace("hunter22", "***") if secrets else text.decode()
    assert followed == expected


def test_an_offset_past_the_copy_reads_nothing_and_stays() -> None:
    log = ScriptedLog(Script(b"abc\n", [(4, False)]), [])
    chunk = log.read(10)
    assert (chunk.offset, chunk.next_offset, chunk.size, chunk.text) == (10, 10, 4, "")
    assert chunk.complete is False
