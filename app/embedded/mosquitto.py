"""A Mosquitto of our own: started from the machine's binary in a directory of its own, on a free
port of 127.0.0.1, with persistence and the queue limits of ``deploy/mosquitto`` (Debian's
defaults drop queued messages silently). ``sobriety demo`` starts one when no broker is
configured or local; the tests and benchmarks start theirs with the same class, and may restart
it on the same port (its sessions and queued messages survive a clean stop)."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from app.embedded.base import ServiceError
from app.embedded.probe import MQTT_5, mqtt_up
from app.embedded.procs import PORT_ATTEMPTS, free_port, pid_alive, tail, wait_gone

log = logging.getLogger("sobriety.embedded")

START_TIMEOUT_S = 30.0
"""A broker we start must answer a CONNECT within this."""
STOP_TIMEOUT_S = 30.0


class BrokerError(ServiceError):
    """Mosquitto could not be started; the message has the end of its log."""


def mosquitto_binary() -> str | None:
    """Path of the machine's ``mosquitto``, if any."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


QUEUED_MAX = 2_000_000
"""Messages our brokers queue per session (Mosquitto's default, 1000, drops the rest)."""


def mosquitto_conf(port: int, directory: Path, user: str, raised_limits: bool = True) -> str:
    """The configuration of a private broker: anonymous on 127.0.0.1:``port``, persistence and
    log in ``directory``, queue limits high enough that nothing is dropped (or, without
    ``raised_limits``, Mosquitto's own defaults: 1000 queued, 20 in flight — what a broker
    installed from Debian has), and ``user`` (the broker started as root switches to it, so its
    files stay ours)."""
    limits = (
        f"max_queued_messages {QUEUED_MAX}\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
        if raised_limits
        else ""
    )
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {directory}/\n"
        "autosave_interval 1\n"
        f"{limits}"
        f"log_dest file {directory}/mosquitto.log\n"
        f"user {user}\n"
    )


class Mosquitto:
    """A private broker in ``directory``; the port is chosen at the first start and kept."""

    def __init__(
        self, directory: Path, binary: str | None = None, raised_limits: bool = True
    ) -> None:
        found = binary or mosquitto_binary()
        if found is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = found
        self.raised_limits = raised_limits
        self.directory = directory
        self.conf = directory / "mosquitto.conf"
        self.logfile = directory / "mosquitto.log"
        self.pidfile = directory / "mosquitto.pid"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again) and wait until it answers a CONNECT; :class:`BrokerError` otherwise."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        attempts = PORT_ATTEMPTS if not self.port else 1
        for _ in range(attempts):
            if attempts > 1:
                self.port = free_port()
            user = pwd.getpwuid(os.geteuid()).pw_name
            conf = mosquitto_conf(self.port, self.directory, user, self.raised_limits)
            self.conf.write_text(conf)
            if self._run():
                log.info("started mosquitto in %s on 127.0.0.1:%d", self.directory, self.port)
                return
        raise BrokerError(
            f"mosquitto ({self.binary}) did not start in {self.directory}:\n{tail(self.logfile)}"
        )

    def _run(self) -> bool:
        try:
            proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us, and we stop the broker
            )
        except OSError as exc:
            raise BrokerError(f"cannot run mosquitto ({self.binary}): {exc}") from None
        self.proc = proc
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if mqtt_up(self.port, MQTT_5):
                return True
            time.sleep(0.05)  # polls: a listening socket has no event we can wait on
        self.stop()
        return False

    def stop(self) -> None:
        """Clean stop (SIGTERM: the broker saves its sessions and queues); safe twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pidfile.unlink(missing_ok=True)

    def log(self) -> str:
        """The broker's log so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def _stop_leftover(self) -> None:
        """Stop the mosquitto that a killed run left on this directory's persistence: only a
        process whose command line names our configuration file (a pid may be reused)."""
        if self.proc is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(self.conf).encode() in cmdline and pid_alive(pid):
                log.info("stopping a mosquitto left running on %s (pid %d)", self.directory, pid)
                os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, STOP_TIMEOUT_S):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, STOP_TIMEOUT_S)
        self.pidfile.unlink(missing_ok=True)
