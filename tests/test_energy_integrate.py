"""Energy from power samples (pure): closed forms, report by exception, gaps, bins crossing holds,
DST days, empty input, several devices at once, and the hourly-rollup approximation against the
exact integration with its stated error bound."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from energy.integrate import (
    HourlyPower,
    day_edges,
    hold_seconds,
    integrate_power,
    integrate_power_many,
    rollup_energy,
)

PARIS = ZoneInfo("Europe/Paris")
H = 3600.0
DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a multiple of 3600


def reference(
    t: np.ndarray, w: np.ndarray, hold_s: float, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Energy [Wh] and covered [s] per bin by a plain loop over holds and bins (slow, obvious)."""
    m = len(edges) - 1
    wh, cov = np.zeros(m), np.zeros(m)
    for i in range(len(t)):
        end = min(t[i + 1], t[i] + hold_s) if i + 1 < len(t) else t[i] + hold_s
        for j in range(m):
            overlap = min(end, edges[j + 1]) - max(t[i], edges[j])
            if overlap > 0:
                wh[j] += w[i] * overlap / H
                cov[j] += overlap
    return wh, cov


def hourly(t: np.ndarray, w: np.ndarray, device: np.ndarray | None = None) -> HourlyPower:
    """The rollup of readings_hourly (migration 0004) computed from raw samples."""
    if device is None:
        device = np.zeros(len(t), dtype=np.int64)
    hour = np.floor(t / H) * H
    key = np.stack([device.astype(np.float64), hour], axis=1)
    _, start = np.unique(key, axis=0, return_index=True)
    start = np.sort(start)
    stop = np.append(start[1:], len(t))
    return HourlyPower(
        device=device[start],
        hour=hour[start],
        count=(stop - start).astype(np.int64),
        sum_w=np.add.reduceat(w, start),
        min_w=np.minimum.reduceat(w, start),
        max_w=np.maximum.reduceat(w, start),
        first_w=w[start],
        first_time=t[start],
        last_w=w[stop - 1],
        last_time=t[stop - 1],
    )


# --- closed forms -------------------------------------------------------------------------------


def test_constant_power_over_a_covered_day_is_p_times_24() -> None:
    t = T0 + np.arange(0, DAY, 600.0)
    r = integrate_power(t, np.full(len(t), 42.0), hold_s=600.0, edges=np.array([T0, T0 + DAY]))
    assert_allclose(r.wh, [42.0 * 24])
    assert_allclose(r.covered_s, [DAY])
    assert_allclose(r.missing_s, [0.0], atol=1e-6)
    assert r.complete.tolist() == [True]
    assert len(r.gaps.start) == 0


def test_step_changes_at_known_instants_sum_exactly() -> None:
    # 100 W from 00:00, 40 W from 01:30, 0 W from 05:00 (off), 70 W from 18:00, to 24:00.
    t = T0 + np.array([0.0, 1.5 * H, 5 * H, 18 * H])
    w = np.array([100.0, 40.0, 0.0, 70.0])
    r = integrate_power(t, w, hold_s=13 * H, edges=T0 + np.array([0.0, 6 * H, 12 * H, DAY]))
    assert_allclose(r.wh, [100 * 1.5 + 40 * 3.5, 0.0, 70 * 6])
    assert r.complete.all()


def test_report_by_exception_each_value_holds_until_the_next() -> None:
    # Max silence one hour: a steady 30 W is re-sent every hour, a change is sent at once.
    t = T0 + np.array([0.0, 3600.0, 4000.0, 5000.0, 8600.0])
    w = np.array([30.0, 30.0, 80.0, 30.0, 30.0])
    edges = T0 + np.array([0.0, 3 * H])
    r = integrate_power(t, w, hold_s=3600.0, edges=edges)
    assert_allclose(r.wh, [(30 * 4000 + 80 * 1000 + 30 * 5800) / H])
    assert r.complete.all()
    assert len(r.gaps.start) == 0


