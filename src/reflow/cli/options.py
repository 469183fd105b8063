"""What every command module of the CLI shares: the ``--home`` option and opening the
project it names."""

from __future__ import annotations

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
