"""PostgreSQL fixtures: one fresh database per test run, migrated; a private cluster on demand.

``SOBRIETY_TEST_DB_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) names the
server; an unreachable server stops the run at once with a clear message (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from sobriety.db import upgrade

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


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
    url = _with_db(server_url, name)
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
    yield _with_db(server_url, name)
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


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of the test's own (so a test may stop and restart it)."""

    bindir: Path
    datadir: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off"
        self._ctl("start", "-w", "-t", "30", "-o", opts, "-l", str(self.datadir / "log"))

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)


def _pg_bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.fail("no initdb found: install postgresql (scripts/services does)")
    return versions[-1].parent


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """A throw-away PostgreSQL cluster on a free port (as user postgres when run as root)."""
    from tests.fix_mqtt import free_port

    bindir = _pg_bindir()
    base = tmp_path_factory.mktemp("pg")
    datadir = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o777)
        for parent in base.parents:
            if parent == Path("/tmp") or parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster = PrivateCluster(bindir, datadir, free_port(), run_as)
    cluster.start()
    yield cluster
    with contextlib.suppress(subprocess.CalledProcessError):
        cluster.stop("immediate")
    time.sleep(0.1)
