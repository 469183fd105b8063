"""`import reflow` is what every pipeline file and Python task pays for, and the command
line's start-up what every command pays for: both stay light."""

from __future__ import annotations

import subprocess
import sys

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


def loaded(statement: str, heavy: set[str]) -> list[str]:
    """Which of ``heavy`` (packages, or modules by full name) a fresh interpreter has
    imported after running ``statement``."""
    code = (
        f"import sys\n{statement}\n"
        "print('\\n'.join(sorted(set(sys.modules) | {m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return sorted(heavy & set(out.stdout.split()))


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
    imports the services it runs."""
    heavy = {"sqlalchemy", "alembic", "fastapi", "kubernetes", "pydantic", "croniter"}
    heavy |= {"prometheus_client", "reflow.scheduler", "reflow.store", "reflow.services.project"}
    heavy |= {"fsspec", "s3fs", "botocore", "aiobotocore"}  # only where logs are shipped or read
    assert loaded("from reflow.cli.app import app", heavy) == []
