"""SQL side of the anomaly stage: hourly aggregates of the DMA meters, daily aggregates of the
customer meters and the water balance, all computed by PostgreSQL (raw readings never come into
Python), and the ``alerts`` and ``dma_nights`` tables.

Hours are UTC hours (``date_trunc('hour', time)``), labelled with their local day and hour in the
site's time zone; this assumes zones with whole-hour offsets, as in France.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import psycopg

from core.arrays import BoolArray, FloatArray, IntArray
from core.clock import utc


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


def sites(conn: psycopg.Connection, site: str | None = None) -> list[tuple[str, str]]:
    """(site, time zone) of every site, or of one."""
    rows = conn.execute(
        "SELECT site, timezone FROM sites WHERE %(s)s::text IS NULL OR site = %(s)s ORDER BY site",
        {"s": site},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def dmas(conn: psycopg.Connection, site: str) -> list[DmaInfo]:
    """The DMAs of a site with their flow meters and number of customer meters."""
    rows = conn.execute(
        """SELECT m.dma, s.timezone, m.mains_km, m.connections, m.private_km, m.avg_pressure_m,
                  coalesce(array_agg(d.id) FILTER (WHERE d.kind = 'flow_meter'
                                                   AND d.role = 'inlet'), '{}'),
                  coalesce(array_agg(d.id) FILTER (WHERE d.kind = 'flow_meter'
                                                   AND d.role = 'outlet'), '{}'),
                  count(d.id) FILTER (WHERE d.kind = 'water_meter')
           FROM dmas m JOIN sites s USING (site)
           LEFT JOIN devices d ON d.site = m.site AND d.dma = m.dma
           WHERE m.site = %s GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1""",
        (site,),
    ).fetchall()
    return [
        DmaInfo(site, r[0], r[1], r[2], r[3], r[4], r[5], list(r[6]), list(r[7]), int(r[8]))
        for r in rows
    ]


@dataclass(slots=True)
class DmaHours:
    """Hourly series of one DMA, one entry per UTC hour with data (gaps are absent hours).

    ``hour_start`` [s since epoch], ``day`` local day number (days since 1970-01-01 local),
    ``hour`` local hour, ``weekend``; ``inflow_m3h`` net inflow (inlets minus outlets, NaN when a
    flow meter is missing), ``frozen`` (a flow meter repeated one value all hour),
    ``metered_m3h`` customer consumption (0 without customer meters), ``meters`` customer meters
    that reported.
    """

    hour_start: FloatArray
    day: IntArray
    hour: IntArray
    weekend: BoolArray
    inflow_m3h: FloatArray
    frozen: BoolArray
    metered_m3h: FloatArray
    meters: IntArray


_FLOW_HOURS = """
WITH dev AS (
    SELECT id, dma, CASE WHEN role = 'outlet' THEN -1.0::float8 ELSE 1.0::float8 END AS sign
    FROM devices
    WHERE site = %(site)s AND dma IS NOT NULL AND kind = 'flow_meter'
      AND role IN ('inlet', 'outlet')
), per_meter AS (
    SELECT dev.dma, dev.sign, date_bin('1 hour', r.time, 'epoch') AS hour,
           avg(r.value) AS mean, count(*) AS n, min(r.value) = max(r.value) AS flat
    FROM dev JOIN readings r ON r.device_id = dev.id AND r.metric_id = 1
    WHERE r.time >= %(since)s AND r.time < %(until)s
    GROUP BY dev.dma, dev.id, dev.sign, 3
), flows AS (
    SELECT dma, hour, sum(sign * mean) AS inflow, count(*) AS flow_meters,
           bool_or(n >= 3 AND flat) AS frozen
    FROM per_meter GROUP BY 1, 2
)
SELECT dma, extract(epoch FROM hour)::float8,
       ((hour AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8,
       extract(hour FROM hour AT TIME ZONE %(tz)s)::int8,
       extract(isodow FROM hour AT TIME ZONE %(tz)s) >= 6,
       inflow, flow_meters::int8, frozen
FROM flows ORDER BY 1, 2
"""

_CUSTOMER_HOURS = """
SELECT d.dma, extract(epoch FROM date_trunc('hour', r.time - (r.time - r.prev_time) / 2))::float8,
       sum((r.value - r.prev) / (extract(epoch FROM r.time - r.prev_time) / 3600.0)),
       count(DISTINCT r.device_id)::int8
FROM (
    SELECT device_id, time, value, lag(value) OVER w AS prev, lag(time) OVER w AS prev_time
    FROM readings
    WHERE metric_id = 2 AND time >= %(since)s - interval '2 hours' AND time < %(until)s
      AND device_id IN (SELECT id FROM devices
                        WHERE site = %(site)s AND kind = 'water_meter' AND dma IS NOT NULL)
    WINDOW w AS (PARTITION BY device_id ORDER BY time)
) r JOIN devices d ON d.id = r.device_id
WHERE r.prev IS NOT NULL AND r.value >= r.prev
  AND r.time - r.prev_time <= interval '2 hours' AND r.time > r.prev_time
GROUP BY 1, 2
"""


def dma_hours(
    conn: psycopg.Connection, site: str, tz: str, since: datetime, until: datetime,
    dma_list: list[DmaInfo],
) -> dict[str, DmaHours]:  # fmt: skip
    """Hourly series of every DMA of ``site`` between ``since`` and ``until``: flow meters
    aggregated per hour in SQL, then the customer meters' hourly consumption
    (a second query, skipped when the site has no DMA customer meters)."""
    want = {d.dma: len(d.inlets) + len(d.outlets) for d in dma_list}
    params = {"site": site, "tz": tz, "since": since, "until": until}
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
            cur.execute(_CUSTOMER_HOURS, params)
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


_CUSTOMER_DAYS = """
SELECT r.device_id, d.device, d.dma,
       ((date_trunc('hour', r.time) AT TIME ZONE %(tz)s)::date - date '1970-01-01')::int8 AS day,
       sum(r.value - r.prev) AS consumption,
       extract(epoch FROM max(r.time) - min(r.prev_time)) / 3600.0 AS covered_h,
       max(extract(epoch FROM r.time - r.prev_time)) / 3600.0 AS max_interval_h,
       count(*) FILTER (WHERE r.value - r.prev <= 0) AS zero_intervals,
       min((r.value - r.prev) / (extract(epoch FROM r.time - r.prev_time) / 3600.0))
           AS min_rate,
       bool_or(r.value < r.prev) AS backwards
FROM (
    SELECT device_id, time, value, lag(value) OVER w AS prev, lag(time) OVER w AS prev_time
    FROM readings
    WHERE metric_id = 2 AND time >= %(since)s - interval '1 day' AND time < %(until)s
      AND device_id IN (SELECT id FROM devices WHERE site = %(site)s AND kind = 'water_meter')
    WINDOW w AS (PARTITION BY device_id ORDER BY time)
) r JOIN devices d ON d.id = r.device_id
WHERE r.prev IS NOT NULL AND r.time >= %(since)s AND r.time > r.prev_time
GROUP BY 1, 2, 3, 4
ORDER BY 1, 4
"""


@dataclass(slots=True)
class CustomerDays:
    """Daily aggregates of the customer meters of a site: meters × local days (``first_day``
    onwards). ``consumption_m3`` NaN where a day has no data or the index went backwards (a
    reset or a meter change is reported, not turned into a negative consumption)."""

    devices: list[str]
    dmas: list[str | None]
    first_day: int
    consumption_m3: FloatArray
    covered_h: FloatArray
    max_interval_h: FloatArray
    zero_intervals: FloatArray
    min_rate_m3h: FloatArray
    backwards: list[str]


def customer_days(
    conn: psycopg.Connection, site: str, tz: str, since: datetime, until: datetime
) -> CustomerDays:
    """Per customer meter and local day: consumption, coverage and continuity (see
    :func:`anomaly.customers.continuous_flow_state`)."""
    rows = conn.execute(
        _CUSTOMER_DAYS, {"site": site, "tz": tz, "since": since, "until": until}
    ).fetchall()
    if not rows:
        empty = np.zeros((0, 0))
        return CustomerDays([], [], 0, empty, empty, empty, empty, empty, [])
    index: dict[int, int] = {}
    devices: list[str] = []
    dma_of: list[str | None] = []
    for r in rows:
        if r[0] not in index:
            index[r[0]] = len(devices)
            devices.append(r[1])
            dma_of.append(r[2])
    first = min(int(r[3]) for r in rows)
    ndays = max(int(r[3]) for r in rows) - first + 1
    shape = (len(devices), ndays)
    arrays = [np.full(shape, np.nan) for _ in range(5)]
    backwards: list[str] = []
    for r in rows:
        i, j = index[r[0]], int(r[3]) - first
        if r[9]:
            if r[1] not in backwards:
                backwards.append(r[1])
            continue
        for k, v in enumerate((r[4], r[5], r[6], r[7], r[8])):
            arrays[k][i, j] = v
    consumption, covered, longest, zeros, min_rate = arrays
    return CustomerDays(
        devices, dma_of, first, consumption, covered, longest, zeros, min_rate, backwards
    )


_VOLUMES = """
SELECT d.dma, d.kind, d.role, count(DISTINCT d.id),
       sum(v.used), min(v.first_time), max(v.last_time), count(v.device_id)
FROM devices d
LEFT JOIN LATERAL (
    SELECT r.device_id, max(r.value) - min(r.value) AS used,
           min(r.time) AS first_time, max(r.time) AS last_time
    FROM readings r
    WHERE r.device_id = d.id AND r.metric_id = 2 AND r.time >= %(since)s AND r.time <= %(until)s
    GROUP BY r.device_id
) v ON true
WHERE d.site = %(site)s AND d.dma IS NOT NULL
  AND (d.kind = 'water_meter' OR (d.kind = 'flow_meter' AND d.role IN ('inlet', 'outlet')))
GROUP BY 1, 2, 3
"""


def dma_volumes(
    conn: psycopg.Connection, site: str, since: datetime, until: datetime
) -> dict[str, dict[str, Any]]:
    """Per DMA: volumes [m³] through inlets, outlets and customer meters between ``since`` and
    ``until`` (index differences), and how many meters of each had data."""
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


# --- alerts --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Found:
    """An anomaly found by a detector, to be written as an alert (times [s since epoch])."""

    kind: str
    site: str
    subject_type: str
    subject: str
    opened_at: float
    started_at: float | None
    ended_at: float | None
    seen_until: float
    flow_m3h: float | None
    details: dict[str, Any]


@dataclass(slots=True)
class Reconciled:
    """What a reconciliation did."""

    opened: int = 0
    updated: int = 0
    closed: int = 0


def _ts(value: float | None) -> datetime | None:
    return None if value is None else utc(value)


def reconcile(
    conn: psycopg.Connection,
    site: str,
    subject_type: str,
    subject: str,
    kind: str,
    found: list[Found],
    since: float,
    until: float,
) -> Reconciled:
    """Make the alerts of one subject and kind agree with what the detector found between
    ``since`` and ``until``: an alert whose span overlaps an episode is updated (and resolved
    by the service when the episode ended), a new episode opens an alert, and an active alert
    opened in the range that no episode confirms any more is closed at ``until``."""
    result = Reconciled()
    existing = conn.execute(
        """SELECT id, state, extract(epoch FROM opened_at),
                  extract(epoch FROM closed_at), resolved_by
           FROM alerts
           WHERE site = %s AND subject_type = %s AND subject = %s AND kind = %s
             AND opened_at < %s AND (closed_at IS NULL OR closed_at >= %s)
           ORDER BY opened_at""",
        (site, subject_type, subject, kind, _ts(until), _ts(since - 86400.0)),
    ).fetchall()
    matched: set[int] = set()
    for ep in found:
        ep_end = ep.ended_at if ep.ended_at is not None else float("inf")
        hit = None
        for row in existing:
            opened = float(row[2])
            closed = float(row[3]) if row[3] is not None else float("inf")
            if row[0] not in matched and opened <= ep_end and closed >= ep.opened_at:
                hit = row
                break
        details = orjson.dumps(ep.details, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        if hit is None:
            state = "resolved" if ep.ended_at is not None else "open"
            conn.execute(
                """INSERT INTO alerts (kind, site, subject_type, subject, state, opened_at,
                       started_at, updated_at, closed_at, resolved_at, resolved_by,
                       estimated_flow_m3h, details)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)""",
                (
                    kind,
                    site,
                    subject_type,
                    subject,
                    state,
                    _ts(ep.opened_at),
                    _ts(ep.started_at),
                    _ts(ep.seen_until),
                    _ts(ep.ended_at),
                    _ts(ep.ended_at),
                    "sobriety" if ep.ended_at is not None else None,
                    ep.flow_m3h,
                    details,
                ),
            )
            result.opened += 1
            if ep.ended_at is not None:
                result.closed += 1
            continue
        matched.add(hit[0])
        if hit[1] == "resolved":
            continue  # resolved (by a person or earlier): history stays as it was
        conn.execute(
            """UPDATE alerts SET estimated_flow_m3h = %s, details = %s::jsonb,
                   updated_at = greatest(updated_at, %s), started_at = %s
               WHERE id = %s""",
            (ep.flow_m3h, details, _ts(ep.seen_until), _ts(ep.started_at), hit[0]),
        )
        result.updated += 1
        if ep.ended_at is not None:
            _close(conn, hit[0], ep.ended_at, "returned to baseline")
            result.closed += 1
    for row in existing:
        if row[0] in matched or row[1] == "resolved" or float(row[2]) < since:
            continue
        _close(conn, row[0], until, "not confirmed by a later scan")
        result.closed += 1
    return result


def _close(conn: psycopg.Connection, alert_id: int, at: float, why: str) -> None:
    conn.execute(
        """UPDATE alerts SET state = 'resolved', closed_at = %s, resolved_at = %s,
               resolved_by = 'sobriety', details = details || jsonb_build_object('closed', %s)
           WHERE id = %s AND state <> 'resolved'""",
        (_ts(at), _ts(at), why, alert_id),
    )


def active_since(conn: psycopg.Connection, site: str) -> float | None:
    """Earliest start [s since epoch] of the active (not resolved) alerts of a site."""
    row = conn.execute(
        """SELECT extract(epoch FROM min(coalesce(started_at, opened_at)))
           FROM alerts WHERE site = %s AND state <> 'resolved'""",
        (site,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def active_subjects(conn: psycopg.Connection, site: str, subject_type: str, kind: str) -> set[str]:
    """Subjects of a kind with an active (not resolved) alert."""
    return {
        r[0]
        for r in conn.execute(
            """SELECT subject FROM alerts WHERE site = %s AND subject_type = %s AND kind = %s
               AND state <> 'resolved'""",
            (site, subject_type, kind),
        )
    }


def manual_resolutions(conn: psycopg.Connection, site: str, kind: str) -> dict[str, list[float]]:
    """Times [s since epoch] at which a person resolved an alert, per subject."""
    out: dict[str, list[float]] = {}
    for subject, at in conn.execute(
        """SELECT subject, extract(epoch FROM resolved_at) FROM alerts
           WHERE site = %s AND kind = %s AND state = 'resolved'
             AND resolved_by IS DISTINCT FROM 'sobriety' ORDER BY resolved_at""",
        (site, kind),
    ):
        out.setdefault(subject, []).append(float(at))
    return out


def write_nights(conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Upsert rows of ``dma_nights`` (site, dma, night, window_start, window_end, mnf,
    metered, net, baseline, coverage, gap)."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO dma_nights (site, dma, night, window_start, window_end, mnf_m3h,
                   metered_m3h, net_m3h, baseline_m3h, meter_coverage, gap)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (site, dma, night) DO UPDATE SET
                   window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
                   mnf_m3h = EXCLUDED.mnf_m3h, metered_m3h = EXCLUDED.metered_m3h,
                   net_m3h = EXCLUDED.net_m3h, baseline_m3h = EXCLUDED.baseline_m3h,
                   meter_coverage = EXCLUDED.meter_coverage, gap = EXCLUDED.gap,
                   computed_at = now()""",
            rows,
        )
