"""Luminaire faults from hourly telemetry: pure, no I/O (numpy in, numpy out).

Each luminaire's hours are classed, per fault kind, as :data:`FAULT`, :data:`NORMAL` or
:data:`UNKNOWN` (no telemetry, or the rule does not apply that hour: a lamp not commanded on
cannot be said to have failed, a night hour tells nothing of a day burner). Unknown hours never
count towards a fault nor towards its end: a gap in telemetry is never a fault.

- **Lamp failure** (:func:`lamp_failure_hours`): commanded on through the hour (its lowest
  level above 0: its ``dim`` telemetry, the previous hour's last level included, else the
  program in force) while its highest power stays below ``standby_fraction`` × the power
  expected at that lowest level.
- **Day burner** (:func:`day_burner_hours`): an hour wholly inside the day, at least
  ``margin`` after sunrise and before sunset (:func:`daylight_hours`), with its lowest power
  above standby + ``standby_fraction`` × (full power − standby), or a ``dim`` level above 0.
- **Power off its curve** (:func:`off_curve_hours`): a steady hour (one ``dim`` level above 0
  throughout, power spread within half the tolerance) whose mean power differs from the power
  expected at that level by more than ``tolerance`` (relative).

The expected power is the driver curve :func:`core.luminaire.luminaire_power_w` of the
luminaire's nominal power (input power at 100 %) and standby. :func:`episodes` turns the hour
states into faults: confirmed after ``min_hours`` fault hours with no normal hour between them,
ended after ``resolve_hours`` normal hours with no fault hour between them.

Units: times in seconds since the epoch (hours start on UTC hours), powers in W, levels in %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.arrays import BoolArray, FloatArray, IntArray
from core.luminaire import luminaire_power_w

__all__ = [
    "FAULT",
    "NORMAL",
    "UNKNOWN",
    "Episode",
    "HourlyLamp",
    "command_range",
    "day_burner_hours",
    "daylight_hours",
    "episodes",
    "expected_power_w",
    "lamp_failure_hours",
    "off_curve_hours",
]

FAULT, NORMAL, UNKNOWN = 1, 0, -1
"""The state of one hour for one fault kind."""


@dataclass(frozen=True, slots=True)
class HourlyLamp:
    """One luminaire's telemetry on a grid of whole hours (``hour`` [s], starts): ``power``
    mean, min, max [W] and ``dim`` min, max, last [%] of each hour, NaN where it has none."""

    hour: FloatArray
    p_mean: FloatArray
    p_min: FloatArray
    p_max: FloatArray
    d_min: FloatArray
    d_max: FloatArray
    d_last: FloatArray


def expected_power_w(level: FloatArray, nominal_w: float, standby_w: float) -> FloatArray:
    """Input power [W] expected at ``level`` [%] (NaN stays NaN): the driver curve."""
    level = np.asarray(level, dtype=float)
    out = luminaire_power_w(np.nan_to_num(level / 100.0), nominal_w, standby_w)
    return np.where(np.isnan(level), np.nan, out)


def command_range(
    lamp: HourlyLamp, program_lo: FloatArray | None = None, program_hi: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """The lowest and highest level [%] commanded in each hour, and whether they come from
    the ``dim`` telemetry: its samples of the hour with the last level of the hour before
    (which holds into this one); where an hour has no ``dim`` sample, the program's range
    (``program_lo``/``program_hi``, NaN where unknown); else NaN."""
    prev = np.concatenate([[np.nan], lamp.d_last[:-1]])
    contiguous = np.concatenate([[False], np.diff(lamp.hour) == 3600.0])
    prev = np.where(contiguous, prev, np.nan)
    told = ~np.isnan(lamp.d_min)
    lo = np.where(np.isnan(prev), lamp.d_min, np.fmin(lamp.d_min, prev))
    hi = np.where(np.isnan(prev), lamp.d_max, np.fmax(lamp.d_max, prev))
    if program_lo is not None and program_hi is not None:
        lo = np.where(told, lo, program_lo)
        hi = np.where(told, hi, program_hi)
    else:
        lo = np.where(told, lo, np.nan)
        hi = np.where(told, hi, np.nan)
    return lo, hi, told


def lamp_failure_hours(
    lamp: HourlyLamp,
    lo: FloatArray,
    nominal_w: float,
    standby_w: float,
    standby_fraction: float,
) -> IntArray:
    """Per hour: :data:`FAULT` when commanded on throughout (``lo`` > 0, the lowest level
    [%]) and its highest power is below ``standby_fraction`` × the power expected at ``lo``;
    :data:`NORMAL` when commanded on and above it; :data:`UNKNOWN` otherwise (not commanded,
    no power, or a threshold that would not clear the standby itself)."""
    threshold = standby_fraction * expected_power_w(lo, nominal_w, standby_w)
    able = (lo > 0) & ~np.isnan(lamp.p_max) & (threshold > standby_w)
    out = np.full(len(lamp.hour), UNKNOWN, dtype=np.int64)
    out[able & (lamp.p_max < threshold)] = FAULT
    out[able & (lamp.p_max >= threshold)] = NORMAL
    return out


def daylight_hours(
    hour: FloatArray, sunrises: Sequence[float], sunsets: Sequence[float], margin_s: float
) -> BoolArray:
    """Whether each hour starting at ``hour`` [s] lies wholly inside a day: from one of
    ``sunrises`` + ``margin_s`` to the same day's sunset (``sunsets``, paired) − ``margin_s``."""
    out = np.zeros(len(hour), dtype=bool)
    for rise, down in zip(sunrises, sunsets, strict=True):
        out |= (hour >= rise + margin_s) & (hour + 3600.0 <= down - margin_s)
    return out


