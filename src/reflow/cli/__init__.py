"""Command-line entry point. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys


def main() -> None:
    from rich.markup import escape

    from reflow.cli.app import app, err_console
    from reflow.core.errors import ReflowError

    try:
        app()  # standalone: usage errors are printed by Typer and exit with code 2
    except ReflowError as exc:
        err_console.print(
            f"[red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True
        )
        sys.exit(2)
