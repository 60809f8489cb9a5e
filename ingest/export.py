"""``sobriety export readings``: open-data / reversibility export as CSV, streamed by COPY.

Columns ``time,site,device,metric,value,unit``; times in ISO 8601 UTC
(``2026-01-31T23:00:00.000000Z``), values in canonical units: the format that
``sobriety import readings`` reads back.
"""

from __future__ import annotations

from datetime import datetime
from typing import BinaryIO

import psycopg
from psycopg import sql


def export_readings(
    conn: psycopg.Connection,
    out: BinaryIO,
    since: datetime,
    until: datetime,
    site: str | None = None,
) -> int:
    """Write readings with ``since <= time < until`` to ``out``; return the bytes written."""
    conditions = [
        sql.SQL("time >= {}").format(sql.Literal(since)),
        sql.SQL("time < {}").format(sql.Literal(until)),
    ]
    if site:
        conditions.append(sql.SQL("site = {}").format(sql.Literal(site)))
    query = sql.SQL(
        "COPY (SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "AS time, site, device, metric, value, unit FROM api.readings WHERE {} "
        "ORDER BY time, site, device, metric) TO STDOUT WITH (FORMAT csv, HEADER)"
    ).format(sql.SQL(" AND ").join(conditions))
    written = 0
    with conn.cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            out.write(chunk)
            written += len(chunk)
    return written