def day_burner_hours(
    lamp: HourlyLamp,
    daylight: BoolArray,
    nominal_w: float,
    standby_w: float,
    standby_fraction: float,
) -> IntArray:
    """Per hour: :data:`FAULT` in a daylight hour whose lowest power is above standby +
    ``standby_fraction`` × (full power − standby), or whose ``dim`` went above 0;
    :data:`NORMAL` in a daylight hour with power at most that and no ``dim`` above 0;
    :data:`UNKNOWN` at night or without telemetry."""
    full = float(expected_power_w(np.array([100.0]), nominal_w, standby_w)[0])
    threshold = standby_w + standby_fraction * (full - standby_w)
    lit = (lamp.p_min > threshold) | (lamp.d_max > 0)
    dark = (lamp.p_max <= threshold) & ~(lamp.d_max > 0)
    out = np.full(len(lamp.hour), UNKNOWN, dtype=np.int64)
    out[daylight & dark] = NORMAL
    out[daylight & lit] = FAULT
    return out


def off_curve_hours(
    lamp: HourlyLamp,
    lo: FloatArray,
    hi: FloatArray,
    told: BoolArray,
    nominal_w: float,
    standby_w: float,
    tolerance: float,
    standby_fraction: float,
) -> tuple[IntArray, FloatArray]:
    """Per hour the state and the ratio measured / expected power (NaN where not steady): a
    steady hour — one ``dim`` level above 0 throughout from telemetry (``lo == hi``), power
    spread (max − min) within ``tolerance``/2 of the expected power, and not at standby (a
    failed lamp is :func:`lamp_failure_hours`' business) — is :data:`FAULT` when its mean
    power is off the expected by more than ``tolerance`` (relative), else :data:`NORMAL`."""
    expected = expected_power_w(np.where(told, lo, np.nan), nominal_w, standby_w)
    with np.errstate(invalid="ignore"):
        steady = (
            told
            & (lo == hi)
            & (lo > 0)
            & ~np.isnan(lamp.p_mean)
            & (lamp.p_max - lamp.p_min <= tolerance / 2.0 * expected)
            & (lamp.p_max >= standby_fraction * expected)
        )
    ratio = np.where(steady, lamp.p_mean / np.where(steady, expected, 1.0), np.nan)
    out = np.full(len(lamp.hour), UNKNOWN, dtype=np.int64)
    off = np.abs(np.nan_to_num(ratio, nan=1.0) - 1.0) > tolerance
    out[steady & off] = FAULT
    out[steady & ~off] = NORMAL
    return out, ratio


@dataclass(frozen=True, slots=True)
class Episode:
    """A fault over hours of one luminaire [s]: ``started_at`` the start of its first fault
    hour (the grid's start when it was already confirmed there), ``after`` the start of the last
    known normal hour before it (its true start lies between the two: a fault that begins
    inside an hour leaves it normal; ``None`` when none is known),
    ``opened_at`` the end of the hour that confirmed it (``None``: carried on from an active
    alert), ``seen_until`` the end of its last fault hour (``None``: none in the grid),
    ``ended_at`` when it had been normal for ``resolve_hours`` (``None``: still on),
    ``normal_since`` the start of that normal run, ``hours`` the indices of its fault hours."""

    started_at: float
    after: float | None
    opened_at: float | None
    seen_until: float | None
    ended_at: float | None
    normal_since: float | None
    hours: IntArray


def episodes(
    hour: FloatArray,
    state: IntArray,
    min_hours: int,
    resolve_hours: int,
    active: bool = False,
    resets: Sequence[float] = (),
) -> list[Episode]:
    """The confirmed faults of ``state`` over the hours starting at ``hour`` [s].

    A run of fault hours (unknown hours between them do not break it, a normal hour does
    before it is confirmed) is confirmed at its ``min_hours``-th fault hour; a confirmed run
    ends at the end of its ``resolve_hours``-th normal hour after its last fault hour (unknown
    hours between do not count; a fault hour starts the count again). ``active``: a fault
    already confirmed before the first hour (an active alert) goes on from there. ``resets``
    [s]: where a person resolved the alert, a run is cut (not ended) and counting restarts."""
    found: list[Episode] = []
    marks = sorted(resets)
    start: float | None = float(hour[0]) if active and len(hour) else None
    opened: float | None = None
    confirmed = active and len(hour) > 0
    after: float | None = None
    last_normal: float | None = None
    faults: list[int] = []
    normals = 0
    normal_since: float | None = None

    def emit(ended: float | None) -> None:
        if start is not None and confirmed:
            seen = float(hour[faults[-1]]) + 3600.0 if faults else None
            found.append(Episode(start, after, opened, seen, ended, normal_since,
                                 np.array(faults, dtype=np.int64)))  # fmt: skip

    k = 0
    for i, s in enumerate(state.tolist()):
        t = float(hour[i])
        cut = False
        while k < len(marks) and marks[k] <= t:
            k, cut = k + 1, True
        if cut and start is not None:
            emit(None)  # the person's resolution closed it; what follows is new
            start, opened, confirmed, faults, normals, normal_since = None, None, False, [], 0, None
        if s == FAULT:
            if start is None:
                start, after, faults = t, last_normal, []
            faults.append(i)
            normals, normal_since = 0, None
            if not confirmed and len(faults) >= min_hours:
                confirmed, opened = True, t + 3600.0
        elif s == NORMAL:
            last_normal = t
            if start is None:
                continue
            if not confirmed:
                start, faults = None, []
                continue
            normals += 1
            normal_since = t if normal_since is None else normal_since
            if normals >= resolve_hours:
                emit(t + 3600.0)
                start, opened, confirmed, faults, normals, normal_since = (
                    None, None, False, [], 0, None
                )  # fmt: skip
    emit(None)
    return found
