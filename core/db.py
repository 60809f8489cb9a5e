"""Database access and migrations.

Migrations are the ordered ``migrations/NNNN_{owner}_{name}.sql`` files — one sequence for the
whole database, each file named after the stage that owns what it creates (``core``, ``ingest``,
``anomaly``, ``policies``, ``energy``, ``dashboards``) — applied once each and recorded in
``schema_migrations`` by version. ``upgrade`` holds a transaction-level advisory lock, so two
processes running it at once apply each migration once, and running it again changes nothing.
When the ``timescaledb`` extension is available, a last step turns ``readings`` into a hypertable
with compression and (optional) retention policies, and the hourly rollup ``readings_hourly``
into a continuous aggregate; without it, plain PostgreSQL with the indexes of migration 0001
serves the same queries (and :mod:`core.rollup` keeps the rollup).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from core.config import StorageConfig
from core.errors import SobrietyError

log = logging.getLogger(__name__)

OWNERS = ("core", "ingest", "anomaly", "policies", "energy", "dashboards")
"""Who may own a migration: the core and the stages that keep tables."""
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x50B1E7  # advisory lock id of the migration runner
TIMESCALE_VERSION = 1000  # recorded in schema_migrations when the TimescaleDB step ran


class DatabaseError(SobrietyError):
    """The database cannot be reached or upgraded; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL migration file: its version, the stage that owns it, its name and its SQL."""

    version: int
    owner: str
    name: str
    sql: str

    @property
    def label(self) -> str:
        """``NNNN_owner_name``, as ``upgrade`` reports it."""
        return f"{self.version:04d}_{self.owner}_{self.name}"


def migrations() -> list[Migration]:
    """The packaged migrations, in order; :class:`DatabaseError` for a file that does not name
    its owner or reuses a version."""
    found: dict[int, Migration] = {}
    for entry in resources.files("core.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        owner, _, name = match[2].partition("_")
        if owner not in OWNERS or not name:
            raise DatabaseError(
                f"migration {entry.name}: expected NNNN_OWNER_NAME.sql with OWNER one of "
                f"{', '.join(OWNERS)}"
            )
        version = int(match[1])
        if version in found:
            raise DatabaseError(f"migration {entry.name}: version {version:04d} used twice")
        found[version] = Migration(version, owner, name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def with_database(conninfo: str, database: str) -> str:
    """``conninfo`` (a ``postgresql://`` URL) naming another database of the same server."""
    parts = urlsplit(conninfo)
    path = "/" + quote(database, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


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
    name = unquote(parts.path.lstrip("/"))
    admin = with_database(conninfo, "postgres")
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
            log.info("applying migration %s", migration.label)
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.label),
            )
            applied_now.append(migration.label)
        if TIMESCALE_VERSION not in done and timescale_available(conn):
            _apply_timescale(conn, storage)
            applied_now.append("timescaledb")
        if TIMESCALE_VERSION in done:
            _timescale_rollup(conn)  # a migration may have created the plain rollup
            _sync_policies(conn, storage)
    return applied_now


def _apply_timescale(conn: psycopg.Connection, storage: StorageConfig) -> None:
    """Hypertable, compression and retention for ``readings``; ``readings_hourly`` becomes a
    continuous aggregate (:func:`_timescale_rollup`).

    Chunk interval: one day by default. A commune of 10,000 devices reporting 4 metrics every
    10 minutes writes ~5.8 M rows a day (~0.5 GB with the primary key); a day-sized chunk keeps
    the chunk being written, and its index, well inside the 25 % of memory TimescaleDB
    recommends, and lets compression and retention drop whole days.
    """
    log.info("TimescaleDB available: converting readings to a hypertable")
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    _drop_rollup_triggers(conn)  # a table with transition-table triggers cannot become one
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
    _timescale_rollup(conn)
    _sync_policies(conn, storage)
    conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (%s, 'timescaledb')",
        (TIMESCALE_VERSION,),
    )


_ROLLUP_TRIGGERS = (
    "readings_hourly_insert",
    "readings_hourly_delete",
    "readings_hourly_update",
    "readings_hourly_truncate",
)
_ROLLUP_AGGREGATE = """CREATE MATERIALIZED VIEW readings_hourly
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT device_id, metric_id, time_bucket('1 hour', time) AS hour,
           count(*)::integer AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
           first(value, time) AS first, min(time) AS first_time,
           last(value, time) AS last, max(time) AS last_time
    FROM readings
    GROUP BY device_id, metric_id, time_bucket('1 hour', time)
    WITH NO DATA"""


