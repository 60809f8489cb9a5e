"""Burst detector: a sudden rise of the hourly net inflow of a DMA in the quiet hours of the
night, hour by hour. Pure functions over numpy arrays, no I/O; the shared statistics (CUSUM
threshold, noise scale, :class:`~anomaly.detect.Episode`) are in :mod:`anomaly.detect`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from anomaly.detect import Episode, cusum_threshold, noise_scale
from core.arrays import BoolArray, FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class BurstParams:
    """Parameters of the hourly burst detector.

    - ``min_burst_fraction``: smallest burst to find quickly, as a fraction of the DMA's usual
      minimum hourly net flow (0.2); smaller leaks are left to the night detector.
    - ``min_burst_m3h``: absolute floor of that smallest burst [m³/h].
    - ``false_alarm_hours``: mean leak-free hours between false alarms under Gaussian noise.
    - ``profile_days``: days of history for the expected flow of each local hour.
    - ``min_profile_days``: days of history needed before detecting.
    - ``close_hours``: consecutive quiet hours back under half the smallest burst that end it.
    - ``confirm_hours``: consecutive quiet hours above the reference an alarm needs.
    - ``quiet_hours``: local hours [start, end) of low use, read to follow and close a burst.
    """

    min_burst_fraction: float = 0.2
    min_burst_m3h: float = 0.05
    false_alarm_hours: float = 24.0 * 2000.0
    profile_days: int = 14
    min_profile_days: int = 7
    close_hours: int = 3
    confirm_hours: int = 3
    quiet_hours: tuple[int, int] = (0, 6)


def detect_bursts(
    hour_start: FloatArray,
    day: IntArray,
    hour: IntArray,
    net_flow: FloatArray,
    weekend: BoolArray,
    params: BurstParams = BurstParams(),
    resets: tuple[float, ...] = (),
    learn: BoolArray | None = None,
    holiday: BoolArray | None = None,
) -> list[Episode]:
    """Bursts: a sudden rise of the hourly net inflow over its usual level at that local hour,
    read in the quiet hours of the night (``quiet_hours``), hour by hour.

    ``hour_start``: start of each local hour [s since epoch], increasing; ``day``: local day
    number of each hour and ``hour``: its local hour (0-23; the repeated hour of the autumn DST
    change is one merged hour, the missing spring hour is absent); ``net_flow``: mean net inflow
    of the hour [m³/h] (NaN: gap); ``weekend``: day type. The expected flow of an hour is the
    median of the same local hour over the last ``profile_days`` leak-free days of the same day
    type (``learn`` False for hours never learnt: holidays); the CUSUM runs on the excess in
    units of the quiet hours' noise scale. Hours in alarm are not learnt. ``holiday`` (per
    hour): days of the configured holidays, whose profile is learnt from holiday days only (as
    the night detector's reference).
    """
    n = len(net_flow)
    if n == 0:
        return []
    first_day = int(day[0])
    ndays = int(day[-1]) - first_day + 1
    grid = np.full((ndays, 24), np.nan)  # clean (learnable) values by local day and hour
    learnable = np.ones(n, dtype=bool) if learn is None else learn
    is_weekend = np.zeros(ndays, dtype=bool)
    is_weekend[day - first_day] = weekend
    is_holiday = np.zeros(ndays, dtype=bool)
    if holiday is not None:
        is_holiday[day - first_day] = holiday
    episodes: list[Episode] = []
    current: Episode | None = None
    reset_queue = sorted(resets)
    forget_day = -1
    profile_day = -1
    expected = spread = np.full(24, np.nan)
    floor = math.nan
    s, run_start, below, above = 0.0, -1, 0, 0
    last_clean_end = math.nan
    frozen_expected = np.full(24, np.nan)
    close_below = math.nan
    evidence_day = -1
    last_scale = (math.nan, math.nan)
    delta = k = h = math.nan
    for i in range(n):
        d = int(day[i]) - first_day
        while reset_queue and reset_queue[0] <= hour_start[i]:
            reset_queue.pop(0)
            forget_day = d
            if current is not None:
                current.ended_at = float(hour_start[i])
                current = None
            s, run_start, below = 0.0, -1, 0
        if d != profile_day:
            profile_day = d
            expected, spread, floor = _hour_profile(
                grid, is_weekend, d, max(forget_day, 0), params, is_holiday
            )
        x = net_flow[i]
        if not math.isfinite(x):
            continue
        hod = int(hour[i])
        # Only the quiet hours are read: day-time use (unmetered customers, holidays, weather)
        # varies far more than a burst of the size that matters, night use much less.
        if not params.quiet_hours[0] <= hod < params.quiet_hours[1]:
            continue
        if d != evidence_day and current is None:
            # Evidence is weighed night by night: several nights of small excess are the
            # night detector's business, a burst shows within one night.
            evidence_day, s, run_start, above = d, 0.0, -1, 0
        if current is not None:
            excess = x - frozen_expected[hod]
            current.excess.append(excess)
            current.flow_m3h = max(float(np.median(current.excess[-6:])), 0.0)
            below = below + 1 if excess < close_below else 0
            if below >= params.close_hours:
                current.ended_at = float(hour_start[i]) - (below - 1) * 3600.0
                kept = current.excess[:-below] or current.excess
                current.flow_m3h = max(float(np.median(kept[-6:])), 0.0)
                current = None
                s, run_start, below = 0.0, -1, 0
            continue
        mu, sigma = expected[hod], spread[hod]
        if not math.isfinite(mu):  # warm-up: learn
            if learnable[i]:
                grid[d, hod] = x
            last_clean_end = float(hour_start[i]) + 3600.0
            continue
        if (floor, sigma) != last_scale:  # one noise scale per night: solve once
            last_scale = (floor, sigma)
            delta = max(params.min_burst_fraction * floor, params.min_burst_m3h)
            k = max(delta / 2.0, 0.5 * sigma) / sigma
            h = cusum_threshold(k, params.false_alarm_hours)
        z = (x - mu) / sigma
        s_new = max(0.0, s + z - k)
        # A burst keeps flowing, a spike of use does not: confirm_hours in a row above.
        above = above + 1 if z > k else 0
        if s_new > 0 and s == 0:
            run_start = i
        s = s_new
        if learnable[i]:  # learnt unless it ends up in an alarm (taken back below)
            grid[d, hod] = x
        if s == 0:
            last_clean_end = float(hour_start[i]) + 3600.0
            run_start = -1
            continue
        if s > h and above >= params.confirm_hours:
            first = run_start if run_start >= 0 else i
            rows = [j for j in range(first, i + 1) if math.isfinite(net_flow[j])]
            for j in rows:
                grid[int(day[j]) - first_day, int(hour[j])] = np.nan
            excesses = [float(net_flow[j]) - expected[int(hour[j])] for j in rows]
            quiet_of = [params.quiet_hours[0] <= int(hour[j]) < params.quiet_hours[1] for j in rows]
            current = Episode(
                detector="burst",
                detected_at=float(hour_start[i]) + 3600.0,
                start_after=last_clean_end
                if math.isfinite(last_clean_end)
                else float(hour_start[first]) - 3600.0,
                start_before=float(hour_start[first]) + 3600.0,
                flow_m3h=max(float(np.median(excesses[-3:])), 0.0),
                baseline_m3h=floor,
                sigma_m3h=float(sigma),
                excess=[e for e, j in zip(excesses, quiet_of, strict=True) if j],
            )
            frozen_expected = expected.copy()
            quiet = spread[params.quiet_hours[0] : params.quiet_hours[1]]
            close_below = max(delta / 2.0, 2.0 * float(np.median(quiet)))
            episodes.append(current)
            below = above = 0
    return episodes


def _hour_profile(
    grid: FloatArray,
    is_weekend: BoolArray,
    d: int,
    lo: int,
    params: BurstParams,
    is_holiday: BoolArray,
) -> tuple[FloatArray, FloatArray, float]:
    """Expected flow and noise scale of each quiet local hour of day ``d`` [m³/h] (NaN for the
    other hours), and the usual minimum hourly flow (the reference of burst sizes) [m³/h],
    from days ``lo`` to ``d - 1``."""
    q0, q1 = params.quiet_hours
    mu_all = np.full(24, np.nan)
    sigma_all = np.full(24, np.nan)
    # The last profile_days learnt days (holidays and alarms skipped), none older than 3 times.
    lo = max(lo, d - 3 * params.profile_days, 0)
    seen = np.isfinite(grid[lo:d, q0:q1]).any(axis=1) & (is_holiday[lo:d] == is_holiday[d])
    learnt = np.nonzero(seen)[0][-params.profile_days :]
    if len(learnt) < params.min_profile_days:
        return mu_all, sigma_all, math.nan
    days = lo + learnt
    rows = grid[days, q0:q1]
    day_weekend = is_weekend[days]
    same = rows[day_weekend == is_weekend[d]]
    if len(same) == 0 or np.isfinite(same).sum(axis=0).min() < 3:
        same = rows
    if np.isfinite(same).sum(axis=0).min() < 3:
        return mu_all, sigma_all, math.nan
    mu = _column_median(same)
    # Scale from all days (more samples), relative to each day type's own median.
    centre = np.where(day_weekend[:, None] == is_weekend[d], mu, _column_median(rows))
    resid = (rows - centre).ravel()
    level = float(np.min(mu))
    # One noise scale for the quiet hours, from all their residuals (6 hours x 14 days): an
    # hour's own 14 values give too rough a scale for a test run every hour.
    sigma = noise_scale(resid[np.isfinite(resid)])
    mu_all[q0:q1] = mu
    sigma_all[q0:q1] = max(sigma, 0.01 * level, 1e-6)
    return mu_all, sigma_all, level


def _column_median(values: FloatArray) -> FloatArray:
    """Median of each column ignoring NaN, by one sort (NaN sort last; ``nanmedian`` of small
    arrays is 50 times slower); NaN for a column without a finite value."""
    if len(values) == 0:
        return np.full(values.shape[1], np.nan)
    srt = np.sort(values, axis=0)
    finite = np.isfinite(srt)
    if finite.all():
        n = len(srt)
        return np.asarray((srt[(n - 1) // 2] + srt[n // 2]) / 2.0)
    count = finite.sum(axis=0)
    lo = np.take_along_axis(srt, np.maximum((count - 1) // 2, 0)[None, :], axis=0)[0]
    hi = np.take_along_axis(srt, np.maximum(count // 2, 0)[None, :], axis=0)[0]
    hi = np.where(count % 2 == 1, lo, hi)
    return np.where(count > 0, (lo + hi) / 2.0, np.nan)
