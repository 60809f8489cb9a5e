"""Pure detection math: closed forms, synthetic series with known steps, DST nights, edge cases."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.testing import assert_allclose

from anomaly.balance import decree_threshold_percent, uarl_litres_per_day, water_balance
from anomaly.bursts import BurstParams, detect_bursts
from anomaly.customers import continuous_flow_state, flag_runs, high_consumption_state
from anomaly.detect import cusum_threshold, detect_steps, noise_scale
from anomaly.nights import EPOCH, night_series, window_bounds

PARIS = ZoneInfo("Europe/Paris")
DAY = 86400.0


def nights(n: int, start: date = date(2026, 1, 5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window start/end [s] of n nights from ``start`` (02:00-04:00 Paris) and weekend flags."""
    first = (start - EPOCH).days
    bounds = [window_bounds(first + i, PARIS, 2, 4) for i in range(n)]
    ws = np.array([b[0] for b in bounds])
    we = np.array([b[1] for b in bounds])
    weekend = np.array([(start.toordinal() - 1 + i) % 7 in (5, 6) for i in range(n)])
    return ws, we, weekend


# --- CUSUM threshold ----------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "arl0"), [(0.5, 1000.0), (1.0, 500.0), (0.25, 200.0)])
def test_cusum_threshold_solves_siegmund(k: float, arl0: float) -> None:
    h = cusum_threshold(k, arl0)
    b = 2 * k * (h + 1.166)
    assert_allclose((math.exp(b) - b - 1) / (2 * k * k), arl0, rtol=1e-6)


def test_cusum_threshold_known_value_and_monotone() -> None:
    # Standard table value: k = 0.5, h = 5 gives ARL0 close to 930 (Montgomery).
    assert 4.8 < cusum_threshold(0.5, 930.0) < 5.2
    assert cusum_threshold(0.5, 2000.0) > cusum_threshold(0.5, 500.0)
    assert cusum_threshold(5.0, 1000.0) == 0.0  # so large a reference needs no accumulation
    # A reference hundreds of noise scales away (a big minimum burst over a quiet, steady
    # flow) must not overflow exp(): it needs no accumulation either.
    assert cusum_threshold(400.0, 2000.0 * 24) == 0.0
    assert cusum_threshold(0.01, 1e300) > 0.0
    with pytest.raises(ValueError, match="k_sigma"):
        cusum_threshold(0.0, 100.0)


def test_noise_scale_is_sigma_for_gaussian_and_grows_with_tails() -> None:
    rng = np.random.default_rng(3)
    gauss = rng.normal(0.0, 2.0, 20000)
    assert_allclose(noise_scale(gauss), 2.0, rtol=0.05)
    spiky = gauss.copy()
    spiky[::5] += 20.0  # a heavy tail the MAD does not see
    assert noise_scale(spiky) > 1.5 * 1.4826 * np.median(np.abs(spiky - np.median(spiky)))


# --- night step detector -------------------------------------------------------------------------


def series(n: int, sigma: float = 0.01, seed: int = 1) -> np.ndarray:
    return 1.0 + np.random.default_rng(seed).normal(0.0, sigma, n)


def test_step_is_found_with_flow_and_start_bounds() -> None:
    ws, we, weekend = nights(60)
    x = series(60)
    x[30:] += 0.1  # a 10 % leak from night 30, never repaired
    eps = detect_steps(ws, we, x, weekend)
    assert len(eps) == 1
    ep = eps[0]
    assert ep.detector == "night_flow"
    assert ep.ended_at is None
    assert we[30] <= ep.detected_at <= we[33]  # "up and staying up": two or three nights
    assert ep.start_after <= ws[30] <= ep.start_before + 1  # the true start is bracketed
    assert_allclose(ep.flow_m3h, 0.1, rtol=0.2)


def test_repaired_leak_closes_and_is_not_learnt() -> None:
    ws, we, weekend = nights(120)
    x = series(120, seed=2)
    x[30:90] += 0.08  # 60 nights: longer than the 28-night baseline
    baseline = np.full(120, np.nan)
    eps = detect_steps(ws, we, x, weekend, baseline_out=baseline)
    assert len(eps) == 1
    assert eps[0].ended_at is not None
    assert ws[90] <= eps[0].ended_at <= ws[93]
    # The baseline stayed at the leak-free level during the leak.
    assert_allclose(np.nanmax(baseline[30:90]), 1.0, atol=0.01)
    assert_allclose(eps[0].flow_m3h, 0.08, rtol=0.2)


