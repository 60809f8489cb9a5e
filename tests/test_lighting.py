"""Lighting-program semantics (core.lighting): on/off from the astronomical clock, steps in local
time through DST changes, part-night and its exceptions, polar nights and days, and the
vectorised evaluation — against astral and hand-written UTC instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from astral import Observer
from astral.sun import sunrise, sunset
from numpy.testing import assert_array_equal

from core.lighting import (
    NightSchedule,
    SunCache,
    SunTimes,
    levels_at,
    local_instant,
    night_of,
    night_schedule,
    program_level,
    sun_times,
)
from core.messages import LightingProgram, decode_config

PARIS = ZoneInfo("Europe/Paris")
OSLO = ZoneInfo("Europe/Oslo")
PARIS_LAT, PARIS_LON = 48.8566, 2.3522
TROMSO_LAT, TROMSO_LON = 69.65, 18.96
STEPS = (("22:00", 70.0), ("23:30", 40.0), ("05:30", 70.0))


def _utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def _paris(day: date, program: LightingProgram) -> tuple[SunTimes, NightSchedule]:
    sun = sun_times(PARIS_LAT, PARIS_LON, day, PARIS)
    return sun, night_schedule(program, day, PARIS, sun)


def test_ordinary_night_follows_astral_and_the_steps_in_utc() -> None:
    day = date(2026, 1, 14)  # winter: Paris is UTC+1
    sun, schedule = _paris(day, LightingProgram(steps=STEPS))
    observer = Observer(PARIS_LAT, PARIS_LON)
    expected_on = sunset(observer, day, tzinfo=PARIS).timestamp()
    expected_off = sunrise(observer, day + timedelta(days=1), tzinfo=PARIS).timestamp()
    assert sun.sunset == expected_on
    assert sun.sunrise == expected_off
    assert sun.polar is None
    assert schedule.on == expected_on
    assert schedule.off == expected_off
    assert schedule.changes == [
        (expected_on, 100.0),
        (_utc(2026, 1, 14, 21, 0), 70.0),
        (_utc(2026, 1, 14, 22, 30), 40.0),
        (_utc(2026, 1, 15, 4, 30), 70.0),
    ]
    assert schedule.level_at(expected_on - 1) == 0.0
    assert schedule.level_at(_utc(2026, 1, 14, 22, 29)) == 70.0
    assert schedule.level_at(_utc(2026, 1, 15, 4, 30)) == 70.0
    assert schedule.level_at(expected_off) == 0.0


def test_offsets_move_on_and_off_by_exactly_their_minutes() -> None:
    day = date(2026, 5, 2)
    _, plain = _paris(day, LightingProgram())
    _, moved = _paris(day, LightingProgram(on_offset_min=-15, off_offset_min=10))
    assert plain.on is not None
    assert plain.off is not None
    assert moved.on == plain.on - 15 * 60
    assert moved.off == plain.off + 10 * 60
    assert moved.changes[0] == (plain.on - 15 * 60, 100.0)


def test_spring_forward_step_applies_when_the_clock_resumes() -> None:
    # Night of 2026-03-28 → 29: at 02:00 CET (01:00 UTC) the clock jumps to 03:00 CEST.
    program = LightingProgram(steps=(("22:00", 70.0), ("02:30", 40.0), ("05:30", 60.0)))
    _, schedule = _paris(date(2026, 3, 28), program)
    assert schedule.changes[1:] == [
        (_utc(2026, 3, 28, 21, 0), 70.0),  # 22:00 CET
        (_utc(2026, 3, 29, 1, 0), 40.0),  # 02:30 does not exist: 03:00 CEST
        (_utc(2026, 3, 29, 3, 30), 60.0),  # 05:30 CEST, not shifted
    ]
    assert local_instant(date(2026, 3, 28), "02:30", PARIS) == _utc(2026, 3, 29, 1, 0)
    assert schedule.level_at(_utc(2026, 3, 29, 0, 59, 59)) == 70.0
    assert schedule.level_at(_utc(2026, 3, 29, 1, 0)) == 40.0
    assert schedule.level_at(_utc(2026, 3, 29, 3, 29)) == 40.0
    assert schedule.level_at(_utc(2026, 3, 29, 3, 30)) == 60.0


def test_fall_back_step_applies_once_at_the_first_occurrence() -> None:
    # Night of 2026-10-24 → 25: 03:00 CEST (01:00 UTC) becomes 02:00 CET; 02:30 happens twice.
    program = LightingProgram(steps=(("22:00", 70.0), ("02:30", 40.0), ("05:30", 60.0)))
    _, schedule = _paris(date(2026, 10, 24), program)
    assert schedule.changes[1:] == [
        (_utc(2026, 10, 24, 20, 0), 70.0),  # 22:00 CEST
        (_utc(2026, 10, 25, 0, 30), 40.0),  # the first 02:30, CEST
        (_utc(2026, 10, 25, 4, 30), 60.0),  # 05:30 CET
    ]
    assert [level for _, level in schedule.changes].count(40.0) == 1
    assert schedule.level_at(_utc(2026, 10, 25, 1, 30)) == 40.0  # the second 02:30: unchanged


def test_part_night_switches_off_and_the_step_in_force_returns() -> None:
    steps = (("22:00", 70.0), ("02:00", 30.0), ("04:30", 50.0), ("05:30", 70.0))
    day = date(2026, 1, 14)
    _, off = _paris(day, LightingProgram(steps=steps, part_night=("01:00", "05:00")))
    assert off.changes[1:] == [
        (_utc(2026, 1, 14, 21, 0), 70.0),
        (_utc(2026, 1, 15, 0, 0), 0.0),  # 01:00: part-night; the steps at 02:00, 04:30 hidden
        (_utc(2026, 1, 15, 4, 0), 50.0),  # 05:00: the step in force (04:30) returns
        (_utc(2026, 1, 15, 4, 30), 70.0),
    ]
    assert off.level_at(_utc(2026, 1, 15, 1, 30)) == 0.0
    assert off.level_at(_utc(2026, 1, 15, 3, 45)) == 0.0
    crossing = LightingProgram(steps=steps, part_night=("01:00", "05:00"), part_night_level=20.0)
    _, lit = _paris(day, crossing)
    assert lit.changes[2] == (_utc(2026, 1, 15, 0, 0), 20.0)
    assert lit.changes[3] == (_utc(2026, 1, 15, 4, 0), 50.0)
    assert lit.level_at(_utc(2026, 1, 15, 3, 45)) == 20.0


def test_part_night_start_equal_to_end_or_after_it_is_refused() -> None:
    with pytest.raises(ValueError, match="start equals end"):
        LightingProgram(part_night=("01:00", "01:00"))
    with pytest.raises(ValueError, match="end comes before the start"):
        LightingProgram(part_night=("05:00", "01:00"))
    assert LightingProgram(part_night=("23:00", "05:00")).part_night == ("23:00", "05:00")


def test_steps_before_on_set_the_level_at_on_and_equal_levels_make_no_change() -> None:
    # A step at 16:00 (before a January sunset) is in force at on; a repeated level is no change.
    program = LightingProgram(steps=(("16:00", 60.0), ("22:00", 60.0), ("09:00", 10.0)))
    _, schedule = _paris(date(2026, 1, 14), program)
    assert schedule.on is not None
    assert schedule.changes == [(schedule.on, 60.0)]  # 09:00 is after sunrise: no change


def test_midnight_sun_is_never_lit_and_raises_nothing() -> None:
    for day in (date(2026, 6, 20), date(2026, 6, 21), date(2026, 6, 22)):
        sun = sun_times(TROMSO_LAT, TROMSO_LON, day, OSLO)
        assert sun == SunTimes(None, None, "day")
        schedule = night_schedule(LightingProgram(), day, OSLO, sun)
        assert schedule == NightSchedule(None, None, [])
        assert schedule.level_at(datetime(2026, 6, 21, 0, 30, tzinfo=OSLO).timestamp()) == 0.0


def test_polar_night_is_lit_from_noon_to_noon() -> None:
    for day in (date(2026, 12, 20), date(2026, 12, 21), date(2026, 12, 22)):
        sun = sun_times(TROMSO_LAT, TROMSO_LON, day, OSLO)
        assert sun == SunTimes(None, None, "night")
        schedule = night_schedule(LightingProgram(steps=STEPS), day, OSLO, sun)
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=OSLO).timestamp()
        assert schedule.on == noon
        assert schedule.off == noon + 86400.0  # no DST change in December
        assert [level for _, level in schedule.changes] == [100.0, 70.0, 40.0, 70.0]
        assert schedule.level_at(noon + 3600.0) == 100.0


def test_a_missing_bound_is_the_neighbouring_noon() -> None:
    # Tromsø, 2026-11-26: the sun sets at noon and does not rise the next day (polar night).
    day = date(2026, 11, 26)
    noon, next_noon = (datetime(2026, 11, d, 12, tzinfo=OSLO).timestamp() for d in (26, 27))
    schedule = night_schedule(LightingProgram(), day, OSLO, SunTimes(noon + 60.0, None))
    assert schedule.on == noon + 60.0
    assert schedule.off == next_noon
    before = night_schedule(LightingProgram(), day, OSLO, SunTimes(None, next_noon - 3600.0))
    assert before.on == noon
    assert before.off == next_noon - 3600.0
    # The real transition nights raise nothing and are lit for part of the night at least.
    for found in (date(2026, 11, 26), date(2026, 7, 26), date(2027, 1, 15)):
        sun = sun_times(TROMSO_LAT, TROMSO_LON, found, OSLO)
        assert sun.polar is None
        assert night_schedule(LightingProgram(), found, OSLO, sun).on is not None


def test_levels_at_equals_a_loop_over_level_at() -> None:
    rng = np.random.default_rng(7)
    programs = [
        LightingProgram(steps=STEPS),
        LightingProgram(steps=(("21:00", 50.0), ("03:00", 20.0))),
        LightingProgram(part_night=("00:30", "04:45")),
        LightingProgram(part_night=("23:00", "05:00"), part_night_level=25.0, on_offset_min=20),
        LightingProgram(steps=(), off_offset_min=-30),
    ]
    day = date(2026, 3, 28)
    sun = sun_times(PARIS_LAT, PARIS_LON, day, PARIS)
    schedules = [night_schedule(p, day, PARIS, sun) for p in programs]
    program_of = rng.integers(0, len(programs), 500)
    start = datetime(2026, 3, 28, 12, tzinfo=PARIS).timestamp()
    distinct = set()
    for t in start + rng.uniform(0.0, 86400.0, 200):
        got = levels_at(schedules, program_of, float(t))
        assert_array_equal(got, [schedules[k].level_at(float(t)) for k in program_of])
        distinct.add(tuple(np.unique(got)))
    assert len(distinct) > 3  # the instants drawn see several different mixes of levels


def test_program_level_picks_the_night_that_covers_t() -> None:
    program = LightingProgram(steps=STEPS)
    cache = SunCache()

    def level(year: int, month: int, day: int, hour: int, minute: int) -> float:
        t = datetime(year, month, day, hour, minute, tzinfo=PARIS).timestamp()
        return program_level(program, t, PARIS, PARIS_LAT, PARIS_LON, cache)

    assert night_of(datetime(2026, 3, 29, 3, 30, tzinfo=PARIS).timestamp(), PARIS) == date(
        2026, 3, 28
    )
    assert level(2026, 3, 28, 14, 0) == 0.0
    assert level(2026, 3, 28, 21, 0) == 100.0
    assert level(2026, 3, 28, 23, 45) == 40.0
    assert level(2026, 3, 29, 3, 30) == 40.0
    assert level(2026, 3, 29, 5, 45) == 70.0
    assert level(2026, 3, 29, 11, 0) == 0.0
    assert len(cache) == 1  # 14:00 on the 28th to 11:00 on the 29th: the night of the 28th
    assert level(2026, 3, 29, 21, 0) == 100.0
    assert len(cache) == 2


def test_an_old_payload_without_the_new_keys_still_decodes() -> None:
    config = decode_config(
        b'{"version": 4, "lighting": {"on_offset_min": -10, "steps": [["22:00", 60]]}}'
    )
    assert config.lighting is not None
    assert config.lighting.on_offset_min == -10
    assert config.lighting.part_night is None
    assert config.lighting.part_night_level == 0.0
    assert config.lighting.on_lux is None
    assert config.lighting.off_lux is None
    assert config.lighting.lux_window_min == 30
    with pytest.raises(ValueError, match="part_night_levle"):
        decode_config(b'{"version": 4, "lighting": {"part_night_levle": 20}}')