def test_a_sample_exactly_hold_s_after_the_previous_is_not_a_gap() -> None:
    t = T0 + np.array([0.0, 3600.0, 7200.0])
    r = integrate_power(t, np.ones(3), hold_s=3600.0, edges=T0 + np.array([0.0, 3 * H]))
    assert len(r.gaps.start) == 0
    assert r.complete.all()


# --- gaps and missing time ----------------------------------------------------------------------


def test_a_gap_longer_than_the_hold_is_flagged_with_its_duration_not_filled() -> None:
    # Every 10 min until 10:00, silent until 13:20, then every 10 min again.
    before = T0 + np.arange(0.0, 10 * H + 1, 600.0)
    after = T0 + np.arange(13 * H + 1200, DAY, 600.0)
    t = np.concatenate([before, after])
    edges = T0 + np.array([0.0, 12 * H, DAY])
    r = integrate_power(t, np.full(len(t), 50.0), hold_s=600.0, edges=edges)
    assert_allclose(r.gaps.start, [T0 + 10 * H + 600])
    assert_allclose(r.gaps.end, [T0 + 13 * H + 1200])
    assert_allclose(r.gaps.duration_s, [3 * H + 600])
    assert_array_equal(r.gaps.device, [0])
    # 10:10 → 12:00 missing in the first half, 12:00 → 13:20 in the second.
    assert_allclose(r.missing_s, [H + 3000, H + 1200])
    assert_allclose(r.missing_h, [(H + 3000) / H, (H + 1200) / H])
    assert_allclose(r.wh, 50 * r.covered_s / H)
    assert r.complete.tolist() == [False, False]


def test_time_before_the_first_sample_and_after_the_last_hold_is_missing() -> None:
    t = T0 + np.array([2 * H, 3 * H, 4 * H])
    edges = T0 + np.array([0.0, H, 6 * H, 8 * H])
    r = integrate_power(t, np.full(3, 10.0), hold_s=H, edges=edges)
    # Covered 02:00 → 05:00 only: no backward fill, the last value holds one hour.
    assert_allclose(r.covered_s, [0.0, 3 * H, 0.0])
    assert_allclose(r.missing_s, [H, 2 * H, 2 * H])
    assert_allclose(r.wh, [0.0, 30.0, 0.0])
    assert len(r.gaps.start) == 0  # the edges of the data are missing time, not gaps


def test_a_hold_across_a_day_boundary_is_split_exactly() -> None:
    edges = day_edges(date(2026, 1, 10), 2, PARIS)
    t = np.array([edges[1] - 1000.0, edges[1] + 2600.0])
    r = integrate_power(t, np.array([36.0, 72.0]), hold_s=H, edges=edges)
    assert_allclose(r.covered_s, [1000.0, 2600.0 + H])
    assert_allclose(r.wh, [36.0 * 1000 / H, (36.0 * 2600 + 72.0 * H) / H])


def test_gaps_outside_the_bins_are_not_listed_and_a_straddling_gap_keeps_its_duration() -> None:
    t = T0 + np.array([0.0, 5 * H, 6 * H, 20 * H])
    edges = T0 + np.array([10 * H, 12 * H])
    r = integrate_power(t, np.ones(4), hold_s=H, edges=edges)
    assert_allclose(r.gaps.start, [T0 + 7 * H])
    assert_allclose(r.gaps.duration_s, [13 * H])
    assert_allclose(r.missing_s, [2 * H])


