"""Configuration: command-line flags > environment (``SOBRIETY_*``) > TOML file > defaults.

One typed :class:`Section` per ``[section]`` of the file. The core owns ``[database]``,
``[mqtt]``, ``[storage]``, ``[metrics]`` and ``[privacy]``; each stage owns its own section
(``IngestConfig`` in ``ingest/config.py``, ``AnomalyConfig`` in ``anomaly/config.py``, ...) and
the application registers them by passing them to :func:`load_config`. Unknown sections and keys
are errors, and every error names where the value came from (file, variable or flag), the key,
the value and what was expected. Secrets (database and broker passwords, the pseudonymisation
key) come only from the environment or from files named in the configuration.
``sobriety.sample.toml`` at the repository root lists every key with its default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator

from core.contract import DEFAULT_ROOT
from core.errors import ConfigError
from core.models import Loc, StrictModel, describe_errors, read_toml
from core.privacy import MIN_KEY_BYTES
from core.site_config import SITES_TABLE, PerSite, site_sections

__all__ = [
    "CORE_SECTIONS",
    "Config",
    "DatabaseConfig",
    "MetricsConfig",
    "MqttConfig",
    "PerSite",
    "PrivacyConfig",
    "Section",
    "StorageConfig",
    "load_config",
    "read_toml",
]


class Section(StrictModel):
    """One ``[SECTION]`` of the configuration file; ``ENV`` maps environment variables to keys;
    ``SITE_KEYS`` are the keys a commune may set for itself in ``[sites.SITE.SECTION]``
    (core/site_config.py; none by default: the section is install-wide)."""

    SECTION: ClassVar[str]
    ENV: ClassVar[Mapping[str, str]] = {}
    SITE_KEYS: ClassVar[frozenset[str]] = frozenset()


class DatabaseConfig(Section):
    """PostgreSQL connection. ``password_file`` holds the password (never the repository)."""

    SECTION: ClassVar[str] = "database"
    ENV: ClassVar[Mapping[str, str]] = {
        "SOBRIETY_DB_URL": "url",
        "SOBRIETY_DB_PASSWORD_FILE": "password_file",
        "SOBRIETY_SERVICES_DB_URL": "services_url",
        "SOBRIETY_SERVICES_DB_PASSWORD_FILE": "services_password_file",
    }

    url: str = "postgresql://postgres@127.0.0.1:5432/sobriety"
    password_file: Path | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    # `sobriety run`: the anomaly, policies and energy services connect as a role of their own
    # (`sobriety db roles`: {prefix}_services) while the ingest uses `url`; default `url`.
    services_url: str | None = None
    services_password_file: Path | None = None

    @field_validator("url", "services_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in {"postgresql", "postgres"}:
            raise ValueError("a postgresql:// URL")
        return value


class MqttConfig(Section):
    """Broker connection and the ingest's persistent session."""

    SECTION: ClassVar[str] = "mqtt"
    ENV: ClassVar[Mapping[str, str]] = {
        "SOBRIETY_MQTT_URL": "url",
        "SOBRIETY_MQTT_ROOT": "root",
        "SOBRIETY_MQTT_PROTOCOL": "protocol",
        "SOBRIETY_MQTT_CLIENT_ID": "client_id",
        "SOBRIETY_MQTT_SHARED_GROUP": "shared_group",
        "SOBRIETY_MQTT_USERNAME": "username",
    }

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


class StorageConfig(Section):
    """TimescaleDB policies (used only when the extension is available)."""

    SECTION: ClassVar[str] = "storage"
    ENV: ClassVar[Mapping[str, str]] = {"SOBRIETY_RETENTION": "retention"}

    chunk_interval: str = "1 day"
    compress_after: str = "7 days"
    retention: str | None = None


class MetricsConfig(Section):
    """Prometheus endpoint; port 0 disables it."""

    SECTION: ClassVar[str] = "metrics"
    ENV: ClassVar[Mapping[str, str]] = {
        "SOBRIETY_METRICS_HOST": "host",
        "SOBRIETY_METRICS_PORT": "port",
    }

    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class PrivacyConfig(Section):
    """Personal data (RGPD): the key of the customer meters' pseudonyms in exports, and how long
    each class of data is kept (days; 0: forever). See README.md, "Personal data (RGPD)"."""

    SECTION: ClassVar[str] = "privacy"
    ENV: ClassVar[Mapping[str, str]] = {"SOBRIETY_PRIVACY_HMAC_KEY_FILE": "hmac_key_file"}

    hmac_key_file: Path | None = None
    customer_raw_days: int = Field(400, ge=0)  # a year of bills + a month of disputes
    raw_days: int = Field(0, ge=0)
    aggregates_days: int = Field(0, ge=0)
    interval_s: float = Field(3600.0, gt=0)
    batch_rows: int = Field(50_000, ge=1)
    max_batches: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _aggregates_outlive_raw(self) -> PrivacyConfig:
        if self.aggregates_days:
            for name in ("customer_raw_days", "raw_days"):
                raw = getattr(self, name)
                if raw == 0 or raw > self.aggregates_days:
                    raise ValueError(
                        f"aggregates_days = {self.aggregates_days} but {name} = {raw}: the "
                        "aggregates must be kept at least as long as the raw readings"
                    )
        return self


