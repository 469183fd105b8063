"""Per-try cgroups: finding a writable hierarchy (v2, or v1 pids), creating a try's cgroup,
and signalling or killing everything in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from reflow.launchers.local.processes import _SWEEP_STEP, _SWEEP_TIMEOUT, _in_group
from reflow.launchers.local.wrapper import _SH

log = logging.getLogger("reflow.launchers.local")


@dataclass(frozen=True)
class _Cgroups:
    """The cgroup folder of a launcher's scope, with one cgroup per try in it."""

    version: int  # 1 (the pids hierarchy) or 2
    mount: Path
    root: Path

    @property
    def kind(self) -> str:
        return "cgroup v2" if self.version == 2 else "cgroup v1, pids"

    def of(self, try_id: int) -> Path:
        return self.root / str(try_id)

    def listing(self) -> list[tuple[int, Path]]:
        """The try cgroups in the scope; left-over probes are removed."""
        found = []
        with contextlib.suppress(OSError), os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.isdigit():
                    found.append((int(entry.name), Path(entry.path)))
                elif entry.name.startswith("probe-") and entry.is_dir():
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)
        return found

    def create(self, try_id: int) -> Path | None:
        """A new, empty cgroup for the try; None if it cannot be made (the try then runs
        without one)."""
        path = self.of(try_id)
        for _ in range(3):
            try:
                path.mkdir()
                return path
            except FileExistsError:  # left by a try of the same id (an earlier database)
                self.remove(path)
            except FileNotFoundError:  # the scope folder went (another launcher's close)
                with contextlib.suppress(OSError):
                    self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("try %s runs without a cgroup: %s", try_id, exc)
                return None
        return None

    def joinable(self) -> bool:
        """Can a process started from here move itself into a cgroup of the scope, as the
        wrapper does? (Rights on the hierarchy's common ancestor decide it.)"""
        probe = self.root / f"probe-{os.getpid()}"
        try:
            probe.mkdir(exist_ok=True)
            done = subprocess.run(
                [_SH, "-c", 'echo "$$" >"$1"', "reflow", str(probe / "cgroup.procs")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return done.returncode == 0
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()

    def members(self, path: Path) -> list[int]:
        """Pids of the live processes in the cgroup (zombies are not listed)."""
        try:
            return [int(word) for word in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def send_all(self, path: Path, sig: signal.Signals, except_group: int | None = None) -> None:
        """Send ``sig`` to every process in the cgroup (but those of the process group
        ``except_group``, signalled as a group already)."""
        suffix = "/" + str(path.relative_to(self.mount))
        for pid in self.members(path):
            if not _in_group(pid, except_group):
                self._send(pid, suffix, sig)

    def kill(self, path: Path, wait: float) -> bool:
        """SIGKILL everything in the cgroup, forks blocked first (v2: ``cgroup.kill``; v1:
        ``pids.max`` 0), and again until it is empty or ``wait`` seconds passed.
        True once it is empty."""
        pids = self.members(path)
        if not pids:
            return True
        with contextlib.suppress(OSError):
            if self.version == 2:
                (path / "cgroup.kill").write_text("1")
            else:
                (path / "pids.max").write_text("0")
        suffix = "/" + str(path.relative_to(self.mount))
        deadline = time.monotonic() + wait
        while True:
            for pid in pids:
                self._send(pid, suffix, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return False
            time.sleep(_SWEEP_STEP)
            pids = self.members(path)
            if not pids:
                return True

    def remove(self, path: Path) -> None:
        """Remove the try's cgroup, killing what is left in it first."""
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            pass
        if not self.kill(path, _SWEEP_TIMEOUT):
            log.warning("processes of cgroup %s survive SIGKILL", path)
        with contextlib.suppress(OSError):
            path.rmdir()

    def _send(self, pid: int, suffix: str, sig: signal.Signals) -> None:
        """Signal ``pid`` if it is (still) in the cgroup: the pidfd pins the process, so a
        pid reused after the cgroup was read is never hit."""
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            pidfd = None
        try:
            if not self._holds(pid, suffix):
                return
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except OSError:
            pass
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _holds(self, pid: int, suffix: str) -> bool:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            number, controllers, path = [*line.split(":", 2), "", ""][:3]
            ours = number == "0" if self.version == 2 else "pids" in controllers.split(",")
            if ours and path.endswith(suffix):
                return True
        return False


def _cgroup_mounts() -> list[tuple[int, Path]]:
    """Writable cgroup hierarchies, best first: a unified (v2 only) one, a v1 pids one,
    then the v2 part of a hybrid set-up."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    unified: list[tuple[int, Path]] = []
    pids: list[tuple[int, Path]] = []
    hybrid: list[tuple[int, Path]] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or "ro" in fields[3].split(","):
            continue
        where, kind = Path(fields[1]), fields[2]
        if kind == "cgroup2":
            (unified if where == Path("/sys/fs/cgroup") else hybrid).append((2, where))
        elif kind == "cgroup" and "pids" in fields[3].split(","):
            pids.append((1, where))
    return unified + pids + hybrid


def _open_cgroups(scope: str) -> _Cgroups | None:
    """The cgroup folder of a scope (``reflow/<hash of the runtime folder>``, so that two
    projects never touch each other's) in the first hierarchy that works, or None."""
    key = hashlib.sha256(scope.encode()).hexdigest()[:16]
    for version, mount in _cgroup_mounts():
        root = mount / "reflow" / key
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        cgroups = _Cgroups(version, mount, root)
        if cgroups.joinable():
            return cgroups
        with contextlib.suppress(OSError):
            root.rmdir()
    return None
