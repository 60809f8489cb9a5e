"""Interval energy from a cumulative energy counter (metric ``energy``, Wh): pure functions over
numpy arrays, no I/O.

A counter is read at times ``t`` [s since epoch] with values ``wh`` [Wh]. Each pair of
consecutive readings ``(i, i + 1)`` is an *interval*; :func:`counter_intervals` gives each the
energy attributed to it [Wh] and a kind (:class:`IntervalKind`). The rules, in the order they
are tried for an interval that starts at the last trusted reading ``p``:

- **replacement (inventory)**: the interval spans an instant of ``replaced_at``
  (``t[p] < r <= t[p + 1]``: a reading at ``r`` is the new meter's): nothing is counted, the new
  meter's readings count from the next interval on.
- **ok**: the step is *plausible*: ``0 <= delta <= cap(dt)`` with
  ``cap(dt) = max_power_w × (1 + power_margin) × dt / 3600 + resolution_wh`` (no upper bound
  without ``max_power_w``). The counter's resolution is allowed on top of the power because a
  register that shows 0.1 kWh steps moves by a whole step at once.
- **glitch** (nothing lost, nothing counted twice): a step that is not plausible is a glitch
  when the counter comes back within ``glitch_readings`` readings to a value that is a plausible
  continuation of the level before it (``>=`` that level, within the cap of the elapsed time).
  The readings in between are *skipped* (``CounterIntervals.skipped``) and the energy between the
  two trusted readings is spread over the intervals in between in proportion to their duration
  (the counter interpolated linearly). A spurious zero followed by the old level is a glitch,
  never a reset. A drop can also end an upward spike: when the value after the drop continues a
  trusted reading at most ``glitch_readings`` readings back (and nothing but ok or glitch
  intervals lies between), the readings of the spike are skipped the same way; this is what
  catches a spike when ``max_power_w`` is unknown (a jump up is then always plausible).
- **pending**: when the series ends before ``glitch_readings`` readings after the step could
  tell whether it is a glitch, the intervals from the last trusted reading to the end count
  nothing and are marked pending; they are decided by a later call with more readings (give the
  function ``glitch_readings`` readings beyond the period to account for, and some before it: the
  first reading is trusted as it is).
- otherwise the step is permanent; a jump up beyond the cap is **absurd** (flagged, counted 0);
  a drop, from the previous value ``w`` to the new value ``v``, is
  - a **rollover** when ``counter_max_wh`` is declared and ``e = counter_max_wh - w + v`` is
    between 0 and the cap of the interval (without ``max_power_w``: at most
    ``rollover_fraction`` of ``counter_max_wh``, so a counter halfway to its maximum does not
    roll over): ``e`` is counted. ``counter_max_wh`` is used as the modulus, as declared: a
    register whose largest shown value is ``M`` and whose next is 0 actually wraps at ``M`` plus
    one resolution step, which this undercounts by that step once per rollover;
  - **negative** (meter noise) when ``w - v <= resolution_wh``: flagged, counted 0;
  - a **reset** when ``v`` is near zero: ``v <= reset_tolerance_wh`` plus what the device can
    count in the interval (``max_power_w × (1 + power_margin) × dt / 3600``, when known): the
    counter restarted from zero, ``v`` is counted (the energy between the last reading and the
    reset itself is unknown and not invented: a lower bound);
  - a **replacement** otherwise (a drop to another value: a new meter with its own index):
    flagged, counted 0.

After a reset, rollover, replacement, negative or absurd step the new value is trusted: the
counting goes on from it. Readings must be finite and non-negative and times strictly increasing
(ingest rejects the rest and deduplicates on time): anything else is a :class:`ValueError`, not a
guess.

:func:`bin_energy` sums interval energy into bins (e.g. local days given by their edges [s]),
splitting an interval that crosses an edge in proportion to time (the counter interpolated
linearly between readings), so the bins' sum is the intervals' sum when the bins cover them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from core.arrays import BoolArray, FloatArray, IntArray


class IntervalKind(IntEnum):
    """What an interval between two readings is (see the module docstring for the rules)."""

    OK = 0
    GLITCH = 1
    RESET = 2
    ROLLOVER = 3
    REPLACEMENT = 4
    NEGATIVE = 5
    ABSURD = 6
    PENDING = 7


COUNTED = frozenset(
    {IntervalKind.OK, IntervalKind.GLITCH, IntervalKind.RESET, IntervalKind.ROLLOVER}
)
"""Kinds whose energy is counted (a reset's is a lower bound)."""
FLAGGED = frozenset(
    {IntervalKind.REPLACEMENT, IntervalKind.NEGATIVE, IntervalKind.ABSURD, IntervalKind.PENDING}
)
"""Kinds that count nothing: the interval's energy is unknown, not zero."""

_FLAGGED_CODES = np.array(sorted(int(k) for k in FLAGGED), dtype=np.int64)

_Fits = Callable[[int, int], bool]
"""The plausibility test ``fits(p, a)`` of a step between readings ``p`` and ``a``."""


@dataclass(frozen=True, slots=True)
class CounterIntervals:
    """Intervals between consecutive readings of one counter.

    ``start``/``end`` [s since epoch] (``t[:-1]``, ``t[1:]``), ``energy_wh`` attributed to each
    interval [Wh] (0 where nothing is counted), ``kind`` an :class:`IntervalKind` code per
    interval, ``skipped`` per *reading*: True for the readings judged glitches.
    """

    start: FloatArray
    end: FloatArray
    energy_wh: FloatArray
    kind: IntArray
    skipped: BoolArray

    @property
    def total_wh(self) -> float:
        """Energy counted over the whole series [Wh]."""
        return float(self.energy_wh.sum())

    def count(self, kind: IntervalKind) -> int:
        """Number of intervals of ``kind``."""
        return int(np.count_nonzero(self.kind == kind))

    @property
    def resets(self) -> int:
        """Intervals holding a reset to zero."""
        return self.count(IntervalKind.RESET)

    @property
    def rollovers(self) -> int:
        """Intervals holding a rollover at ``counter_max_wh``."""
        return self.count(IntervalKind.ROLLOVER)

    @property
    def replacements(self) -> int:
        """Intervals across a meter replacement (declared or seen as a drop)."""
        return self.count(IntervalKind.REPLACEMENT)

    @property
    def glitch_readings(self) -> int:
        """Readings skipped as glitches."""
        return int(np.count_nonzero(self.skipped))

    @property
    def flagged(self) -> int:
        """Intervals that count nothing (replacement, negative, absurd, pending)."""
        return int(np.count_nonzero(np.isin(self.kind, _FLAGGED_CODES)))


@dataclass(frozen=True, slots=True)
class BinnedEnergy:
    """Interval energy summed into bins ``[start, end)`` [s since epoch].

    ``energy_wh`` per bin [Wh]; ``covered_s`` the time of the bin between the first and the last
    reading [s]; ``flagged_s`` the part of it in intervals that count nothing [s] (so
    ``covered_s - flagged_s`` is the time whose energy is known); ``counts`` per bin and per
    :class:`IntervalKind` (column ``int(kind)``) the intervals that overlap the bin (an interval
    across an edge counts in both bins).
    """

    start: FloatArray
    end: FloatArray
    energy_wh: FloatArray
    covered_s: FloatArray
    flagged_s: FloatArray
    counts: IntArray

    @property
    def energy_kwh(self) -> FloatArray:
        """Energy per bin [kWh]."""
        return self.energy_wh / 1000.0

    def count(self, kind: IntervalKind) -> IntArray:
        """Intervals of ``kind`` overlapping each bin."""
        return self.counts[:, int(kind)]

    @property
    def flagged(self) -> IntArray:
        """Intervals that count nothing overlapping each bin."""
        total: IntArray = self.counts[:, _FLAGGED_CODES].sum(axis=1)
        return total


@dataclass(frozen=True, slots=True)
class _Limits:
    """What the device can count: ``power_w`` the possible power with its margin [W] (None:
    unknown), ``resolution_wh`` [Wh]."""

    power_w: float | None
    resolution_wh: float

    def cap(self, dt_s: float) -> float:
        """Largest plausible step over ``dt_s`` seconds [Wh] (inf without a power)."""
        if self.power_w is None:
            return math.inf
        return self.power_w * dt_s / 3600.0 + self.resolution_wh


def counter_intervals(
    t: npt.ArrayLike,
    wh: npt.ArrayLike,
    *,
    counter_max_wh: float | None = None,
    max_power_w: float | None = None,
    replaced_at: Sequence[float] = (),
    reset_tolerance_wh: float = 10.0,
    resolution_wh: float = 10.0,
    power_margin: float = 0.1,
    rollover_fraction: float = 0.01,
    glitch_readings: int = 3,
) -> CounterIntervals:
    """Energy per interval between consecutive readings of a cumulative counter.

    ``t`` reading times [s since epoch], strictly increasing; ``wh`` the counter [Wh], finite and
    non-negative. From the inventory: ``counter_max_wh`` the declared maximum of the register
    [Wh] (e.g. 999,999,900 for a 999,999.9 kWh register; None: no rollover), ``max_power_w``
    the largest power the device can draw [W] (None: no upper bound on a step) and
    ``replaced_at`` the instants the meter was replaced [s since epoch]. Tolerances:
    ``reset_tolerance_wh`` how near zero a reset lands [Wh] (10 Wh: a few minutes of a
    luminaire; the energy the device can count in the interval is added when its power is
    known), ``resolution_wh`` the register's step and noise [Wh] (10 Wh; set it to the
    register's step, e.g. 100 Wh for a 0.1 kWh display), ``power_margin`` above ``max_power_w``
    (0.1: inrush, driver losses, meter accuracy), ``rollover_fraction`` of ``counter_max_wh`` a
    rollover interval may count when the power is unknown (0.01), ``glitch_readings`` the most
    consecutive readings a glitch may last (3; 0 disables glitches and pending).

    Rules: see the module docstring. Raises :class:`ValueError` on NaN or infinite values,
    negative readings, times that do not increase, or arrays of different lengths.
    """
    times = np.asarray(t, dtype=np.float64)
    values = np.asarray(wh, dtype=np.float64)
    _check(times, values, counter_max_wh, max_power_w, glitch_readings)
    n = len(times)
    m = max(n - 1, 0)
    energy = np.zeros(m)
    kind = np.full(m, int(IntervalKind.OK), dtype=np.int64)
    skipped = np.zeros(n, dtype=bool)
    if m == 0:
        return CounterIntervals(times[:-1], times[1:], energy, kind, skipped)

    limits = _Limits(
        None if max_power_w is None else max_power_w * (1.0 + power_margin), resolution_wh
    )
    # Interval i spans a replacement at r when t[i] < r <= t[i + 1].
    marks = np.searchsorted(times, np.asarray(replaced_at, dtype=np.float64), side="left") - 1
    spans = np.zeros(m, dtype=bool)
    spans[marks[(marks >= 0) & (marks < m)]] = True

    # Every plausible step is ok at once; the loop visits only the others.
    delta = np.diff(values)
    dt = np.diff(times)
    if limits.power_w is None:
        cap = np.full(m, np.inf)
    else:
        cap = limits.power_w * dt / 3600.0 + resolution_wh
    plausible = (delta >= 0) & (delta <= cap) & ~spans
    energy[plausible] = delta[plausible]
    anomalies = np.flatnonzero(~plausible)

    def fits(p: int, a: int) -> bool:
        step = float(values[a] - values[p])
        return 0.0 <= step <= limits.cap(float(times[a] - times[p]))

    def spread(p: int, a: int) -> None:
        """Readings strictly between trusted ``p`` and ``a`` are glitches: their energy is
        spread over the intervals p..a-1 in proportion to time."""
        seg = slice(p, a)
        energy[seg] = (values[a] - values[p]) * dt[seg] / (times[a] - times[p])
        kind[seg] = int(IntervalKind.GLITCH)
        skipped[p + 1 : a] = True

    floor = 0  # first trusted reading after the last permanent event: spikes start from it on
    p = 0  # the last trusted reading
    k = 0
    while k < len(anomalies):
        if anomalies[k] < p:
            k += 1
            continue
        p = int(anomalies[k])
        j = p + 1
        if spans[p]:
            kind[p] = int(IntervalKind.REPLACEMENT)
            p = floor = j
            continue
        back, pending = _return_after(p, j, glitch_readings, spans, fits)
        if back is not None:
            spread(p, back)
            p = back
            continue
        if values[j] < values[p]:
            start = _spike_start(p, j, glitch_readings, floor, skipped, fits)
            if start is not None:
                spread(start, j)
                p = j
                continue
        if pending:
            energy[p:] = 0.0
            kind[p:] = int(IntervalKind.PENDING)
            break
        code, counted = _permanent(
            float(values[p]),
            float(values[j]),
            float(dt[p]),
            limits,
            counter_max_wh,
            reset_tolerance_wh,
            rollover_fraction,
        )
        kind[p], energy[p] = int(code), counted
        p = floor = j
    return CounterIntervals(times[:-1], times[1:], energy, kind, skipped)


def _check(
    times: FloatArray,
    values: FloatArray,
    counter_max_wh: float | None,
    max_power_w: float | None,
    glitch_readings: int,
) -> None:
    """Refuse what is not a counter series (see :func:`counter_intervals`)."""
    if times.ndim != 1 or values.shape != times.shape:
        raise ValueError(
            f"t and wh must be 1-D of one length, got {times.shape} and {values.shape}"
        )
    for name, array in (("t", times), ("wh", values)):
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}: readings must be finite")
    negative = np.flatnonzero(values < 0)
    if len(negative):
        raise ValueError(f"wh[{negative[0]}] is {values[negative[0]]}: a counter is >= 0")
    steps = np.flatnonzero(np.diff(times) <= 0)
    if len(steps):
        i = int(steps[0])
        raise ValueError(f"t must increase strictly: t[{i}]={times[i]}, t[{i + 1}]={times[i + 1]}")
    if counter_max_wh is not None and not counter_max_wh > 0:
        raise ValueError(f"counter_max_wh must be > 0, got {counter_max_wh}")
    if max_power_w is not None and not max_power_w > 0:
        raise ValueError(f"max_power_w must be > 0, got {max_power_w}")
    if glitch_readings < 0:
        raise ValueError(f"glitch_readings must be >= 0, got {glitch_readings}")


