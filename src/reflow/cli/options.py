"""What every command module of the CLI shares: the consoles, the ``--home`` option, opening
the project it names, who runs the command, and how states, times, dates and durations are
printed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from reflow.core import formats

if TYPE_CHECKING:
    from reflow.services.project import Project
    from reflow.services.records import DeadlineMiss, Run

# Piped output gets wide lines rather than truncated table cells.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Project folder (default: nearest reflow.toml, or $REFLOW_HOME).",
        show_default=False,
    ),
]

STATE_STYLE = {
    "success": "green",
    "failed": "red",
    "upstream_failed": "dark_orange",
    "running": "cyan",
    "queued": "grey62",
    "scheduled": "grey62",
    "pending": "grey50",
    "up_for_retry": "yellow",
    "cancelled": "magenta",
    "skipped": "pink1",
    "removed": "grey42",
}


def open_project(home: Path | None) -> Project:
    """The project of ``home`` (settings read, schema brought up to date)."""
    from reflow.services.project import Project

    return Project.open(home)


def actor() -> str:
    """Who runs this command, for the history: the OS user."""
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "unknown (cli)"


def styled(state: str | None) -> str:
    if state is None:
        return ""
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


# The CLI's names for the shared formats (``core.formats``).
fmt_time = formats.moment
fmt_date = formats.day
fmt_took = formats.duration


def fmt_run_took(run: Run) -> str:
    """How long a run ran (so far, while it is active); "-" when it never ran."""
    from reflow.services import history as history_service

    return fmt_took(history_service.run_span(run).seconds(datetime.now(UTC)))


def fmt_late(misses: list[DeadlineMiss]) -> str:
    """The deadlines a date missed: "late (run)", "late (load)", "late (run, load)"."""
    if not misses:
        return ""
    return f"[red]late[/] ({', '.join(m.task or 'run' for m in misses)})"
