"""Command-line entry point. User errors, usage errors included, become one line on stderr
and a non-zero exit code (2); ``-h`` and a command group called bare show the help."""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from reflow.cli.app import app

    run(app)


def run(app: Any, prog_name: str = "reflow") -> None:
    """Run a Typer app the way every reflow command line does, and exit."""
    import typer
    from rich.markup import escape

    from reflow.cli.options import err_console
    from reflow.core.errors import ReflowError

    def fail(message: str, code: int = 2) -> None:
        from reflow.cli.logformat import json_active

        if json_active():  # a process that logs JSON lines says this in one too
            import logging

            logging.getLogger("reflow.cli").error("%s", message)
        else:
            err_console.print(
                f"[red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True
            )
        sys.exit(code)

    try:
        result = app(prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: bad or missing options and arguments
        if type(exc).__name__ == "NoArgsIsHelpError":  # a command group alone: its help
            exc.show()  # type: ignore[attr-defined]
        else:
            message = exc.format_message()
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                message += f" (see '{ctx.command_path} -h')"
            fail(message, getattr(exc, "exit_code", 2))
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        fail("aborted", 1)
    except ReflowError as exc:
        fail(str(exc))
    sys.exit(result if isinstance(result, int) else 0)