# --- DST days -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25)])
def test_dst_days_count_their_own_length(day: date, hours: int) -> None:
    edges = day_edges(day, 1, PARIS)
    assert edges[1] - edges[0] == hours * H
    t = np.arange(edges[0], edges[1], 900.0)
    r = integrate_power(t, np.full(len(t), 60.0), hold_s=900.0, edges=edges)
    assert_allclose(r.wh, [60.0 * hours])
    assert r.complete.tolist() == [True]
    # The device stops two hours before the end of the local day: two hours missing.
    cut = t[t < edges[1] - 2 * H]
    r = integrate_power(cut, np.full(len(cut), 60.0), hold_s=900.0, edges=edges)
    assert_allclose(r.missing_h, [2.0])
    assert_allclose(r.wh, [60.0 * (hours - 2)])


# --- empty input and validation -----------------------------------------------------------------


def test_empty_input_has_every_bin_missing() -> None:
    edges = day_edges(date(2026, 3, 28), 3, PARIS)
    r = integrate_power(np.zeros(0), np.zeros(0), hold_s=600.0, edges=edges)
    assert_allclose(r.wh, [0.0, 0.0, 0.0])
    assert_allclose(r.missing_h, [24.0, 23.0, 24.0])
    assert not r.complete.any()
    assert len(r.gaps.start) == 0


def test_invalid_inputs_are_rejected() -> None:
    t = T0 + np.array([0.0, 600.0])
    edges = T0 + np.array([0.0, H])
    with pytest.raises(ValueError, match="negative power"):
        integrate_power(t, np.array([1.0, -0.2]), hold_s=600.0, edges=edges)
    with pytest.raises(ValueError, match="finite"):
        integrate_power(t, np.array([1.0, np.nan]), hold_s=600.0, edges=edges)
    with pytest.raises(ValueError, match="sorted"):
        integrate_power(t[::-1], np.ones(2), hold_s=600.0, edges=edges)
    with pytest.raises(ValueError, match="sorted"):
        integrate_power(np.array([T0, T0]), np.ones(2), hold_s=600.0, edges=edges)
    with pytest.raises(ValueError, match="edges"):
        integrate_power(t, np.ones(2), hold_s=600.0, edges=edges[::-1])
    with pytest.raises(ValueError, match="hold_s"):
        integrate_power(t, np.ones(2), hold_s=0.0, edges=edges)


def test_hold_seconds_rounds_the_maximum_silence_up_to_whole_intervals() -> None:
    assert hold_seconds(600, 3600) == 3600.0
    assert hold_seconds(700, 3600) == 4200.0
    assert hold_seconds(900, 300) == 900.0  # silence shorter than the interval: every sample
    assert hold_seconds(600) == 600.0
    with pytest.raises(ValueError, match="interval_s"):
        hold_seconds(0)


# --- several devices, against the plain loop ----------------------------------------------------


def random_series(
    rng: np.random.Generator, n: int, start: float, mean_step: float
) -> tuple[np.ndarray, np.ndarray]:
    steps = rng.exponential(mean_step, n) + 1.0
    t = start + np.cumsum(steps)
    return t, rng.uniform(0.0, 200.0, n)


