"""A metadata database that cannot be written is one clear line from every command, and
nothing is written or lost.

The tests make the database (or its folder) really unwritable. As a normal user, plain
permissions do that; as root (CI runs as root) permissions are not enforced, so the file is
made immutable (``chattr +i``) where the file system and capabilities allow it, and
otherwise the commands run as the ``nobody`` user against root-owned files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from .test_cli import REFLOW


class Unwritable:
    """Makes a path unwritable for the reflow commands that :meth:`reflow` runs."""

    def __init__(self, how: str) -> None:
        self.how = how  # "chmod" (not root), "chattr" (root) or "nobody" (root)

    def protect(self, path: Path) -> None:
        if self.how == "chattr":
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        elif self.how == "chmod":
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        elif path.is_file():  # nobody: the folder must let nobody create SQLite's side files
            path.parent.chmod(0o777)
            path.chmod(0o644)
        else:
            path.chmod(0o755)

    def release(self, path: Path) -> None:
        if self.how == "chattr":
            subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
        else:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)

    def reflow(self, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a command as the user for whom the protected paths are unwritable."""
        prefix = ["runuser", "-u", "nobody", "--"] if self.how == "nobody" else []
        return reflow(home, *args, prefix=prefix)


def reflow(
    home: Path, *args: str, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *REFLOW, *args],
        cwd=home,
        env={**os.environ, "REFLOW_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _how(probe: Path) -> str | None:
    if chosen := os.environ.get("REFLOW_TEST_UNWRITABLE"):  # chmod | chattr | nobody
        return chosen
    if os.geteuid() != 0:
        return "chmod"
    folder = probe / "chattr-probe"
    folder.mkdir()
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if made.returncode == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True, capture_output=True)
        return "chattr"
    try:
        ran = subprocess.run(
            ["runuser", "-u", "nobody", "--", *REFLOW, "--help"],
            cwd="/",
            capture_output=True,
            timeout=60,
        )
    except OSError:
        return None
    return "nobody" if ran.returncode == 0 else None


@pytest.fixture
def project() -> Iterator[tuple[Path, Unwritable]]:
    """A project with one run, in a folder that the ``nobody`` user may enter."""
    top = Path(tempfile.mkdtemp(prefix="reflow-ro-"))
    top.chmod(0o755)
    how = _how(top)
    if how is None:
        pytest.skip("as root, neither chattr +i nor runuser -u nobody can make a file unwritable")
    unwritable = Unwritable(how)
    home = top / "proj"
    try:
        assert reflow(top, "init", str(home)).returncode == 0
        queued = reflow(home, "trigger", "example", "--date", "2024-01-01")
        assert queued.returncode == 0, queued.stderr
        yield home, unwritable
    finally:
        for path in (home / ".reflow" / "reflow.db", home / ".reflow"):
            if path.exists():
                unwritable.release(path)
        subprocess.run(["rm", "-rf", str(top)], check=False)


def _content(home: Path) -> list[str]:
    # Closed at once: an open connection keeps SQLite's side files, which would let the
    # commands write through a read-only folder.
    with closing(sqlite3.connect(home / ".reflow" / "reflow.db")) as conn:
        return list(conn.iterdump())


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


WRITES = [
    ("trigger", "example", "--date", "2024-01-02"),
    ("backfill", "example", "--start", "2024-02-01", "--end", "2024-02-03"),
]


def test_writes_to_a_read_only_database_file_are_one_line_and_change_nothing(
    project: tuple[Path, Unwritable],
) -> None:
    home, unwritable = project
    path = home / ".reflow" / "reflow.db"
    before = _content(home)
    unwritable.protect(path)
    for args in WRITES:
        line = _one_line_error(unwritable.reflow(home, *args))
        assert line.startswith(f"error: cannot write to the database {path}: "), line
        assert "readonly database" in line and "permissions" in line
    listed = unwritable.reflow(home, "runs", "list")  # reading still works
    assert listed.returncode == 0 and "2024-01-01" in listed.stdout, listed.stderr
    unwritable.release(path)
    assert _content(home) == before
    again = reflow(home, *WRITES[0])
    assert again.returncode == 0, again.stderr


def test_commands_on_a_read_only_database_folder_are_one_line(
    project: tuple[Path, Unwritable],
) -> None:
    home, unwritable = project
    folder = home / ".reflow"
    before = _content(home)
    unwritable.protect(folder)
    for args in [*WRITES, ("runs", "list")]:
        line = _one_line_error(unwritable.reflow(home, *args))
        # "open" when SQLite cannot create its side files, "write to" when the file itself
        # cannot be opened for writing either.
        assert line.startswith("error: cannot "), line
        assert f" the database {folder / 'reflow.db'}: " in line and "folder" in line
    unwritable.release(folder)
    assert _content(home) == before
