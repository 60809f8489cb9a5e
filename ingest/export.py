"""``sobriety export readings``: open-data / reversibility export as CSV, streamed by COPY.

Columns ``time,site,device,metric,value,unit``; times in ISO 8601 UTC
(``2026-01-31T23:00:00.000000Z``), values in canonical units: the format that
``sobriety import readings`` reads back. A customer meter's id is replaced by its pseudonym
when the caller loaded them (:func:`core.exports.load_pseudonyms`, in the same transaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import BinaryIO

import psycopg
from psycopg import sql

from core.exports import load_pseudonyms


def export_readings(
    conn: psycopg.Connection,
    out: BinaryIO,
    since: datetime,
    until: datetime,
    site: str | None = None,
    key: bytes | None = None,
) -> int:
    """Write readings with ``since <= time < until`` to ``out``; return the bytes written.

    ``key``: the customer meters' ids are replaced by their pseudonym under it
    (:func:`core.privacy.pseudonym`); ``None`` keeps the ids (the commune's own export).
    """
    load_pseudonyms(conn, key, site)
    conditions = [
        sql.SQL("r.time >= {}").format(sql.Literal(since)),
        sql.SQL("r.time < {}").format(sql.Literal(until)),
    ]
    if site:
        conditions.append(sql.SQL("r.site = {}").format(sql.Literal(site)))
    query = sql.SQL(
        "COPY (SELECT to_char(r.time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "AS time, r.site, coalesce(p.alias, r.device) AS device, r.metric, r.value, r.unit "
        "FROM api.readings r LEFT JOIN export_pseudonyms p ON p.site = r.site "
        "AND p.device = r.device WHERE {} "
        "ORDER BY r.time, r.site, coalesce(p.alias, r.device), r.metric) "
        "TO STDOUT WITH (FORMAT csv, HEADER)"
    ).format(sql.SQL(" AND ").join(conditions))
    written = 0
    with conn.cursor() as cur, cur.copy(query) as copy:
        for chunk in copy:
            out.write(chunk)
            written += len(chunk)
    return written
