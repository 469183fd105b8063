"""The log follower: one thread per try that appends its container's log to the try's log
file, and the position file from which a later scheduler resumes with nothing lost or repeated.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from reflow.core import trylines
from reflow.launchers.kubernetes.api import NamespaceApi
from reflow.launchers.kubernetes.manifest import CONTAINER


class _LogFollower(threading.Thread):
    """Appends the container's log to the try's log file while the pod runs. Each line is
    asked for with its timestamp, so a broken stream (or a new scheduler) resumes after
    the last line written, with nothing lost or repeated: the position is the last
    timestamp and how many lines carried it.

    ``state`` tells the container's state (see ``outcomes.container_state``); ``done`` is
    set when the follower ends."""

    def __init__(
        self,
        api: NamespaceApi,
        try_id: int,
        pod: str,
        log_path: Path,
        state: Callable[[], str],
        done: threading.Event,
        resume_after: tuple[str, int] | None,
    ) -> None:
        super().__init__(name=f"reflow-k8s-log-{try_id}", daemon=True)
        self.api = api
        self.pod = pod
        self.log_path = log_path
        self.state = state
        self.done = done
        self.last: str | None = resume_after[0] if resume_after else None
        self.count = resume_after[1] if resume_after else 0
        self.stop = threading.Event()
        self._writing = threading.Lock()
        self.nudge = threading.Event()
        self._partial = b""
        self._resume: tuple[str | None, int] = (None, 0)
        self._seen_at_resume = 0

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not self.stop.is_set():
            state = self.state()
            if state == "gone":
                break
            if state == "waiting":
                self.nudge.wait(0.5)
                self.nudge.clear()
                continue
            # Each stream starts at the beginning: lines up to the position are skipped.
            self._resume, self._seen_at_resume, self._partial = (self.last, self.count), 0, b""
            try:
                response = self.api.core.read_namespaced_pod_log(
                    self.pod,
                    self.api.namespace,
                    container=CONTAINER,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                    _request_timeout=(5, 300),
                )
                try:
                    for chunk in response.stream(65536):
                        self._feed(chunk)
                        if self.stop.is_set():
                            break
                finally:
                    response.release_conn()
                self._flush_partial()
            except ApiException as exc:
                if exc.status == 404:
                    break
            except (HTTPError, OSError):
                pass
            if state == "terminated":  # began after the end: it had everything
                break
            # The stream ended: the container did (the watch says so at once), or the
            # connection broke (streamed again, after a pause).
            self.nudge.wait(0.2)
            self.nudge.clear()
        self.done.set()

    def _feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        self._write(lines)

    def _flush_partial(self) -> None:
        if self._partial:
            lines, self._partial = [self._partial], b""
            self._write(lines)

    def halt(self) -> None:
        """Stop; once this returns the follower writes nothing more, so that whoever
        follows the pod next (a new scheduler) resumes from what it wrote."""
        with self._writing:
            self.stop.set()

    def _write(self, lines: list[bytes]) -> None:
        with self._writing:
            if not self.stop.is_set():
                self._write_locked(lines)

    def _write_locked(self, lines: list[bytes]) -> None:
        out = []
        resume_key, resume_count = self._resume
        for line in lines:
            stamp, _, text = line.partition(b" ")
            if not _STAMP.match(stamp):
                # Not a line of the container: the kubelet's own text (say, why it cannot
                # give the log of a container being removed), written whole as a line of
                # reflow's, so that it never passes for the task's output; it moves no
                # position.
                if line.strip():
                    said = "kubelet: " + line.decode("utf-8", "replace")
                    ours = trylines.stamped(datetime.now(UTC), [said])
                    out += [f"{s}\n".encode() for s in ours]
                continue
            key = _stamp_key(stamp.decode("ascii", "replace"))
            if resume_key is not None:
                if key < resume_key:
                    continue
                if key == resume_key:
                    self._seen_at_resume += 1
                    if self._seen_at_resume <= resume_count:
                        continue
            if key == self.last:
                self.count += 1
            else:
                self.last, self.count = key, 1
            out.append(text + b"\n")
        if not out:
            return
        with self.log_path.open("ab") as fh:
            fh.writelines(out)
        with contextlib.suppress(OSError):
            _position_file(self.log_path).write_text(f"{self.last} {self.count}")


_STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _stamp_key(stamp: str) -> str:
    """An RFC 3339 timestamp that sorts as text: the fraction padded to nanoseconds."""
    main, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{main}.{rest.ljust(9, '0')}" if dot else f"{main}.000000000"


def _position_file(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".k8s-position")


def _read_position(log_path: Path) -> tuple[str, int] | None:
    """Where an earlier scheduler's follower stopped: (timestamp key, lines at it)."""
    try:
        key, _, count = _position_file(log_path).read_text().strip().partition(" ")
        return (key, int(count or 1)) if key else None
    except (OSError, ValueError):
        return None
