"""Configuration: command-line flags > environment (``SOBRIETY_*``) > TOML file > defaults.

One typed model per section, unknown keys are errors, and every error names where the value came
from (file, variable or flag), the key, the value and what was expected. Secrets (database and
broker passwords) come only from the environment or from files named in the configuration.
See ``sobriety.sample.toml`` at the repository root for every key with its default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sobriety.contract import DEFAULT_ROOT
from sobriety.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    """PostgreSQL connection. ``password_file`` holds the password (never the repository)."""

    url: str = "postgresql://postgres@127.0.0.1:5432/sobriety"
    password_file: Path | None = None
    connect_timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"postgresql", "postgres"}:
            raise ValueError("a postgresql:// URL")
        return value


class MqttConfig(_Section):
    """Broker connection and the ingest's persistent session."""

    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = "5"
    root: str = DEFAULT_ROOT
    client_id: str = "sobriety-ingest"
    shared_group: str | None = None
    session_expiry_s: int = Field(7 * 86400, ge=0)
    receive_maximum: int = Field(20000, ge=1, le=65535)
    keepalive_s: int = Field(30, ge=5)
    reconnect_max_s: float = Field(30.0, gt=0)
    username: str | None = None
    password_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ValueError("an mqtt://host:port URL")
        return value


class IngestConfig(_Section):
    """Batching, the durable spool and validation windows of ``sobriety ingest``."""

    batch_rows: int = Field(10000, ge=1)
    batch_ms: int = Field(200, ge=1)
    spool_dir: Path = Path("var/spool")
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)
    max_payload_bytes: int = Field(65536, ge=256)
    max_records: int = Field(1000, ge=1)
    past_window_s: float = Field(7 * 86400.0, gt=0)
    future_window_s: float = Field(600.0, gt=0)
    inventory_refresh_s: float = Field(5.0, ge=0)
    db_retry_max_s: float = Field(30.0, gt=0)
    workers: int = Field(1, ge=1, le=64)


class StorageConfig(_Section):
    """TimescaleDB policies (used only when the extension is available)."""

    chunk_interval: str = "1 day"
    compress_after: str = "7 days"
    retention: str | None = None


