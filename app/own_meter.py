"""The service meters itself: every long-running process samples its own CPU time, the
machine's and the RAPL package counters every ``[energy] own_sample_s`` into
``service_cpu_samples``, from which the energy service computes ``api.service_energy_daily``
(energy/README.md).

:func:`start_own_meter` starts the sampler of this process and returns the callable that stops
it (a final sample is taken). The sampler is a daemon thread with a database connection of its
own; it never raises into its host: a failure to read or to write is logged and counted, the
samples not yet written wait (at most :data:`PENDING_MAX`, the oldest dropped and counted) and
go with the next write. Linux only (``/proc``); elsewhere it logs once and records nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import psycopg

from core.db import connect
from energy.config import EnergyConfig
from energy.own_store import save_samples
from energy.own_use import OwnSample

__all__ = [
    "PENDING_MAX",
    "OwnMeter",
    "machine_cpu_s",
    "process_start",
    "read_rapl",
    "start_own_meter",
]

log = logging.getLogger(__name__)

PENDING_MAX = 1440
"""Samples kept while the database cannot be written (a day at the default 60 s)."""
STOP_TIMEOUT_S = 15.0
"""How long :meth:`OwnMeter.stop` waits for the final sample to be written [s]."""

_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_rapl(root: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The ``energy_uj`` and ``max_energy_range_uj`` [µJ] of each RAPL package zone under
    ``root`` (``/sys/class/powercap``), in zone order; None when there is none or one cannot
    be read (root-only since CVE-2020-8694 on most kernels). The package zones only: their
    subzones (cores, uncore, DRAM) are parts of them or not the CPU, and ``psys`` (the whole
    platform) would count the packages twice."""
    base = Path(root)
    try:
        zones = sorted(
            (p for p in base.iterdir() if _PACKAGE_ZONE.match(p.name)),
            key=lambda p: int(p.name.rsplit(":", 1)[1]),
        )
        energy, ranges = [], []
        for zone in zones:
            name = zone / "name"
            if name.exists() and not name.read_text().strip().startswith("package"):
                continue
            energy.append(int((zone / "energy_uj").read_text()))
            ranges.append(int((zone / "max_energy_range_uj").read_text()))
    except (OSError, ValueError):
        return None
    if not energy:
        return None
    return tuple(energy), tuple(ranges)


def machine_cpu_s(stat: str | Path = "/proc/stat") -> tuple[float, float]:
    """The machine's cumulative (busy, total) CPU time since boot over all cores [s], from the
    ``cpu`` line of ``/proc/stat``: total = user + nice + system + idle + iowait + irq +
    softirq + steal (guest time is inside user already), busy = total − idle − iowait."""
    with Path(stat).open() as f:
        fields = f.readline().split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{stat}: no cpu line")
    ticks = [int(x) for x in fields[1:9]]
    ticks += [0] * (8 - len(ticks))  # old kernels: no steal
    total = sum(ticks[:8])
    busy = total - ticks[3] - ticks[4]
    return busy / _TICK, total / _TICK


def process_start(pid: int | None = None) -> float:
    """When the process started [s since epoch]: ``btime`` of ``/proc/stat`` plus field 22 of
    ``/proc/<pid>/stat``. Read once per process (``btime`` can move by a second)."""
    text = Path(f"/proc/{pid or 'self'}/stat").read_text()
    start_ticks = int(text.rsplit(")", 1)[1].split()[19])
    btime = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return btime + start_ticks / _TICK


def own_cpu_s(include_children: bool) -> float:
    """This process's cumulative user + system CPU time, all threads [s], with its reaped
    children's when ``include_children``."""
    t = os.times()
    cpu = t.user + t.system
    return cpu + t.children_user + t.children_system if include_children else cpu


class OwnMeter:
    """The sampler of one process (``role`` names it: ``run``, ``ingest``, ``ingest-worker``,
    ``energy``, ...). ``include_children``: count the CPU time of reaped children — not when
    they are metered themselves (the ingest's workers). ``pid`` and ``started_at`` [s] say which
    process the samples are of (default: this one)."""

    def __init__(
        self,
        conninfo: str,
        config: EnergyConfig,
        role: str,
        *,
        include_children: bool = True,
        pid: int | None = None,
        started_at: float | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.config = config
        self.role = role
        self.include_children = include_children
        self.host = socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.started_at = started_at
        self.pending: deque[OwnSample] = deque(maxlen=PENDING_MAX)
        self.stopping = threading.Event()
        self.errors = 0
        """Samples that could not be taken, and writes that failed."""
        self.dropped = 0
        """Samples lost because :data:`PENDING_MAX` were waiting."""
        self.written = 0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._thread: threading.Thread | None = None

    def sample(
        self,
        now: float | None = None,
        *,
        cpu_s: float | None = None,
        machine: tuple[float, float] | None = None,
        final: bool = False,
    ) -> OwnSample | None:
        """Take one sample — at ``now`` [s], of ``cpu_s`` [s] and ``machine`` (busy, total)
        [s] when given, else read — and queue it; None (logged, counted) when it cannot be
        read. :meth:`flush` writes it."""
        try:
            if self.started_at is None:
                self.started_at = process_start(None if self.pid == os.getpid() else self.pid)
            busy, total = machine_cpu_s() if machine is None else machine
            rapl = read_rapl(self.config.rapl_path)
            taken = OwnSample(
                host=self.host, role=self.role, pid=self.pid, started_at=self.started_at,
                sampled_at=time.time() if now is None else now,
                cpu_s=own_cpu_s(self.include_children) if cpu_s is None else cpu_s,
                machine_busy_s=busy, machine_total_s=total,
                rapl_uj=None if rapl is None else rapl[0],
                rapl_max_uj=None if rapl is None else rapl[1], final=final,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the meter never stops its host
            self._failed("sample", exc)
            return None
        with self._lock:
            if len(self.pending) == self.pending.maxlen:
                self.dropped += 1
            self.pending.append(taken)
        return taken

    def flush(self) -> int:
        """Write the queued samples (its own connection, opened again after a failure); the
        rows written, 0 on a failure (logged, counted: they wait for the next)."""
        with self._lock:
            batch = list(self.pending)
        if not batch:
            return 0
        try:
            conn = self._connection()
            save_samples(conn, batch)
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - the meter never stops its host
            self._failed("write", exc)
            self.close()
            return 0
        with self._lock:
            for _ in range(min(len(batch), len(self.pending))):
                self.pending.popleft()
        self.written += len(batch)
        return len(batch)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = connect(self._conninfo, timeout_s=5.0)
        return self._conn

    def close(self) -> None:
        """Close the meter's connection (the thread does at stop; :meth:`flush` reopens it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        level = logging.WARNING if self.errors <= 3 else logging.DEBUG
        log.log(level, "own meter (%s): %s failed (%s); %d so far", self.role, what, exc,
                self.errors)  # fmt: skip

    def run(self) -> None:
        """Sample and write every ``own_sample_s`` until :meth:`stop`, then a final sample."""
        while True:
            self.sample()
            self.flush()
            if self.stopping.wait(self.config.own_sample_s):
                break
        self.sample(final=True)
        self.flush()
        self.close()

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=f"own-meter-{self.role}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop: the final sample taken and written, waited for at most ``timeout_s`` [s]."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def start_own_meter(
    conninfo: str, config: EnergyConfig, role: str, *, include_children: bool = True
) -> Callable[[], None]:
    """Start this process's meter (its first sample at once); the callable stops it."""
    meter = OwnMeter(conninfo, config, role, include_children=include_children)
    meter.start()
    return meter.stop
