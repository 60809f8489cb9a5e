"""Database access and migrations.

Migrations are the ordered ``migrations/NNNN_name.sql`` files, applied once each and recorded in
``schema_migrations``. ``upgrade`` holds a transaction-level advisory lock, so two processes running
it at once apply each migration once, and running it again changes nothing. When the
``timescaledb`` extension is available, a last step turns ``readings`` into a hypertable with
compression and (optional) retention policies; without it, plain PostgreSQL with the indexes of
migration 0001 serves the same queries.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from sobriety.config import StorageConfig
from sobriety.errors import SobrietyError

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x50B1E7  # advisory lock id of the migration runner
TIMESCALE_VERSION = 1000  # recorded in schema_migrations when the TimescaleDB step ran


class DatabaseError(SobrietyError):
    """The database cannot be reached or upgraded; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL migration file."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The packaged migrations, in order."""
    found = []
    for entry in resources.files("sobriety.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def redact(conninfo: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(conninfo)
    if parts.password is None:
        return conninfo
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(
    conninfo: str, *, autocommit: bool = False, timeout_s: float = 5.0
) -> psycopg.Connection:
    """Open a connection, with a clear :class:`DatabaseError` when it fails."""
    try:
        return psycopg.connect(
            conninfo, autocommit=autocommit, connect_timeout=max(1, int(timeout_s))
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {redact(conninfo)}: {exc}".strip()) from None


def ensure_database(conninfo: str, timeout_s: float = 5.0) -> bool:
    """Create the database named in ``conninfo`` if it does not exist. True if it was created."""
    try:
        psycopg.connect(conninfo, connect_timeout=max(1, int(timeout_s))).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise DatabaseError(f"cannot connect to {redact(conninfo)}: {exc}".strip()) from None
    parts = urlsplit(conninfo)
    name = parts.path.lstrip("/")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))
    with connect(admin, autocommit=True, timeout_s=timeout_s) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot create database {name!r}: {exc}") from None
    log.info("created database %s", name)
    return True


def timescale_available(conn: psycopg.Connection) -> bool:
    """Whether the ``timescaledb`` extension can be created (or exists) in this database."""
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row is not None


def upgrade(conn: psycopg.Connection, storage: StorageConfig | None = None) -> list[str]:
    """Apply the pending migrations in one transaction; return the names applied.

    Safe to run twice or from two processes at once (advisory lock, recorded versions).
    """
    storage = storage or StorageConfig()
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version     integer PRIMARY KEY,
                   name        text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
        if TIMESCALE_VERSION not in done and timescale_available(conn):
            _apply_timescale(conn, storage)
            applied_now.append("timescaledb")
        if TIMESCALE_VERSION in done:
            _sync_policies(conn, storage)
    return applied_now


def _apply_timescale(conn: psycopg.Connection, storage: StorageConfig) -> None:
    """Hypertable, compression and retention for ``readings``.

    Chunk interval: one day by default. A commune of 10,000 devices reporting 4 metrics every
    10 minutes writes ~5.8 M rows a day (~0.5 GB with the primary key); a day-sized chunk keeps
    the chunk being written, and its index, well inside the 25 % of memory TimescaleDB
    recommends, and lets compression and retention drop whole days.
    """
    log.info("TimescaleDB available: converting readings to a hypertable")
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    conn.execute(
        "SELECT create_hypertable('readings', by_range('time', %s::interval), "
        "migrate_data => true)",
        (storage.chunk_interval,),
    )
    conn.execute(
        "ALTER TABLE readings SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'device_id', "
        "timescaledb.compress_orderby = 'metric_id, time DESC')"
    )
    _sync_policies(conn, storage)
    conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (%s, 'timescaledb')",
        (TIMESCALE_VERSION,),
    )


def _sync_policies(conn: psycopg.Connection, storage: StorageConfig) -> None:
    """Make the compression and retention policies match the configuration."""
    conn.execute("SELECT remove_compression_policy('readings', if_exists => true)")
    conn.execute(
        "SELECT add_compression_policy('readings', %s::interval)", (storage.compress_after,)
    )
    conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
    if storage.retention:
        conn.execute("SELECT add_retention_policy('readings', %s::interval)", (storage.retention,))


def is_hypertable(conn: psycopg.Connection, table: str = "readings") -> bool:
    """Whether ``table`` is a TimescaleDB hypertable."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", (table,)
    ).fetchone()
    return row is not None