def _drop_rollup_triggers(conn: psycopg.Connection) -> None:
    """The plain rollup's triggers on ``readings`` (migration 0004), if any."""
    for trigger in _ROLLUP_TRIGGERS:
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON readings").format(sql.Identifier(trigger))
        )


def is_continuous_aggregate(conn: psycopg.Connection, view: str = "readings_hourly") -> bool:
    """Whether ``view`` is a TimescaleDB continuous aggregate."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema() AND view_name = %s",
        (view,),
    ).fetchone()
    return row is not None


def _timescale_rollup(conn: psycopg.Connection) -> None:
    """Replace the plain ``readings_hourly`` (table, pending log, triggers) by a continuous
    aggregate of the same name and columns; the views over it (``api.readings_hourly``, and any
    a stage added) are dropped and recreated as they were.

    ``materialized_only = false``: the buckets not yet materialized (the last hour, and the
    whole history until the policy's first run) are computed from ``readings`` when read, so a
    query is always current. Created ``WITH NO DATA`` (the upgrade runs in one transaction,
    where TimescaleDB refuses to materialize); the policy (:func:`_sync_policies`) and
    ``sobriety db rollup`` materialize it. Nothing to do when it is one already.
    """
    if is_continuous_aggregate(conn):
        return
    log.info("TimescaleDB: readings_hourly becomes a continuous aggregate")
    views = dependent_views(conn, "readings_hourly")
    for schema, name, _ in reversed(views):
        conn.execute(
            sql.SQL("DROP VIEW {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        )
    _drop_rollup_triggers(conn)
    conn.execute("DROP FUNCTION IF EXISTS readings_hourly_mark(), readings_hourly_clear()")
    conn.execute("DROP TABLE IF EXISTS readings_hourly_pending, readings_hourly")
    conn.execute(_ROLLUP_AGGREGATE)
    for schema, name, definition in views:
        head = sql.SQL("CREATE VIEW {}.{} AS ").format(sql.Identifier(schema), sql.Identifier(name))
        conn.execute((head.as_string(conn) + definition).encode())


def dependent_views(conn: psycopg.Connection, relation: str) -> list[tuple[str, str, str]]:
    """The views built on ``relation``, directly or through other views: (schema, name,
    definition), in creation order (a view after those it reads)."""
    rows = conn.execute(
        """WITH RECURSIVE deps(oid) AS (
               SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
               WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %s::regclass
                 AND r.ev_class <> d.refobjid
               UNION
               SELECT r.ev_class FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
               JOIN pg_rewrite r ON r.oid = d.objid
               WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class <> deps.oid)
           SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
           FROM deps JOIN pg_class c ON c.oid = deps.oid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'v' ORDER BY c.oid""",
        (relation,),
    ).fetchall()
    return [(str(s), str(n), str(d).strip().rstrip(";")) for s, n, d in rows]


def _sync_policies(conn: psycopg.Connection, storage: StorageConfig) -> None:
    """Make the compression and retention policies match the configuration, and give the
    hourly rollup its refresh policy: every hour, up to an hour ago (the last hour is computed
    when read), back to a day short of the retention horizon — so the hourly aggregates of
    readings dropped by retention are kept — or over the whole history without retention."""
    conn.execute("SELECT remove_compression_policy('readings', if_exists => true)")
    conn.execute(
        "SELECT add_compression_policy('readings', %s::interval)", (storage.compress_after,)
    )
    conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
    if storage.retention:
        conn.execute("SELECT add_retention_policy('readings', %s::interval)", (storage.retention,))
    if is_continuous_aggregate(conn):
        conn.execute(
            "SELECT remove_continuous_aggregate_policy('readings_hourly', if_exists => true)"
        )
        conn.execute(  # a day inside the retention horizon: never over dropped chunks
            "SELECT add_continuous_aggregate_policy('readings_hourly', "
            "start_offset => CASE WHEN %(retention)s::interval IS NOT NULL THEN "
            "greatest(%(retention)s::interval - INTERVAL '1 day', INTERVAL '3 hours') END, "
            "end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour')",
            {"retention": storage.retention},
        )


def is_hypertable(conn: psycopg.Connection, table: str = "readings") -> bool:
    """Whether ``table`` is a TimescaleDB hypertable."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
        return False
    row = conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", (table,)
    ).fetchone()
    return row is not None
