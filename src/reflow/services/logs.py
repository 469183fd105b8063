"""Reading a try's log, the one way the CLI and the web do it: find the try, collect every
secret its run ever had, and read or follow the log with them masked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from reflow.core.errors import NotFound
from reflow.core.masking import LogMask
from reflow.core.naming import utcnow
from reflow.services import runs as run_service
from reflow.services.project import Project
from reflow.store import runs as store_runs
from reflow.store import tries as store_tries
from reflow.store.logs import LogSource, open_log, remote_logs
from reflow.store.records import Run, TaskTry

# The most a read returns at once.
LOG_CHUNK = 256 * 1024
# A shipped log whose try ended this long ago without a final copy (its scheduler died
# before it shipped one) is served as it is, complete: a follower does not wait forever.
FINAL_COPY_PATIENCE = timedelta(minutes=10)


@dataclass(frozen=True)
class LogChunk:
    """A masked piece of a log: bytes ``offset`` to ``next_offset`` of ``size``."""

    offset: int
    next_offset: int
    size: int
    complete: bool  # the try has ended and this piece reaches the end of its log
    text: str


def find_try(project: Project, run: Run, task_id: str, try_number: int | None = None) -> TaskTry:
    """The try (latest unless ``try_number``) of a task in a run."""
    with project.db.read() as conn:
        tries = [t for t in store_tries.tries_of(conn, run_pk=run.id) if t.task_id == task_id]
        tis = {t.task_id for t in store_runs.run_task_instances(conn, [run.id])}
    if task_id not in tis:
        raise NotFound(
            f"run {run.run_id} has no task {task_id!r} (tasks: {', '.join(sorted(tis))})"
        )
    if not tries:
        raise NotFound(f"task {task_id!r} of run {run.run_id} has not run yet")
    if try_number is None:
        return tries[-1]
    for t in tries:
        if t.try_number == try_number:
            return t
    numbers = ", ".join(str(t.try_number) for t in tries)
    raise NotFound(f"task {task_id!r} has no try {try_number} (tries: {numbers})")


def secret_values(project: Project, run: Run) -> list[str]:
    """Every secret that may appear in a log of ``run``: the values of the pipeline's
    secret params in the conf of each attempt (a try of an earlier attempt ran with its
    own), their defaults, and the literal secret env values."""
    secrets = run_service.secrets_of(project, run.pipeline)
    if not secrets:
        return []
    with project.db.read() as conn:
        confs = [a.conf for a in store_runs.attempts_of(conn, run.id)]
    return secrets.values([run.conf, *confs])


class TryLog:
    """The log of one try, read with every secret of its run masked."""

    def __init__(self, project: Project, run: Run, attempt: TaskTry) -> None:
        self.project = project
        self.run = run
        self.attempt = attempt
        self.mask = LogMask(secret_values(project, run))
        self.source: LogSource = open_log(project.settings, attempt.log_path)

    @property
    def path(self) -> str:
        """Where the log lives: a file's path, or the URL it is shipped to."""
        return self.source.where

    def refresh(self) -> None:
        """Read the try again (has it ended?)."""
        self.attempt = find_try(
            self.project, self.run, self.attempt.task_id, self.attempt.try_number
        )

    def read(
        self, offset: int = 0, limit: int = LOG_CHUNK, *, whole_lines: bool = False
    ) -> LogChunk:
        """The masked piece of the log from byte ``offset``, at most about ``limit`` bytes.

        While the try runs, bytes that may begin a secret are left for a later read, so
        ``next_offset`` can stop short of ``size``. With ``whole_lines`` a piece ends at a
        line end (for pages that show whole lines). A shipped log (``logs_url``) is read
        as shipped so far; it is complete once the try has ended and its final copy is
        stored. Raises LogsUnavailable when it cannot be read where it lives."""
        limit = max(1, min(limit, LOG_CHUNK))
        ended_at = self.attempt.ended_at  # known before the size is read
        copy = self.source.look()
        ended = ended_at is not None and (copy.final or utcnow() - ended_at > FINAL_COPY_PATIENCE)
        size = copy.size
        offset = max(0, offset)
        if size < offset:
            # A copy shorter than what was read already (none found, or an older one): the
            # reader waits where it is. Going back to the copy's end would serve a follower
            # the same bytes twice.
            return LogChunk(offset, offset, size, ended, "")
        # From a few bytes back: an offset inside a secret must not show the rest of it.
        start = max(0, offset - self.mask.lookahead)
        data = b""
        if size > offset:
            data = self.source.read(start, min(size, offset + limit + self.mask.lookahead))
        ends = ended and start + len(data) >= size
        piece = self.mask.take(
            data, limit, ends=ends, whole_lines=whole_lines, before=offset - start
        )
        nxt = offset + piece.used
        return LogChunk(offset, nxt, size, ended and nxt >= size, piece.text)

    def stream(self, *, follow: bool = False, poll: float = 0.5) -> Iterator[str]:
        """The masked log from its start, piece by piece. Without ``follow``, what has been
        written so far; with it, until the try has ended and its log is read."""
        offset = 0
        while True:
            chunk = self.read(offset)
            if chunk.text:
                yield chunk.text
            moved = chunk.next_offset > offset
            offset = chunk.next_offset
            if chunk.complete:
                return
            if moved and offset < chunk.size:
                continue  # more is there already
            if not follow:
                return
            time.sleep(poll)
            self.refresh()


def try_log(project: Project, run: Run, task_id: str, try_number: int | None = None) -> TryLog:
    """The log of a task's try (the latest unless ``try_number``) in ``run``."""
    return TryLog(project, run, find_try(project, run, task_id, try_number))


def check_logs(project: Project, *, write: bool = False) -> None:
    """Can this process read (and with ``write``, ship) the logs under ``logs_url``?
    ConfigError in one line when not: an unknown protocol, a missing package, a bucket
    that does not answer or does not exist, refused credentials."""
    remote = remote_logs(project.settings)
    if remote is not None:
        remote.check(write=write)
