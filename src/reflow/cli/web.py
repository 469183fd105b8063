"""``reflow web``, ``reflow up``, ``reflow users …`` and ``reflow tokens …``: the web server
(REST API and UI) and the credentials it accepts.

Named in ``cli/app.py``'s ``COMMANDS``, like every command; :func:`register` adds them to
another Typer app (``python -m reflow.cli.web``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from reflow.cli.logformat import ENV as LOG_FORMAT_ENV
from reflow.cli.logformat import LogFormat, configure, say, uvicorn_config
from reflow.cli.options import HomeOption, console, err_console, fmt_time, open_project
from reflow.core.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from reflow.services.project import Project

SECRET_ENV = "REFLOW_WEB_SECRET_KEY"
SECRET_FILE = "web-secret.key"

HostOption = Annotated[
    str,
    typer.Option(
        "--host",
        "-H",
        help="Address to listen on. Anything but loopback requires a user or a token.",
    ),
]
PortOption = Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")]
NoAuthOption = Annotated[
    bool,
    typer.Option(
        "--no-auth",
        help="No login and no tokens: for local development, on a loopback address only.",
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar=LOG_FORMAT_ENV,
        case_sensitive=False,
        help="How this process logs on stderr: text, or json (one object per line).",
    ),
]
SecureOption = Annotated[
    bool,
    typer.Option(
        "--secure-cookies",
        help="Send the session cookie over HTTPS only (behind a TLS-terminating proxy).",
    ),
]

# Their help and their place among the commands: cli/app.py.
users_app = typer.Typer()
tokens_app = typer.Typer()


def register(app: typer.Typer) -> None:
    """Add ``web``, ``up``, ``users`` and ``tokens`` to ``app``."""
    from reflow.cli.app import COMMANDS, Group

    app.command("web")(web)
    app.command("up")(up)
    for name, commands in (("users", users_app), ("tokens", tokens_app)):
        group = COMMANDS[name]
        assert isinstance(group, Group)
        app.add_typer(commands, name=name, help=group.help, no_args_is_help=True)


# -- users ----------------------------------------------------------------------------------
def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidInput("no terminal to ask for the password: use --password-stdin")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdin = False,
    home: HomeOption = None,
) -> None:
    """Create a user (the password is asked for, or read from stdin)."""
    from reflow.services import accounts

    project = _open(home)
    accounts.create_user(project, name, _read_password(password_stdin))
    console.print(f"User {name} created.")


@users_app.command("password")
def users_password(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdin = False,
    home: HomeOption = None,
) -> None:
    """Set a user's password."""
    from reflow.services import accounts

    project = _open(home)
    accounts.set_password(project, name, _read_password(password_stdin))
    console.print(f"Password of {name} changed.")


@users_app.command("list")
def users_list(home: HomeOption = None) -> None:
    """Users, with when they last logged in."""
    from reflow.services import accounts

    rows = accounts.list_users(_open(home))
    table = Table("user", "created", "last login", box=None)
    for r in rows:
        table.add_row(r.name, fmt_time(r.created_at), fmt_time(r.last_login_at))
    console.print(table if rows else "No users.")


@users_app.command("delete")
def users_delete(
    name: Annotated[str, typer.Argument(help="User name.")], home: HomeOption = None
) -> None:
    """Delete a user (and the tokens created for it). Their sessions end at once."""
    from reflow.services import accounts

    tokens = accounts.delete_user(_open(home), name)
    extra = f" and {tokens} of its tokens" if tokens else ""
    console.print(f"User {name}{extra} deleted.")


# -- tokens ---------------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="A name saying what the token is for (ci, ...).")],
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", help="Belongs to this user (deleted with it).", show_default=False
        ),
    ] = None,
    expires_days: Annotated[
        float | None,
        typer.Option(
            "--expires-days",
            help="Valid for this many days (default: until revoked).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Create an API token and print it: it is shown this once (only its hash is kept)."""
    from reflow.services import accounts

    token = accounts.create_token(_open(home), name, user=user, expires_days=expires_days)
    err_console.print(
        f"Token {name} created. Keep it now, it is not shown again; use it as "
        "'Authorization: Bearer TOKEN'."
    )
    console.print(token, soft_wrap=True)


@tokens_app.command("list")
def tokens_list(
    show_all: Annotated[bool, typer.Option("--all", help="Revoked tokens too.")] = False,
    home: HomeOption = None,
) -> None:
    """Tokens (never their value): name, prefix, user, expiry, last use."""
    from reflow.services import accounts

    rows = accounts.list_tokens(_open(home), include_revoked=show_all)
    table = Table("token", "starts with", "user", "created", "expires", "last used", box=None)
    if show_all:
        table.add_column("revoked")
    for r in rows:
        cells = [
            r.name,
            r.prefix + "…",
            r.user_name or "",
            fmt_time(r.created_at),
            fmt_time(r.expires_at) or "never",
            fmt_time(r.last_used_at),
        ]
        if show_all:
            cells.append(fmt_time(r.revoked_at))
        table.add_row(*cells)
    console.print(table if rows else "No tokens.")


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="Token name.")], home: HomeOption = None
) -> None:
    """Revoke a token: requests using it are refused from now on."""
    from reflow.services import accounts

    accounts.revoke_token(_open(home), name)
    console.print(f"Token {name} revoked.")


