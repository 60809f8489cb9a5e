"""What the supervision itself consumes: the pure math of ``api.service_energy_daily``.

Every long-running process of the service samples itself (``app/own_meter.py``): its cumulative
CPU time, the machine's cumulative busy and total CPU time (``/proc/stat``), and the RAPL package
energy counters where they can be read. A *series* is one process: (host, pid, start time); a
restart is a new series, and nothing is counted across the gap between two series. This module
turns the ordered samples of each series into figures per day; it does no I/O.

Per interval between two consecutive samples of a series (duration ``dt`` [s]):

- the process used ``ΔC`` CPU seconds, the machine ``ΔB`` busy and ``ΔT`` total CPU seconds
  (``ΔT`` ≈ cores × ``dt``; on a container without a virtualised ``/proc/stat``, the host's);
- the service's share of the machine is ``s = ΔC / ΔB`` (clipped to [0, 1]: the two counters
  tick separately);
- **rapl**, when both samples read the same package zones: the package energy ``ΔE`` [J] (each
  counter's rise, plus its ``max_energy_range_uj`` when it wrapped) × ``s``. RAPL measures the
  whole package — cores, caches, uncore, its idle draw included — so the service is given the
  part of it that its share of the busy CPU time is. An interval long enough for a counter to
  wrap twice at :data:`RAPL_MAX_PACKAGE_W` is not trusted and falls back to the estimate;
- **cpu_time** otherwise: the Cloud Carbon Footprint model of a server, per core
  ``min_w + utilisation × (max_w − min_w)``, for the machine ``ΔT × min_w + ΔB × (max_w −
  min_w)`` [J], × ``s``. For ``s = ΔC / ΔB`` that is ``ΔC × (max_w − min_w)`` (the work) plus
  ``ΔC × ΔT / ΔB × min_w`` (the service's share of the idle draw): the same attribution as the
  RAPL figure, so the two methods can be compared.

Each interval is split over the days it spans in proportion to time (a process that ran across
midnight counts on both days). An interval whose counters went backwards, or whose time did not
move, is counted as nothing and makes its days incomplete. A day of a series is *complete* when
none of its intervals was discarded and the series is known past the day's end: a sample at or
after it, or a final sample (the process stopped cleanly, :attr:`OwnSample.final`) — a process
killed between two samples loses the CPU time since its last one. The CPU time a process spends
before its first sample (the meter samples as soon as it starts: its imports) is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

__all__ = [
    "RAPL_MAX_PACKAGE_W",
    "Coefficients",
    "OwnDays",
    "OwnSample",
    "SeriesKey",
    "days_of",
    "rapl_delta_uj",
    "series_days",
]

FloatArray = npt.NDArray[np.float64]

RAPL_MAX_PACKAGE_W = 500.0
"""The most a CPU package is taken to draw [W] (today's largest server parts are rated
350-400 W): an interval in which the package counters could have wrapped twice at this power is
not read from RAPL (one wrap per interval can be told, two cannot)."""

SeriesKey = tuple[str, int, float]
"""(host, pid, process start [s since epoch]): one process."""


@dataclass(frozen=True, slots=True)
class OwnSample:
    """One sample of one process of the service.

    ``started_at`` and ``sampled_at`` [s since epoch]; ``cpu_s`` the process's cumulative user
    and system CPU time [s] (with its reaped children's unless those are metered themselves);
    ``machine_busy_s`` and ``machine_total_s`` the machine's cumulative busy and total CPU time
    since boot [s] (all cores); ``rapl_uj`` each package zone's ``energy_uj`` [µJ] and
    ``rapl_max_uj`` its ``max_energy_range_uj`` [µJ], in zone order, ``None`` when unreadable;
    ``final`` for the sample taken as the process stops.
    """

    host: str
    role: str
    pid: int
    started_at: float
    sampled_at: float
    cpu_s: float
    machine_busy_s: float
    machine_total_s: float
    rapl_uj: tuple[int, ...] | None = None
    rapl_max_uj: tuple[int, ...] | None = None
    final: bool = False

    @property
    def series(self) -> SeriesKey:
        """The process this sample belongs to."""
        return (self.host, self.pid, self.started_at)


@dataclass(frozen=True, slots=True)
class Coefficients:
    """The power of one core [W]: ``min_w`` idle, ``max_w`` at 100 % (the cpu_time method)."""

    min_w: float
    max_w: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_w <= self.max_w:
            raise ValueError(f"need 0 <= min_w <= max_w, got {self.min_w}, {self.max_w}")


@dataclass
class OwnDays:
    """Figures per day (arrays of shape (days,)) of one process or of a group of them.

    ``cpu_s`` the service's CPU time [s]; ``machine_busy_s`` the machine's busy CPU time over
    the same intervals [s]; ``energy_j`` the energy attributed to the service [J]; ``seconds``
    the time covered by intervals [s] and ``rapl_seconds`` the part of it read from RAPL [s];
    ``processes`` the series that touched the day; ``complete`` as the module says.
    """

    cpu_s: FloatArray
    machine_busy_s: FloatArray
    energy_j: FloatArray
    seconds: FloatArray
    rapl_seconds: FloatArray
    processes: npt.NDArray[np.int64]
    complete: npt.NDArray[np.bool_]
    discarded: int = 0
    """Intervals counted as nothing (counters that went backwards, time that did not move)."""

    @classmethod
    def zeros(cls, days: int) -> OwnDays:
        """Nothing on ``days`` days: no process, complete."""
        z = np.zeros(days)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(days, dtype=np.int64),
                   np.ones(days, dtype=bool))  # fmt: skip

    @property
    def kwh(self) -> FloatArray:
        """``energy_j`` in kWh."""
        return self.energy_j / 3.6e6

    def add(self, other: OwnDays) -> None:
        """Add the figures of ``other`` (of the same days) to these."""
        self.cpu_s += other.cpu_s
        self.machine_busy_s += other.machine_busy_s
        self.energy_j += other.energy_j
        self.seconds += other.seconds
        self.rapl_seconds += other.rapl_seconds
        self.processes += other.processes
        self.complete &= other.complete
        self.discarded += other.discarded


def rapl_delta_uj(
    before: Sequence[int], after: Sequence[int], max_range_uj: Sequence[int]
) -> float:
    """The package energy between two readings [µJ], summed over the zones: each zone's rise,
    or when its counter fell (it wrapped at ``max_energy_range_uj``), ``after + max − before``.
    """
    total = 0
    for b, a, m in zip(before, after, max_range_uj, strict=True):
        total += a - b if a >= b else a + m - b
    return float(total)


def _rapl_j(a: OwnSample, b: OwnSample) -> float | None:
    """The package energy of the interval a → b [J], None when RAPL cannot tell it."""
    if a.rapl_uj is None or b.rapl_uj is None or b.rapl_max_uj is None:
        return None
    if len(a.rapl_uj) != len(b.rapl_uj) or len(b.rapl_uj) != len(b.rapl_max_uj):
        return None  # the zones changed
    if not b.rapl_uj:
        return None
    dt = b.sampled_at - a.sampled_at
    if dt * RAPL_MAX_PACKAGE_W * 1e6 >= min(b.rapl_max_uj):
        return None  # two wraps cannot be told from one
    return rapl_delta_uj(a.rapl_uj, b.rapl_uj, b.rapl_max_uj) / 1e6


def _overlaps(t0: float, t1: float, edges: FloatArray) -> FloatArray:
    """Seconds of [t0, t1) in each bin of ``edges``."""
    seconds: FloatArray = np.clip(np.minimum(edges[1:], t1) - np.maximum(edges[:-1], t0), 0.0, None)
    return seconds


def series_days(
    samples: Sequence[OwnSample], edges: FloatArray, coefficients: Coefficients
) -> OwnDays:
    """The figures per bin of ``edges`` [s since epoch, increasing, at least 2] of one series,
    its ``samples`` ordered by time (:func:`days_of` groups and orders them)."""
    days = len(edges) - 1
    out = OwnDays.zeros(days)
    if not samples:
        return out
    bad = np.zeros(days, dtype=bool)
    span = (samples[0].sampled_at, samples[-1].sampled_at)
    for a, b in pairwise(samples):
        dt = b.sampled_at - a.sampled_at
        d_cpu = b.cpu_s - a.cpu_s
        d_busy = b.machine_busy_s - a.machine_busy_s
        d_total = b.machine_total_s - a.machine_total_s
        covered = _overlaps(a.sampled_at, b.sampled_at, edges)
        if dt <= 0 or d_cpu < 0 or d_busy < 0 or d_total <= 0:
            out.discarded += 1
            bad |= covered > 0
            continue
        share = min(1.0, d_cpu / d_busy) if d_busy > 0 else (1.0 if d_cpu > 0 else 0.0)
        rapl = _rapl_j(a, b)
        if rapl is not None:
            energy = rapl * share
            out.rapl_seconds += covered
        else:
            machine = d_total * coefficients.min_w + d_busy * (
                coefficients.max_w - coefficients.min_w
            )
            energy = machine * share
        weight = covered / dt
        out.cpu_s += d_cpu * weight
        out.machine_busy_s += d_busy * weight
        out.energy_j += energy * weight
        out.seconds += covered
    touched = _overlaps(span[0], span[1], edges) > 0
    touched |= (edges[:-1] <= span[0]) & (span[0] < edges[1:])  # a lone sample
    out.processes = touched.astype(np.int64)
    known_past = edges[1:] <= span[1]
    out.complete = ~touched | (~bad & (known_past | samples[-1].final))
    return out


def days_of(
    samples: Iterable[OwnSample], edges: FloatArray, coefficients: Coefficients
) -> dict[tuple[str, str], OwnDays]:
    """The figures per bin of ``edges`` per (host, role), from the samples of any number of
    series in any order: each series on its own (a restart is a new series), then summed."""
    by_series: dict[SeriesKey, list[OwnSample]] = {}
    for sample in samples:
        by_series.setdefault(sample.series, []).append(sample)
    out: dict[tuple[str, str], OwnDays] = {}
    for key in sorted(by_series):
        ordered = sorted(by_series[key], key=lambda s: s.sampled_at)
        figures = series_days(ordered, edges, coefficients)
        group = (key[0], ordered[-1].role)
        if group in out:
            out[group].add(figures)
        else:
            out[group] = figures
    return out
