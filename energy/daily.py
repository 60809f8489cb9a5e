"""The energy of devices per local day from what the hourly rollup holds: pure glue between
``readings_hourly`` rows and the math of :mod:`energy.counters` and :mod:`energy.integrate`
(no I/O).

**Counters** (metric ``energy``, Wh). An hour whose counter only rose (``min == first`` and
``max == last``) is told exactly by its first and last readings: the counter between them
counted ``last - first``, whatever lies in between. An hour where it fell somewhere (``min <
first`` or ``max > last``: a reset, a rollover, a spurious zero, a replaced meter, a spike) needs
its raw readings: :func:`anomalous_hours` names them, the caller reads them (raw readings only
where a rollup cannot answer) and :func:`counter_series` builds the series the counter rules run
on. A day's figure: the energy of the intervals split at its local midnights; its missing time is
what no pair of readings spans plus the flagged intervals (a replacement, an absurd or negative
step, a step still pending at the end of the data) — counted as nothing, never invented.

**Power** (metric ``power``, W) where a device has no counter: sample and hold from the rollup
(:func:`energy.integrate.rollup_energy`), each gap longer than the device's maximum silence
flagged with its duration and its hours missing.

Units: times in seconds since the epoch, energy in Wh inside, kWh out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.arrays import BoolArray, FloatArray, IntArray
from energy.counters import IntervalKind, bin_energy, counter_intervals
from energy.integrate import COMPLETE_TOLERANCE_S, HourlyPower, rollup_energy

POWER_MARGIN = 0.1
"""The margin on a device's maximum power (inrush, meter accuracy), as in the counter rules."""

__all__ = [
    "CounterHours",
    "CounterSettings",
    "DayFigures",
    "anomalous_hours",
    "counter_days",
    "counter_series",
    "power_days",
]


@dataclass(frozen=True, slots=True)
class CounterHours:
    """One device's ``energy`` rows of ``readings_hourly``, sorted by hour [s since epoch]."""

    hour: FloatArray
    count: IntArray
    first: FloatArray
    first_time: FloatArray
    last: FloatArray
    last_time: FloatArray
    min: FloatArray
    max: FloatArray


@dataclass(frozen=True, slots=True)
class CounterSettings:
    """What the counter rules need of a device (:func:`energy.counters.counter_intervals`)."""

    counter_max_wh: float | None = None
    max_power_w: float | None = None
    replaced_at: tuple[float, ...] = ()
    reset_tolerance_wh: float = 10.0
    resolution_wh: float = 10.0
    glitch_readings: int = 3


@dataclass(frozen=True, slots=True)
class DayFigures:
    """Per local day (one entry per bin of the edges): energy [kWh], whether complete, hours
    missing, and the counter events and flagged intervals or gaps that touched it."""

    kwh: FloatArray
    complete: BoolArray
    missing_hours: FloatArray
    resets: IntArray
    rollovers: IntArray
    replacements: IntArray
    flagged: IntArray
    glitches: IntArray


def anomalous_hours(hours: CounterHours, settings: CounterSettings | None = None) -> BoolArray:
    """The hours whose first and last readings do not tell the counter: it fell somewhere
    inside; or (with ``settings``) it rose more than the device can draw in the span
    (``max_power_w`` with its margin, plus one resolution step), or its meter was replaced
    within the hour."""
    out: BoolArray = (hours.min < hours.first) | (hours.max > hours.last)
    if settings is not None:
        if settings.max_power_w is not None:
            span_h = (hours.last_time - hours.first_time) / 3600.0
            cap = settings.max_power_w * (1 + POWER_MARGIN) * span_h + settings.resolution_wh
            out |= (hours.last - hours.first) > cap
        for when in settings.replaced_at:
            out |= (hours.hour <= when) & (when < hours.hour + 3600.0)
    return out


