"""The water balance per DMA and local day kept in ``water_balance_days`` (migration 0022):
each scan recomputes the local days of its period from the hourly rollup of those days only
(``water_balance_compute``, the rules of ``sobriety anomaly balance``); ``api.water_balance_daily``
reads the table. Volumes in m³."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg

__all__ = ["refresh_balance_days"]

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
