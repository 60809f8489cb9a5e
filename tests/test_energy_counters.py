"""Interval energy from cumulative counters: closed forms, resets, rollovers, glitches (the
spurious zero must not double count), replacements, noise, absurd steps, the end of a series,
binning across day edges (DST included), and what is refused."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from energy.counters import (
    COUNTED,
    FLAGGED,
    CounterIntervals,
    IntervalKind,
    bin_energy,
    counter_intervals,
)

H = 3600.0
PARIS = ZoneInfo("Europe/Paris")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
OK, GLITCH, RESET, ROLLOVER = (IntervalKind.OK, IntervalKind.GLITCH, IntervalKind.RESET,
                               IntervalKind.ROLLOVER)  # fmt: skip
REPLACEMENT, NEGATIVE, ABSURD, PENDING = (IntervalKind.REPLACEMENT, IntervalKind.NEGATIVE,
                                          IntervalKind.ABSURD, IntervalKind.PENDING)  # fmt: skip


def hourly(values: list[float], start: float = T0) -> np.ndarray:
    """Reading times [s] one hour apart for ``values``."""
    return start + H * np.arange(len(values), dtype=np.float64)


def run(values: list[float], **kwargs: Any) -> CounterIntervals:
    """Intervals of an hourly series (``kwargs`` those of :func:`counter_intervals`)."""
    return counter_intervals(hourly(values), np.array(values, dtype=np.float64), **kwargs)


def kinds(result: CounterIntervals) -> list[IntervalKind]:
    return [IntervalKind(int(k)) for k in result.kind]


# --- closed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_power_w", [None, 150.0])
def test_steady_counter_sums_to_last_minus_first(max_power_w: float | None) -> None:
    values = [12_345.0 + 100.0 * i for i in range(48)]
    result = run(values, max_power_w=max_power_w)
    assert_allclose(result.total_wh, values[-1] - values[0])
    assert_allclose(result.energy_wh, 100.0)
    assert set(kinds(result)) == {OK}
    assert (result.resets, result.rollovers, result.replacements, result.flagged) == (0, 0, 0, 0)
    assert_array_equal(result.start, hourly(values)[:-1])
    assert_array_equal(result.end, hourly(values)[1:])


def test_irregular_times_and_a_counter_standing_still() -> None:
    t = T0 + np.array([0.0, 600.0, 4200.0, 4300.0, 90_000.0])
    wh = np.array([500.0, 510.0, 510.0, 515.0, 2000.0])
    result = counter_intervals(t, wh, max_power_w=100.0)
    assert_allclose(result.energy_wh, [10.0, 0.0, 5.0, 1485.0])
    assert set(kinds(result)) == {OK}


def test_a_coarse_register_steps_by_its_resolution_within_the_power_cap() -> None:
    # 0.1 kWh register on a 60 W luminaire read every 10 minutes: 0 or 100 Wh per reading.
    t = T0 + 600.0 * np.arange(13)
    wh = np.floor((1000.0 + 10.0 * np.arange(13)) / 100.0) * 100.0
    result = counter_intervals(t, wh, max_power_w=60.0, resolution_wh=100.0)
    assert set(kinds(result)) == {OK}
    assert_allclose(result.total_wh, wh[-1] - wh[0])
    # With the default 10 Wh resolution a 100 Wh step in 10 minutes is beyond 66 W.
    assert ABSURD in kinds(counter_intervals(t, wh, max_power_w=60.0, glitch_readings=0))


# --- resets and rollovers -----------------------------------------------------------------------


def test_reset_to_zero_mid_series_counts_from_zero() -> None:
    values = [1000.0, 1100.0, 1200.0, 0.0, 100.0, 200.0, 300.0, 400.0]
    result = run(values)
    assert kinds(result) == [OK, OK, RESET, OK, OK, OK, OK]
    assert result.resets == 1
    assert (result.energy_wh >= 0).all()
    assert_allclose(result.total_wh, 200.0 + 0.0 + 400.0)


def test_reset_landing_after_zero_counts_what_it_reached() -> None:
    # Without a power only a value within reset_tolerance_wh is near zero...
    values = [5000.0, 5100.0, 5200.0, 4.0, 104.0, 204.0, 304.0, 404.0]
    result = run(values)
    assert kinds(result)[2] == RESET
    assert_allclose(result.energy_wh[2], 4.0)
    assert_allclose(result.total_wh, 200.0 + 404.0)
    # ...with one, what the device counts in the interval is near zero too (60 Wh by 150 W).
    landed = [5000.0, 5100.0, 5200.0, 60.0, 160.0, 260.0, 360.0, 460.0]
    assert kinds(run(landed, max_power_w=150.0))[2] == RESET
    assert kinds(run(landed))[2] == REPLACEMENT
    assert_allclose(run(landed, max_power_w=150.0).total_wh, 200.0 + 460.0)


@pytest.mark.parametrize("max_power_w", [None, 300.0])
def test_rollover_at_the_declared_maximum(max_power_w: float | None) -> None:
    top = 999_999_900.0
    values = [999_999_500.0, 999_999_700.0, 999_999_800.0, 100.0, 300.0, 500.0, 700.0]
    result = run(values, counter_max_wh=top, max_power_w=max_power_w)
    assert kinds(result) == [OK, OK, ROLLOVER, OK, OK, OK]
    assert_allclose(result.energy_wh[2], top - 999_999_800.0 + 100.0)
    assert_allclose(result.total_wh, 200.0 + 100.0 + 200.0 + 600.0)
    assert result.rollovers == 1


def test_no_rollover_without_a_maximum_or_far_from_it() -> None:
    values = [999_999_500.0, 999_999_700.0, 999_999_800.0, 100.0, 300.0, 500.0, 700.0]
    assert kinds(run(values))[2] == REPLACEMENT
    halfway = [500_000_000.0, 500_000_200.0, 500_000_400.0, 100.0, 300.0, 500.0, 700.0]
    assert kinds(run(halfway, counter_max_wh=999_999_900.0))[2] == REPLACEMENT
    # With a power, the wrapped step must fit in it too: 700 Wh in an hour is beyond 300 W; the
    # new value is then judged on its own (here near zero: a reset).
    beyond = [999_999_000.0, 999_999_100.0, 999_999_200.0, 200.0, 400.0, 600.0, 800.0]
    result = run(beyond, counter_max_wh=999_999_900.0, max_power_w=300.0)
    assert kinds(result)[2] == RESET
    assert_allclose(result.energy_wh[2], 200.0)


# --- glitches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_power_w", [None, 150.0])
@pytest.mark.parametrize("zeros", [1, 2, 3])
def test_a_spurious_zero_that_returns_is_a_glitch_not_a_reset(
    max_power_w: float | None, zeros: int
) -> None:
    # The double-counting spike: counted as a reset, the zero would add the whole index back.
    clean = [80_000.0 + 100.0 * i for i in range(12)]
    values = clean.copy()
    values[4 : 4 + zeros] = [0.0] * zeros
    result = run(values, max_power_w=max_power_w)
    assert result.total_wh == pytest.approx(clean[-1] - clean[0], abs=1e-9)
    assert result.total_wh == run(clean).total_wh
    assert result.resets == 0
    assert result.glitch_readings == zeros
    assert_array_equal(np.flatnonzero(result.skipped), np.arange(4, 4 + zeros))
    assert kinds(result)[3 : 4 + zeros] == [GLITCH] * (zeros + 1)
    # Spread in proportion to time: here every hour gets its 100 Wh back.
    assert_allclose(result.energy_wh, 100.0)


def test_a_zero_lasting_longer_than_glitch_readings_is_a_reset() -> None:
    values = [1000.0, 1100.0, 1200.0, 0.0, 0.0, 0.0, 0.0, 10.0, 20.0]
    result = run(values)
    assert kinds(result) == [OK, OK, RESET, OK, OK, OK, OK, OK]
    assert_allclose(result.total_wh, 200.0 + 20.0)
    # The same four zeros are one glitch when glitches may last four readings.
    longer = [1000.0, 1100.0, 1200.0, 0.0, 0.0, 0.0, 0.0, 1700.0, 1800.0]
    assert_allclose(run(longer, glitch_readings=4).total_wh, 800.0)


def test_a_glitch_spreads_over_unequal_intervals_in_proportion_to_time() -> None:
    t = T0 + np.array([0.0, 3600.0, 3900.0, 7200.0 + 3600.0])
    wh = np.array([0.0, 100.0, 0.0, 400.0])
    result = counter_intervals(t, wh)
    assert kinds(result) == [OK, GLITCH, GLITCH]
    assert_allclose(result.energy_wh[1:], 300.0 * np.array([300.0, 6900.0]) / 7200.0)


def test_an_upward_spike_above_the_power_is_a_glitch() -> None:
    values = [0.0, 100.0, 200.0, 7_000_000.0, 300.0, 400.0, 500.0]
    result = run(values, max_power_w=150.0)
    assert kinds(result) == [OK, OK, GLITCH, GLITCH, OK, OK]
    assert_allclose(result.total_wh, 500.0)
    assert_array_equal(np.flatnonzero(result.skipped), [3])


def test_an_upward_spike_without_a_power_is_found_by_the_drop_back() -> None:
    values = [0.0, 100.0, 200.0, 7_000_000.0, 7_000_100.0, 300.0, 400.0, 500.0]
    result = run(values)
    assert kinds(result) == [OK, OK, GLITCH, GLITCH, GLITCH, OK, OK]
    assert_allclose(result.total_wh, 500.0)
    assert_array_equal(np.flatnonzero(result.skipped), [3, 4])


def test_a_small_wobble_that_recovers_loses_nothing() -> None:
    values = [1000.0, 1000.0, 999.9, 1000.0, 1050.0, 1100.0]
    result = run(values, max_power_w=100.0)
    assert_allclose(result.total_wh, 100.0)
    assert result.flagged == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_isolated_zeros_never_change_the_total(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    dt = rng.uniform(300.0, 1800.0, n)
    t = T0 + np.cumsum(dt)
    clean = 1e6 + np.cumsum(rng.uniform(0.0, 100.0, n) * dt / H)  # at most 100 W
    wh = clean.copy()
    spots = rng.choice(np.arange(1, n - 4, 5), size=10, replace=False)
    wh[spots] = 0.0
    for max_power_w in (None, 150.0):
        result = counter_intervals(t, wh, max_power_w=max_power_w)
        assert_allclose(result.total_wh, clean[-1] - clean[0], rtol=1e-12)
        assert result.resets == result.flagged == 0
        assert result.glitch_readings == 10


# --- replacements, noise, absurd steps ----------------------------------------------------------


def test_a_drop_to_another_value_is_a_replacement_counting_nothing() -> None:
    values = [52_000.0, 52_100.0, 52_200.0, 700.0, 800.0, 900.0, 1000.0, 1100.0]
    result = run(values, max_power_w=150.0)
    assert kinds(result) == [OK, OK, REPLACEMENT, OK, OK, OK, OK]
    assert result.replacements == result.flagged == 1
    assert result.energy_wh[2] == 0.0
    assert_allclose(result.total_wh, 200.0 + 400.0)


def test_a_declared_replacement_counts_nothing_across_it() -> None:
    # The new meter starts at an index that happens to look like a plausible step.
    values = [52_000.0, 52_100.0, 52_200.0, 52_250.0, 52_350.0, 52_450.0]
    t = hourly(values)
    result = counter_intervals(t, np.array(values), replaced_at=[t[2] + 1800.0])
    assert kinds(result) == [OK, OK, REPLACEMENT, OK, OK]
    assert_allclose(result.total_wh, 200.0 + 200.0)
    # A reading at the replacement instant is the new meter's: the interval before counts 0.
    at = counter_intervals(t, np.array(values), replaced_at=[t[3]])
    assert kinds(at) == [OK, OK, REPLACEMENT, OK, OK]
    # Instants outside the series change nothing.
    outside = counter_intervals(t, np.array(values), replaced_at=[t[0], t[-1] + 1.0])
    assert set(kinds(outside)) == {OK}


def test_a_glitch_is_not_looked_for_across_a_declared_replacement() -> None:
    # The old meter drops to zero, the new one (installed at 03:30) starts at the old level.
    values = [1000.0, 1100.0, 1200.0, 0.0, 1300.0, 1400.0, 1500.0]
    t = hourly(values)
    result = counter_intervals(t, np.array(values), replaced_at=[t[3] + 1800.0])
    assert kinds(result) == [OK, OK, RESET, REPLACEMENT, OK, OK]
    assert result.glitch_readings == 0
    assert_allclose(result.total_wh, 200.0 + 0.0 + 200.0)


def test_a_small_decrease_that_stays_is_negative_noise() -> None:
    values = [1000.0, 1000.0, 995.0, 995.0, 995.0, 995.0, 1005.0]
    result = run(values, max_power_w=100.0)
    assert kinds(result) == [OK, NEGATIVE, OK, OK, OK, OK]
    assert result.flagged == 1
    assert result.energy_wh[1] == 0.0
    assert_allclose(result.total_wh, 10.0)
    assert (result.energy_wh >= 0).all()


def test_an_absurd_step_that_stays_is_flagged_and_not_summed() -> None:
    values = [0.0, 100.0, 200.0, 1e6, 1e6 + 100.0, 1e6 + 200.0, 1e6 + 300.0, 1e6 + 400.0]
    result = run(values, max_power_w=150.0)
    assert kinds(result) == [OK, OK, ABSURD, OK, OK, OK, OK]
    assert result.flagged == 1
    assert result.energy_wh[2] == 0.0
    assert_allclose(result.total_wh, 200.0 + 400.0)
    # Without a power nothing bounds a step up: it is counted.
    assert_allclose(run(values).total_wh, values[-1])


# --- the end and the start of a series ----------------------------------------------------------


def test_a_drop_just_before_the_end_is_pending_until_more_readings_come() -> None:
    values = [1000.0, 1100.0, 1200.0, 0.0]
    result = run(values)
    assert kinds(result) == [OK, OK, PENDING]
    assert_allclose(result.total_wh, 200.0)
    two = run([*values, 5.0])
    assert kinds(two) == [OK, OK, PENDING, PENDING]
    assert_allclose(two.total_wh, 200.0)
    # The next reading decides: back to the level (a glitch) ...
    assert kinds(run([*values, 1300.0])) == [OK, OK, GLITCH, GLITCH]
    assert_allclose(run([*values, 1300.0]).total_wh, 300.0)
    # ... or enough readings that stay low (a reset).
    assert kinds(run([*values, 5.0, 10.0, 15.0]))[2] == RESET
    # Without glitches there is nothing to wait for.
    assert kinds(run(values, glitch_readings=0)) == [OK, OK, RESET]


def test_an_absurd_step_just_before_the_end_is_pending() -> None:
    values = [0.0, 100.0, 200.0, 1e6, 1e6 + 100.0]
    result = run(values, max_power_w=150.0)
    assert kinds(result) == [OK, OK, PENDING, PENDING]
    assert result.flagged == 2
    assert_allclose(result.total_wh, 200.0)


@pytest.mark.parametrize("values", [[], [42.0]])
def test_empty_and_single_reading_series_have_no_interval(values: list[float]) -> None:
    result = run(values)
    assert len(result.energy_wh) == len(result.kind) == len(result.start) == 0
    assert len(result.skipped) == len(values)
    assert result.total_wh == 0.0
    assert result.flagged == 0
    binned = bin_energy(result, [T0, T0 + 86400.0])
    assert_array_equal(binned.energy_wh, [0.0])
    assert_array_equal(binned.counts, np.zeros((1, len(IntervalKind))))


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "wh", "match"),
    [
        ([0.0, 1.0, 2.0], [1.0, np.nan, 3.0], r"wh\[1\] is nan"),
        ([0.0, np.inf, 2.0], [1.0, 2.0, 3.0], r"t\[1\] is inf"),
        ([0.0, 1.0, 2.0], [1.0, -2.0, 3.0], r"wh\[1\] is -2.0"),
        ([0.0, 1.0, 1.0], [1.0, 2.0, 3.0], "increase strictly"),
        ([0.0, 2.0, 1.0], [1.0, 2.0, 3.0], "increase strictly"),
        ([0.0, 1.0], [1.0, 2.0, 3.0], "one length"),
    ],
)
def test_what_is_not_a_counter_series_is_refused(
    t: list[float], wh: list[float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        counter_intervals(np.array(t), np.array(wh))


def test_bad_parameters_are_refused() -> None:
    t, wh = hourly([0.0, 1.0]), np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="max_power_w"):
        counter_intervals(t, wh, max_power_w=0.0)
    with pytest.raises(ValueError, match="counter_max_wh"):
        counter_intervals(t, wh, counter_max_wh=-1.0)
    with pytest.raises(ValueError, match="glitch_readings"):
        counter_intervals(t, wh, glitch_readings=-1)
    result = counter_intervals(t, wh)
    with pytest.raises(ValueError, match="edges"):
        bin_energy(result, [T0, T0])
    with pytest.raises(ValueError, match="edges"):
        bin_energy(result, [T0, np.nan])


def test_the_kinds_are_either_counted_or_flagged() -> None:
    assert set(IntervalKind) == COUNTED | FLAGGED
    assert not COUNTED & FLAGGED


# --- binning ------------------------------------------------------------------------------------


def test_an_interval_across_a_day_edge_is_split_in_proportion_to_time() -> None:
    t = T0 + np.array([80_000.0, 90_000.0, 100_000.0])
    wh = np.array([0.0, 1000.0, 1500.0])
    result = counter_intervals(t, wh)
    binned = bin_energy(result, T0 + np.array([0.0, 86_400.0, 172_800.0]))
    assert_allclose(binned.energy_wh, [640.0, 360.0 + 500.0])
    assert_allclose(binned.energy_kwh, [0.64, 0.86])
    assert_allclose(binned.energy_wh.sum(), result.total_wh)
    assert_allclose(binned.covered_s, [6400.0, 13_600.0])
    assert_array_equal(binned.count(OK), [1, 2])
    assert_array_equal(binned.start, T0 + np.array([0.0, 86_400.0]))
    assert_array_equal(binned.end, T0 + np.array([86_400.0, 172_800.0]))


def test_bins_beyond_the_readings_count_nothing_and_an_edge_on_a_reading_splits_cleanly() -> None:
    values = [0.0, 100.0, 200.0, 300.0]
    result = run(values)
    edges = T0 + H * np.array([-5.0, 0.0, 1.0, 3.0, 10.0])
    binned = bin_energy(result, edges)
    assert_allclose(binned.energy_wh, [0.0, 100.0, 200.0, 0.0])
    assert_allclose(binned.covered_s, [0.0, H, 2 * H, 0.0])
    assert_array_equal(binned.count(OK), [0, 1, 2, 0])


def test_local_days_across_the_spring_dst_change_sum_their_hours() -> None:
    first = date(2026, 3, 28)
    edges = np.array(
        [datetime.combine(first + timedelta(days=i), time(0), PARIS).timestamp() for i in range(4)]
    )
    t = np.arange(edges[0], edges[-1] + 1.0, H)
    wh = 1e5 + 100.0 * np.arange(len(t))
    binned = bin_energy(counter_intervals(t, wh, max_power_w=100.0), edges)
    assert_allclose(binned.energy_wh, [2400.0, 2300.0, 2400.0])
    assert_allclose(binned.energy_wh.sum(), wh[-1] - wh[0])


def test_flags_are_counted_and_timed_per_bin() -> None:
    values = [52_000.0, 52_100.0, 52_200.0, 700.0, 800.0, 900.0, 1000.0, 0.0, 1100.0]
    result = run(values, max_power_w=150.0)
    assert kinds(result) == [OK, OK, REPLACEMENT, OK, OK, OK, GLITCH, GLITCH]
    edges = T0 + H * np.array([0.0, 2.5, 8.0])
    binned = bin_energy(result, edges)
    assert_array_equal(binned.count(REPLACEMENT), [1, 1])
    assert_array_equal(binned.flagged, [1, 1])
    assert_array_equal(binned.count(GLITCH), [0, 2])
    assert_allclose(binned.flagged_s, [0.5 * H, 0.5 * H])
    assert_allclose(binned.energy_wh, [200.0, 400.0])
    assert_allclose(binned.energy_wh.sum(), result.total_wh)
    assert_array_equal(binned.counts.sum(axis=1), [3, 6])
