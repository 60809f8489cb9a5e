"""The semantics of a :class:`~core.messages.LightingProgram`: when a luminaire is on and at which
level, night by night — the one implementation the simulated controllers and the policy engine's
``schedule`` command share. Pure: no I/O, numbers in, numbers out.

Units: instants in seconds since the epoch (UTC), levels in % of full light, latitudes and
longitudes in degrees (WGS 84), offsets in minutes.

A night belongs to the local date of its evening: the night of ``D`` covers from local noon of
``D`` to local noon of ``D + 1``. A program's local ``HH:MM`` at or after 12:00 is on the evening
of ``D``, before 12:00 on the morning of ``D + 1``. Across a DST change a local time that does not
exist (spring forward) applies when the clock resumes — the transition instant — and a local
time that happens twice (fall back) applies once, at its first occurrence; so no step is dropped,
shifted or repeated.

The schedule is the astronomical expectation: a photocell (``on_lux``/``off_lux``) is device-side
and moves the switching within its window; presence boosts and manual overrides are the device's
business too and are not part of it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

import numpy as np
from astral import Observer
from astral.sun import elevation, sunrise, sunset

from core.arrays import FloatArray
from core.messages import LightingProgram

__all__ = [
    "SUN_DEPRESSION_DEG",
    "NightSchedule",
    "SunCache",
    "SunTimes",
    "levels_at",
    "local_instant",
    "night_of",
    "night_schedule",
    "program_level",
    "sun_times",
]

SUN_DEPRESSION_DEG = 0.833
"""Geometric depression of the sun's centre at sunset and sunrise [°]: its upper limb (0.266°)
plus the standard atmospheric refraction (0.567°); astral's default."""

Polar = Literal["night", "day"]

_SEARCH_STEP_S = 600
"""Sampling step when looking for a sunset or sunrise astral did not find [s]."""


@dataclass(frozen=True, slots=True)
class SunTimes:
    """The sun of one night at one place [s since the epoch]: ``sunset`` of the evening and
    ``sunrise`` of the next morning, ``None`` where the sun does not set or rise; ``polar`` is
    ``"night"`` when the sun stays below the horizon all night and day (lit through), ``"day"``
    when it stays above (never lit), ``None`` otherwise."""

    sunset: float | None
    sunrise: float | None
    polar: Polar | None = None


@dataclass(frozen=True, slots=True)
class NightSchedule:
    """What a program does over one night: on at ``on``, off at ``off`` [s since the epoch;
    both ``None`` when it is not lit at all], and ``changes``, the (instant [s], level [%]) at
    which the level changes — the first at ``on``, then each change before ``off`` (the switch
    off at ``off`` is not listed)."""

    on: float | None
    off: float | None
    changes: list[tuple[float, float]] = field(default_factory=list)

    def level_at(self, t: float) -> float:
        """The level [%] at ``t`` [s since the epoch]: 0 outside [on, off)."""
        if self.on is None or self.off is None or not self.on <= t < self.off:
            return 0.0
        i = bisect.bisect_right(self.changes, t, key=_instant) - 1
        return self.changes[i][1] if i >= 0 else 0.0


def _instant(change: tuple[float, float]) -> float:
    return change[0]


def _noon(day: date, tz: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=tz).timestamp()


def _sun_elevation(observer: Observer, t: float) -> float:
    """Geometric elevation of the sun's centre [°] (no refraction: the depression has it)."""
    return elevation(observer, datetime.fromtimestamp(t, UTC), with_refraction=False)


def _crossing(observer: Observer, start: float, end: float, rising: bool) -> float | None:
    """The first instant in [start, end] where the sun crosses the sunset/sunrise elevation
    upwards (``rising``) or downwards, to the second; ``None`` when it does not."""

    def above(t: float) -> bool:
        return _sun_elevation(observer, t) > -SUN_DEPRESSION_DEG

    lo, lo_above = start, above(start)
    while lo < end:
        hi = min(lo + _SEARCH_STEP_S, end)
        hi_above = above(hi)
        if hi_above != lo_above and hi_above == rising:
            while hi - lo > 1.0:
                mid = (lo + hi) / 2.0
                if above(mid) == rising:
                    hi = mid
                else:
                    lo = mid
            return hi
        lo, lo_above = hi, hi_above
    return None


def sun_times(lat: float, lon: float, day: date, tz: tzinfo) -> SunTimes:
    """Sunset of local date ``day`` and sunrise of the next local morning at (``lat``, ``lon``)
    [°], by astral with the standard depression (:data:`SUN_DEPRESSION_DEG`).

    Where astral finds none (it raises ``ValueError``), the night from local noon to local noon
    is searched for the crossing (a sun that sets just after midnight at the end of the
    midnight-sun season); still none gives ``None``. With neither, ``polar`` says whether the
    sun stays below (``"night"``, elevation at local noon below the horizon) or above
    (``"day"``, elevation at local midnight above it). Cache per (lat, lon, day) is the
    caller's: :class:`SunCache`."""
    observer = Observer(lat, lon)
    evening: float | None
    morning: float | None
    try:
        evening = sunset(observer, day, tzinfo=tz).timestamp()
    except ValueError:
        evening = None
    try:
        morning = sunrise(observer, day + timedelta(days=1), tzinfo=tz).timestamp()
    except ValueError:
        morning = None
    start, end = _noon(day, tz), _noon(day + timedelta(days=1), tz)
    if evening is None:
        evening = _crossing(observer, start, end if morning is None else morning, rising=False)
    if morning is None:
        morning = _crossing(observer, start if evening is None else evening, end, rising=True)
    if evening is not None or morning is not None:
        return SunTimes(evening, morning)
    if _sun_elevation(observer, start) < -SUN_DEPRESSION_DEG:
        return SunTimes(None, None, "night")
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz).timestamp()
    if _sun_elevation(observer, midnight) > -SUN_DEPRESSION_DEG:
        return SunTimes(None, None, "day")
    return SunTimes(None, None, "night")  # pragma: no cover - no crossing yet neither side


