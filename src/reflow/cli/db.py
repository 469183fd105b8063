"""``reflow db …``: the metadata database's schema, and purging old history."""

from __future__ import annotations

from typing import Annotated

import typer

from reflow.cli.options import HomeOption, console, open_project

db_app = typer.Typer()  # its help and its place among the commands: cli/app.py


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None) -> None:
    """Apply the schema migrations (also done automatically on first use)."""
    project = open_project(home)
    console.print(
        f"Database at revision {project.db.current_revision()}: "
        f"{project.db.engine.url.render_as_string(hide_password=True)}"
    )


@db_app.command("clean")
def db_clean(
    before: Annotated[
        str,
        typer.Option(
            "--before", help="Purge finished runs whose logical date is before this date."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only.")] = False,
    home: HomeOption = None,
) -> None:
    """Purge finished history older than a date."""
    from reflow.services import history as history_service

    counts = history_service.clean(open_project(home), before, dry_run=dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    console.print(
        f"{verb}: {counts['runs']} runs, {counts['task_instances']} task instances, "
        f"{counts['tries']} tries, {counts['logs']} log files, {counts['backfills']} "
        f"backfills, {counts['schedulers']} schedulers, {counts['notifications']} "
        "notifications (sent or given up)."
    )
