"""``reflow notifications …``: what was sent to whom and how each delivery went, a retry
of a given-up one, and a test message through a channel."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from reflow.cli.options import HomeOption, console, fmt_date, fmt_time, open_project

if TYPE_CHECKING:
    from reflow.services.notifications import NotificationView
    from reflow.services.project import Project

notifications_app = typer.Typer()  # its help and its place among the commands: cli/app.py

_STYLE = {"pending": "yellow", "sent": "green", "failed": "red"}


def _project(home: Path | None) -> Project:
    return open_project(home)


def _about(n: NotificationView) -> str:
    parts = [n.pipeline or ""]
    if n.logical_date:
        parts.append(fmt_date(datetime.fromisoformat(n.logical_date)))
    if n.task:
        parts.append(n.task)
    return " ".join(p for p in parts if p)


@notifications_app.command("list")
def notifications_list(
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", "-p", help="Only this pipeline's.")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Only those of this run (id, run id or date).")
    ] = None,
    state: Annotated[str | None, typer.Option("--state", help="pending, sent or failed.")] = None,
    event: Annotated[str | None, typer.Option("--event", help="e.g. run_failed.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, attempts included.")] = False,
    home: HomeOption = None,
) -> None:
    """Notifications, newest first: event, what about, channel, state, attempts."""
    from reflow.services import notifications as service
    from reflow.services import runs as run_service

    project = _project(home)
    run_pk = run_service.find_run(project, run, pipeline).id if run is not None else None
    found = service.list_notifications(
        project,
        pipeline=pipeline,
        run=run_pk,
        state=state,
        event=event,
        limit=limit,
        with_attempts=as_json,
    )
    if as_json:
        sys.stdout.write(json.dumps([n.as_dict() for n in found], indent=2) + "\n")
        return
    if not found:
        channels = service.channel_summary(project)
        hint = (
            "channels: " + ", ".join(f"{name} ({kind})" for name, kind in channels)
            if channels
            else "no channel in reflow.toml: see [reflow.notify.channels] in the README"
        )
        console.print(f"No notifications ({escape(hint)}).")
        return
    table = Table("id", "at", "event", "about", "channel", "state", "tries", "detail", box=None)
    for n in found:
        style = _STYLE.get(n.state, "white")
        if n.state == "pending" and n.next_at is not None:
            detail = f"next {fmt_time(n.next_at)}" + (f": {n.last_error}" if n.last_error else "")
        else:
            detail = n.last_error or ""
        table.add_row(
            str(n.id),
            fmt_time(n.created_at),
            n.event,
            escape(_about(n)),
            escape(f"{n.channel} ({n.kind})"),
            f"[{style}]{n.state}[/]",
            str(n.attempts),
            escape(detail),
        )
    console.print(table)


@notifications_app.command("show")
def notifications_show(
    notification: Annotated[int, typer.Argument(help="Notification number.")],
    home: HomeOption = None,
) -> None:
    """One notification and every delivery attempt with what the channel answered."""
    from reflow.services import notifications as service

    n = service.show(_project(home), notification)
    console.print(f"Notification {n.id}: {n.event} ({escape(_about(n))})")
    console.print(f"  channel   {escape(n.channel)} ({n.kind})")
    console.print(f"  state     [{_STYLE.get(n.state, 'white')}]{n.state}[/]")
    console.print(f"  created   {fmt_time(n.created_at)}")
    if n.sent_at:
        console.print(f"  sent      {fmt_time(n.sent_at)}")
    if n.next_at:
        console.print(f"  next try  {fmt_time(n.next_at)}")
    if n.last_error:
        console.print(f"  error     {escape(n.last_error)}")
    if not n.attempt_log:
        console.print("  no attempt yet")
        return
    table = Table("attempt", "at", "result", "took", box=None, padding=(0, 2))
    for a in n.attempt_log:
        mark = "[green]ok[/]" if a.ok else "[red]failed[/]"
        table.add_row(
            str(a.attempt), fmt_time(a.at), f"{mark} {escape(a.result or '')}", f"{a.seconds:.2f}s"
        )
    console.print(table)


@notifications_app.command("retry")
def notifications_retry(
    notification: Annotated[int, typer.Argument(help="Notification number (a failed one).")],
    home: HomeOption = None,
) -> None:
    """Deliver a given-up notification again (a running scheduler sends it)."""
    from reflow.services import notifications as service

    n = service.retry(_project(home), notification)
    console.print(f"Notification {n.id} to {escape(n.channel)} is pending again.")


@notifications_app.command("test")
def notifications_test(
    channel: Annotated[
        str, typer.Argument(help="A channel's name in reflow.toml (reflow.notify.channels).")
    ],
    home: HomeOption = None,
) -> None:
    """Send a test message through CHANNEL now, from this shell (its environment variables
    must be set here)."""
    from reflow.services import notifications as service

    answer = service.send_test(_project(home), channel)
    console.print(f"Sent to {escape(channel)}: {escape(answer)}")