def test_noise_spikes_and_weekends_raise_nothing() -> None:
    ws, we, weekend = nights(365)
    x = series(365, seed=4)
    x[weekend] += 0.05  # weekend nights are systematically higher: a day type, not a leak
    x[::37] += 0.2  # single-night spikes (a pool filled at 3 am)
    assert detect_steps(ws, we, x, weekend) == []


def test_gaps_neither_raise_nor_clear() -> None:
    ws, we, weekend = nights(60)
    x = series(60, seed=5)
    x[30:] += 0.1
    x[31:35] = np.nan  # meter silent right after the start
    eps = detect_steps(ws, we, x, weekend)
    assert len(eps) == 1
    assert eps[0].detected_at >= we[35]
    assert eps[0].ended_at is None


def test_warm_up_needs_min_baseline_nights() -> None:
    ws, we, weekend = nights(7)
    x = series(7)
    x[3:] += 0.5  # during warm-up: learnt, not detected (nothing to compare with yet)
    assert detect_steps(ws, we, x, weekend) == []


def test_manual_resolution_accepts_the_new_level() -> None:
    ws, we, weekend = nights(90)
    x = series(90, seed=6)
    x[30:] += 0.1  # e.g. a new unmetered use the technicians accept
    first = detect_steps(ws, we, x, weekend)
    assert len(first) == 1
    resolved_at = first[0].detected_at + 3600.0
    again = detect_steps(ws, we, x, weekend, resets=(resolved_at,))
    assert len(again) == 1  # the episode ends at the resolution, no new one afterwards
    assert again[0].ended_at == resolved_at


def test_holiday_nights_are_not_learnt() -> None:
    ws, we, weekend = nights(90)
    x = series(90, seed=7)
    x[30:46] -= 0.15  # two weeks of school holidays: households away
    learn = np.ones(90, dtype=bool)
    learn[30:46] = False
    assert detect_steps(ws, we, x, weekend, learn=learn) == []
    # Learnt, the holidays would have lowered the baseline and their end looked like a leak.
    assert detect_steps(ws, we, x, weekend) != []


# --- burst detector ------------------------------------------------------------------------------


def hourly(days: int, seed: int = 1, sigma: float = 0.02) -> dict[str, np.ndarray]:
    t0 = datetime(2026, 1, 5, tzinfo=PARIS).timestamp()
    t = t0 + 3600.0 * np.arange(days * 24)
    local = [datetime.fromtimestamp(v, PARIS) for v in t]
    hour = np.array([d.hour for d in local])
    day = np.array([(d.date() - EPOCH).days for d in local])
    pattern = 1.0 + 0.8 * np.sin(np.pi * np.clip(hour - 6, 0, 16) / 16)  # busy days, quiet nights
    flow = pattern + np.random.default_rng(seed).normal(0.0, sigma, len(t))
    weekend = np.array([d.weekday() >= 5 for d in local])
    return {"t": t, "day": day, "hour": hour, "flow": flow, "weekend": weekend}


def test_burst_found_within_the_night() -> None:
    h = hourly(40)
    start = 30 * 24 + 14  # day 30, 14:00
    h["flow"][start:] += 0.5
    eps = detect_bursts(h["t"], h["day"], h["hour"], h["flow"], h["weekend"])
    assert len(eps) == 1
    delay_h = (eps[0].detected_at - h["t"][start]) / 3600.0
    assert 10 <= delay_h <= 16  # the next quiet hours (00:00-06:00), three of them
    assert_allclose(eps[0].flow_m3h, 0.5, rtol=0.2)


def test_no_burst_on_noise_or_small_step() -> None:
    h = hourly(120, seed=2)
    assert detect_bursts(h["t"], h["day"], h["hour"], h["flow"], h["weekend"]) == []
    small = hourly(60, seed=3)
    small["flow"][40 * 24 :] += 0.05  # 5 %: the night detector's job, not a burst
    assert detect_bursts(small["t"], small["day"], small["hour"], small["flow"], small["weekend"],
                         BurstParams()) == []  # fmt: skip


# --- nights and DST ------------------------------------------------------------------------------


