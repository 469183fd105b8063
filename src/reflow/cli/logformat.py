"""How the long-running processes (``reflow scheduler``, ``reflow web``, ``reflow up``) log:
text for people (the default), or one JSON object per line for log pipelines
(``--log-format json`` or ``REFLOW_LOG_FORMAT=json``), uvicorn's logs included.

Each JSON line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, the
record's extra fields, and ``exception`` (its traceback) when it carries one. Standard
library only: importing this costs the command line nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

ENV = "REFLOW_LOG_FORMAT"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


# Attributes every LogRecord has: what is not one of them is an extra field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
# uvicorn's access log record: its arguments, named.
_ACCESS = ("client", "method", "path", "http_version", "status")

_json_active = False


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            out.update(zip(_ACCESS, args, strict=True))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def json_active() -> bool:
    """Does this process log JSON lines (so that its other stderr lines must be too)?"""
    return _json_active


def configure(fmt: LogFormat, *, verbose: bool = False, console: Any = None) -> None:
    """Log to stderr in ``fmt``: reflow's loggers from INFO, others from WARNING (INFO with
    ``verbose``). Text goes through Rich on ``console``; JSON takes every line of stderr
    this process writes: warnings and uncaught exceptions too."""
    global _json_active
    level = logging.INFO if verbose else logging.WARNING
    if fmt == LogFormat.json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
        _json_active = True
    else:
        from rich.logging import RichHandler

        logging.basicConfig(
            level=level,
            format="%(message)s",
            handlers=[RichHandler(console=console, show_path=False)],
        )
    logging.getLogger("reflow").setLevel(logging.INFO)


def say(message: str, console: Any, *, level: int = logging.INFO) -> None:
    """A line of the command's own on stderr (a banner, why it stops): printed, or in JSON
    mode logged by ``reflow.cli``."""
    if _json_active:
        logging.getLogger("reflow.cli").log(level, message)
    else:
        console.print(message, markup=False, highlight=False)


def uvicorn_config(fmt: LogFormat) -> dict[str, Any] | None:
    """uvicorn's ``log_config`` in ``fmt``: None keeps uvicorn's own (text)."""
    if fmt != LogFormat.json:
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("reflow").critical("uncaught exception: %s", exc, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("reflow").critical(
        "uncaught exception in thread %s: %s",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
