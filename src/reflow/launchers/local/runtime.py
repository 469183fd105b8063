"""The runtime folder shared by the launchers of a project: per try, the pid file that claims
its id (or the fence that keeps it from running), its exit file and its scratch folder.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

# The content of a pid file that fences its try: no wrapper of that try id will run.
FENCE = "fenced"
# How long adopt() or start() waits for a wrapper that created its pid file to write its pid.
_CLAIM_WAIT = 2.0
# A fence is kept this long after its try is over: a paused scheduler may resume late.
_FENCE_KEEP = 24 * 3600.0


def _scratch(runtime_dir: Path, try_id: int) -> Path:
    return runtime_dir / "scratch" / str(try_id)


def _pid_file(runtime_dir: Path, try_id: int) -> Path:
    return runtime_dir / f"{try_id}.pid"


def _exit_file(runtime_dir: Path, try_id: int) -> Path:
    return runtime_dir / f"{try_id}.exit"


def _read_int(path: Path) -> int | None:
    """The integer in ``path``, or None if it is missing or not (yet) an integer."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_claim(runtime_dir: Path, try_id: int) -> str | None:
    """The pid file's content (a pid, ``fenced``, or "" while being written), or None."""
    try:
        return _pid_file(runtime_dir, try_id).read_text().strip()
    except OSError:
        return None


def _settled_claim(runtime_dir: Path, try_id: int) -> str | None:
    """The pid file's content, once a wrapper that just created it wrote its pid."""
    deadline = time.monotonic() + _CLAIM_WAIT
    claim = _read_claim(runtime_dir, try_id)
    while claim == "" and time.monotonic() < deadline:
        time.sleep(0.01)
        claim = _read_claim(runtime_dir, try_id)
    return claim


def _fence(runtime_dir: Path, try_id: int) -> bool:
    """Create the try's pid file as a fence, if it does not exist; True if created.

    A hard link to a complete file is exclusive (like O_EXCL) and never shows an empty
    file to a reader, which would take it for a wrapper about to write its pid.
    """
    pending = runtime_dir / f"{try_id}.fence.{os.getpid()}"
    pending.write_text(FENCE + "\n")
    try:
        os.link(pending, _pid_file(runtime_dir, try_id))
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            pending.unlink()


def _remove_files(runtime_dir: Path, try_id: int, keep_claim: bool = False) -> None:
    paths = [_exit_file(runtime_dir, try_id)]
    if not keep_claim:
        paths.insert(0, _pid_file(runtime_dir, try_id))
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _listing(runtime_dir: Path) -> dict[int, list[Path]]:
    """The files and scratch folders in the runtime folder, by try id."""
    found: dict[int, list[Path]] = {}
    with contextlib.suppress(OSError), os.scandir(runtime_dir) as entries:
        for entry in entries:
            head, dot, _ = entry.name.partition(".")
            if dot and head.isdigit():
                found.setdefault(int(head), []).append(Path(entry.path))
    with contextlib.suppress(OSError), os.scandir(runtime_dir / "scratch") as entries:
        for entry in entries:
            if entry.name.isdigit():
                found.setdefault(int(entry.name), []).append(Path(entry.path))
    return found
