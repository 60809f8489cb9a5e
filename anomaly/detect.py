"""Leak detection on night flows: pure functions over numpy arrays, no I/O.

Vocabulary (units in brackets):

- *night window*: local hours ``[start_h, end_h)`` (default 02:00-04:00), when legitimate use is
  lowest and leakage dominates the inflow.
- *MNF* (minimum night flow) of a DMA [m³/h]: the mean net inflow (inlet meters minus outlet
  meters) over the night window.
- *metered night use* [m³/h]: the consumption of the DMA's customer meters over the same window.
- *net night flow* [m³/h]: MNF minus metered night use; what a leak raises and a new (metered)
  large consumer does not. Without customer meters it is the MNF itself.

The step detector is a one-sided CUSUM (Page, 1954) on the net night flow against a robust
baseline (median of the recent leak-free nights of the same day type, weekday or weekend). Its
parameters have a physical or statistical meaning: the smallest leak worth finding (a fraction of
the baseline MNF, and an absolute floor in m³/h), the mean number of leak-free nights between two
false alarms under Gaussian noise (the threshold follows from Siegmund's approximation), and the
number of nights back at baseline that closes an episode. Nights in alarm are never learnt into
the baseline.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from core.arrays import BoolArray, FloatArray, IntArray

MAD_TO_SIGMA = 1.4826
"""Scale factor from the median absolute deviation to the standard deviation of a normal law."""


@dataclass(frozen=True, slots=True)
class StepParams:
    """Parameters of the night-flow step detector.

    - ``min_leak_fraction``: smallest leak to find, as a fraction of the baseline MNF (0.05).
    - ``min_leak_m3h``: absolute floor of that smallest leak [m³/h] (meter resolution).
    - ``false_alarm_nights``: mean leak-free nights between false alarms under Gaussian noise.
    - ``baseline_nights``: nights of history the baseline looks back over.
    - ``min_baseline_nights``: valid leak-free nights needed before detecting (warm-up).
    - ``min_sigma_fraction``: floor of the noise scale, as a fraction of the baseline (meter
      accuracy: a 1 % meter cannot see night-to-night changes below that).
    - ``close_nights``: consecutive nights back under the reference that end an episode.
    - ``confirm_nights``: consecutive nights above the reference an alarm needs.
    """

    min_leak_fraction: float = 0.05
    min_leak_m3h: float = 0.01
    false_alarm_nights: float = 1000.0
    baseline_nights: int = 28
    min_baseline_nights: int = 7
    min_sigma_fraction: float = 0.01
    close_nights: int = 2
    confirm_nights: int = 2


@dataclass(slots=True)
class Episode:
    """A leak found by a detector.

    Times in seconds since the epoch: ``detected_at`` (end of the night window that crossed the
    threshold), ``start_after``/``start_before`` (bounds of the start: end of the last night
    at baseline, start of the first night above it) and ``started_at`` (their midpoint),
    ``ended_at`` (start of the first night back at baseline, None while it lasts).
    ``flow_m3h``: estimated leak flow (mean excess over baseline of the last nights) [m³/h].
    ``baseline_m3h`` and ``sigma_m3h``: the baseline and noise scale frozen at the change.
    """

    detector: str
    detected_at: float
    start_after: float
    start_before: float
    flow_m3h: float
    baseline_m3h: float
    sigma_m3h: float
    ended_at: float | None = None
    excess: list[float] = field(default_factory=list)

    @property
    def started_at(self) -> float:
        """Estimated start [s since epoch]: midpoint of the bounds."""
        return (self.start_after + self.start_before) / 2.0


_EXP_MAX = 700.0  # math.exp overflows a float above ~709.78
_HUGE = 1e300


def cusum_threshold(k_sigma: float, arl0: float) -> float:
    """Like :func:`_cusum_threshold`, cached on ``k_sigma`` rounded to 0.01 σ (solving takes
    ~20 µs and the detectors ask once per sample)."""
    return _cusum_threshold(round(k_sigma, 2), arl0)


@functools.lru_cache(maxsize=4096)
def _cusum_threshold(k_sigma: float, arl0: float) -> float:
    """Decision threshold ``h`` [in σ] of a one-sided CUSUM with reference ``k_sigma`` [σ] whose
    in-control average run length is ``arl0`` samples, by Siegmund's approximation
    ``ARL0 = (exp(2kh') - 2kh' - 1) / (2k²)`` with ``h' = h + 1.166``."""
    if k_sigma <= 0 or arl0 <= 1:
        raise ValueError("k_sigma must be > 0 and arl0 > 1")

    def arl(h: float) -> float:
        b = 2.0 * k_sigma * (h + 1.166)
        if b > _EXP_MAX:  # exp(b) overflows: the run length is astronomically long
            return _HUGE
        return (math.exp(b) - b - 1.0) / (2.0 * k_sigma**2) - arl0

    if arl(0.0) >= 0:
        return 0.0
    hi = 1.0
    while arl(hi) < 0:
        hi *= 2.0
    return float(brentq(arl, 0.0, hi))


def robust_location_scale(values: FloatArray) -> tuple[float, float]:
    """Median and MAD-based standard deviation of ``values`` (NaN ignored)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    med = float(np.median(finite))
    return med, MAD_TO_SIGMA * float(np.median(np.abs(finite - med)))


def detect_steps(
    window_start: FloatArray,
    window_end: FloatArray,
    net_flow: FloatArray,
    weekend: BoolArray,
    params: StepParams = StepParams(),
    resets: tuple[float, ...] = (),
    mnf: FloatArray | None = None,
    baseline_out: FloatArray | None = None,
    learn: BoolArray | None = None,
) -> list[Episode]:
    """Leaks as steps up of the net night flow.

    ``window_start``/``window_end``: night windows [s since epoch], increasing; ``net_flow``:
    net night flow per night [m³/h], NaN for a night with a gap (it neither raises nor clears an
    alarm); ``weekend``: day type of each night; ``resets``: times [s] at which a person accepted
    the current level (an alert resolved by hand): history before is forgotten; ``mnf``: the MNF
    per night [m³/h], which scales the smallest leak (defaults to ``net_flow``);
    ``baseline_out``: if given, receives the baseline of each assessed night [m³/h];
    ``learn``: False for nights that are tested but never learnt (school holidays: households
    away lower the night use for a while, and learning it would make their return a step).

    Returns the episodes in time order; the last one has ``ended_at`` None if still running.
    """
    n = len(net_flow)
    scale = net_flow if mnf is None else mnf
    clean = np.zeros(n, dtype=bool)  # valid nights at baseline, usable for learning
    learnable = np.ones(n, dtype=bool) if learn is None else learn
    episodes: list[Episode] = []
    current: Episode | None = None
    s = 0.0
    run_start = -1  # first night of the current run of positive CUSUM
    below = above = 0
    last_clean_end = math.nan
    reset_queue = sorted(resets)
    forget_before = -math.inf
    frozen: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # baseline, sigma, k

    for i in range(n):
        while reset_queue and reset_queue[0] <= window_start[i]:
            forget_before = reset_queue.pop(0)
            if current is not None:
                current.ended_at = forget_before
                current = None
            s, run_start, below = 0.0, -1, 0
        x = net_flow[i]
        if not math.isfinite(x):
            continue
        if current is not None:
            base, sigma, k = frozen
            if baseline_out is not None:
                baseline_out[i] = base
            excess = x - base
            current.excess.append(excess)
            current.flow_m3h = max(float(np.mean(current.excess[-3:])), 0.0)
            below = below + 1 if excess < k else 0
            if below >= params.close_nights:
                current.ended_at = float(window_start[i - _back(net_flow, i, below)])
                kept = current.excess[:-below] or current.excess
                current.flow_m3h = max(float(np.mean(kept[-3:])), 0.0)
                current = None
                s, run_start, below = 0.0, -1, 0
            continue
        # The last baseline_nights clean nights (holidays and alarms are skipped, so the pool
        # reaches further back after them), but none older than three times that.
        lo = window_start[i] - 3 * params.baseline_nights * 86400.0
        pool = clean[:i] & (window_start[:i] >= max(lo, forget_before))
        if pool.sum() > params.baseline_nights:
            pool[: np.nonzero(pool)[0][-params.baseline_nights]] = False
        if pool.sum() < params.min_baseline_nights:  # warm-up: learn
            clean[i] = learnable[i]
            last_clean_end = float(window_end[i])
            continue
        base, sigma = _day_type_baseline(net_flow[:i], weekend[:i], pool, bool(weekend[i]))
        if baseline_out is not None:
            baseline_out[i] = base
        ref = max(float(np.median(scale[:i][pool])), base)
        sigma = max(sigma, params.min_sigma_fraction * ref, 1e-6)
        delta = max(params.min_leak_fraction * ref, params.min_leak_m3h)
        k = max(delta / 2.0, 0.5 * sigma)
        h = cusum_threshold(k / sigma, params.false_alarm_nights) * sigma
        excess = x - base
        s_new = max(0.0, s + excess - k)
        # A step is "up and staying up": the alarm also needs confirm_nights nights in a row
        # above the reference, since single-night spikes (someone filling a pool at 3 am) are
        # far more frequent than Gaussian noise would have them.
        above = above + 1 if excess > k else 0
        if s_new > 0 and s == 0:
            run_start = i
        s = s_new
        # Learnt unless it ends up in an alarm: a night with some excess may be a day type
        # still unknown (the first weekends) or noise; the run of nights that leads to an alarm
        # is taken back below.
        clean[i] = learnable[i]
        if s == 0:
            last_clean_end = float(window_end[i])
            run_start = -1
            continue
        if s > h and above >= params.confirm_nights:
            first = run_start if run_start >= 0 else i
            clean[first : i + 1] = False
            excesses = [float(v) - base for v in net_flow[first : i + 1] if math.isfinite(v)]
            current = Episode(
                detector="night_flow",
                detected_at=float(window_end[i]),
                start_after=last_clean_end
                if math.isfinite(last_clean_end)
                else float(window_start[first]) - 86400.0,
                start_before=float(window_start[first]),
                flow_m3h=max(float(np.mean(excesses[-3:])), 0.0),
                baseline_m3h=base,
                sigma_m3h=sigma,
                excess=excesses,
            )
            frozen = (base, sigma, k)
            episodes.append(current)
            below = above = 0
    return episodes


def _day_type_baseline(
    values: FloatArray, weekend: BoolArray, pool: BoolArray, today_weekend: bool
) -> tuple[float, float]:
    """Baseline [m³/h] of a night of the given day type and noise scale [m³/h] of the pool: the
    median of the same day type when it has 3 nights or more (else of all), and the noise scale
    of the residuals of every pooled night against its own day type's median."""
    v = values[pool]
    w = weekend[pool]
    overall = _median_1d(v)
    medians = {}
    for kind in (False, True):
        sel = v[w == kind]
        medians[kind] = _median_1d(sel) if len(sel) >= 3 else overall
    centre = np.where(w, medians[True], medians[False])
    return medians[today_weekend], noise_scale(v - centre)


def _median_1d(values: FloatArray) -> float:
    """Median of a small 1-D array without NaN (a sort: ``np.median``'s checks cost more)."""
    srt = np.sort(values)
    n = len(srt)
    return float(srt[(n - 1) // 2] + srt[n // 2]) / 2.0


def noise_scale(residual: FloatArray) -> float:
    """Noise scale [same unit as ``residual``, finite values]: the larger of the MAD-based
    standard deviation and the 10-90 % inter-quantile range over 2.563 (both equal σ for
    Gaussian noise; the second grows with the heavy tails of night use, which the MAD
    ignores). Quantiles interpolate linearly, as ``np.quantile`` does."""
    srt = np.sort(residual)
    n = len(srt)
    med = float(srt[(n - 1) // 2] + srt[n // 2]) / 2.0
    mad = MAD_TO_SIGMA * _median_1d(np.abs(srt - med))

    def quantile(q: float) -> float:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return float(srt[lo] + (srt[hi] - srt[lo]) * (pos - lo))

    return max(mad, (quantile(0.9) - quantile(0.1)) / 2.563)


def _back(values: FloatArray, i: int, count: int) -> int:
    """How many rows back from ``i`` the ``count``-th last finite value is (0 = ``i``)."""
    seen, j = 0, i
    while j >= 0:
        if math.isfinite(values[j]):
            seen += 1
            if seen == count:
                return i - j
        j -= 1
    return 0


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
) -> list[Episode]:
    """Bursts: a sudden rise of the hourly net inflow over its usual level at that local hour,
    read in the quiet hours of the night (``quiet_hours``), hour by hour.

    ``hour_start``: start of each local hour [s since epoch], increasing; ``day``: local day
    number of each hour and ``hour``: its local hour (0-23; the repeated hour of the autumn DST
    change is one merged hour, the missing spring hour is absent); ``net_flow``: mean net inflow
    of the hour [m³/h] (NaN: gap); ``weekend``: day type. The expected flow of an hour is the
    median of the same local hour over the last ``profile_days`` leak-free days of the same day
    type (``learn`` False for hours never learnt: holidays); the CUSUM runs on the excess in
    units of the quiet hours' noise scale. Hours in alarm are not learnt.
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
            expected, spread, floor = _hour_profile(grid, is_weekend, d, max(forget_day, 0), params)
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
    grid: FloatArray, is_weekend: BoolArray, d: int, lo: int, params: BurstParams
) -> tuple[FloatArray, FloatArray, float]:
    """Expected flow and noise scale of each quiet local hour of day ``d`` [m³/h] (NaN for the
    other hours), and the usual minimum hourly flow (the reference of burst sizes) [m³/h],
    from days ``lo`` to ``d - 1``."""
    q0, q1 = params.quiet_hours
    mu_all = np.full(24, np.nan)
    sigma_all = np.full(24, np.nan)
    # The last profile_days learnt days (holidays and alarms skipped), none older than 3 times.
    lo = max(lo, d - 3 * params.profile_days, 0)
    learnt = np.nonzero(np.isfinite(grid[lo:d, q0:q1]).any(axis=1))[0][-params.profile_days :]
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
    """Median of each column ignoring NaN (a sort when there is none: ``nanmedian`` of small
    arrays is 50 times slower)."""
    if np.isfinite(values).all():
        srt = np.sort(values, axis=0)
        n = len(srt)
        return np.asarray((srt[(n - 1) // 2] + srt[n // 2]) / 2.0)
    return np.asarray(np.nanmedian(values, axis=0))