# -- serving --------------------------------------------------------------------------------
def _open(home: Path | None) -> Project:
    return open_project(home)


def secret_key(project: Project) -> str:
    """The key signing session cookies: $REFLOW_WEB_SECRET_KEY, else one kept in the
    project's state folder (created on first use, readable by its owner only)."""
    if value := os.environ.get(SECRET_ENV):
        return value
    path = project.settings.state_folder / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    import secrets

    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def check_access(project: Project, host: str, no_auth: bool) -> None:
    """Refuse to serve without authentication off loopback, or with nobody to let in."""
    from reflow.services import accounts
    from reflow.web.security import is_loopback

    loopback = is_loopback(host)
    if no_auth and not loopback:
        raise ConfigError(
            f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), "
            f"not {host}"
        )
    if not no_auth and not accounts.has_credentials(project):
        hint = ", or pass --no-auth for local development" if loopback else ""
        raise ConfigError(
            "no user or API token is configured, so nobody could log in: create one with "
            f"`reflow users create NAME` or `reflow tokens create NAME`{hint}"
        )


def build_server(
    project: Project,
    host: str,
    port: int,
    *,
    no_auth: bool,
    secure_cookies: bool,
    quiet: bool,
    log_format: LogFormat = LogFormat.text,
) -> Any:
    import uvicorn

    from reflow.services.logs import check_logs
    from reflow.web.app import create_app
    from reflow.web.security import LOOPBACK_NAMES, is_loopback

    check_access(project, host, no_auth)
    check_logs(project)
    app = create_app(
        project,
        auth=not no_auth,
        secret_key=secret_key(project),
        secure_cookies=secure_cookies,
        # On loopback, refuse other Host names: a page elsewhere cannot rebind its DNS here.
        allowed_hosts=list(LOOPBACK_NAMES) if is_loopback(host) else None,
    )
    logging_config = uvicorn_config(log_format)  # None: uvicorn's own (text)
    extra: dict[str, Any] = {} if logging_config is None else {"log_config": logging_config}
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        server_header=False,
        timeout_graceful_shutdown=10,
        **extra,
    )
    return uvicorn.Server(config)


def _serve(server: Any) -> None:
    """Run until SIGTERM/Ctrl-C; a signal ends it cleanly (exit code 0)."""
    stop_signals: list[int] = []

    def remember(signum: int, _frame: Any) -> None:
        stop_signals.append(signum)
        server.should_exit = True

    # uvicorn restores these after its graceful shutdown and replays the signal to them.
    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    server.run()
    if not server.started and not stop_signals:
        raise typer.Exit(1)


def _banner(project: Project, host: str, port: int, no_auth: bool) -> None:
    shown = f"[{host}]" if ":" in host else host
    say(
        f"reflow web: http://{shown}:{port}  (REST API under /api/v1, reference at /api; "
        f"{'authentication OFF' if no_auth else 'login or Bearer token required'}) -> "
        f"{project.db.engine.url.render_as_string(hide_password=True)}",
        err_console,
    )


def web(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    no_auth: NoAuthOption = False,
    secure_cookies: SecureOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
    log_format: LogFormatOption = LogFormat.text,
    home: HomeOption = None,
) -> None:
    """Serve the REST API (/api/v1) and the web UI, on the project's metadata database.
    Runs beside `reflow scheduler`; stops cleanly on SIGTERM or Ctrl-C."""
    if log_format == LogFormat.json:
        configure(log_format, console=err_console)
    project = _open(home)
    server = build_server(
        project,
        host,
        port,
        no_auth=no_auth,
        secure_cookies=secure_cookies,
        quiet=quiet,
        log_format=log_format,
    )
    _banner(project, host, port, no_auth)
    _serve(server)
    say("reflow web: stopped", err_console)


def up(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    no_auth: NoAuthOption = False,
    secure_cookies: SecureOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
    log_format: LogFormatOption = LogFormat.text,
    home: HomeOption = None,
) -> None:
    """Run the scheduler (a child process) and the web server together, for local use.
    Ctrl-C or SIGTERM stops both; if the scheduler exits, the web server stops too."""
    if log_format == LogFormat.json:
        configure(log_format, console=err_console)
    project = _open(home)
    server = build_server(
        project,
        host,
        port,
        no_auth=no_auth,
        secure_cookies=secure_cookies,
        quiet=quiet,
        log_format=log_format,
    )
    env = {**os.environ, "REFLOW_HOME": str(project.settings.home)}
    home_arg = ["--home", str(project.settings.home)]
    child = subprocess.Popen(
        [sys.executable, "-m", "reflow.cli", "scheduler", *home_arg, "--log-format", log_format],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    failed: list[int] = []

    def watch() -> None:
        code = child.wait()
        if not server.should_exit:
            # Code 0: it was stopped (Ctrl-C reaches the whole process group).
            if code != 0:
                say(f"reflow up: the scheduler exited (code {code})", err_console, level=40)
                failed.append(code)
            server.should_exit = True

    threading.Thread(target=watch, name="reflow-up-scheduler", daemon=True).start()
    _banner(project, host, port, no_auth)
    try:
        _serve(server)
    finally:
        server.should_exit = True
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    say("reflow up: stopped", err_console)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """``python -m reflow.cli.web``: these commands alone, with the CLI's error handling."""
    from reflow.cli import run

    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    run(app)


if __name__ == "__main__":
    main()
