"""Night flows of a DMA from its hourly series: pure functions, no I/O.

A night is the local window ``[start_h, end_h)`` of a local date (02:00-04:00 by default), in the
site's time zone: on the spring DST date the window loses its missing hour, in autumn the
repeated hour counts once per UTC hour. A night is assessed only when every flow meter reported
in every hour of the window and no flow meter was frozen; otherwise it is a gap with its reason,
never a filled-in number.

Customer meters are information, not a veto: the metered night use of the meters that could
tell it is subtracted (net night flow), what no meter measures is legitimate night use that the
baseline learns. When some of the meters that usually report are missing, their share is
counted at the mean of those that reported (:func:`metered_use`); when too few reported to
say, the night's net flow is not assessed and the reason is noted — this is not a gap of the
DMA: its own meters are fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core.arrays import BoolArray, FloatArray, IntArray

EPOCH = date(1970, 1, 1)


@dataclass(slots=True)
class Nights:
    """Nights of a DMA, one entry per local day from the first to the last day of the data.

    ``window_start``/``window_end`` [s since epoch]; ``mnf_m3h`` mean net inflow,
    ``metered_m3h`` customer consumption, ``net_m3h`` their difference [m³/h] (NaN for gaps);
    ``coverage`` share of the DMA's customer meters whose night use was measured (NaN
    without customer meters); ``meters`` how many; ``gap`` the reason a night was not assessed
    because of the DMA's own flow meters ("" when it was); ``note`` what else limited the
    night (too few customer meters reported), "" when nothing did.
    """

    day: IntArray
    window_start: FloatArray
    window_end: FloatArray
    weekend: BoolArray
    mnf_m3h: FloatArray
    metered_m3h: FloatArray
    net_m3h: FloatArray
    coverage: FloatArray
    meters: IntArray
    gap: list[str]
    note: list[str]


def window_bounds(day: int, tz: ZoneInfo, start_h: int, end_h: int) -> tuple[float, float, int]:
    """UTC bounds [s since epoch] of the night window of local ``day`` (days since
    1970-01-01) and how many distinct UTC hours it holds (1 fewer on the spring DST night, 1
    more in autumn when the repeated hour falls inside)."""
    local = EPOCH + timedelta(days=day)
    start = datetime.combine(local, time(start_h), tz).timestamp()
    end = datetime.combine(local, time(end_h), tz).timestamp()
    return start, end, round((end - start) / 3600.0)


def metered_use(
    metered_m3h: FloatArray, meters: IntArray, min_share: float = 0.5, window: int = 14 * 24
) -> tuple[FloatArray, IntArray, BoolArray]:
    """Metered use of each hour [m³/h] counting the meters that usually report: ``metered_m3h``
    is the use of the ``meters`` that reported in the hour; the usual count is the most that
    reported in any of the last ``window`` hours. A missing meter counts at the mean of those
    that reported, as long as at least ``min_share`` of the usual ones did (else the hour's use
    is unknown: ``ok`` False). Returns (use, usual count, ok); an hour of a DMA whose customer
    meters cannot tell night use (none, or read daily) has use 0 and ok True."""
    n = len(meters)
    if n == 0:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, bool)
    padded = np.concatenate([np.zeros(window - 1, dtype=np.int64), meters])
    usual = sliding_window_view(padded, window).max(axis=1)
    ok = meters >= min_share * usual
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(meters > 0, metered_m3h * usual / np.maximum(meters, 1), 0.0)
    return np.where(ok, scaled, np.nan), usual, ok


def night_series(
    hour_start: FloatArray,
    day: IntArray,
    hour: IntArray,
    inflow_m3h: FloatArray,
    frozen: BoolArray,
    metered_m3h: FloatArray,
    meters: IntArray,
    customer_meters: int,
    tz: ZoneInfo,
    start_h: int = 2,
    end_h: int = 4,
    min_coverage: float = 0.5,
) -> Nights:
    """Nights of one DMA from its hourly series (see :class:`anomaly.store.DmaHours`):
    ``inflow_m3h`` net inflow per UTC hour (NaN: a flow meter missing), ``frozen``,
    ``metered_m3h`` and ``meters`` (customer use and meters that told it, per hour),
    ``customer_meters`` in the inventory; ``min_coverage`` of the usually reporting meters
    must report for the night's net flow to be assessed (:func:`metered_use`)."""
    if len(day) == 0:
        empty = np.zeros(0)
        return Nights(np.zeros(0, np.int64), empty, empty, np.zeros(0, bool), empty, empty,
                      empty, empty, np.zeros(0, np.int64), [], [])  # fmt: skip
    # Nights from the first whose window begins once the DMA has data: the nights before its
    # meters first reported are not nights it was monitored (not gaps).
    first_hour = float(hour_start.min())
    first_day = int(day.min())
    while window_bounds(first_day, tz, start_h, end_h)[0] < first_hour:
        first_day += 1
    days = np.arange(first_day, int(day.max()) + 1, dtype=np.int64)
    n = len(days)
    out = Nights(
        day=days,
        window_start=np.zeros(n),
        window_end=np.zeros(n),
        weekend=np.zeros(n, dtype=bool),
        mnf_m3h=np.full(n, np.nan),
        metered_m3h=np.full(n, np.nan),
        net_m3h=np.full(n, np.nan),
        coverage=np.full(n, np.nan),
        meters=np.zeros(n, dtype=np.int64),
        gap=[""] * n,
        note=[""] * n,
    )
    use, usual, _ok = metered_use(metered_m3h, meters, min_coverage)
    in_window = (hour >= start_h) & (hour < end_h)
    rows_of: dict[int, list[int]] = {}
    for i in np.nonzero(in_window)[0]:
        rows_of.setdefault(int(day[i]), []).append(int(i))
    for j, d in enumerate(days):
        ws, we, expected = window_bounds(int(d), tz, start_h, end_h)
        out.window_start[j], out.window_end[j] = ws, we
        out.weekend[j] = (EPOCH + timedelta(days=int(d))).weekday() >= 5
        rows = rows_of.get(int(d), [])
        flows = inflow_m3h[rows]
        if len(rows) < expected or not np.isfinite(flows).all():
            missing = expected - int(np.isfinite(flows).sum())
            out.gap[j] = f"flow meter data missing for {missing} of {expected} hours"
            continue
        if frozen[rows].any():
            out.gap[j] = "a flow meter repeated one value (frozen)"
            continue
        mnf = float(flows.mean())
        out.mnf_m3h[j] = mnf
        if customer_meters:
            told = int(meters[rows].min())
            out.meters[j] = told
            out.coverage[j] = told / customer_meters
        night_use = use[rows]
        if not np.isfinite(night_use).all():
            seen, wanted = int(meters[rows].min()), int(usual[rows].max())
            out.note[j] = (f"customer meters: {seen} of the usual {wanted} reported "
                           f"(< {min_coverage:.0%}): net night flow not assessed")  # fmt: skip
            continue
        metered = float(night_use.mean())
        out.metered_m3h[j] = metered
        out.net_m3h[j] = mnf - metered
    return out


def nan_to_none(value: float) -> float | None:
    """``None`` for NaN (SQL NULL), else the value."""
    return None if math.isnan(value) else value
