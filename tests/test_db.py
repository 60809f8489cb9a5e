"""Migrations on a real PostgreSQL: idempotent, concurrent-safe, the read interface exists."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from core.config import StorageConfig
from core.db import (
    OWNERS,
    ensure_database,
    is_hypertable,
    migrations,
    timescale_available,
    upgrade,
    with_database,
)
from tests.fix_db import TIMESCALE_URL, needs_timescale

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent


def test_upgrade_is_idempotent(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url) as conn:
        first = upgrade(conn)
        second = upgrade(conn)
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert first[: len(migrations())] == [m.label for m in migrations()]
    assert second == []
    assert versions[: len(migrations())] == [m.version for m in migrations()]


def test_concurrent_upgrades_apply_each_migration_once(fresh_db_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(fresh_db_url) as conn:
                results.append(upgrade(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(fresh_db_url) as conn:
        timescale = timescale_available(conn)
    applied = sorted(name for result in results for name in result)
    assert applied == sorted([m.label for m in migrations()] + (["timescaledb"] * timescale))


def test_migrations_are_one_sequence_each_owned_by_a_stage() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    for m in found:
        assert m.owner in OWNERS
        assert (ROOT / m.owner / "README.md").exists(), f"{m.label}: no folder {m.owner}/"
    assert {m.owner for m in found} >= {"core", "anomaly"}


def test_ensure_database_creates_a_missing_database(server_url: str) -> None:
    name = f"sobriety_test_new_{uuid.uuid4().hex[:10]}"
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        assert ensure_database(url) is True
        assert ensure_database(url) is False
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_readings_are_deduplicated_and_views_read_them(conn: psycopg.Connection, site: str) -> None:
    from tests.fix_db import register

    ids = register(conn, site, ("lum-1", "luminaire"))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(2):
        conn.execute(
            "INSERT INTO readings VALUES (%s, %s, 5, 21.5) ON CONFLICT DO NOTHING",
            (when, ids["lum-1"]),
        )
    rows = conn.execute(
        "SELECT time, site, device, kind, metric, value, unit FROM api.readings WHERE site = %s",
        (site,),
    ).fetchall()
    assert rows == [(when, site, "lum-1", "luminaire", "power", 21.5, "W")]
    for view in ("sites", "dmas", "devices", "readings", "rejected_messages"):
        conn.execute(f"SELECT * FROM api.{view} LIMIT 0")


def test_plain_postgres_has_the_indexes_queries_need(conn: psycopg.Connection) -> None:
    indexes = {
        r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'readings'")
    }
    assert {"readings_pkey", "readings_time_idx"} <= indexes


@pytest.mark.timescale
@needs_timescale
def test_timescale_hypertable_compression_and_retention() -> None:
    assert TIMESCALE_URL is not None
    name = f"sobriety_test_ts_{uuid.uuid4().hex[:10]}"  # a database of this run's own
    with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(with_database(TIMESCALE_URL, name)) as conn:
            applied = upgrade(conn, StorageConfig(retention="400 days"))
            assert "timescaledb" in applied
            assert is_hypertable(conn)
            jobs = {
                r[0]
                for r in conn.execute(
                    "SELECT proc_name FROM timescaledb_information.jobs "
                    "WHERE hypertable_name = 'readings'"
                )
            }
            assert {"policy_compression", "policy_retention"} <= jobs
            assert upgrade(conn, StorageConfig(retention="400 days")) == []
    finally:
        with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
