"""Customer meters: continuous flow (a leak behind the meter) and consumption above twice the
usual level (the "loi Warsmann" notice threshold, art. L. 2224-12-4 of the general code of local
authorities). Pure functions over daily aggregates; volumes [m³], flows [m³/h], durations [h].

Days are assessed one by one: 1.0 anomalous, 0.0 normal, NaN when the data cannot tell (gaps).
A gap neither opens nor closes an alert.
"""

from __future__ import annotations

import numpy as np

from core.arrays import FloatArray


def flag_runs(state: FloatArray) -> list[tuple[int, int | None]]:
    """Runs of anomalous days in ``state`` (1 anomalous, 0 normal, NaN unknown): (index of the
    first anomalous day, index of the first normal day after it, or None if still running)."""
    runs: list[tuple[int, int | None]] = []
    start: int | None = None
    for i, v in enumerate(state):
        if v == 1.0 and start is None:
            start = i
        elif v == 0.0 and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, None))
    return runs


def continuous_flow_state(
    covered_h: FloatArray,
    max_interval_h: FloatArray,
    zero_intervals: FloatArray,
    min_rate_m3h: FloatArray,
    min_flow_m3h: float = 0.001,
    max_gap_h: float = 2.0,
    min_days: int = 2,
) -> FloatArray:
    """Whether a meter never stopped over each day.

    Per day: ``covered_h`` hours between its first and last interval, the longest interval
    between two readings ``max_interval_h``, the number of intervals without consumption
    ``zero_intervals`` and the smallest flow of an interval ``min_rate_m3h``. A day is anomalous
    when it is covered (≥ 22 h, no interval longer than ``max_gap_h``, which could hide a pause)
    and every interval drew at least ``min_flow_m3h`` (about the meter's resolution); normal
    when some interval drew nothing; unknown otherwise. A day counts as anomalous only from the
    ``min_days``-th covered day in a row without a pause: a household that happens to draw
    water in every hour of one day is not a leak, a leak runs for days.
    """
    day = np.full(len(covered_h), np.nan)
    covered = (covered_h >= 22.0) & (max_interval_h <= max_gap_h)
    day[zero_intervals > 0] = 0.0
    day[covered & (zero_intervals == 0) & (min_rate_m3h >= min_flow_m3h)] = 1.0
    state = np.where(day == 1.0, np.nan, day)
    run = 0
    for i, v in enumerate(day):
        run = run + 1 if v == 1.0 else 0
        if run >= min_days:
            state[i] = 1.0
    return state


def high_consumption_state(
    daily_m3: FloatArray,
    window_days: int = 7,
    history_days: int = 56,
    ratio: float = 2.0,
    min_window_m3: float = 0.5,
) -> tuple[FloatArray, FloatArray]:
    """Whether the consumption of the last ``window_days`` days is above ``ratio`` times the
    usual consumption of as many days (the mean over the ``history_days`` before).

    ``daily_m3``: consumption per day (meters × days, NaN for a day without data). A day is
    unknown when a day of its window or more than a quarter of its history is missing, or when
    the window drew less than ``min_window_m3`` (tiny volumes make ratios meaningless).
    Returns (state, ratio of window to usual), both meters × days.
    """
    m, d = daily_m3.shape
    state = np.full((m, d), np.nan)
    ratios = np.full((m, d), np.nan)
    if d < window_days + history_days:
        return state, ratios
    filled = np.nan_to_num(daily_m3)
    known = np.isfinite(daily_m3).astype(float)
    csum = np.concatenate([np.zeros((m, 1)), np.cumsum(filled, axis=1)], axis=1)
    ccount = np.concatenate([np.zeros((m, 1)), np.cumsum(known, axis=1)], axis=1)
    end = np.arange(window_days + history_days, d + 1)  # exclusive end of each window
    w_sum = csum[:, end] - csum[:, end - window_days]
    w_cnt = ccount[:, end] - ccount[:, end - window_days]
    h_lo, h_hi = end - window_days - history_days, end - window_days
    h_sum = csum[:, h_hi] - csum[:, h_lo]
    h_cnt = ccount[:, h_hi] - ccount[:, h_lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        usual = h_sum / h_cnt * window_days
        r = w_sum / usual
    ok = (w_cnt == window_days) & (h_cnt >= 0.75 * history_days) & (w_sum >= min_window_m3)
    cols = end - 1
    ratios[:, cols] = np.where(ok, r, np.nan)
    state[:, cols] = np.where(ok, (r > ratio).astype(float), np.nan)
    return state, ratios
