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
