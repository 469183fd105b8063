"""reflow's own configuration: ``reflow.toml`` in the project folder, overridden by
``REFLOW_*`` environment variables. Paths are relative to the project folder."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reflow.core.errors import ConfigError

CONFIG_FILE = "reflow.toml"
_ENV = {
    "database_url": "REFLOW_DATABASE_URL",
    "pipelines_folder": "REFLOW_PIPELINES_FOLDER",
    "logs_folder": "REFLOW_LOGS_FOLDER",
    "parallelism": "REFLOW_PARALLELISM",
    "heartbeat_interval": "REFLOW_HEARTBEAT_INTERVAL",
    "scheduler_timeout": "REFLOW_SCHEDULER_TIMEOUT",
    "parse_interval": "REFLOW_PARSE_INTERVAL",
}


class Settings(BaseModel):
    """Validated settings; every field has a working default (SQLite in ``.reflow/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path
    database_url: str | None = None
    pipelines_folder: Path = Path("pipelines")
    logs_folder: Path = Path(".reflow/logs")
    parallelism: int = Field(32, ge=1, description="tries one scheduler runs at once")
    heartbeat_interval: float = Field(5.0, gt=0)
    scheduler_timeout: float = Field(30.0, gt=0, description="silence before a scheduler is dead")
    parse_interval: float = Field(10.0, gt=0, description="how often pipeline files are re-read")

    @property
    def state_folder(self) -> Path:
        return self.home / ".reflow"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.state_folder / 'reflow.db'}"

    @property
    def pipelines_path(self) -> Path:
        return (self.home / self.pipelines_folder).resolve()

    @property
    def logs_path(self) -> Path:
        return (self.home / self.logs_folder).resolve()

    @property
    def runtime_path(self) -> Path:
        return self.state_folder / "tries"


def find_home(start: Path | None = None) -> Path:
    """``REFLOW_HOME``, else the nearest folder holding ``reflow.toml``, else the cwd."""
    if env := os.environ.get("REFLOW_HOME"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return here


def load_settings(home: Path | None = None, **overrides: Any) -> Settings:
    home = (home or find_home()).resolve()
    values: dict[str, Any] = {}
    config_file = home / CONFIG_FILE
    if config_file.is_file():
        try:
            data = tomllib.loads(config_file.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
        values.update(data.get("reflow", data))
    for key, var in _ENV.items():
        if var in os.environ:
            values[key] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(home=home, **values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"configuration: {where}: {err['msg']}") from None