def _return_after(
    p: int, j: int, glitch_readings: int, spans: BoolArray, fits: _Fits
) -> tuple[int | None, bool]:
    """The first reading ``a`` among the ``glitch_readings`` after ``j`` that continues trusted
    ``p`` (None if none), and whether the series ended before they could all be seen. The look
    does not cross a replacement (that decides: not pending)."""
    last = len(spans)  # the last reading's index
    for a in range(j + 1, j + glitch_readings + 1):
        if a > last:
            return None, True
        if spans[a - 1]:
            return None, False
        if fits(p, a):
            return a, False
    return None, False


def _spike_start(
    p: int, j: int, glitch_readings: int, floor: int, skipped: BoolArray, fits: _Fits
) -> int | None:
    """The latest trusted reading ``b`` (at most ``glitch_readings`` readings before ``j``, not
    before ``floor``) that ``j`` continues: the readings after ``b`` up to ``p`` were a spike."""
    for b in range(p - 1, max(floor, j - 1 - glitch_readings) - 1, -1):
        if not skipped[b] and fits(b, j):
            return b
    return None


def _permanent(
    before: float,
    after: float,
    dt_s: float,
    limits: _Limits,
    counter_max_wh: float | None,
    reset_tolerance_wh: float,
    rollover_fraction: float,
) -> tuple[IntervalKind, float]:
    """Kind and energy [Wh] of an implausible step from ``before`` to ``after`` [Wh] over
    ``dt_s`` [s] that is no glitch: absurd, rollover, negative, reset or replacement."""
    if after > before:
        return IntervalKind.ABSURD, 0.0
    if counter_max_wh is not None:
        wrapped = counter_max_wh - before + after
        most = (
            limits.cap(dt_s) if limits.power_w is not None else rollover_fraction * counter_max_wh
        )
        if 0.0 <= wrapped <= most:
            return IntervalKind.ROLLOVER, wrapped
    if before - after <= limits.resolution_wh:
        return IntervalKind.NEGATIVE, 0.0
    near_zero = reset_tolerance_wh + (
        0.0 if limits.power_w is None else limits.power_w * dt_s / 3600.0
    )
    if after <= near_zero:
        return IntervalKind.RESET, after
    return IntervalKind.REPLACEMENT, 0.0


