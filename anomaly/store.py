"""SQL side of the anomaly stage: what the detectors read, computed by PostgreSQL from the
hourly rollup ``readings_hourly`` (see core/rollup.py) — raw readings never come into Python
and are not aggregated again at every scan.

- per DMA and UTC hour: net inflow of its flow meters, whether one was frozen, and the metered
  use of its customer meters (index differenced, or flow averaged, whichever each reports);
- per pressure sensor and local night: mean pressure over the night window, and per local hour
  of the day (the daily cycle that gives its head-loss coefficient);
- per customer meter and local day: consumption and continuity;
- per DMA and period: volumes for the water balance.

Hours are UTC hours, labelled with their local day and hour in the site's time zone; this
assumes zones with whole-hour offsets, as in France.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from core.arrays import BoolArray, FloatArray, IntArray

MAX_INDEX_INTERVAL_H = 2.0
"""Longest interval between two index readings whose difference still tells the use of an hour
[h]: a meter read daily says how much a household used in a day, not at night."""


@dataclass(slots=True)
class DmaInfo:
    """A DMA and its meters (device ids)."""

    site: str
    dma: str
    timezone: str
    mains_km: float | None
    connections: int | None
    private_km: float | None
    avg_pressure_m: float | None
    inlets: list[int] = field(default_factory=list)
    outlets: list[int] = field(default_factory=list)
    customer_meters: int = 0
    pressure_sensors: int = 0


def sites(conn: psycopg.Connection, site: str | None = None) -> list[tuple[str, str]]:
    """(site, time zone) of every site, or of one."""
    rows = conn.execute(
        "SELECT site, timezone FROM sites WHERE %(s)s::text IS NULL OR site = %(s)s ORDER BY site",
        {"s": site},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def dmas(conn: psycopg.Connection, site: str) -> list[DmaInfo]:
    """The DMAs of a site with their flow meters and numbers of customer meters and pressure
    sensors."""
    rows = conn.execute(
        """SELECT m.dma, s.timezone, m.mains_km, m.connections, m.private_km, m.avg_pressure_m,
                  coalesce(array_agg(d.id) FILTER (WHERE d.kind = 'flow_meter'
                                                   AND d.role = 'inlet'), '{}'),
                  coalesce(array_agg(d.id) FILTER (WHERE d.kind = 'flow_meter'
                                                   AND d.role = 'outlet'), '{}'),
                  count(d.id) FILTER (WHERE d.kind = 'water_meter'),
                  count(d.id) FILTER (WHERE d.kind = 'pressure_sensor')
           FROM dmas m JOIN sites s USING (site)
           LEFT JOIN devices d ON d.site = m.site AND d.dma = m.dma
           WHERE m.site = %s GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1""",
        (site,),
    ).fetchall()
    return [
        DmaInfo(
            *(site, r[0], r[1], r[2], r[3], r[4], r[5]),
            list(r[6]),
            list(r[7]),
            int(r[8]),
            int(r[9]),
        )
        for r in rows
    ]


@dataclass(slots=True)
class DmaHours:
    """Hourly series of one DMA, one entry per UTC hour with data (gaps are absent hours).

    ``hour_start`` [s since epoch], ``day`` local day number (days since 1970-01-01 local),
    ``hour`` local hour, ``weekend``; ``inflow_m3h`` net inflow (inlets minus outlets, NaN when a
    flow meter is missing), ``frozen`` (a flow meter repeated one value), ``metered_m3h``
    customer use [m³/h] of the ``meters`` customer meters that could tell it for that hour
    (0 without customer meters).
    """

    hour_start: FloatArray
    day: IntArray
    hour: IntArray
    weekend: BoolArray
    inflow_m3h: FloatArray
    frozen: BoolArray
    metered_m3h: FloatArray
    meters: IntArray


# A flow meter is frozen in an hour when it repeated one value: three readings or more in the
# hour all equal, or (a meter reporting hourly) the same value three hours running. A flat
# zero is a closed boundary valve on an outlet, but never a DMA's inlet (leakage never stops).
_FLOW_HOURS = """
WITH dev AS (
    SELECT id, dma, role = 'inlet' AS inlet,
           CASE WHEN role = 'outlet' THEN -1.0::float8 ELSE 1.0::float8 END AS sign
    FROM devices
    WHERE site = %(site)s AND dma IS NOT NULL AND kind = 'flow_meter'
      AND role IN ('inlet', 'outlet')
), per_meter AS (
    SELECT dev.dma, dev.sign, dev.inlet, h.hour, h.sum / h.count AS mean, h.count AS n,
           h.min = h.max AS flat, h.max AS top,
           min(h.min) OVER w3 = max(h.max) OVER w3 AND count(*) OVER w3 = 3
               AND h.hour - first_value(h.hour) OVER w3 = interval '2 hours' AS flat3
    FROM dev JOIN readings_hourly h ON h.device_id = dev.id AND h.metric_id = 1
    WHERE h.hour >= %(since)s AND h.hour < %(until)s
    WINDOW w3 AS (PARTITION BY h.device_id ORDER BY h.hour ROWS BETWEEN 2 PRECEDING
                  AND CURRENT ROW)
), flows AS (
    SELECT dma, hour, sum(sign * mean) AS inflow, count(*) AS flow_meters,
           bool_or(((n >= 3 AND flat) OR flat3) AND (inlet OR top <> 0)) AS frozen
    FROM per_meter GROUP BY 1, 2
)
SELECT dma, extract(epoch FROM hour)::float8,
       ((hour AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8,
       extract(hour FROM hour AT TIME ZONE %(tz)s)::int8,
       extract(isodow FROM hour AT TIME ZONE %(tz)s) >= 6,
       inflow, flow_meters::int8, frozen
FROM flows ORDER BY 1, 2
"""

# Metered use per DMA and hour. A meter's use in an hour comes from its index when it is read
# at least every MAX_INDEX_INTERVAL_H: the index at the start of each rollup hour with a
# reading is interpolated linearly between the last reading before it and the first in it (the
# rollup's last/last_time and first/first_time), and the use between two such boundaries is
# spread evenly over the hours between them — the use of exactly the UTC hour, not of an
# interval shifted by up to half the reading interval (which, with meters read hourly at random
# minutes, moved a share of the hours around the night window into it: an undercount on nights
# of heavy use). Else the use comes from its flow readings (the hour's mean); an index that
# goes backwards tells nothing.
_CUSTOMER_HOURS = """
WITH m AS (
    SELECT id, dma FROM devices
    WHERE site = %(site)s AND kind = 'water_meter' AND dma IS NOT NULL
), idx AS (
    SELECT m.dma, h.device_id, h.hour, h.first, h.first_time,
           lag(h.last) OVER w AS prev, lag(h.last_time) OVER w AS prev_time
    FROM m JOIN readings_hourly h ON h.device_id = m.id AND h.metric_id = 2
    WHERE h.hour >= %(since)s - interval '3 hours' AND h.hour < %(until)s
      AND extract(hour FROM h.hour AT TIME ZONE %(tz)s)::int = ANY(%(local_hours)s)
    WINDOW w AS (PARTITION BY h.device_id ORDER BY h.hour)
), bound AS (
    SELECT dma, device_id, hour,
           prev + (first - prev) * (extract(epoch FROM hour - prev_time)
                                    / extract(epoch FROM first_time - prev_time)) AS at_start
    FROM idx
    WHERE prev IS NOT NULL AND first >= prev
      AND first_time - prev_time <= %(max_gap)s * interval '1 hour'
), spans AS (
    SELECT dma, device_id, lag(hour) OVER w AS h0, hour AS h1,
           lag(at_start) OVER w AS i0, at_start AS i1
    FROM bound
    WINDOW w AS (PARTITION BY device_id ORDER BY hour)
), per AS (
    SELECT dma, device_id, g AS hour,
           (i1 - i0) / (extract(epoch FROM h1 - h0) / 3600.0) AS rate, 0 AS pref
    FROM spans
    CROSS JOIN LATERAL generate_series(h0, h1 - interval '1 hour', interval '1 hour') AS g
    WHERE i0 IS NOT NULL AND i1 >= i0 AND h1 - h0 <= %(max_gap)s * interval '1 hour'
    UNION ALL
    SELECT m.dma, h.device_id, h.hour, h.sum / h.count, 1
    FROM m JOIN readings_hourly h ON h.device_id = m.id AND h.metric_id = 1
    WHERE h.hour >= %(since)s AND h.hour < %(until)s
      AND extract(hour FROM h.hour AT TIME ZONE %(tz)s)::int = ANY(%(local_hours)s)
), best AS (
    SELECT DISTINCT ON (device_id, hour) dma, device_id, hour, rate
    FROM per WHERE hour >= %(since)s AND hour < %(until)s
    ORDER BY device_id, hour, pref
)
SELECT dma, extract(epoch FROM hour)::float8, sum(rate), count(*)::int8
FROM best GROUP BY 1, 2
"""


def dma_hours(
    conn: psycopg.Connection, site: str, tz: str, since: datetime, until: datetime,
    dma_list: list[DmaInfo], local_hours: tuple[int, ...] = tuple(range(24)),
) -> dict[str, DmaHours]:  # fmt: skip
    """Hourly series of every DMA of ``site`` between ``since`` and ``until``: flow meters
    from the rollup, then the customer meters' hourly use (a second query, skipped when the
    site has no DMA customer meters) in the ``local_hours`` only — the detectors read the
    night, and customer meters read hourly are as many rollup rows as readings."""
    want = {d.dma: len(d.inlets) + len(d.outlets) for d in dma_list}
    # The use of an hour comes from the index readings on either side of it.
    wanted = sorted({(h + d) % 24 for h in local_hours for d in (-1, 0, 1)})
    params = {"site": site, "tz": tz, "since": since, "until": until, "local_hours": wanted}
    with conn.cursor(binary=True) as cur:
        cur.execute(_FLOW_HOURS, params)
        rows = cur.fetchall()  # hourly aggregates: 8,760 rows per DMA and year
    cols: dict[str, list[Any]] = {}
    if rows:
        dmas_col, t, day, hour, weekend, inflow, meters, frozen = zip(*rows, strict=True)
        names = np.asarray(dmas_col, dtype=object)
        # Rows come sorted by DMA: split at the boundaries.
        cuts = np.nonzero(names[1:] != names[:-1])[0] + 1
        bounds = zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(rows)]]), strict=True)
        inflow_arr = np.array([np.nan if v is None else v for v in inflow], dtype=np.float64)
        meters_arr = np.asarray(meters, dtype=np.int64)
        for lo, hi in bounds:
            dma = str(names[lo])
            if dma not in want:
                continue
            ok = meters_arr[lo:hi] == want[dma]
            cols[dma] = [
                np.asarray(t[lo:hi], dtype=np.float64),
                np.asarray(day[lo:hi], dtype=np.int64),
                np.asarray(hour[lo:hi], dtype=np.int64),
                np.asarray(weekend[lo:hi], dtype=bool),
                np.where(ok, inflow_arr[lo:hi], np.nan),
                np.asarray(frozen[lo:hi], dtype=bool),
            ]
    customers: dict[str, dict[float, tuple[float, int]]] = {}
    if any(d.customer_meters for d in dma_list):
        with conn.cursor(binary=True) as cur:
            cur.execute(_CUSTOMER_HOURS, {**params, "max_gap": MAX_INDEX_INTERVAL_H})
            for dma, t, rate, meters in cur:
                customers.setdefault(dma, {})[t] = (rate, meters)
    out: dict[str, DmaHours] = {}
    for dma, acc in cols.items():
        cust = customers.get(dma, {})
        if cust:
            metered = np.array([cust.get(v, (0.0, 0))[0] for v in acc[0]], dtype=np.float64)
            reporting = np.array([cust.get(v, (0.0, 0))[1] for v in acc[0]], dtype=np.int64)
        else:
            metered = np.zeros(len(acc[0]))
            reporting = np.zeros(len(acc[0]), dtype=np.int64)
        out[dma] = DmaHours(
            hour_start=acc[0],
            day=acc[1],
            hour=acc[2],
            weekend=acc[3],
            inflow_m3h=acc[4],
            frozen=acc[5],
            metered_m3h=metered,
            meters=reporting,
        )
    return out


@dataclass(slots=True)
class PressureNights:
    """Night pressure of the sensors of one DMA: ``days`` local day numbers, ``bar`` sensors ×
    days mean pressure over the night window [bar] (NaN: no reading), ``by_hour`` sensors × 24
    mean pressure per local hour of the day over the period [bar] (the daily cycle that gives
    each sensor's head-loss coefficient, :func:`anomaly.pressure.head_loss_slope`)."""

    sensors: list[int]
    days: IntArray
    bar: FloatArray
    by_hour: FloatArray


_PRESSURE_NIGHTS = """
SELECT d.dma, h.device_id,
       ((h.hour AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8,
       sum(h.sum) / sum(h.count)
FROM devices d JOIN readings_hourly h ON h.device_id = d.id AND h.metric_id = 3
WHERE d.site = %(site)s AND d.kind = 'pressure_sensor' AND d.dma IS NOT NULL
  AND h.hour >= %(since)s AND h.hour < %(until)s
  AND extract(hour FROM h.hour AT TIME ZONE %(tz)s) >= %(start_h)s
  AND extract(hour FROM h.hour AT TIME ZONE %(tz)s) < %(end_h)s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

# Mean pressure of each sensor per local hour of the day over the period: with the DMA's mean
# squared inflow per hour of the day, the daily demand cycle gives the head-loss coefficient.
_PRESSURE_PROFILE = """
SELECT h.device_id, extract(hour FROM h.hour AT TIME ZONE %(tz)s)::int8,
       sum(h.sum) / sum(h.count), count(*)
FROM devices d JOIN readings_hourly h ON h.device_id = d.id AND h.metric_id = 3
WHERE d.site = %(site)s AND d.kind = 'pressure_sensor' AND d.dma IS NOT NULL
  AND h.hour >= %(since)s AND h.hour < %(until)s
GROUP BY 1, 2
"""


def pressure_nights(
    conn: psycopg.Connection, site: str, tz: str, since: datetime, until: datetime,
    start_h: int, end_h: int,
) -> dict[str, PressureNights]:  # fmt: skip
    """Night pressure and head-loss coefficient of every pressure sensor of ``site``, per DMA
    (DMAs without pressure sensors are absent)."""
    params = {"site": site, "tz": tz, "since": since, "until": until, "start_h": start_h,
              "end_h": end_h}  # fmt: skip
    rows = conn.execute(_PRESSURE_NIGHTS, params).fetchall()
    if not rows:
        return {}
    profile: dict[int, FloatArray] = {}
    for sensor, hod, bar, hours in conn.execute(_PRESSURE_PROFILE, params):
        if int(hours) >= 2:  # two days of that hour at least
            profile.setdefault(int(sensor), np.full(24, np.nan))[int(hod)] = float(bar)
    per_dma: dict[str, dict[int, dict[int, float]]] = {}
    for dma, sensor, day, bar in rows:
        per_dma.setdefault(dma, {}).setdefault(int(sensor), {})[int(day)] = float(bar)
    out: dict[str, PressureNights] = {}
    for dma, sensors in per_dma.items():
        first = min(min(v) for v in sensors.values())
        last = max(max(v) for v in sensors.values())
        days = np.arange(first, last + 1, dtype=np.int64)
        ids = sorted(sensors)
        bar = np.full((len(ids), len(days)), np.nan)
        for i, sensor in enumerate(ids):
            for day, value in sensors[sensor].items():
                bar[i, day - first] = value
        hod = np.stack([profile.get(s, np.full(24, np.nan)) for s in ids])
        out[dma] = PressureNights(ids, days, bar, hod)
    return out


# Per customer meter and local day, from the hourly rollup of its index: use between the last
# readings of successive hours, assigned to the day of the later one.
_CUSTOMER_DAYS = """
SELECT r.device_id, d.device, d.dma,
       ((r.hour AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8 AS day,
       sum(r.last - r.prev) AS consumption,
       extract(epoch FROM max(r.last_time) - min(r.prev_time)) / 3600.0 AS covered_h,
       max(extract(epoch FROM r.last_time - r.prev_time)) / 3600.0 AS max_interval_h,
       count(*) FILTER (WHERE r.last - r.prev <= 0) AS zero_intervals,
       min((r.last - r.prev) / (extract(epoch FROM r.last_time - r.prev_time) / 3600.0))
           AS min_rate,
       bool_or(r.last < r.prev) AS backwards
FROM (
    SELECT device_id, hour, last, last_time,
           lag(last) OVER w AS prev, lag(last_time) OVER w AS prev_time
    FROM readings_hourly
    WHERE metric_id = 2 AND hour >= %(since)s - interval '1 day' AND hour < %(until)s
      AND device_id IN (SELECT id FROM devices WHERE site = %(site)s AND kind = 'water_meter')
    WINDOW w AS (PARTITION BY device_id ORDER BY hour)
) r JOIN devices d ON d.id = r.device_id
WHERE r.prev IS NOT NULL AND r.hour >= %(since)s AND r.last_time > r.prev_time
GROUP BY 1, 2, 3, 4
ORDER BY 1, 4
"""


@dataclass(slots=True)
class CustomerDays:
    """Daily aggregates of the customer meters of a site: meters × local days (``first_day``
    onwards). ``consumption_m3`` NaN where a day has no data or the index went backwards (a
    reset or a meter change is reported, not turned into a negative consumption); intervals
    are between the last readings of successive hours of the rollup."""

    devices: list[str]
    dmas: list[str | None]
    first_day: int
    consumption_m3: FloatArray
    covered_h: FloatArray
    max_interval_h: FloatArray
    zero_intervals: FloatArray
    min_rate_m3h: FloatArray
    backwards: list[str]


_CUSTOMER_DAILY = """
SELECT h.device_id, d.device, d.dma,
       ((h.hour AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8 AS day, max(h.max)
FROM readings_hourly h JOIN devices d ON d.id = h.device_id
WHERE h.metric_id = 2 AND h.hour >= %(since)s - interval '1 day' AND h.hour < %(until)s
  AND d.site = %(site)s AND d.kind = 'water_meter'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 4
"""


def customer_days(
    conn: psycopg.Connection, site: str, tz: str, since: datetime, until: datetime,
    hourly_since: datetime | None = None,
) -> CustomerDays:  # fmt: skip
    """Per customer meter and local day from ``since``: consumption (the day's highest index
    minus the previous day's), and — from ``hourly_since`` (default ``since``), since they read
    every hour of the rollup — coverage and continuity (see
    :func:`anomaly.customers.continuous_flow_state`)."""
    params = {"site": site, "tz": tz, "since": since, "until": until}
    daily = conn.execute(_CUSTOMER_DAILY, params).fetchall()
    if not daily:
        empty = np.zeros((0, 0))
        return CustomerDays([], [], 0, empty, empty, empty, empty, empty, [])
    index: dict[int, int] = {}
    devices: list[str] = []
    dma_of: list[str | None] = []
    for r in daily:
        if r[0] not in index:
            index[r[0]] = len(devices)
            devices.append(r[1])
            dma_of.append(r[2])
    first = min(int(r[3]) for r in daily) + 1  # the first day only serves as a reference
    ndays = max(int(r[3]) for r in daily) - first + 1
    shape = (len(devices), max(ndays, 0))
    top = np.full((len(devices), shape[1] + 1), np.nan)
    for r in daily:
        top[index[r[0]], int(r[3]) - first + 1] = float(r[4])
    consumption = np.diff(top, axis=1)
    backwards = [devices[i] for i in np.nonzero((consumption < 0).any(axis=1))[0]]
    consumption[consumption < 0] = np.nan
    arrays = [np.full(shape, np.nan) for _ in range(4)]
    rows = conn.execute(_CUSTOMER_DAYS, {**params, "since": hourly_since or since}).fetchall()
    for r in rows:
        if r[0] not in index or not 0 <= int(r[3]) - first < shape[1]:
            continue
        i, j = index[r[0]], int(r[3]) - first
        if r[9]:
            if r[1] not in backwards:
                backwards.append(r[1])
            consumption[i, j] = np.nan
            continue
        for k, v in enumerate((r[5], r[6], r[7], r[8])):
            arrays[k][i, j] = v
    covered, longest, zeros, min_rate = arrays
    return CustomerDays(
        devices, dma_of, first, consumption, covered, longest, zeros, min_rate, backwards
    )


# Volumes from the rollup: index meters by the difference of their extreme readings in the
# period, flow-only customer meters by their hourly mean flows times 1 h.
_VOLUMES = """
SELECT d.dma, d.kind, d.role, count(DISTINCT d.id),
       sum(coalesce(v.used, f.used)), min(coalesce(v.first_time, f.first_time)),
       max(coalesce(v.last_time, f.last_time)),
       count(*) FILTER (WHERE v.device_id IS NOT NULL OR f.device_id IS NOT NULL)
FROM devices d
LEFT JOIN LATERAL (
    SELECT h.device_id, max(h.max) - min(h.min) AS used,
           min(h.first_time) AS first_time, max(h.last_time) AS last_time
    FROM readings_hourly h
    WHERE h.device_id = d.id AND h.metric_id = 2
      AND h.hour >= %(since)s AND h.hour < %(until)s
    GROUP BY h.device_id
) v ON true
LEFT JOIN LATERAL (
    SELECT h.device_id, sum(h.sum / h.count) AS used,
           min(h.first_time) AS first_time, max(h.last_time) AS last_time
    FROM readings_hourly h
    WHERE h.device_id = d.id AND h.metric_id = 1 AND d.kind = 'water_meter'
      AND h.hour >= %(since)s AND h.hour < %(until)s
    GROUP BY h.device_id
) f ON v.device_id IS NULL
WHERE d.site = %(site)s AND d.dma IS NOT NULL
  AND (d.kind = 'water_meter' OR (d.kind = 'flow_meter' AND d.role IN ('inlet', 'outlet')))
GROUP BY 1, 2, 3
"""


def dma_volumes(
    conn: psycopg.Connection, site: str, since: datetime, until: datetime
) -> dict[str, dict[str, Any]]:
    """Per DMA: volumes [m³] through inlets, outlets and customer meters between ``since`` and
    ``until`` (whole UTC hours), and how many meters of each had data."""
    out: dict[str, dict[str, Any]] = {}
    for dma, kind, role, meters, used, first, last, reporting in conn.execute(
        _VOLUMES, {"site": site, "since": since, "until": until}
    ):
        key = "customers" if kind == "water_meter" else str(role)
        entry = out.setdefault(dma, {})
        entry[key] = {
            "m3": float(used or 0.0),
            "meters": int(meters),
            "reporting": int(reporting),
            "first": first,
            "last": last,
        }
    return out
