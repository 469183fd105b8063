"""Finding pipelines in a folder of Python files. One broken file never hides the others."""

from __future__ import annotations

import hashlib
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

from reflow.core.errors import PipelineError, ReflowError
from reflow.core.pipeline import Pipeline


@dataclass
class ImportProblem:
    """A file that could not be loaded, or a pipeline in it that is invalid."""

    path: str
    message: str
    detail: str = ""


@dataclass
class Discovered:
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    problems: list[ImportProblem] = field(default_factory=list)


def pipeline_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*.py")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def load_file(path: Path) -> list[Pipeline]:
    """Import one file and return the pipelines it defines, validated.

    Raises PipelineError with a message naming the file.
    """
    path = path.resolve()
    module_name = "reflow_pipeline_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    with Pipeline.collecting() as found:
        try:
            # Compiled from the source every time: the bytecode cache keys on whole-second
            # mtimes and could hand back the previous version of a file edited just now.
            code = compile(path.read_bytes(), str(path), "exec")
            exec(code, module.__dict__)
        except ReflowError as exc:
            sys.modules.pop(module_name, None)
            raise PipelineError(f"{path}: {exc}") from None
        except SyntaxError as exc:
            sys.modules.pop(module_name, None)
            raise PipelineError(f"{path}: SyntaxError: {exc.msg} (line {exc.lineno})") from exc
        except OSError as exc:
            sys.modules.pop(module_name, None)
            raise PipelineError(f"{path}: cannot read: {exc.strerror}") from None
        except (Exception, SystemExit) as exc:  # a pipeline file must never stop the caller
            sys.modules.pop(module_name, None)
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
            where = f" (line {frames[-1].lineno})" if frames else ""
            raise PipelineError(f"{path}: {type(exc).__name__}: {exc}{where}") from exc
    for pipeline in found:
        pipeline.fileloc = str(path)
        try:
            pipeline.validate()
        except PipelineError as exc:
            raise PipelineError(f"{path}: {exc}") from None
    return found


def discover(folder: Path) -> Discovered:
    """Load every pipeline file under ``folder`` (files and folders starting with '_' or '.'
    are skipped). Problems are collected, never raised."""
    catalog = Catalog(folder)
    catalog.refresh()
    return Discovered(catalog.pipelines, catalog.problems)


class Catalog:
    """The pipelines of a folder, re-read only for files that changed since last time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[Path, tuple[tuple[int, int], list[Pipeline] | ImportProblem]] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.problems: list[ImportProblem] = []
        self._stamps: dict[str, int] = {}

    def refresh(self) -> bool:
        """Re-import new and changed files; return True when anything changed."""
        if str(self.folder) not in sys.path:
            sys.path.insert(0, str(self.folder))
        changed = False
        current: dict[Path, tuple[tuple[int, int], list[Pipeline] | ImportProblem]] = {}
        for path in pipeline_files(self.folder):
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._files.get(path)
            if cached is not None and cached[0] == stamp:
                current[path] = cached
                continue
            changed = True
            try:
                current[path] = (stamp, load_file(path))
            except PipelineError as exc:
                detail = traceback.format_exception(exc.__cause__) if exc.__cause__ else []
                current[path] = (stamp, ImportProblem(str(path), str(exc), "".join(detail)))
        changed = changed or set(current) != set(self._files)
        self._files = current
        if changed:
            self._rebuild()
        return changed

    def snapshot(self) -> Catalog:
        """A copy of what was read: refreshes of either leave the other alone (a refresh of
        the copy re-reads only the files that changed since)."""
        copy = Catalog(self.folder)
        copy.pipelines, copy.problems = dict(self.pipelines), list(self.problems)
        copy._stamps = dict(self._stamps)
        copy._files = dict(self._files)
        return copy

    def stamp(self, name: str) -> int | None:
        """Modification time (ns) of the file pipeline ``name`` was read from."""
        return self._stamps.get(name)

    def _rebuild(self) -> None:
        """Rebuild pipelines and problems from the files. A pipeline name declared in more
        than one file is an import problem of each of those files and is loaded from none of
        them: which file sorts first must never decide which code runs."""
        self.pipelines, self.problems, self._stamps = {}, [], {}
        files = sorted(self._files.items())
        declared: dict[str, list[str]] = {}
        for path, (_, loaded) in files:
            if not isinstance(loaded, ImportProblem):
                for pipeline in loaded:
                    declared.setdefault(pipeline.name, []).append(str(path))
        for path, (stamp, loaded) in files:
            if isinstance(loaded, ImportProblem):
                self.problems.append(loaded)
                continue
            clashes: list[str] = []
            for pipeline in loaded:
                where = declared[pipeline.name]
                if len(where) == 1:
                    self.pipelines[pipeline.name] = pipeline
                    self._stamps[pipeline.name] = stamp[0]
                    continue
                others = sorted({w for w in where if w != str(path)})
                text = (
                    f"pipeline {pipeline.name!r} is also declared in {', '.join(others)}"
                    if others
                    else f"pipeline {pipeline.name!r} is declared more than once in this file"
                )
                if text not in clashes:
                    clashes.append(text)
            if clashes:
                # One problem per file: the store keeps one import error per path.
                self.problems.append(
                    ImportProblem(str(path), f"{path}: {'; '.join(clashes)}; rename one")
                )
