"""reflow's own configuration: ``reflow.toml`` in the project folder, overridden by
``REFLOW_*`` environment variables. Paths are relative to the project folder."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from reflow.core.cost import CostSettings
from reflow.core.errors import ConfigError
from reflow.core.naming import NAME_PATTERN, log_name
from reflow.core.notify import Event

CONFIG_FILE = "reflow.toml"
_ENV = {
    "database_url": "REFLOW_DATABASE_URL",
    "pipelines_folder": "REFLOW_PIPELINES_FOLDER",
    "logs_folder": "REFLOW_LOGS_FOLDER",
    "logs_url": "REFLOW_LOGS_URL",
    "logs_storage_options": "REFLOW_LOGS_STORAGE_OPTIONS",
    "logs_ship_interval": "REFLOW_LOGS_SHIP_INTERVAL",
    "parallelism": "REFLOW_PARALLELISM",
    "heartbeat_interval": "REFLOW_HEARTBEAT_INTERVAL",
    "scheduler_timeout": "REFLOW_SCHEDULER_TIMEOUT",
    "parse_interval": "REFLOW_PARSE_INTERVAL",
    "launcher": "REFLOW_LAUNCHER",
    "lost_retry_delay": "REFLOW_LOST_RETRY_DELAY",
    "lost_retry_limit": "REFLOW_LOST_RETRY_LIMIT",
}
_K8S_ENV = {
    "context": "REFLOW_K8S_CONTEXT",
    "kubeconfig": "REFLOW_K8S_KUBECONFIG",
    "namespace": "REFLOW_K8S_NAMESPACE",
    "image": "REFLOW_K8S_IMAGE",
}
# Settings given as JSON in their environment variable.
_JSON_ENV = {"logs_storage_options"}
# An fsspec URL: a protocol (s3, gs, az, ...) then "://".
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
LauncherName = Literal["local", "kubernetes"]
PoolName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class KubernetesSettings(BaseModel):
    """The kubernetes launcher: which cluster, and the defaults of every try's pod."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: str | None = Field(default=None, description="kubeconfig context (default: current)")
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig file (default: ~/.kube/config)"
    )
    in_cluster: bool | None = Field(
        default=None, description="use the pod's service account (default: when running in a pod)"
    )
    namespace: str = "default"
    image: str | None = Field(default=None, description="image of tries whose task names none")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None
    pipelines_folder: str = Field(
        default="/opt/reflow/pipelines", description="where the image holds the pipeline files"
    )
    python: str = Field(default="python3", description="the image's Python, for Python tasks")
    cleanup: Literal["always", "on_success", "never"] = "on_success"
    secret_env: Literal["secret", "inline"] = Field(
        default="secret",
        description="env values that carry secrets: in a Secret of the try's own (the "
        "scheduler needs rights on secrets), or inline in the pod spec",
    )
    startup_timeout: float = Field(
        default=600.0, gt=0, description="seconds a pod may stay unscheduled before the try fails"
    )
    instance: str = Field(
        default="reflow",
        description="told apart the pods of reflow installations sharing a namespace",
    )
    sweep_interval: float = Field(
        default=60.0, gt=0, description="how often orphan pods are looked for"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=10.0, gt=0, description="seconds one delivery attempt may take")


class _UrlChannel(_Channel):
    url: str | None = Field(default=None, description="the URL (prefer url_env for a secret one)")
    url_env: str | None = Field(default=None, description="environment variable holding the URL")

    @model_validator(mode="after")
    def _one_url(self) -> _UrlChannel:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self


class WebhookChannel(_UrlChannel):
    """A JSON POST, signed with HMAC-SHA256 when ``secret_env`` names the secret."""

    kind: Literal["webhook"]
    secret_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class SlackChannel(_UrlChannel):
    """A Slack incoming webhook (a Block Kit message)."""

    kind: Literal["slack"]


class EmailChannel(_Channel):
    """E-mail over SMTP: STARTTLS (default), implicit TLS or none; login when
    ``username_env`` is given."""

    kind: Literal["email"]
    to: tuple[str, ...] = Field(min_length=1)
    sender: str
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username_env: str | None = None
    password_env: str | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle to check the server with")


NotifyChannel = Annotated[WebhookChannel | SlackChannel | EmailChannel, Field(discriminator="kind")]


class NotifyRule(BaseModel):
    """A rule of ``reflow.toml``: ``events`` of ``pipelines`` (default: every pipeline,
    and the scheduler's own events) go to ``channels``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: tuple[Event, ...] = Field(min_length=1)
    channels: tuple[str, ...] = Field(min_length=1)
    pipelines: tuple[str, ...] | None = None


class MessageTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = None
    text: str | None = None


class NotifySettings(BaseModel):
    """``[reflow.notify]``: channels, global rules and delivery."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ui_url: str | None = Field(default=None, description="the web UI's address, for links")
    channels: dict[str, NotifyChannel] = Field(default_factory=dict)
    rules: tuple[NotifyRule, ...] = ()
    templates: dict[Event, MessageTemplate] = Field(default_factory=dict)
    max_attempts: int = Field(default=8, ge=1, description="attempts before a delivery is given up")
    retry_delay: float = Field(
        default=15.0, gt=0, description="seconds before the first retry; doubles"
    )
    max_retry_delay: float = Field(default=3600.0, gt=0)
    log_tail_lines: int = Field(default=20, ge=0, le=500)

    @model_validator(mode="after")
    def _known_channels(self) -> NotifySettings:
        for i, rule in enumerate(self.rules):
            for name in rule.channels:
                if name not in self.channels:
                    raise ValueError(
                        f"rules[{i}] names no channel of [reflow.notify.channels]: {name!r}"
                    )
        return self


