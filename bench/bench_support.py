"""What the benchmarks share: the repository on the import path. The broker, the database
cluster and the ingest process are the application's embedded services (:mod:`app.embedded`),
the same the tests and ``sobriety demo`` use; the ingest under test has the tests' settings
(:func:`app.embedded.service_process.private_ingest_config`)."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
if str(ROOT_DIR) not in sys.path:
    sys.path.insert(0, str(ROOT_DIR))

import psycopg  # noqa: E402

from app.embedded import Mosquitto  # noqa: E402
from app.embedded.service_process import private_ingest_config as ingest_config  # noqa: E402
from core.db import upgrade  # noqa: E402

__all__ = ["ROOT_DIR", "bench_services", "ingest_config", "scratch_database", "server_url"]


def server_url() -> str:
    """The PostgreSQL server the benchmarks create their databases on."""
    return os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def scratch_database(site: str, devices: int) -> Iterator[str]:
    """A fresh database ``sobriety_bench_*`` on :func:`server_url`'s server, migrated, with
    ``site`` and its luminaires ``d0``..``d{devices - 1}``; its URL. Dropped at the end."""
    server = server_url()
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = server.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(db_url) as conn:
            upgrade(conn)
            conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
            with conn.cursor().copy("COPY devices (site, device, kind) FROM STDIN") as copy:
                for i in range(devices):
                    copy.write_row((site, f"d{i}", "luminaire"))
            conn.commit()
        yield db_url
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bench_services(site: str, devices: int, prefix: str) -> Iterator[tuple[str, Mosquitto, Path]]:
    """:func:`scratch_database`, a temporary directory (``prefix``) and a private Mosquitto
    started in it: (database URL, broker, directory). The broker is stopped at the end."""
    with (
        scratch_database(site, devices) as db_url,
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
    ):
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            yield db_url, broker, work
        finally:
            broker.stop()
