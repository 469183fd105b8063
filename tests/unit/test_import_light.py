"""`import reflow` is what every pipeline file and Python task pays for: it stays light."""

from __future__ import annotations

import subprocess
import sys


def test_importing_reflow_loads_no_database_cli_or_web_framework() -> None:
    code = (
        "import sys, reflow\n"
        "heavy = {'sqlalchemy', 'alembic', 'typer', 'rich', 'fastapi', 'kubernetes', 'psutil'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_pipeline_api_loads_no_database_cli_or_web_framework() -> None:
    code = (
        "import sys\n"
        "from reflow import Pipeline, Python, Shell, SparkSubmit, Pod, Volume, scratch, Param\n"
        "heavy = {'sqlalchemy', 'alembic', 'typer', 'rich', 'fastapi', 'kubernetes', 'psutil'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    imports the services it runs."""
    code = (
        "import sys\n"
        "from reflow.cli.app import app\n"
        "loaded = {m.split('.')[0] for m in sys.modules} | set(sys.modules)\n"
        "heavy = {'sqlalchemy', 'alembic', 'fastapi', 'kubernetes', 'pydantic', 'croniter',\n"
        "         'reflow.scheduler', 'reflow.store', 'reflow.services.project'}\n"
        "print(sorted(heavy & loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
