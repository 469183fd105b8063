"""Discovery: loading a folder of pipeline files, where one broken file hides nothing."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reflow.core import pipeline as pipeline_module
from reflow.core.discovery import Catalog, ImportProblem, discover, load_file, pipeline_files
from reflow.core.pipeline import Pipeline
from reflow.scheduler.catalog import sync_catalog
from reflow.store import pipelines as store_pipelines
from reflow.store.db import Database

NOW = datetime(2024, 1, 1, tzinfo=UTC)

GOOD = """
    from reflow.core.pipeline import Pipeline
    from reflow.tasks import Shell

    with Pipeline("{name}", schedule="@daily", start_date="2024-01-01"):
        Shell("extract", "{command}") >> Shell("load", "load --day {{{{ ds }}}}")
"""


def write(folder: Path, relative: str, source: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def good(name: str = "events", command: str = "extract --day {{ ds }}") -> str:
    return textwrap.dedent(GOOD.format(name=name, command=command))


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalog.refresh() puts the pipelines folder on sys.path; keep that to one test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "pipelines"
    path.mkdir()
    return path.resolve()  # messages name the resolved path


def messages(catalog: Catalog) -> dict[str, str]:
    return {Path(p.path).name: p.message for p in catalog.problems}


# -- a folder with good and broken files --------------------------------------------------


@pytest.fixture
def mixed(folder: Path) -> Path:
    write(folder, "good.py", good("events"))
    write(folder, "syntax.py", "x = 1\ndef broken(:\n    pass\n")
    write(folder, "raising.py", 'import os\n\nraise RuntimeError("no credentials at import")\n')
    write(
        folder,
        "cyclic.py",
        """
        from reflow.core.pipeline import Pipeline
        from reflow.tasks import Shell

        with Pipeline("loopy"):
            a, b = Shell("a", "x"), Shell("b", "x")
            a >> b >> a
        """,
    )
    return folder


def test_the_good_pipeline_loads_despite_broken_neighbours(mixed: Path) -> None:
    found = discover(mixed)

    assert sorted(found.pipelines) == ["events"]
    assert sorted(found.pipelines["events"].tasks) == ["extract", "load"]


def test_each_broken_file_is_one_problem_naming_the_file(mixed: Path) -> None:
    found = discover(mixed)

    assert sorted(Path(p.path).name for p in found.problems) == [
        "cyclic.py",
        "raising.py",
        "syntax.py",
    ]
    for problem in found.problems:
        assert problem.path == str(mixed / Path(problem.path).name)
        assert problem.message.startswith(f"{problem.path}: ")


def test_a_syntax_error_is_reported_as_such(mixed: Path) -> None:
    catalog = Catalog(mixed)
    catalog.refresh()

    message = messages(catalog)["syntax.py"]
    assert message.startswith(f"{mixed / 'syntax.py'}: SyntaxError: invalid syntax")
    assert "line 2" in message


def test_an_exception_at_import_is_reported_with_its_type_message_and_line(mixed: Path) -> None:
    catalog = Catalog(mixed)
    catalog.refresh()

    assert messages(catalog)["raising.py"] == (
        f"{mixed / 'raising.py'}: RuntimeError: no credentials at import (line 3)"
    )
    (problem,) = [p for p in catalog.problems if p.path.endswith("raising.py")]
    assert "Traceback" in problem.detail
    assert 'raise RuntimeError("no credentials at import")' in problem.detail


def test_a_cycle_is_reported_naming_the_file_and_the_pipeline(mixed: Path) -> None:
    catalog = Catalog(mixed)
    catalog.refresh()

    assert messages(catalog)["cyclic.py"] == (
        f"{mixed / 'cyclic.py'}: pipeline 'loopy': cycle a -> b -> a"
    )


def test_a_syntax_error_message_names_only_the_offending_line(mixed: Path) -> None:
    catalog = Catalog(mixed)
    catalog.refresh()

    message = messages(catalog)["syntax.py"]
    assert set(re.findall(r"line (\d+)", message)) == {"2"}


def test_an_invalid_pipeline_definition_names_the_file_and_the_pipeline(folder: Path) -> None:
    write(
        folder,
        "nostart.py",
        """
        from reflow.core.pipeline import Pipeline

        Pipeline("nostart", schedule="@daily")
        """,
    )

    found = discover(folder)

    assert found.pipelines == {}
    assert [p.message for p in found.problems] == [
        f"{folder / 'nostart.py'}: pipeline 'nostart': a scheduled pipeline needs a start_date"
    ]


def test_a_loaded_pipeline_knows_its_file(folder: Path) -> None:
    path = write(folder, "events.py", good("events"))

    found = discover(folder)

    assert found.pipelines["events"].fileloc == str(path.resolve())


def test_a_file_may_define_several_pipelines(folder: Path) -> None:
    write(folder, "two.py", good("first") + good("second"))

    assert sorted(discover(folder).pipelines) == ["first", "second"]


def test_a_file_without_pipelines_is_neither_a_pipeline_nor_a_problem(folder: Path) -> None:
    write(folder, "constants.py", "REGIONS = ['eu', 'us']\n")

    found = discover(folder)

    assert found.pipelines == {}
    assert found.problems == []


def test_pipelines_in_subfolders_are_found(folder: Path) -> None:
    write(folder, "team/nested.py", good("nested"))

    assert sorted(discover(folder).pipelines) == ["nested"]


def test_a_missing_folder_has_nothing_to_discover(tmp_path: Path) -> None:
    found = discover(tmp_path / "absent")

    assert found.pipelines == {}
    assert found.problems == []


def test_loading_a_file_leaves_no_pipeline_context_open(folder: Path) -> None:
    path = write(folder, "events.py", good("events"))

    load_file(path)

    assert Pipeline.current() is None
    assert pipeline_module._defining.registry is None


# -- skipped files ------------------------------------------------------------------------


def test_files_and_folders_starting_with_underscore_or_dot_are_skipped(folder: Path) -> None:
    write(folder, "events.py", good("events"))
    write(folder, "_private.py", good("private"))
    write(folder, ".hidden.py", good("hidden"))
    write(folder, "_lib/helper.py", good("helper"))
    write(folder, ".cache/cached.py", good("cached"))
    write(folder, "notes.txt", "not python")

    assert [p.relative_to(folder).as_posix() for p in pipeline_files(folder)] == ["events.py"]
    assert sorted(discover(folder).pipelines) == ["events"]


def test_a_pipeline_file_may_import_a_helper_from_a_skipped_module(folder: Path) -> None:
    module = "_reflow_test_naming_helper"
    write(folder, f"{module}.py", "def table(ds):\n    return 'events_' + ds\n")
    write(
        folder,
        "events.py",
        f"""
        from {module} import table
        from reflow.core.pipeline import Pipeline
        from reflow.tasks import Shell

        with Pipeline("events"):
            Shell("load", "load " + table("x"))
        """,
    )
    try:
        found = discover(folder)
    finally:
        sys.modules.pop(module, None)

    assert found.problems == []
    assert found.pipelines["events"].tasks["load"].command == "load events_x"  # type: ignore[attr-defined]


# -- duplicate names ----------------------------------------------------------------------


def clash(folder: Path, name: str, other: str, pipeline: str = "events") -> str:
    return (
        f"{folder / name}: pipeline {pipeline!r} is also declared in {folder / other}; rename one"
    )


@pytest.mark.parametrize("intruder", ["a.py", "z.py"])
def test_two_files_declaring_one_pipeline_are_both_broken_and_neither_loads(
    folder: Path, intruder: str
) -> None:
    write(folder, "m.py", good("events", "original"))
    write(folder, intruder, good("events", "intruder"))

    found = discover(folder)

    assert "events" not in found.pipelines
    assert sorted((Path(p.path).name, p.message) for p in found.problems) == sorted(
        [("m.py", clash(folder, "m.py", intruder)), (intruder, clash(folder, intruder, "m.py"))]
    )


def test_a_clash_leaves_the_other_pipelines_of_both_files_loaded(folder: Path) -> None:
    write(folder, "a.py", good("events") + good("orders"))
    write(folder, "b.py", good("events") + good("users"))

    found = discover(folder)

    assert sorted(found.pipelines) == ["orders", "users"]
    assert sorted(Path(p.path).name for p in found.problems) == ["a.py", "b.py"]


def test_three_files_declaring_one_pipeline_each_name_the_other_two(folder: Path) -> None:
    for name in ("a.py", "b.py", "c.py"):
        write(folder, name, good("events"))

    found = discover(folder)

    assert "events" not in found.pipelines
    assert messages_of(found.problems)["b.py"] == (
        f"{folder / 'b.py'}: pipeline 'events' is also declared in "
        f"{folder / 'a.py'}, {folder / 'c.py'}; rename one"
    )
    assert len(found.problems) == 3


def test_a_file_declaring_one_pipeline_twice_is_broken(folder: Path) -> None:
    write(folder, "a.py", good("events") + good("events"))

    found = discover(folder)

    assert found.pipelines == {}
    assert messages_of(found.problems) == {
        "a.py": f"{folder / 'a.py'}: pipeline 'events' is declared more than once in this "
        "file; rename one"
    }


@pytest.mark.parametrize("intruder", ["a.py", "z.py"])
@pytest.mark.parametrize("fix", ["delete", "rename"])
def test_removing_the_clash_brings_the_original_back(folder: Path, intruder: str, fix: str) -> None:
    write(folder, "m.py", good("events", "original"))
    catalog = Catalog(folder)
    catalog.refresh()
    path = write(folder, intruder, good("events", "intruder"))
    assert catalog.refresh()
    assert "events" not in catalog.pipelines and len(catalog.problems) == 2

    if fix == "delete":
        path.unlink()
    else:
        write(folder, intruder, good("intruders", "intruder"))
        bump_mtime(path)
    assert catalog.refresh()

    assert catalog.problems == []
    events = catalog.pipelines["events"]
    assert events.fileloc == str(folder / "m.py")
    assert events.tasks["extract"].command == "original"  # type: ignore[attr-defined]


def test_the_stored_pipeline_stays_active_while_its_name_clashes(
    folder: Path, db: Database
) -> None:
    original = write(folder, "m.py", good("events", "original"))
    catalog = Catalog(folder)
    catalog.refresh()
    sync_catalog(db, catalog, NOW)
    version = catalog.pipelines["events"].version
    intruder = write(folder, "a.py", good("events", "intruder"))
    catalog.refresh()
    sync_catalog(db, catalog, NOW)

    with db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["events"])
        errors = {e.path for e in store_pipelines.list_import_errors(conn)}
    assert (row.active, row.version, row.fileloc) == (True, version, str(original))
    assert errors == {str(original), str(intruder)}

    intruder.unlink()
    catalog.refresh()
    sync_catalog(db, catalog, NOW)
    with db.read() as conn:
        (row,) = store_pipelines.pipeline_rows(conn, ["events"])
        assert store_pipelines.list_import_errors(conn) == []
    assert (row.active, row.version, row.fileloc) == (True, version, str(original))


def messages_of(problems: list[ImportProblem]) -> dict[str, str]:
    return {Path(p.path).name: p.message for p in problems}


# -- refreshing ---------------------------------------------------------------------------


def bump_mtime(path: Path, seconds: int = 10) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


def test_refresh_reports_a_change_the_first_time_and_none_after(folder: Path) -> None:
    write(folder, "events.py", good("events"))
    catalog = Catalog(folder)

    assert catalog.refresh() is True
    assert catalog.refresh() is False
    assert sorted(catalog.pipelines) == ["events"]


def test_refresh_keeps_the_same_pipeline_objects_when_nothing_changed(folder: Path) -> None:
    write(folder, "events.py", good("events"))
    catalog = Catalog(folder)
    catalog.refresh()
    before = catalog.pipelines["events"]

    catalog.refresh()

    assert catalog.pipelines["events"] is before


def test_refresh_reimports_a_file_whose_content_changed(folder: Path) -> None:
    path = write(folder, "events.py", good("events", "extract v1"))
    catalog = Catalog(folder)
    catalog.refresh()

    write(folder, "events.py", good("events", "extract version 2"))
    bump_mtime(path)

    assert catalog.refresh() is True
    assert catalog.pipelines["events"].tasks["extract"].command == "extract version 2"  # type: ignore[attr-defined]


def test_refresh_picks_up_a_new_file(folder: Path) -> None:
    write(folder, "events.py", good("events"))
    catalog = Catalog(folder)
    catalog.refresh()

    write(folder, "clicks.py", good("clicks"))

    assert catalog.refresh() is True
    assert sorted(catalog.pipelines) == ["clicks", "events"]


def test_refresh_forgets_a_deleted_file(folder: Path) -> None:
    write(folder, "events.py", good("events"))
    clicks = write(folder, "clicks.py", good("clicks"))
    catalog = Catalog(folder)
    catalog.refresh()

    clicks.unlink()

    assert catalog.refresh() is True
    assert sorted(catalog.pipelines) == ["events"]


def test_refresh_clears_the_problem_once_a_broken_file_is_fixed(folder: Path) -> None:
    path = write(folder, "events.py", "raise ValueError('half written')\n")
    catalog = Catalog(folder)
    catalog.refresh()
    assert [Path(p.path).name for p in catalog.problems] == ["events.py"]

    write(folder, "events.py", good("events"))
    bump_mtime(path)

    assert catalog.refresh() is True
    assert catalog.problems == []
    assert sorted(catalog.pipelines) == ["events"]


def test_refresh_reports_a_file_that_breaks_and_keeps_the_others(folder: Path) -> None:
    write(folder, "clicks.py", good("clicks"))
    path = write(folder, "events.py", good("events"))
    catalog = Catalog(folder)
    catalog.refresh()

    write(folder, "events.py", "raise ValueError('half written')\n")
    bump_mtime(path)

    assert catalog.refresh() is True
    assert sorted(catalog.pipelines) == ["clicks"]
    assert messages(catalog) == {
        "events.py": f"{folder / 'events.py'}: ValueError: half written (line 1)"
    }


def test_refresh_reimports_a_same_size_edit_made_within_the_same_second(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # the default outside tests
    path = write(folder, "events.py", good("events", "extract one"))
    second = (path.stat().st_mtime_ns // 1_000_000_000) * 1_000_000_000
    os.utime(path, ns=(second + 100_000_000, second + 100_000_000))
    catalog = Catalog(folder)
    catalog.refresh()

    write(folder, "events.py", good("events", "extract two"))  # same size
    os.utime(path, ns=(second + 600_000_000, second + 600_000_000))

    assert catalog.refresh() is True
    assert catalog.pipelines["events"].tasks["extract"].command == "extract two"  # type: ignore[attr-defined]


def test_files_loaded_in_two_threads_at_once_each_find_their_pipelines(folder: Path) -> None:
    # The scheduler and the web server may load pipeline files in one process at once.
    def sleepy(name: str, seconds: float) -> str:
        return good(name).replace("from reflow", f"import time\ntime.sleep({seconds})\nfrom reflow")

    # The second file starts loading while the first sleeps, and is still loading when the
    # first defines its pipeline.
    paths = [
        write(folder, "first.py", sleepy("first", 0.1)),
        write(folder, "second.py", sleepy("second", 0.3)),
    ]
    results: dict[str, list[str]] = {}

    def load(path: Path) -> None:
        results[path.stem] = [p.name for p in load_file(path)]

    threads = [threading.Thread(target=load, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == {"first": ["first"], "second": ["second"]}