def test_window_bounds_on_dst_nights() -> None:
    spring = (date(2026, 3, 29) - EPOCH).days
    autumn = (date(2026, 10, 25) - EPOCH).days
    _start, end, hours = window_bounds(spring, PARIS, 2, 4)
    assert hours == 1  # 02:00-03:00 does not exist that night
    assert datetime.fromtimestamp(end, UTC) == datetime(2026, 3, 29, 2, tzinfo=UTC)
    assert window_bounds(autumn, PARIS, 2, 4)[2] == 3  # 02:00-03:00 happens twice
    assert window_bounds(spring + 1, PARIS, 2, 4)[2] == 2


def _hours_around(day: date) -> dict[str, np.ndarray]:
    t0 = datetime(day.year, day.month, day.day, tzinfo=PARIS).timestamp() - DAY
    t = np.arange(t0, t0 + 3 * DAY, 3600.0)
    local = [datetime.fromtimestamp(v, PARIS) for v in t]
    return {
        "t": t,
        "day": np.array([(d.date() - EPOCH).days for d in local]),
        "hour": np.array([d.hour for d in local]),
    }


@pytest.mark.parametrize("dst_day", [date(2026, 3, 29), date(2026, 10, 25)])
def test_night_series_assesses_dst_nights(dst_day: date) -> None:
    h = _hours_around(dst_day)
    n = len(h["t"])
    inflow = np.full(n, 2.0)
    metered = np.full(n, 0.5)
    res = night_series(h["t"], h["day"], h["hour"], inflow, np.zeros(n, bool), metered,
                       np.full(n, 10), 10, PARIS)  # fmt: skip
    j = int(np.nonzero(res.day == (dst_day - EPOCH).days)[0][0])
    assert res.gap[j] == ""
    assert_allclose([res.mnf_m3h[j], res.metered_m3h[j], res.net_m3h[j]], [2.0, 0.5, 1.5])


def test_night_series_reports_gaps_instead_of_filling() -> None:
    h = _hours_around(date(2026, 1, 14))
    n = len(h["t"])
    inflow = np.full(n, 2.0)
    frozen = np.zeros(n, bool)
    meters = np.full(n, 10)
    night = (date(2026, 1, 14) - EPOCH).days
    at = np.nonzero((h["day"] == night) & (h["hour"] == 3))[0][0]
    inflow[at] = np.nan
    res = night_series(h["t"], h["day"], h["hour"], inflow, frozen, np.zeros(n), meters, 10, PARIS)
    j = int(np.nonzero(res.day == night)[0][0])
    assert "missing for 1 of 2 hours" in res.gap[j]
    assert math.isnan(res.net_m3h[j])
    inflow[at] = 2.0
    frozen[at] = True
    res = night_series(h["t"], h["day"], h["hour"], inflow, frozen, np.zeros(n), meters, 10, PARIS)
    assert "frozen" in res.gap[j]
    frozen[at] = False
    # Customer meters are information, not a veto: too few of them is a note, not a gap.
    meters[at] = 4
    res = night_series(h["t"], h["day"], h["hour"], inflow, frozen, np.zeros(n), meters, 10, PARIS)
    assert res.gap[j] == ""
    assert "4 of the usual 10 reported" in res.note[j]
    assert math.isnan(res.net_m3h[j])
    assert res.mnf_m3h[j] == 2.0


def test_missing_customer_meters_count_at_the_mean_of_those_that_reported() -> None:
    """8 of the usual 10 meters told 0.4 m³/h: the 2 missing ones count at the same mean, so
    the metered use is 0.5 m³/h; a DMA whose 30 meters are only 11 % of its customers still
    subtracts what they measure."""
    h = _hours_around(date(2026, 1, 14))
    n = len(h["t"])
    night = (date(2026, 1, 14) - EPOCH).days
    meters = np.full(n, 10)
    metered = np.full(n, 0.5)
    window = (h["day"] == night) & (h["hour"] >= 2) & (h["hour"] < 4)
    meters[window] = 8
    metered[window] = 0.4
    res = night_series(h["t"], h["day"], h["hour"], np.full(n, 2.0), np.zeros(n, bool), metered,
                       meters, 90, PARIS)  # fmt: skip
    j = int(np.nonzero(res.day == night)[0][0])
    assert_allclose([res.metered_m3h[j], res.net_m3h[j]], [0.5, 1.5])
    assert res.coverage[j] == 8 / 90
    assert res.meters[j] == 8
    assert res.note[j] == ""
    # Meters that never tell night use (read daily): the MNF alone, no note.
    res = night_series(h["t"], h["day"], h["hour"], np.full(n, 2.0), np.zeros(n, bool),
                       np.zeros(n), np.zeros(n, np.int64), 90, PARIS)  # fmt: skip
    assert res.net_m3h[j] == 2.0
    assert res.note[j] == ""
    assert res.coverage[j] == 0.0