class SunCache:
    """:func:`sun_times` memoised per (lat, lon, day, time zone)."""

    def __init__(self) -> None:
        self._found: dict[tuple[float, float, date, str], SunTimes] = {}

    def get(self, lat: float, lon: float, day: date, tz: tzinfo) -> SunTimes:
        """The :class:`SunTimes` of the night of ``day`` at (``lat``, ``lon``)."""
        key = (lat, lon, day, str(tz))
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = sun_times(lat, lon, day, tz)
        return found

    def __len__(self) -> int:
        return len(self._found)


def _night_minutes(when: str) -> int:
    """Minutes after 12:00 of a local ``HH:MM`` in its night (12:00 → 0, 11:59 → 1439)."""
    return (int(when[:2]) * 60 + int(when[3:]) - 720) % 1440


def local_instant(day: date, when: str, tz: tzinfo) -> float:
    """The instant [s since the epoch] of local ``HH:MM`` ``when`` in the night of ``day``
    (at or after 12:00: on ``day``; before: on ``day + 1``). A time skipped by a DST change is
    the transition instant (when the clock resumes); a repeated one is its first occurrence."""
    hour, minute = int(when[:2]), int(when[3:])
    if hour < 12:
        day = day + timedelta(days=1)
    naive = datetime(day.year, day.month, day.day, hour, minute)
    first = naive.replace(tzinfo=tz).timestamp()  # fold=0: the first occurrence
    if datetime.fromtimestamp(first, tz).replace(tzinfo=None) == naive:
        return first
    # Skipped: fold=0 took the offset before the change (an instant after it), fold=1 the
    # offset after it (an instant before it); the transition lies between.
    lo, hi = sorted((naive.replace(tzinfo=tz, fold=1).timestamp(), first))
    offset = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1.0:
        mid = float((lo + hi) // 2)
        if datetime.fromtimestamp(mid, tz).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi


def night_schedule(program: LightingProgram, day: date, tz: tzinfo, sun: SunTimes) -> NightSchedule:
    """The schedule of ``program`` over the night that starts on the evening of local date
    ``day`` in ``tz``, given that night's ``sun`` (:func:`sun_times`).

    On at sunset + ``on_offset_min``, off at the next sunrise + ``off_offset_min``. A missing
    sunset (the sun does not set that evening) is replaced by local noon of ``day``, a missing
    sunrise by local noon of ``day + 1``; a polar night is lit from noon to noon, a polar day
    not at all (``on = off = None``), as is a night whose offsets leave ``off <= on``. Level
    100 % before the first step, then each step's level from its instant; part-night holds
    ``part_night_level`` from its start to its end whatever the steps, after which the step in
    force returns. Steps and part-night edges outside [on, off) make no change of their own,
    but the level at ``on`` accounts for every one before it; equal consecutive levels make
    no change."""
    if sun.polar == "day":
        return NightSchedule(None, None, [])
    start, end = _noon(day, tz), _noon(day + timedelta(days=1), tz)
    if sun.polar == "night":
        on, off = start, end
    else:
        on = start if sun.sunset is None else sun.sunset + program.on_offset_min * 60.0
        off = end if sun.sunrise is None else sun.sunrise + program.off_offset_min * 60.0
    if off <= on:
        return NightSchedule(None, None, [])
    steps = sorted(
        (local_instant(day, when, tz), _night_minutes(when), level) for when, level in program.steps
    )
    window: tuple[float, float] | None = None
    if program.part_night is not None:
        window = (
            local_instant(day, program.part_night[0], tz),
            local_instant(day, program.part_night[1], tz),
        )

    def level(t: float) -> float:
        if window is not None and window[0] <= t < window[1]:
            return program.part_night_level
        found = 100.0
        for instant, _order, step_level in steps:
            if instant > t:
                break
            found = step_level
        return found

    edges = {instant for instant, _order, _level in steps}
    if window is not None:
        edges.update(window)
    changes = [(on, level(on))]
    for instant in sorted(edges):
        if on < instant < off:
            now = level(instant)
            if now != changes[-1][1]:
                changes.append((instant, now))
    return NightSchedule(on, off, changes)


def night_of(t: float, tz: tzinfo) -> date:
    """The local date whose night covers ``t`` [s since the epoch]: from its local noon to the
    next local noon."""
    local = datetime.fromtimestamp(t, tz)
    return local.date() if local.hour >= 12 else local.date() - timedelta(days=1)


def levels_at(schedules: Sequence[NightSchedule], program_of: np.ndarray, t: float) -> FloatArray:
    """Levels [%] at ``t`` of luminaires following ``schedules[program_of[i]]``: each distinct
    schedule is evaluated once, then mapped to the luminaires by numpy indexing."""
    per_schedule = np.fromiter(
        (s.level_at(t) for s in schedules), dtype=float, count=len(schedules)
    )
    return per_schedule[np.asarray(program_of, dtype=np.intp)]


def program_level(
    program: LightingProgram,
    t: float,
    tz: tzinfo,
    lat: float,
    lon: float,
    cache: SunCache | None = None,
) -> float:
    """The level [%] of ``program`` at ``t`` [s since the epoch] at (``lat``, ``lon``) [°]:
    the schedule of the night that covers ``t`` (:func:`night_of`), with the sun from
    ``cache`` when given."""
    day = night_of(t, tz)
    sun = cache.get(lat, lon, day, tz) if cache is not None else sun_times(lat, lon, day, tz)
    return night_schedule(program, day, tz, sun).level_at(t)
