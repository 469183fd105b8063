"""What every command module of the CLI shares: the ``--home`` option, opening the
project it names, and how times and dates are printed."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from reflow.services.project import Project

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Project folder (default: nearest reflow.toml, or $REFLOW_HOME).",
        show_default=False,
    ),
]


def open_project(home: Path | None) -> Project:
    """The project of ``home`` (settings read, schema brought up to date)."""
    from reflow.services.project import Project

    return Project.open(home)


def fmt_time(value: datetime | None) -> str:
    """A moment, to the second (UTC)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def fmt_date(value: datetime | None) -> str:
    """A logical date: the day alone at midnight, else to the minute."""
    if value is None:
        return ""
    if value.hour == value.minute == value.second == 0:
        return value.strftime("%Y-%m-%d")
    return value.strftime("%Y-%m-%d %H:%M")