def test_nights_before_the_first_data_are_not_gaps() -> None:
    """Meters first heard at 20:00 local: that morning's night was not monitored, so it is no
    gap; the next one is the first night assessed."""
    first = datetime(2026, 1, 14, 20, tzinfo=PARIS).timestamp()
    t = np.arange(first, first + 2 * DAY, 3600.0)
    local = [datetime.fromtimestamp(v, PARIS) for v in t]
    day = np.array([(d.date() - EPOCH).days for d in local])
    hour = np.array([d.hour for d in local])
    n = len(t)
    res = night_series(t, day, hour, np.full(n, 2.0), np.zeros(n, bool), np.zeros(n),
                       np.full(n, 10), 10, PARIS)  # fmt: skip
    assert list(res.day) == [(date(2026, 1, 15) - EPOCH).days, (date(2026, 1, 16) - EPOCH).days]
    assert res.gap == ["", ""]


# --- water balance -------------------------------------------------------------------------------


def test_decree_threshold_and_uarl() -> None:
    assert decree_threshold_percent(100.0) == 85.0
    assert_allclose(decree_threshold_percent(10.0), 67.0)
    # Lambert: 10 km mains, 500 connections, 2 km private pipes, 40 m.
    assert_allclose(uarl_litres_per_day(10, 500, 2, 40), (180 + 400 + 50) * 40)


def test_water_balance_closed_form() -> None:
    bal = water_balance(30.0, 3000.0, 300.0, 2100.0, 10.0, 500, 2.0, 40.0)
    assert_allclose(bal.losses_m3, 600.0)
    assert_allclose(bal.yield_percent, 80.0)  # (2100 + 300) / 3000
    assert_allclose(bal.ilc_m3_km_day, 7.0)
    assert_allclose(bal.threshold_percent, 66.4)
    assert bal.compliant is True
    assert_allclose(bal.ili, (600.0 / 30.0) / 25.2)
    missing = water_balance(30.0, 0.0, 0.0, 10.0)
    assert math.isnan(missing.yield_percent)
    assert missing.compliant is None
    assert math.isnan(missing.ili)


# --- customer meters -----------------------------------------------------------------------------


def test_flag_runs() -> None:
    state = np.array([0, 1, np.nan, 1, 0, np.nan, 1, 1], dtype=float)
    assert flag_runs(state) == [(1, 4), (6, None)]


def test_continuous_flow_needs_consecutive_covered_days() -> None:
    covered = np.array([24, 24, 24, 24, 12, 24, 24], dtype=float)
    longest = np.array([1, 1, 1, 1, 1, 1, 1], dtype=float)
    zeros = np.array([3, 0, 0, 0, 0, 0, 2], dtype=float)
    rate = np.array([0, 0.01, 0.01, 0.01, 0.01, 0.01, 0], dtype=float)
    state = continuous_flow_state(covered, longest, zeros, rate, 0.001, 2.0, 2)
    # Day 1 alone is not enough, days 2-3 are; day 4 is not covered, day 6 has a pause.
    assert_allclose(state, [0, np.nan, 1, 1, np.nan, np.nan, 0])


def test_high_consumption_ratio() -> None:
    days = 70
    daily = np.full((2, days), 0.2)
    daily[0, 63:] = 0.5  # 2.5 times the usual week from day 63
    daily[1, 30] = np.nan
    state, ratios = high_consumption_state(daily, 7, 56, 2.0, 0.5)
    assert math.isnan(state[0, 61])  # 7 + 56 days are needed: the first window ends on day 62
    assert state[0, 62] == 0.0
    assert state[0, 69] == 1.0
    assert_allclose(ratios[0, 69], 2.5)
    assert state[1, 69] == 0.0
    assert_allclose(ratios[1, 69], 1.0)
