"""Where logs live (``logs_url``) and how the long-running processes log (JSON lines): the
settings and the formatter, without a server."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import pytest

from reflow.cli.logformat import JsonFormatter, LogFormat, uvicorn_config
from reflow.core.config import Settings, is_url, load_settings
from reflow.core.errors import ConfigError
from reflow.store.logs import RemoteLogs, remote_logs

RUN = "manual__2024-01-03T00:00:00+00:00__abc123"


def test_without_logs_url_a_try_log_is_a_file_under_the_logs_folder_as_before(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path)
    where = settings.log_location("etl", RUN, "load", 2)
    assert where == str(tmp_path / ".reflow/logs/etl" / RUN / "load/try-2.log")
    assert settings.log_file(where) == Path(where)
    assert settings.remote_logs is None and remote_logs(settings) is None


def test_a_logs_url_that_is_a_path_is_the_logs_folder(tmp_path: Path) -> None:
    for value in ("/var/log/reflow", "file:///var/log/reflow"):
        settings = Settings(home=tmp_path, logs_url=value)
        assert settings.remote_logs is None
        assert settings.log_location("etl", RUN, "t", 1) == f"/var/log/reflow/etl/{RUN}/t/try-1.log"
    relative = Settings(home=tmp_path, logs_url="shared/logs")
    assert relative.logs_path == tmp_path / "shared/logs"


def test_with_a_logs_url_a_try_log_is_an_object_under_it_written_first_to_a_spool_file(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path, logs_url="s3://bucket/prefix/")
    assert settings.remote_logs == "s3://bucket/prefix"
    where = settings.log_location("etl", RUN, "load", 1)
    assert where == f"s3://bucket/prefix/etl/{RUN}/load/try-1.log" and is_url(where)
    spool = tmp_path / ".reflow/logs/.spool/etl" / RUN / "load/try-1.log"
    assert settings.log_file(where) == spool
    # A log shipped under an earlier logs_url keeps its name in the spool folder.
    assert settings.log_file(f"gs://old/x/etl/{RUN}/load/try-1.log") == spool


def test_bad_log_settings_are_one_line_configuration_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="logs_url: Value error, 's3://' names no bucket"):
        load_settings(tmp_path, logs_url="s3://")
    monkeypatch.setenv("REFLOW_LOGS_STORAGE_OPTIONS", '{"endpoint_url": "http://127.0.0.1:9"}')
    monkeypatch.setenv("REFLOW_LOGS_URL", "s3://b/p")
    settings = load_settings(tmp_path)
    assert settings.logs_storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    monkeypatch.setenv("REFLOW_LOGS_STORAGE_OPTIONS", "[1")
    with pytest.raises(ConfigError, match="REFLOW_LOGS_STORAGE_OPTIONS: not JSON"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        RemoteLogs("nope://bucket")


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("reflow.scheduler", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_log_line_has_time_level_logger_message_and_the_extra_fields() -> None:
    line = JsonFormatter().format(record("try %s stopped", 42, try_id=42, where=Path("/x")))
    got = json.loads(line)
    assert got["level"] == "WARNING" and got["logger"] == "reflow.scheduler"
    assert got["message"] == "try 42 stopped"
    assert got["try_id"] == 42 and got["where"] == "/x"
    assert got["time"].endswith("Z")
    assert (
        datetime.fromisoformat(got["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    )
    assert "\n" not in line


def test_a_json_log_line_carries_its_exception() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    got = json.loads(JsonFormatter().format(rec))
    assert got["message"] == "failed"
    assert "Traceback" in got["exception"] and "ValueError: boom" in got["exception"]


def test_uvicorn_logs_json_only_when_asked() -> None:
    assert uvicorn_config(LogFormat.text) is None  # uvicorn's own
    config = uvicorn_config(LogFormat.json)
    assert config is not None
    assert config["formatters"]["json"]["()"] == "reflow.cli.logformat.JsonFormatter"
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/v1/x", "1.1", 200),
        None,
    )
    got = json.loads(JsonFormatter().format(access))
    assert got["message"] == '127.0.0.1:5 - "GET /api/v1/x HTTP/1.1" 200'
    assert (got["method"], got["path"], got["status"]) == ("GET", "/api/v1/x", 200)
