"""``reflow scheduler``: the scheduler daemon, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Any

import typer

from reflow.cli.logformat import LogFormat, say
from reflow.cli.logformat import configure as configure_logging
from reflow.cli.options import HomeOption, err_console, open_project
from reflow.cli.web import LogFormatOption
from reflow.core.errors import InvalidInput


def scheduler(
    home: HomeOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve /metrics (Prometheus), /healthz and /readyz on this TCP port "
            "(0: any free port, printed).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host",
            help="Address for --metrics-port (default 127.0.0.1; 0.0.0.0 in a container). "
            "Served without authentication.",
            show_default=False,
        ),
    ] = None,
    log_format: LogFormatOption = LogFormat.text,
) -> None:
    """Run the scheduler until SIGTERM or Ctrl-C (its running tries go on, adopted later)."""
    from reflow.scheduler import Scheduler
    from reflow.scheduler.probes import ProbeServer
    from reflow.services.logs import check_logs

    if metrics_host is not None and metrics_port is None:
        raise InvalidInput("--metrics-host needs --metrics-port")

    configure_logging(log_format, verbose=verbose, console=err_console)
    project = open_project(home)
    # A daemon rides out database outages however long they last (one log line each).
    project.db.outage_timeout = None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("reflow").warning("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Bound first: a port in use is one line before anything starts.
    probes = None
    if metrics_port is not None:
        probes = ProbeServer(metrics_host or "127.0.0.1", metrics_port)
    try:
        check_logs(project, write=True)  # before anything starts: one line if it fails
        sched = Scheduler(
            project.db, project.settings, project.launcher(), relaunch=project.launcher
        )
        logs = project.settings.remote_logs or project.settings.logs_path
        say(
            f"reflow scheduler: {project.settings.pipelines_path} -> "
            f"{project.db.engine.url.render_as_string(hide_password=True)}; logs: {logs}",
            err_console,
        )
        if probes is not None:
            probes.serve(sched)
            say(
                f"reflow scheduler: metrics on {probes.url}/metrics, probes on /healthz and "
                "/readyz",
                err_console,
            )
        sched.run(stop)
    finally:
        if probes is not None:
            probes.close()
    say("reflow scheduler: stopped", err_console)