class AnomalyConfig(_Section):
    """Leak detection (``sobriety anomaly``); see anomaly/README.md for the meaning of each."""

    interval_s: float = Field(900.0, ge=10)
    rescan_days: float = Field(2.0, gt=0)
    lookback_days: float = Field(35.0, ge=7)
    night_start_h: int = Field(2, ge=0, le=23)
    night_end_h: int = Field(4, ge=1, le=24)
    min_meter_coverage: float = Field(0.9, ge=0, le=1)
    min_leak_fraction: float = Field(0.05, gt=0, lt=1)
    min_leak_m3h: float = Field(0.01, ge=0)
    false_alarm_nights: float = Field(1000.0, gt=10)
    baseline_nights: int = Field(28, ge=7)
    min_baseline_nights: int = Field(7, ge=3)
    close_nights: int = Field(2, ge=1)
    confirm_nights: int = Field(2, ge=1)
    min_burst_fraction: float = Field(0.2, gt=0)
    min_burst_m3h: float = Field(0.05, ge=0)
    false_alarm_days: float = Field(2000.0, gt=1)
    continuous_min_m3h: float = Field(0.001, gt=0)
    continuous_min_days: int = Field(2, ge=1)
    high_consumption_ratio: float = Field(2.0, gt=1)
    high_consumption_window_days: int = Field(7, ge=1)
    high_consumption_history_days: int = Field(56, ge=7)
    holidays: list[tuple[date, date]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _window(self) -> AnomalyConfig:
        if self.night_end_h <= self.night_start_h:
            raise ValueError("night_end_h after night_start_h (a window within one local date)")
        return self


class MetricsConfig(_Section):
    """Prometheus endpoint; port 0 disables it."""

    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class Config(_Section):
    """The whole configuration."""

    database: DatabaseConfig = DatabaseConfig()
    mqtt: MqttConfig = MqttConfig()
    ingest: IngestConfig = IngestConfig()
    storage: StorageConfig = StorageConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    metrics: MetricsConfig = MetricsConfig()

    def db_conninfo(self) -> str:
        """The database URL with the password from ``SOBRIETY_DB_PASSWORD`` or its file."""
        password = os.environ.get("SOBRIETY_DB_PASSWORD")
        if password is None and self.database.password_file is not None:
            password = _read_secret(self.database.password_file, "database.password_file")
        return _with_password(self.database.url, password)

    def mqtt_password(self) -> str | None:
        """The broker password from ``SOBRIETY_MQTT_PASSWORD`` or ``mqtt.password_file``."""
        password = os.environ.get("SOBRIETY_MQTT_PASSWORD")
        if password is None and self.mqtt.password_file is not None:
            password = _read_secret(self.mqtt.password_file, "mqtt.password_file")
        return password


# Environment variables: name -> (section, key).
ENV_VARS: dict[str, tuple[str, str]] = {
    "SOBRIETY_DB_URL": ("database", "url"),
    "SOBRIETY_MQTT_URL": ("mqtt", "url"),
    "SOBRIETY_MQTT_ROOT": ("mqtt", "root"),
    "SOBRIETY_MQTT_PROTOCOL": ("mqtt", "protocol"),
    "SOBRIETY_MQTT_CLIENT_ID": ("mqtt", "client_id"),
    "SOBRIETY_MQTT_SHARED_GROUP": ("mqtt", "shared_group"),
    "SOBRIETY_MQTT_USERNAME": ("mqtt", "username"),
    "SOBRIETY_SPOOL_DIR": ("ingest", "spool_dir"),
    "SOBRIETY_METRICS_HOST": ("metrics", "host"),
    "SOBRIETY_METRICS_PORT": ("metrics", "port"),
    "SOBRIETY_RETENTION": ("storage", "retention"),
}


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r}: cannot read the secret file ({exc})") from None


def _with_password(url: str, password: str | None) -> str:
    if not password:
        return url
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` naming the file when it is missing or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Merge defaults, the TOML file at ``path`` (or ``$SOBRIETY_CONFIG``), ``env`` and flags.

    ``overrides`` are the command-line flags as ``{section: {key: value}}``; ``None`` values are
    ignored. Raises :class:`ConfigError` naming the source, the key, the value and what was
    expected.
    """
    env = os.environ if env is None else env
    if path is None and env.get("SOBRIETY_CONFIG"):
        path = Path(env["SOBRIETY_CONFIG"])
    data: dict[str, dict[str, Any]] = {}
    source: dict[tuple[str, str], str] = {}
    if path is not None:
        raw = read_toml(path, "configuration file")
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(
                    f"{path}: {section} = {values!r}: expected a [{section}] table of keys"
                )
            for key, value in values.items():
                data.setdefault(section, {})[key] = value
                source[(section, key)] = f"{path}"
    for var, (section, key) in ENV_VARS.items():
        if env.get(var) not in (None, ""):
            data.setdefault(section, {})[key] = env[var]
            source[(section, key)] = f"environment {var}"
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                data.setdefault(section, {})[key] = value
                source[(section, key)] = f"flag --{key.replace('_', '-')}"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data, source)) from None


def _describe(
    exc: ValidationError, data: dict[str, dict[str, Any]], source: dict[tuple[str, str], str]
) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        section = loc[0] if loc else "?"
        key = loc[1] if len(loc) > 1 else ""
        origin = source.get((section, key), "configuration")
        if err["type"] == "extra_forbidden":
            expected = "no such key (see sobriety.sample.toml for the keys)"
            if not key:
                expected = "no such section (database, mqtt, ingest, storage, metrics)"
        else:
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
            expected = f"expected {msg}"
        value = data.get(section, {}).get(key, err.get("input")) if key else None
        shown = f" = {value!r}" if key else ""
        lines.append(f"{origin}: [{section}] {key}{shown}: {expected}".replace("[?] ", ""))
    return "; ".join(lines)