def test_many_devices_match_one_at_a_time_and_the_plain_loop() -> None:
    rng = np.random.default_rng(7)
    edges = day_edges(date(2026, 3, 27), 4, PARIS)
    series = [random_series(rng, int(rng.integers(0, 300)), edges[0] - H, 1200.0) for _ in range(6)]
    series[2] = (np.zeros(0), np.zeros(0))  # a device without samples
    holds = np.array([900.0, 1800.0, 600.0, 3600.0, 1200.0, 2400.0])
    device = np.concatenate([np.full(len(s[0]), i, dtype=np.int64) for i, s in enumerate(series)])
    t = np.concatenate([s[0] for s in series])
    w = np.concatenate([s[1] for s in series])
    many = integrate_power_many(device, t, w, devices=6, hold_s=holds, edges=edges)
    assert many.wh.shape == (6, 4)
    for i, (ti, wi) in enumerate(series):
        one = integrate_power(ti, wi, hold_s=holds[i], edges=edges)
        ref_wh, ref_cov = reference(ti, wi, holds[i], edges)
        assert_allclose(many.wh[i], one.wh)
        assert_allclose(many.wh[i], ref_wh, rtol=1e-9, atol=1e-6)
        assert_allclose(many.covered_s[i], ref_cov, rtol=1e-9, atol=1e-6)
        assert_allclose(many.gaps.duration_s[many.gaps.device == i], one.gaps.duration_s)
    assert_allclose(many.missing_s[2], np.diff(edges))


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(1.0, 5000.0), min_size=0, max_size=40),
    hold=st.floats(60.0, 4000.0),
    offset=st.floats(-3 * H, 3 * H),
)
def test_property_matches_the_plain_loop_and_conserves_time(
    steps: list[float], hold: float, offset: float
) -> None:
    t = T0 + offset + np.cumsum(steps)
    w = ((np.arange(len(t)) % 5) * 17.0).astype(np.float64)
    edges = T0 + np.array([0.0, 2 * H, 2.5 * H, 9 * H, 30 * H])
    r = integrate_power(t, w, hold_s=hold, edges=edges)
    ref_wh, ref_cov = reference(t, w, hold, edges)
    assert_allclose(r.wh, ref_wh, atol=1e-6)
    assert_allclose(r.covered_s, ref_cov, atol=1e-5)
    assert_allclose(r.covered_s + r.missing_s, np.diff(edges))


# --- the hourly rollup against the exact integration -------------------------------------------


def assert_within_bound(t: np.ndarray, w: np.ndarray, hold: float, edges: np.ndarray) -> None:
    exact = integrate_power(t, w, hold_s=hold, edges=edges)
    approx = rollup_energy(hourly(t, w), devices=1, hold_s=hold, edges=edges)
    assert np.all(np.abs(approx.wh[0] - exact.wh) <= approx.wh_error[0] + 1e-6)
    assert np.all(np.abs(approx.covered_s[0] - exact.covered_s) <= approx.covered_error_s[0] + 1e-6)
    # The gaps between hours are exact; gaps inside an hour cannot be located from a rollup.
    listed = np.isin(exact.gaps.start, approx.gaps.start)
    assert_allclose(approx.gaps.duration_s, exact.gaps.duration_s[listed])
    inside_an_hour = np.floor(exact.gaps.start / H) == np.floor(exact.gaps.end / H)
    assert listed[~inside_an_hour].all()


def test_rollup_is_exact_on_evenly_spaced_samples() -> None:
    rng = np.random.default_rng(1)
    edges = day_edges(date(2026, 10, 24), 3, PARIS)  # includes the 25 h day
    for step in (600.0, 420.0, 900.0):
        t = np.arange(edges[0] + 37.0, edges[-1], step)
        w = rng.uniform(0.0, 150.0, len(t))
        exact = integrate_power(t, w, hold_s=step, edges=edges)
        approx = rollup_energy(hourly(t, w), devices=1, hold_s=step, edges=edges)
        assert_allclose(approx.wh[0], exact.wh, rtol=1e-12)
        assert_allclose(approx.covered_s[0], exact.covered_s, rtol=1e-12)
        assert_array_equal(approx.complete[0], exact.complete)
        assert (approx.wh_error > 0).any()  # the bound cannot know the spacing was even