class Settings(BaseModel):
    """Validated settings; every field has a working default (SQLite in ``.reflow/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path
    database_url: str | None = None
    pipelines_folder: Path = Path("pipelines")
    logs_folder: Path = Path(".reflow/logs")
    logs_url: str | None = Field(
        default=None,
        description="where try logs live: an fsspec URL (s3://bucket/prefix, gs://...), "
        "shipped there from a local spool while tries run; a path or nothing: logs_folder",
    )
    logs_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of logs_url's filesystem (s3fs: endpoint_url, key, secret, ...)",
    )
    logs_ship_interval: float = Field(
        5.0, gt=0, description="seconds between two copies of a running try's log to logs_url"
    )
    parallelism: int = Field(32, ge=1, description="tries one scheduler runs at once")
    heartbeat_interval: float = Field(5.0, gt=0)
    scheduler_timeout: float = Field(30.0, gt=0, description="silence before a scheduler is dead")
    parse_interval: float = Field(10.0, gt=0, description="how often pipeline files are re-read")
    lost_retry_delay: float = Field(
        10.0, ge=0, description="wait before retrying a lost try; doubles with each loss"
    )
    lost_retry_limit: int = Field(
        3, ge=0, description="lost tries of one task instance before it fails for good"
    )
    launcher: LauncherName = Field("local", description="where tries run unless overridden")
    launchers: dict[str, LauncherName] = Field(
        default_factory=dict, description="launcher per pipeline or per 'pipeline.task'"
    )
    kubernetes: KubernetesSettings = Field(default_factory=lambda: KubernetesSettings())
    pools: dict[PoolName, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="slots of each pool, shared by every pipeline ([reflow.pools] spark = 4)",
    )
    notify: NotifySettings = Field(default_factory=lambda: NotifySettings())
    cost: CostSettings = Field(default_factory=lambda: CostSettings())

    @field_validator("logs_url")
    @classmethod
    def _logs_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value.startswith("file://"):
            value = value.removeprefix("file://")  # a local path: today's logs folder
        if _URL.match(value) is None:
            return value
        protocol, _, rest = value.partition("://")
        if not rest.strip("/"):
            raise ValueError(f"{value!r} names no bucket or folder")
        return f"{protocol}://{rest.rstrip('/')}"

    def launcher_for(self, pipeline: str, task: str) -> LauncherName:
        """The launcher of one task: ``pipeline.task`` overrides ``pipeline`` overrides the
        default."""
        return self.launchers.get(f"{pipeline}.{task}") or self.launchers.get(
            pipeline, self.launcher
        )

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
        """The local logs folder: where tries' logs live, unless ``logs_url`` is a URL."""
        if self.logs_url is not None and not is_url(self.logs_url):
            return (self.home / self.logs_url).resolve()
        return (self.home / self.logs_folder).resolve()

    @property
    def remote_logs(self) -> str | None:
        """The URL logs are shipped to, or None when they stay in local files."""
        return self.logs_url if self.logs_url is not None and is_url(self.logs_url) else None

    @property
    def spool_path(self) -> Path:
        """With ``logs_url``: where tries write their logs before they are shipped."""
        return self.logs_path / ".spool"

    def log_location(self, pipeline: str, run_id: str, task_id: str, try_number: int) -> str:
        """Where the log of a try lives, as its row records it: the object's URL under
        ``logs_url``, else the file's absolute path under the logs folder."""
        relative = log_name(pipeline, run_id, task_id, try_number)
        if (url := self.remote_logs) is not None:
            return f"{url}/{relative}"
        return str(self.logs_path / relative)

    def log_file(self, location: str) -> Path:
        """The local file of a log recorded at ``location``: the file itself, or for a URL
        its spool file (where this host's tries write before it is shipped)."""
        if not is_url(location):
            return Path(location)
        url = self.remote_logs
        if url is not None and location.startswith(url + "/"):
            relative = location[len(url) + 1 :]
        else:  # logs_url changed since: the log's name is its last four parts
            relative = "/".join(location.split("://", 1)[1].split("/")[-4:])
        return self.spool_path / relative

    @property
    def runtime_path(self) -> Path:
        return self.state_folder / "tries"


def is_url(location: str) -> bool:
    """Is a log location (``logs_url``, a try's ``log_path``) a URL rather than a path?"""
    return _URL.match(location) is not None


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
            if key in _JSON_ENV:
                try:
                    values[key] = json.loads(os.environ[var])
                except ValueError as exc:
                    raise ConfigError(f"{var}: not JSON: {exc}") from None
    k8s_env = {key: os.environ[var] for key, var in _K8S_ENV.items() if os.environ.get(var)}
    if k8s_env:
        section = values.get("kubernetes")
        values["kubernetes"] = {**(section if isinstance(section, dict) else {}), **k8s_env}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(home=home, **values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"configuration: {where}: {err['msg']}") from None
