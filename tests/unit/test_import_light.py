"""`import reflow` is what every pipeline file and Python task pays for, and the command
line's start-up what every command pays for: both stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = {
    "sqlalchemy",
    "alembic",
    "typer",
    "rich",
    "fastapi",
    "kubernetes",
    "psutil",
    "prometheus_client",
}


# The modules of the command groups: each is imported when the command line uses its group.
COMMAND_GROUPS = {
    "reflow.cli.pipelines",
    "reflow.cli.backfill",
    "reflow.cli.runs",
    "reflow.cli.pools",
    "reflow.cli.notifications",
    "reflow.cli.k8s",
    "reflow.cli.db",
}


def loaded(statement: str, heavy: set[str]) -> list[str]:
    """Which of ``heavy`` (packages, or modules by full name) a fresh interpreter has
    imported after running ``statement``."""
    code = (
        f"import sys\n{statement}\n"
        "print('\\n'.join(sorted(set(sys.modules) | {m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return sorted(heavy & set(out.stdout.split()))


def command_loaded(args: list[str], heavy: set[str]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has imported after running ``reflow ARGS``,
    which must succeed (what it prints is set aside)."""
    statement = (
        "import contextlib, io\n"
        "from reflow.cli import main\n"
        f"sys.argv = ['reflow', *{args!r}]\n"
        "try:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, f'reflow exited with {exc.code}'\n"
    )
    return loaded(statement, heavy)


def test_importing_reflow_loads_no_database_cli_or_web_framework() -> None:
    assert loaded("import reflow", HEAVY) == []


def test_the_pipeline_api_loads_no_database_cli_or_web_framework() -> None:
    api = "from reflow import Pipeline, Python, Shell, SparkSubmit, Pod, Volume, scratch, Param"
    assert loaded(api, HEAVY) == []


def test_an_unknown_name_of_reflow_is_an_attribute_error() -> None:
    import reflow

    try:
        reflow.Pipelin  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "Pipelin" in str(exc)
    else:
        raise AssertionError("reflow.Pipelin exists")
    assert {"Pipeline", "Shell", "SparkSubmit"} <= set(dir(reflow))
    assert sorted(reflow.__all__) == sorted(reflow._PUBLIC)  # every public name is lazy


def test_the_command_lines_help_loads_no_database_scheduler_or_pipeline_api() -> None:
    """`reflow -h` (and any command's parsing) imports only the command line: each command
    imports the services it runs, each command group's module is imported when it is used."""
    heavy = {"sqlalchemy", "alembic", "fastapi", "kubernetes", "pydantic", "croniter"}
    heavy |= {"prometheus_client", "reflow.scheduler", "reflow.store", "reflow.services"}
    heavy |= {"fsspec", "s3fs", "botocore", "aiobotocore"}  # only where logs are shipped or read
    heavy |= {"psutil", "reflow.core.pipeline"} | COMMAND_GROUPS
    # The help lists the top-level commands, so imports their modules: those of no group.
    top_level = {"reflow.cli.web", "reflow.cli.scheduler"}
    assert loaded("from reflow.cli.app import app", heavy | top_level) == []
    assert command_loaded(["-h"], heavy) == []


def test_listing_runs_on_sqlite_reads_the_store_and_nothing_else(tmp_path: Path) -> None:
    """`reflow runs list` opens the project and reads its runs: no PostgreSQL dialect, no
    migration tooling when the schema is at head, no scheduler, no pipeline file read, no
    other command group."""
    (tmp_path / "reflow.toml").write_text("[reflow]\n")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "hello.py").write_text(
        "from reflow import Pipeline, Shell\n"
        "with Pipeline('hello', schedule='@daily', start_date='2024-01-01'):\n"
        "    Shell('say', 'echo hello')\n"
    )
    home = ["--home", str(tmp_path)]
    schema = [sys.executable, "-m", "reflow.cli", "db", "upgrade", *home]
    subprocess.run(schema, capture_output=True, check=True)  # at head before the listing
    heavy = {"sqlalchemy.dialects.postgresql", "psycopg", "alembic", "fastapi", "kubernetes"}
    heavy |= {"reflow.scheduler", "reflow.launchers", "reflow.core.pipeline", "croniter"}
    heavy |= {"reflow.core.discovery", "psutil", "reflow.store.outbox", "prometheus_client"}
    heavy |= {"reflow.cli.web", "reflow.cli.scheduler"} | COMMAND_GROUPS
    found = command_loaded(["runs", "list", *home], heavy | {"sqlalchemy"})
    assert found == ["reflow.cli.runs", "sqlalchemy"]  # the store was read, and only that
