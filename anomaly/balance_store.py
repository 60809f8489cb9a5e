"""The water balance per DMA and local day kept in ``water_balance_days`` (migration 0020):
each scan recomputes the local days of its period from the hourly rollup of those days only
(``water_balance_compute``, the rules of ``sobriety anomaly balance``), and the service the
older days whose rollup changed since its last pass (late data: it follows the rollup's log,
:mod:`core.rollup_changes`); ``api.water_balance_daily`` reads the table. Volumes in m³."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg

__all__ = ["late_balance_days", "refresh_balance_days"]

_MARGIN = timedelta(hours=3)
"""Hours read beyond the period's local midnights (a zone whose offset changes near midnight);
the days outside the period are not kept."""

_COLUMNS = (
    "site, dma, day, covered_hours, input_m3, output_m3, metered_m3, index_backwards, inlets, "
    "inlets_reporting, outlets, outlets_reporting, customer_meters, customer_meters_reporting"
)


def refresh_balance_days(
    conn: psycopg.Connection, site: str, tz_name: str, since: float, until: float
) -> int:
    """Recompute the local days of ``site`` from the one of ``since`` to the one of ``until``
    [s since the epoch], in the caller's transaction; the rows written (a day when no meter of
    a DMA reported has none)."""
    zone = ZoneInfo(tz_name)
    first = datetime.fromtimestamp(since, zone).date()
    last = datetime.fromtimestamp(until, zone).date()
    lo = datetime.combine(first, time(), zone) - _MARGIN
    hi = datetime.combine(last + timedelta(days=1), time(), zone) + _MARGIN
    conn.execute(
        "DELETE FROM water_balance_days WHERE site = %s AND day BETWEEN %s AND %s",
        (site, first, last),
    )
    cur = conn.execute(
        f"INSERT INTO water_balance_days ({_COLUMNS}) SELECT {_COLUMNS} "
        "FROM water_balance_compute(%s, %s, %s) WHERE day BETWEEN %s AND %s",
        (site, lo, hi, first, last),
    )
    return cur.rowcount


def late_balance_days(
    conn: psycopg.Connection, changed: dict[int, tuple[float, float]], before: float
) -> int:
    """Recompute the local days older than ``before`` [s] whose balance changed for the water
    meters of some DMA (``changed``: per device id, its first and last changed hour, from
    :func:`core.rollup_changes.follow`) — the days of those hours and of the meter's next
    index after them (its use counts from the last index before it) — each site's in runs of
    consecutive days; the rows written. A backfill of last month's customer meter indexes
    changes last month's balance."""
    ids = list(changed)
    rows = conn.execute(
        """SELECT d.id, d.site, s.timezone,
                  (SELECT extract(epoch FROM h.hour)::float8 FROM readings_hourly h
                   WHERE h.device_id = d.id AND h.metric_id = 2 AND h.hour > to_timestamp(c.hi)
                   ORDER BY h.hour LIMIT 1)
           FROM unnest(%s::integer[], %s::float8[]) AS c (id, hi)
           JOIN devices d ON d.id = c.id
           JOIN sites s ON s.site = d.site
           WHERE d.dma IS NOT NULL
             AND (d.kind = 'water_meter' OR (d.kind = 'flow_meter'
                                             AND d.role IN ('inlet', 'outlet')))""",
        (ids, [changed[i][1] for i in ids]),
    ).fetchall()
    days: dict[tuple[str, str], set[date]] = {}
    for device_id, site, tz_name, following in rows:
        lo, hi = changed[device_id]
        if lo >= before:
            continue
        hi = max(hi, following) if following is not None else hi
        zone = ZoneInfo(tz_name)
        first = datetime.fromtimestamp(lo, zone).date()
        last = datetime.fromtimestamp(min(hi + 3600.0, before) - 1.0, zone).date()
        touched = days.setdefault((site, tz_name), set())
        touched.update(first + timedelta(days=n) for n in range((last - first).days + 1))
    written = 0
    for (site, tz_name), touched in sorted(days.items()):
        ordered = sorted(touched)
        start = prev = ordered[0]
        for day in [*ordered[1:], None]:
            if day is not None and day == prev + timedelta(days=1):
                prev = day
                continue
            zone = ZoneInfo(tz_name)
            since = datetime.combine(start, time(12), zone).timestamp()
            until = datetime.combine(prev, time(12), zone).timestamp()
            written += refresh_balance_days(conn, site, tz_name, since, until)
            if day is not None:
                start = prev = day
    return written