def bin_energy(intervals: CounterIntervals, edges: npt.ArrayLike) -> BinnedEnergy:
    """Sum interval energy into the bins between consecutive ``edges`` [s since epoch, strictly
    increasing], e.g. local midnights. An interval across an edge is split in proportion to time
    (the counter interpolated linearly between its readings); time outside the readings counts
    nothing. Raises :class:`ValueError` on edges that are not finite or do not increase."""
    bounds = np.asarray(edges, dtype=np.float64)
    if bounds.ndim != 1 or not np.isfinite(bounds).all() or (np.diff(bounds) <= 0).any():
        raise ValueError("edges must be a 1-D, finite, strictly increasing array")
    bins = max(len(bounds) - 1, 0)
    counts = np.zeros((bins, len(IntervalKind)), dtype=np.int64)
    if len(intervals.start) == 0 or bins == 0:
        zero = np.zeros(bins)
        return BinnedEnergy(bounds[:-1], bounds[1:], zero, zero.copy(), zero.copy(), counts)
    knots = np.append(intervals.start, intervals.end[-1])
    dt = intervals.end - intervals.start
    flagged = np.isin(intervals.kind, _FLAGGED_CODES)

    def per_bin(per_interval: FloatArray) -> FloatArray:
        """Bin sums of a quantity spread evenly over each interval's time."""
        cumulative = np.concatenate([[0.0], np.cumsum(per_interval)])
        return np.diff(np.interp(bounds, knots, cumulative))

    energy = per_bin(intervals.energy_wh)
    covered = per_bin(dt)
    flagged_s = per_bin(np.where(flagged, dt, 0.0))
    # Bins lo..hi that each interval overlaps for a positive time.
    lo = np.searchsorted(bounds, intervals.start, side="right") - 1
    hi = np.searchsorted(bounds, intervals.end, side="left") - 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, bins - 1)
    inside = lo <= hi
    marks = np.zeros((bins + 1, len(IntervalKind)), dtype=np.int64)
    np.add.at(marks, (lo[inside], intervals.kind[inside]), 1)
    np.add.at(marks, (hi[inside] + 1, intervals.kind[inside]), -1)
    counts = np.cumsum(marks, axis=0)[:bins]
    return BinnedEnergy(bounds[:-1], bounds[1:], energy, covered, flagged_s, counts)
