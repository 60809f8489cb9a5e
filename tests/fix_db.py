"""PostgreSQL fixtures: one fresh database per test run, migrated; a private cluster on demand.

``SOBRIETY_TEST_DB_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) names the
server; an unreachable server stops the run at once with a clear message (never a skip).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from app.embedded import Cluster, pg_bindir
from core.db import upgrade, with_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def server_url() -> str:
    """The PostgreSQL server under test (maintenance database)."""
    url = os.environ.get("SOBRIETY_TEST_DB_URL", DEFAULT_URL)
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL unreachable at {url} ({exc}). Start it with scripts/services, or point "
            "SOBRIETY_TEST_DB_URL at a server.",
            returncode=3,
        )
    return url


@pytest.fixture(scope="session")
def db_url(server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test run, dropped at the end."""
    name = f"sobriety_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    with psycopg.connect(url) as conn:
        upgrade(conn)
    yield url
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_db_url(server_url: str) -> Iterator[str]:
    """An empty database (not migrated), dropped after the test."""
    name = f"sobriety_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def site() -> str:
    """A site id of its own for each test, so tests do not see each other's rows."""
    return f"t{uuid.uuid4().hex[:12]}"


def register(conn: psycopg.Connection, site: str, *devices: tuple[str, str]) -> dict[str, int]:
    """Register ``(device, kind)`` pairs at ``site``; return device ids by name."""
    conn.execute("INSERT INTO sites (site) VALUES (%s) ON CONFLICT DO NOTHING", (site,))
    ids = {}
    for device, kind in devices:
        row = conn.execute(
            "INSERT INTO devices (site, device, kind) VALUES (%s, %s, %s) "
            "ON CONFLICT (site, device) DO UPDATE SET kind = EXCLUDED.kind RETURNING id",
            (site, device, kind),
        ).fetchone()
        assert row is not None
        ids[device] = row[0]
    return ids


def count_readings(conn: psycopg.Connection, site: str) -> int:
    """Readings stored for the devices of ``site``."""
    row = conn.execute(
        "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id WHERE d.site = %s",
        (site,),
    ).fetchone()
    assert row is not None
    return int(row[0])


PrivateCluster = Cluster


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A throw-away PostgreSQL cluster of the test's own (:class:`app.embedded.Cluster`, the
    demo's own) on a free port, as user postgres when run as root; a test may stop it and start
    it again on the same port."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail("no initdb found: install postgresql (scripts/services does)")
    cluster = Cluster.for_this_user(bindir, tmp_path_factory.mktemp("pg"), options="-c fsync=off")
    cluster.prepare()
    cluster.start()
    yield cluster
    cluster.stop("immediate")


TIMESCALE_URL = os.environ.get("SOBRIETY_TEST_TIMESCALE_URL")
"""A PostgreSQL server with the timescaledb extension, for the tests of that path."""
needs_timescale = pytest.mark.skipif(
    not TIMESCALE_URL,
    reason="SOBRIETY_TEST_TIMESCALE_URL is not set: no database with the timescaledb extension "
    "on this machine (TimescaleDB is not packaged for Debian bookworm nor on PyPI)",
)