def counter_series(
    hours: CounterHours,
    raw: Mapping[float, tuple[FloatArray, FloatArray]],
    settings: CounterSettings | None = None,
) -> tuple[FloatArray, FloatArray]:
    """The readings (times, values) the counter rules run on: the first and last reading of
    every hour where the counter only rose, every raw reading of the others (``raw``: hour →
    (times, values) of that hour, for each of :func:`anomalous_hours` under the same
    ``settings``). :class:`KeyError` for an anomalous hour missing from ``raw``."""
    odd = anomalous_hours(hours, settings)
    times: list[FloatArray] = []
    values: list[FloatArray] = []
    plain = ~odd
    both = plain & (hours.last_time > hours.first_time)
    times += [hours.first_time[plain], hours.last_time[both]]
    values += [hours.first[plain], hours.last[both]]
    for hour in hours.hour[odd].tolist():
        t, v = raw[hour]
        times.append(np.asarray(t, dtype=float))
        values.append(np.asarray(v, dtype=float))
    t_all = np.concatenate(times) if times else np.zeros(0)
    v_all = np.concatenate(values) if values else np.zeros(0)
    order = np.argsort(t_all, kind="stable")
    return t_all[order], v_all[order]


def counter_days(
    t: FloatArray, wh: FloatArray, edges: FloatArray, settings: CounterSettings
) -> DayFigures:
    """The days of ``edges`` (local midnights [s]) from a counter's readings (``t`` [s],
    ``wh`` [Wh]): the rules of :mod:`energy.counters`, the intervals split at midnight."""
    days = len(edges) - 1
    if len(t) < 2:
        zero = np.zeros(days, dtype=np.int64)
        return DayFigures(
            np.zeros(days), np.zeros(days, dtype=bool), np.diff(edges) / 3600.0,
            zero, zero.copy(), zero.copy(), zero.copy(), zero.copy(),
        )  # fmt: skip
    intervals = counter_intervals(
        t,
        wh,
        counter_max_wh=settings.counter_max_wh,
        max_power_w=settings.max_power_w,
        replaced_at=settings.replaced_at,
        reset_tolerance_wh=settings.reset_tolerance_wh,
        resolution_wh=settings.resolution_wh,
        power_margin=POWER_MARGIN,
        glitch_readings=settings.glitch_readings,
    )
    binned = bin_energy(intervals, edges)
    missing_s = np.maximum(np.diff(edges) - binned.covered_s + binned.flagged_s, 0.0)
    return DayFigures(
        kwh=binned.energy_wh / 1000.0,
        complete=missing_s < COMPLETE_TOLERANCE_S,
        missing_hours=missing_s / 3600.0,
        resets=binned.count(IntervalKind.RESET),
        rollovers=binned.count(IntervalKind.ROLLOVER),
        replacements=binned.count(IntervalKind.REPLACEMENT),
        flagged=binned.flagged,
        glitches=binned.count(IntervalKind.GLITCH),
    )


def power_days(
    hours: HourlyPower, devices: int, hold_s: Sequence[float] | FloatArray, edges: FloatArray
) -> list[DayFigures]:
    """Per device (index 0 … ``devices``-1 of ``hours.device``), the days of ``edges`` from
    its power rollups under sample and hold (``hold_s`` [s] per device): missing hours are the
    time no hold covers, ``flagged`` the gaps longer than the hold that touch the day."""
    result = rollup_energy(
        hours, devices=devices, hold_s=np.asarray(hold_s, dtype=float), edges=edges
    )
    days = len(edges) - 1
    gaps = np.zeros((devices, days), dtype=np.int64)
    g = result.gaps
    if len(g.device):
        first = np.searchsorted(edges, g.start, side="right") - 1
        last = np.searchsorted(edges, g.end, side="left") - 1
        for dev, a, b in zip(g.device.tolist(), first.tolist(), last.tolist(), strict=True):
            gaps[dev, max(a, 0) : min(b, days - 1) + 1] += 1
    zero = np.zeros(days, dtype=np.int64)
    return [
        DayFigures(
            kwh=result.wh[i] / 1000.0,
            complete=result.complete[i],
            missing_hours=result.missing_s[i] / 3600.0,
            resets=zero,
            rollovers=zero,
            replacements=zero,
            flagged=gaps[i],
            glitches=zero,
        )
        for i in range(devices)
    ]
