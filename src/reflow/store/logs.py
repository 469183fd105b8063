"""Where try logs are read from and shipped to: a local file, or an object under the fsspec
URL ``logs_url`` (``s3://bucket/prefix``, ``gs://...``).

A try's row records its log's location: an absolute path (a file under the logs folder,
the default), or a URL. With a URL, the try writes to a local spool file and the scheduler
ships it (``reflow.scheduler.shipping``): while the try runs as ``<url>.part``, replaced as
it grows, and once the try has ended as ``<url>`` itself, the complete log, after which the
``.part`` copy is removed. A reader takes ``<url>`` when it exists, else ``<url>.part``;
each copy is a prefix of the next, so an offset read in one stays valid in the other.

fsspec and the filesystem of a URL's protocol (s3fs, gcsfs, ...) are imported here only,
when a remote log is used: the command line's start-up never pays for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reflow.core.config import Settings, is_url
from reflow.core.errors import ConfigError, LogsUnavailable

log = logging.getLogger("reflow.store")

# The suffix of the copy shipped while the try runs.
PART = ".part"
# Which package brings the filesystem of a protocol, for the error that says it is missing.
_PACKAGES = {"s3": "s3fs (pip install 'reflow[s3]')", "gs": "gcsfs (pip install 'reflow[gcs]')"}
_PACKAGES |= {"s3a": _PACKAGES["s3"], "gcs": _PACKAGES["gs"], "az": "adlfs", "abfs": "adlfs"}


@dataclass(frozen=True)
class Copy:
    """What a reader finds of a log: its size, and whether it is the complete log (a local
    file always is; a shipped log once the try's final copy is stored)."""

    size: int
    final: bool


class LogSource(Protocol):
    """A log as its readers see it: looked at, then read by byte ranges."""

    @property
    def where(self) -> str: ...

    def look(self) -> Copy: ...

    def read(self, start: int, end: int) -> bytes: ...


def one_line(exc: BaseException) -> str:
    """An error of a filesystem, as one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RemoteLogs:
    """The filesystems of log URLs. ``options`` are those of ``url``'s protocol
    (``logs_storage_options``); a log of another protocol (recorded before ``logs_url``
    changed) is read with that protocol's defaults."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.protocol = url.split("://", 1)[0]
        self.options = dict(options or {})
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._checked = 0  # 1: read, 2: written by this process
        self.filesystem(url)  # an unknown or missing protocol fails here, in one line

    def filesystem(self, location: str) -> Any:
        """The fsspec filesystem of ``location``'s protocol (made once). ConfigError when
        fsspec or the protocol's package is missing, or the protocol is unknown."""
        protocol = location.split("://", 1)[0]
        with self._lock:
            fs = self._filesystems.get(protocol)
            if fs is not None:
                return fs
            try:
                import fsspec
            except ImportError:
                raise ConfigError(
                    f"logs at {location}: reading and shipping logs to a URL needs fsspec "
                    f"and {_PACKAGES.get(protocol, 'the package of its protocol')}"
                ) from None
            try:
                cls = fsspec.get_filesystem_class(protocol)
            except ValueError:
                raise ConfigError(
                    f"logs at {location}: unknown protocol {protocol!r} (fsspec knows none such)"
                ) from None
            except ImportError:
                package = _PACKAGES.get(protocol, f"the package fsspec names for {protocol!r}")
                raise ConfigError(
                    f"logs at {location}: the {protocol}:// protocol needs {package}"
                ) from None
            options = self.options if protocol == self.protocol else {}
            try:
                fs = cls(**options, skip_instance_cache=True)
            except Exception as exc:  # bad options: the filesystem refuses them
                raise ConfigError(
                    f"logs at {location}: logs_storage_options refused: {one_line(exc)}"
                ) from None
            self._filesystems[protocol] = fs
            return fs

    def _path(self, location: str) -> tuple[Any, str]:
        fs = self.filesystem(location)
        return fs, fs._strip_protocol(location)

    # -- start-up -------------------------------------------------------------------------
    def check(self, *, write: bool) -> None:
        """Can logs be read (and with ``write``, shipped) under ``logs_url``? ConfigError
        in one line when not: a bucket that does not answer, refused credentials."""
        if self._checked >= (2 if write else 1):
            return  # checked already by this process
        fs, root = self._path(self.url)
        bucket = root.split("/", 1)[0]
        probe = f"{root}/.reflow-write-check"
        try:
            if write:
                fs.pipe_file(probe, b"")
                fs.rm_file(probe)
            else:
                fs.invalidate_cache(root)
                try:
                    fs.info(root)
                except FileNotFoundError:  # a prefix with nothing under it yet: its bucket?
                    if bucket == root:
                        raise
                    fs.info(bucket)
        except FileNotFoundError:
            doing = "write to" if write else "read"
            raise ConfigError(
                f"logs_url {self.url}: cannot {doing} it: no bucket (or folder) {bucket}"
            ) from None
        except Exception as exc:
            doing = "write to" if write else "read"
            raise ConfigError(f"logs_url {self.url}: cannot {doing} it: {one_line(exc)}") from None
        self._checked = 2 if write else 1

    # -- reading --------------------------------------------------------------------------
    def look(self, location: str) -> tuple[str, Copy] | None:
        """The latest copy of a log: its object and what it is; None when nothing was
        shipped yet. Raises LogsUnavailable."""
        fs, path = self._path(location)
        # The final copy is stored before the partial one is removed, so a look that finds
        # neither the final copy nor then the partial one (removed in between) finds the
        # final copy on looking again: a log once shipped never looks unshipped.
        for name, final in ((path, True), (path + PART, False), (path, True)):
            fs.invalidate_cache(name)
            try:
                info = fs.info(name)
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise LogsUnavailable(f"log {location}: {one_line(exc)}") from None
            return name, Copy(int(info.get("size") or 0), final)
        return None

    def read(self, location: str, name: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the copy ``name`` (from :meth:`look`); when that
        copy was replaced meanwhile, of the copy that replaced it (the same bytes)."""
        fs, path = self._path(location)
        for candidate in dict.fromkeys((name, path, path + PART)):
            try:
                data: bytes = fs.cat_file(candidate, start=start, end=end)
                return data
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise LogsUnavailable(f"log {location}: {one_line(exc)}") from None
        return b""

    def fetch(self, location: str) -> bytes:
        """The latest copy of a log, whole (b"" when none). Raises what fsspec raises."""
        found = self.look(location)
        if found is None:
            return b""
        data: bytes = self.filesystem(location).cat_file(found[0])
        return data

    # -- shipping -------------------------------------------------------------------------
    def put(self, location: str, data: bytes | Path, *, final: bool) -> None:
        """Store a copy of a log, given whole or as a local file (streamed: a big log is
        never held in memory): the partial copy of a running try, or its final copy (the
        partial one is then removed). Raises what fsspec raises."""
        fs, path = self._path(location)
        name = path if final else path + PART
        if isinstance(data, Path):
            fs.put_file(str(data), name)
        else:
            fs.pipe_file(name, data)
        if final:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path + PART)

    # -- removing -------------------------------------------------------------------------
    def present(self, locations: Iterable[str]) -> list[str]:
        """The locations that have a copy, listed a task's folder at a time."""
        by_folder: dict[str, list[str]] = {}
        for location in locations:
            by_folder.setdefault(location.rsplit("/", 1)[0], []).append(location)
        found: list[str] = []
        for folder, wanted in by_folder.items():
            fs, path = self._path(folder)
            fs.invalidate_cache(path)
            try:
                names = {str(n).rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)}
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise LogsUnavailable(f"logs under {folder}: {one_line(exc)}") from None
            for location in wanted:
                base = location.rsplit("/", 1)[-1]
                if base in names or base + PART in names:
                    found.append(location)
        return found

    def remove(self, locations: Sequence[str]) -> int:
        """Remove the copies of these logs; returns how many logs it removed (one that
        cannot be removed is logged and skipped: its rows are gone already)."""
        try:
            present = self.present(locations)
        except LogsUnavailable as exc:
            log.warning("shipped logs not removed: %s", exc)
            return 0
        removed = 0
        for location in present:
            fs, path = self._path(location)
            try:
                for name in (path, path + PART):
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm_file(name)
            except Exception as exc:
                log.warning("shipped log %s not removed: %s", location, one_line(exc))
                continue
            removed += 1
        return removed


_REMOTES: dict[str, RemoteLogs] = {}
_REMOTES_LOCK = threading.Lock()


def remote_logs(settings: Settings) -> RemoteLogs | None:
    """The remote logs of these settings (one per URL and options in a process), or None
    when ``logs_url`` is not a URL. ConfigError for an unknown or missing protocol."""
    url = settings.remote_logs
    return None if url is None else _remote(url, settings.logs_storage_options)


def _remote(url: str, options: Mapping[str, Any]) -> RemoteLogs:
    key = json.dumps([url, options], sort_keys=True, default=str)
    with _REMOTES_LOCK:
        known = _REMOTES.get(key)
    if known is None:
        known = RemoteLogs(url, options)
        with _REMOTES_LOCK:
            known = _REMOTES.setdefault(key, known)
    return known


class LocalLog:
    """A log in a local file (written here, or on a shared volume): always complete."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    def look(self) -> Copy:
        try:
            return Copy(self.path.stat().st_size, True)
        except OSError:
            return Copy(0, True)

    def read(self, start: int, end: int) -> bytes:
        try:
            with self.path.open("rb") as fh:
                fh.seek(start)
                return fh.read(max(0, end - start))
        except FileNotFoundError:
            return b""


class ShippedLog:
    """A log under a URL: the copy the scheduler shipped last."""

    def __init__(self, remote: RemoteLogs, location: str) -> None:
        self.remote = remote
        self.location = location
        self._name: str | None = None

    @property
    def where(self) -> str:
        return self.location

    def look(self) -> Copy:
        found = self.remote.look(self.location)
        if found is None:
            self._name = None
            return Copy(0, False)
        self._name, copy = found
        return copy

    def read(self, start: int, end: int) -> bytes:
        if self._name is None or end <= start:
            return b""
        return self.remote.read(self.location, self._name, start, end)


def remote_for(settings: Settings, location: str) -> RemoteLogs:
    """What reads and removes the shipped log at ``location``: ``logs_url``'s filesystems,
    or when ``logs_url`` is not a URL (any more), its protocol's with their defaults."""
    remote = remote_logs(settings)
    return remote or _remote(location.split("://", 1)[0] + "://", {})


def open_log(settings: Settings, location: str) -> LogSource:
    """The log recorded at ``location`` (a try's ``log_path``), as ``settings`` reach it."""
    if not is_url(location):
        return LocalLog(Path(location))
    return ShippedLog(remote_for(settings, location), location)