CORE_SECTIONS: tuple[type[Section], ...] = (
    DatabaseConfig,
    MqttConfig,
    StorageConfig,
    MetricsConfig,
    PrivacyConfig,
)
"""The sections of the core."""

S = TypeVar("S", bound=Section)


@dataclass(frozen=True)
class Config:
    """The whole configuration: one validated :class:`Section` per registered section, and
    the sections of the sites that set keys of their own (``{site: {section: Section}}``)."""

    sections: Mapping[str, Section]
    site_sections: Mapping[str, Mapping[str, Section]] = dataclasses.field(default_factory=dict)

    def section(self, kind: type[S]) -> S:
        """The section of type ``kind`` (``config.section(IngestConfig)``)."""
        found = self.sections.get(kind.SECTION)
        if not isinstance(found, kind):
            raise LookupError(f"section [{kind.SECTION}] is not registered in this configuration")
        return found

    @property
    def database(self) -> DatabaseConfig:
        """``[database]``."""
        return self.section(DatabaseConfig)

    @property
    def mqtt(self) -> MqttConfig:
        """``[mqtt]``."""
        return self.section(MqttConfig)

    @property
    def storage(self) -> StorageConfig:
        """``[storage]``."""
        return self.section(StorageConfig)

    @property
    def metrics(self) -> MetricsConfig:
        """``[metrics]``."""
        return self.section(MetricsConfig)

    @property
    def privacy(self) -> PrivacyConfig:
        """``[privacy]``."""
        return self.section(PrivacyConfig)

    def per_site(self, kind: type[S]) -> PerSite[S]:
        """Section ``kind`` as each site sees it: the operator's, or a site's own merged over
        it (``[sites.SITE.SECTION]``)."""
        own: dict[str, S] = {}
        for site, sections in self.site_sections.items():
            found = sections.get(kind.SECTION)
            if isinstance(found, kind):
                own[site] = found
        return PerSite(self.section(kind), own)

    def for_site(self, site: str) -> Config:
        """This configuration as ``site`` sees it (its own sections in place of the
        operator's)."""
        own = self.site_sections.get(site)
        return self if not own else Config({**self.sections, **own}, self.site_sections)

    def privacy_key(self) -> bytes:
        """The key of the customer meters' pseudonyms, from ``privacy.hmac_key_file``; a
        :class:`ConfigError` naming the key when it is not configured, unreadable or short."""
        path = self.privacy.hmac_key_file
        if path is None:
            raise ConfigError(
                "[privacy] hmac_key_file ($SOBRIETY_PRIVACY_HMAC_KEY_FILE) is not set: customer "
                "meters (water_meter) are personal data and leave the service only under a keyed "
                "pseudonym; name a file holding a secret of 32 random bytes or more (e.g. "
                "`head -c 32 /dev/urandom | base64 > FILE`), or pass --no-pseudonymise for the "
                "commune's own reversibility export"
            )
        key = _read_secret(path, "privacy.hmac_key_file").encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"privacy.hmac_key_file = {str(path)!r}: the key holds {len(key)} bytes; "
                f"expected {MIN_KEY_BYTES} or more"
            )
        return key

    def replace(self, *sections: Section) -> Config:
        """A copy with these sections replaced (``config.replace(mqtt.model_copy(...))``)."""
        updated = dict(self.sections)
        for section in sections:
            if section.SECTION not in updated:
                raise LookupError(f"section [{section.SECTION}] is not registered")
            updated[section.SECTION] = section
        return Config(updated, self.site_sections)

    def dump(self) -> dict[str, Any]:
        """Every section as JSON-ready values (``--validate-config`` prints it), the sites'
        own under ``sites`` (only the keys they set differ from the operator's)."""
        out: dict[str, Any] = {
            name: section.model_dump(mode="json") for name, section in self.sections.items()
        }
        if self.site_sections:
            out[SITES_TABLE] = {
                site: {name: section.model_dump(mode="json") for name, section in own.items()}
                for site, own in sorted(self.site_sections.items())
            }
        return out

    def db_conninfo(self) -> str:
        """The database URL with the password from ``SOBRIETY_DB_PASSWORD`` or its file (a URL
        that carries its own password keeps it)."""
        if urlsplit(self.database.url).password:
            return self.database.url
        password = os.environ.get("SOBRIETY_DB_PASSWORD")
        if password is None and self.database.password_file is not None:
            password = _read_secret(self.database.password_file, "database.password_file")
        return _with_password(self.database.url, password)

    def services_config(self) -> Config:
        """The configuration the services of ``sobriety run`` use: ``database.services_url``
        (its password from ``SOBRIETY_SERVICES_DB_PASSWORD`` or
        ``database.services_password_file``) in place of ``database.url``; this one without a
        ``services_url``."""
        db = self.database
        if db.services_url is None:
            return self
        password = os.environ.get("SOBRIETY_SERVICES_DB_PASSWORD")
        if password is None and db.services_password_file is not None:
            password = _read_secret(db.services_password_file, "database.services_password_file")
        own = db.model_copy(
            update={"url": _with_password(db.services_url, password), "password_file": None}
        )
        return self.replace(own)

    def mqtt_password(self) -> str | None:
        """The broker password from ``SOBRIETY_MQTT_PASSWORD`` or ``mqtt.password_file``."""
        password = os.environ.get("SOBRIETY_MQTT_PASSWORD")
        if password is None and self.mqtt.password_file is not None:
            password = _read_secret(self.mqtt.password_file, "mqtt.password_file")
        return password


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


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    sections: Iterable[type[Section]] = CORE_SECTIONS,
) -> Config:
    """Merge defaults, the TOML file at ``path`` (or ``$SOBRIETY_CONFIG``), ``env`` and flags
    into the registered ``sections``.

    ``overrides`` are the command-line flags as ``{section: {key: value}}``; ``None`` values are
    ignored. Raises :class:`ConfigError` naming the source, the key, the value and what was
    expected — every error of every section at once.
    """
    env = os.environ if env is None else env
    registered = {kind.SECTION: kind for kind in sections}
    if path is None and env.get("SOBRIETY_CONFIG"):
        path = Path(env["SOBRIETY_CONFIG"])
    data: dict[str, dict[str, Any]] = {name: {} for name in registered}
    source: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    sites_table: Any = None
    if path is not None:
        for section, values in read_toml(path, "configuration file").items():
            if section == SITES_TABLE:
                sites_table = values
                continue
            if section not in registered:
                problems.append(
                    f"{path}: [{section}]: no such section (expected one of "
                    f"{', '.join([*registered, SITES_TABLE])})"
                )
                continue
            if not isinstance(values, dict):
                problems.append(
                    f"{path}: {section} = {values!r}: expected a [{section}] table of keys"
                )
                continue
            for key, value in values.items():
                data[section][key] = value
                source[(section, key)] = str(path)
    for name, kind in registered.items():
        for var, key in kind.ENV.items():
            if env.get(var) not in (None, ""):
                data[name][key] = env[var]
                source[(name, key)] = f"environment {var}"
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None and section in registered:
                data[section][key] = value
                source[(section, key)] = f"flag --{key.replace('_', '-')}"
    validated: dict[str, Section] = {}
    for name, kind in registered.items():
        try:
            validated[name] = kind.model_validate(data[name])
        except ValidationError as exc:
            problems.extend(_describe(name, exc, data[name], source))
    own: dict[str, dict[str, Section]] = {}
    if sites_table is not None:
        own, site_problems = site_sections(
            sites_table,
            str(path),
            registered,
            {name: kind.SITE_KEYS for name, kind in registered.items()},
            data,
            invalid=frozenset(set(registered) - set(validated)),
        )
        problems.extend(site_problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return Config(validated, own)


def _describe(
    section: str, exc: ValidationError, values: dict[str, Any], source: dict[tuple[str, str], str]
) -> list[str]:
    def where(loc: Loc) -> str:
        if loc:
            return source.get((section, str(loc[0])), "configuration")
        origins = sorted({origin for (name, _key), origin in source.items() if name == section})
        return ", ".join(origins) or "configuration"

    def name(loc: Loc) -> str:
        return f"[{section}] " + ".".join(str(part) for part in loc)

    return describe_errors(
        exc,
        values,
        where=where,
        name=name,
        unknown="no such key (see sobriety.sample.toml for the keys)",
    )
