"""When a luminaire was lit, night by night, from its own telemetry: pure, no I/O.

A luminaire reports its ``dim`` level [%] (0 = off). Sample and hold, as for power
(:mod:`energy.integrate`): a level holds until the next sample, at most ``hold_s``; the
luminaire is lit while the level it last reported is above 0. From the hourly rollup: an hour
whose levels were all above 0 (``min > 0``) or all 0 (``max == 0``) is told by its first and last
samples; an hour with both (the switch-on and switch-off hours: two a night) needs its raw
samples (:func:`mixed_hours`). The night's baseline is the luminaire's input power at 100 %
× the hours it was lit (the no-dimming baseline); its energy comes from its counter
(:mod:`energy.daily`).

Units: times in seconds since the epoch, hours out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.arrays import BoolArray, FloatArray
from core.lighting import NightSchedule
from energy.daily import CounterHours
from energy.integrate import PowerEnergy, integrate_power

__all__ = ["dim_series", "lit_hours", "mixed_hours", "program_lit_hours"]


def mixed_hours(hours: CounterHours) -> BoolArray:
    """The hours whose ``dim`` samples were both 0 and above 0 (switching inside)."""
    out: BoolArray = (hours.min <= 0.0) & (hours.max > 0.0)
    return out


def dim_series(
    hours: CounterHours, raw: Mapping[float, tuple[FloatArray, FloatArray]]
) -> tuple[FloatArray, FloatArray]:
    """The ``dim`` samples lit-ness is computed on: every raw sample of the mixed hours
    (``raw``: hour → (times, levels)); for the uniform ones, ``count`` samples evenly spaced from
    the first to the last, all lit or all off — the hold of each inner sample needs its
    successor's time, which a rollup keeps only for the first and last (the same assumption as
    :func:`energy.integrate.rollup_energy`: exact for a device that reports at a fixed
    interval)."""
    mixed = mixed_hours(hours)
    plain = np.flatnonzero(~mixed)
    count = np.maximum(hours.count[plain], 1)
    first, last = hours.first_time[plain], hours.last_time[plain]
    owner = np.repeat(np.arange(len(plain)), count)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    step = np.where(count > 1, (last - first) / np.maximum(count - 1, 1), 0.0)
    times = [first[owner] + rank * step[owner]]
    levels = [np.where(hours.max[plain] > 0.0, 1.0, 0.0)[owner]]
    for hour in hours.hour[mixed].tolist():
        t, v = raw[hour]
        times.append(np.asarray(t, dtype=float))
        levels.append(np.asarray(v, dtype=float))
    t_all = np.concatenate(times)
    v_all = np.concatenate(levels)
    order = np.argsort(t_all, kind="stable")
    return t_all[order], v_all[order]


def lit_hours(t: FloatArray, level: FloatArray, hold_s: float, edges: FloatArray) -> PowerEnergy:
    """Per bin of ``edges`` (local noons: nights), the hours lit — ``wh`` of the result is
    hours here (an indicator of 1 "W" while lit, integrated) — with the coverage and gaps of
    the ``dim`` samples (``missing_s``, ``complete``)."""
    lit = (np.asarray(level, dtype=float) > 0.0).astype(float)
    return integrate_power(np.asarray(t, dtype=float), lit, hold_s=hold_s, edges=edges)


def program_lit_hours(schedule: NightSchedule) -> float:
    """The hours a program's night :class:`~core.lighting.NightSchedule` keeps the light above
    0 (a part-night switch-off at 0 % is not lit): the lit hours of a luminaire without
    telemetry of its own, where only its cabinet meter measures."""
    if schedule.on is None or schedule.off is None:
        return 0.0
    ends = [t for t, _level in schedule.changes[1:]] + [schedule.off]
    lit = sum(
        end - start
        for (start, level), end in zip(schedule.changes, ends, strict=True)
        if level > 0.0
    )
    return lit / 3600.0
