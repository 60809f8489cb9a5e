"""Night flows of a DMA from its hourly series: pure functions, no I/O.

A night is the local window ``[start_h, end_h)`` of a local date (02:00-04:00 by default), in the
site's time zone: on the spring DST date the window loses its missing hour, in autumn the
repeated hour counts once per UTC hour. A night is assessed only when every flow meter reported
in every hour of the window, no flow meter was frozen, and enough customer meters reported;
otherwise it is a gap with its reason, never a filled-in number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from core.arrays import BoolArray, FloatArray, IntArray

EPOCH = date(1970, 1, 1)


@dataclass(slots=True)
class Nights:
    """Nights of a DMA, one entry per local day from the first to the last day of the data.

    ``window_start``/``window_end`` [s since epoch]; ``mnf_m3h`` mean net inflow,
    ``metered_m3h`` customer consumption, ``net_m3h`` their difference [m³/h] (NaN for gaps);
    ``coverage`` share of customer meters that reported (NaN without customer meters);
    ``gap`` the reason a night was not assessed ("" when it was).
    """

    day: IntArray
    window_start: FloatArray
    window_end: FloatArray
    weekend: BoolArray
    mnf_m3h: FloatArray
    metered_m3h: FloatArray
    net_m3h: FloatArray
    coverage: FloatArray
    gap: list[str]


def window_bounds(day: int, tz: ZoneInfo, start_h: int, end_h: int) -> tuple[float, float, int]:
    """UTC bounds [s since epoch] of the night window of local ``day`` (days since
    1970-01-01) and how many distinct UTC hours it holds (1 fewer on the spring DST night, 1
    more in autumn when the repeated hour falls inside)."""
    local = EPOCH + timedelta(days=day)
    start = datetime.combine(local, time(start_h), tz).timestamp()
    end = datetime.combine(local, time(end_h), tz).timestamp()
    return start, end, round((end - start) / 3600.0)


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
    min_coverage: float = 0.9,
) -> Nights:
    """Nights of one DMA from its hourly series (see :class:`anomaly.store.DmaHours`):
    ``inflow_m3h`` net inflow per UTC hour (NaN: a flow meter missing), ``frozen``,
    ``metered_m3h`` and ``meters`` (customer consumption and meters that reported),
    ``customer_meters`` in the inventory."""
    if len(day) == 0:
        empty = np.zeros(0)
        return Nights(np.zeros(0, np.int64), empty, empty, np.zeros(0, bool), empty, empty,
                      empty, empty, [])  # fmt: skip
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
        gap=[""] * n,
    )
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
            cov = float(meters[rows].min()) / customer_meters
            out.coverage[j] = cov
            if cov < min_coverage:
                out.gap[j] = f"customer meters: {cov:.0%} reported (< {min_coverage:.0%})"
                continue
            metered = float(metered_m3h[rows].mean())
        else:
            metered = 0.0
        out.metered_m3h[j] = metered
        out.net_m3h[j] = mnf - metered
    return out


def nan_to_none(value: float) -> float | None:
    """``None`` for NaN (SQL NULL), else the value."""
    return None if math.isnan(value) else value