def test_rollup_within_bound_on_report_by_exception() -> None:
    # A luminaire sampled every 60 s, sending on a 5 W deadband or after 3600 s of silence.
    rng = np.random.default_rng(2)
    edges = day_edges(date(2026, 3, 28), 3, PARIS)
    grid = np.arange(edges[0] - H, edges[-1], 60.0)
    hour_of_day = ((grid - edges[0]) / H) % 24
    level = np.where((hour_of_day > 17) | (hour_of_day < 7), 80.0, 0.0)
    truth = np.clip(
        level * (1 + 0.15 * np.sin(grid / 1700.0)) + rng.normal(0, 2, len(grid)), 0, None
    )
    sent_t, sent_w = [grid[0]], [truth[0]]
    for ti, wi in zip(grid[1:], truth[1:], strict=True):
        if abs(wi - sent_w[-1]) >= 5.0 or ti - sent_t[-1] >= 3600.0:
            sent_t.append(ti)
            sent_w.append(wi)
    t, w = np.array(sent_t), np.array(sent_w)
    hold = hold_seconds(60, 3600)
    assert_within_bound(t, w, hold, edges)
    exact = integrate_power(t, w, hold_s=hold, edges=edges)
    approx = rollup_energy(hourly(t, w), devices=1, hold_s=hold, edges=edges)
    # hold ≥ 1 h: the coverage from the rollup is exact, the energy close.
    assert_allclose(approx.covered_s[0], exact.covered_s, rtol=1e-12)
    assert_array_equal(approx.covered_error_s[0], 0.0)
    assert_allclose(approx.wh[0], exact.wh, rtol=0.02)


def test_rollup_within_bound_on_uneven_samples_with_gaps() -> None:
    rng = np.random.default_rng(3)
    edges = T0 + np.arange(0.0, 3 * DAY + 1, 6 * H)
    for hold in (300.0, 900.0, 5400.0):
        t, w = random_series(rng, 400, T0 - H, 700.0)
        t = t[t < edges[-1]]
        assert_within_bound(t, w[: len(t)], hold, edges)


def test_rollup_single_and_paired_samples_are_exact() -> None:
    # One or two samples per hour: nothing is assumed about the spacing.
    t = T0 + np.array([100.0, 3700.0, 5000.0, 9000.0, 14000.0])
    w = np.array([10.0, 20.0, 35.0, 5.0, 60.0])
    edges = T0 + np.array([0.0, 2 * H, 5 * H])
    exact = integrate_power(t, w, hold_s=2000.0, edges=edges)
    approx = rollup_energy(hourly(t, w), devices=1, hold_s=2000.0, edges=edges)
    assert_allclose(approx.wh[0], exact.wh)
    assert_allclose(approx.covered_s[0], exact.covered_s)
    assert_array_equal(approx.wh_error, 0.0)
    assert_allclose(approx.gaps.start, exact.gaps.start)


def test_rollup_of_several_devices_and_its_edges() -> None:
    rng = np.random.default_rng(4)
    edges = day_edges(date(2026, 3, 29), 1, PARIS)
    parts = [random_series(rng, 200, edges[0], 400.0) for _ in range(3)]
    device = np.concatenate([np.full(len(p[0]), i, dtype=np.int64) for i, p in enumerate(parts)])
    t = np.concatenate([p[0] for p in parts])
    w = np.concatenate([p[1] for p in parts])
    many = rollup_energy(hourly(t, w, device), devices=4, hold_s=1200.0, edges=edges)
    assert many.wh.shape == (4, 1)
    for i, (ti, wi) in enumerate(parts):
        one = rollup_energy(hourly(ti, wi), devices=1, hold_s=1200.0, edges=edges)
        assert_allclose(many.wh[i], one.wh[0])
        assert_allclose(many.wh_error[i], one.wh_error[0])
    assert_allclose(many.missing_h[3], [23.0])  # the fourth device sent nothing
    with pytest.raises(ValueError, match="hour boundaries"):
        rollup_energy(hourly(t, w, device), devices=3, hold_s=600.0, edges=edges + 1800.0)


def test_rollup_of_nothing_has_every_bin_missing() -> None:
    f, i = np.zeros(0), np.zeros(0, dtype=np.int64)
    empty = HourlyPower(i, f, i, f, f, f, f, f, f, f)
    r = rollup_energy(empty, devices=2, hold_s=600.0, edges=day_edges(date(2026, 3, 29), 1, PARIS))
    assert_allclose(r.missing_h, [[23.0], [23.0]])
    assert_allclose(r.wh, 0.0)
    assert not r.complete.any()
