"""What the exports share (``sobriety export readings|alerts|energy``): the customer meters'
pseudonyms in a temporary table the export queries join, and the streaming of one query's rows
as CSV (``COPY … TO STDOUT``) or as a JSON array (a server-side cursor): never a whole table
in memory, whatever its size.

The pseudonyms are computed here (:func:`core.privacy.pseudonym`, the key never sent to the
server) for the customer meters of the export's scope only — a few thousand rows — and copied
into ``export_pseudonyms (site, device, alias)``, dropped at the end of the transaction. The
exports' queries read ``coalesce(p.alias, device)``: a customer meter's id never reaches the
output when a key was given.

Also the alerts and energy exports (the readings' is in ``ingest/export.py``): everything a
commune needs to leave the product, read from the ``api`` views.
"""

from __future__ import annotations

from datetime import datetime
from typing import BinaryIO, Literal

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from core.privacy import CUSTOMER_KINDS, pseudonyms

__all__ = [
    "ALERT_COLUMNS",
    "ENERGY_COLUMNS",
    "Format",
    "customer_meters",
    "export_alerts",
    "export_energy",
    "load_pseudonyms",
    "stream",
    "utc_text",
]

Format = Literal["csv", "json"]
ALERT_COLUMNS = (
    "id", "kind", "site", "subject_type", "subject", "state", "opened_at", "started_at",
    "updated_at", "closed_at", "acknowledged_at", "acknowledged_by", "resolved_at",
    "resolved_by", "estimated_flow_m3h", "details",
)  # fmt: skip
"""The columns of ``export alerts``: those of ``api.alerts``, in its order."""
ENERGY_COLUMNS = (
    "site", "device", "kind", "day", "kwh", "source", "complete", "missing_hours", "resets",
    "rollovers", "replacements", "flagged", "glitches", "kg_co2e", "eur", "co2e_factor_id",
    "tariff_id",
)  # fmt: skip
"""The columns of ``export energy``: those of ``api.energy_daily``, in its order (the flags of a
day: ``resets``, ``rollovers``, ``replacements``, ``flagged``, ``glitches``)."""
_TIMES = frozenset(
    {"opened_at", "started_at", "updated_at", "closed_at", "acknowledged_at", "resolved_at"}
)
_ITERSIZE = 2000


def utc_text(expr: sql.Composable) -> sql.Composed:
    """A timestamptz as ISO 8601 UTC text (``2026-01-31T23:00:00.000000Z``), as exported."""
    return sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").format(
        expr
    )


def customer_meters(conn: psycopg.Connection, site: str | None) -> list[tuple[str, str]]:
    """The ``(site, device)`` of the customer meters at ``site`` (``None``: every site)."""
    rows = conn.execute(
        "SELECT site, device FROM devices WHERE kind = ANY (%s) AND (%s::text IS NULL "
        "OR site = %s) ORDER BY site, device",
        (sorted(CUSTOMER_KINDS), site, site),
    ).fetchall()
    return [(str(s), str(d)) for s, d in rows]


def load_pseudonyms(conn: psycopg.Connection, key: bytes | None, site: str | None) -> int:
    """Fill ``export_pseudonyms`` (temporary, dropped at the end of the caller's transaction)
    with the pseudonyms of the customer meters in scope; empty when ``key`` is ``None`` (the
    commune's own export, ids kept). Returns the rows loaded."""
    conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS export_pseudonyms "
        "(site text, device text, alias text, PRIMARY KEY (site, device)) ON COMMIT DROP"
    )
    conn.execute("TRUNCATE export_pseudonyms")
    if key is None:
        return 0
    aliases = pseudonyms(key, customer_meters(conn, site))
    with conn.cursor() as cur, cur.copy("COPY export_pseudonyms FROM STDIN") as copy:
        for (s, d), alias in aliases.items():
            copy.write_row((s, d, alias))
    return len(aliases)


def stream(conn: psycopg.Connection, out: BinaryIO, query: sql.Composed, fmt: Format) -> int:
    """Write the rows of ``query`` (a SELECT) to ``out`` as CSV with a header, or as a JSON
    array of objects (one per line); return the rows written (CSV: the lines after the
    header). Runs in the caller's transaction."""
    if fmt == "csv":
        lines = 0
        copy_sql = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query)
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for chunk in copy:
                data = bytes(chunk)
                lines += data.count(b"\n")
                out.write(data)
        return max(lines - 1, 0)
    rows = 0
    out.write(b"[")
    with psycopg.ServerCursor(conn, "sobriety_export", row_factory=dict_row) as server:
        server.itersize = _ITERSIZE
        server.execute(query)
        for row in server:
            out.write((b",\n  " if rows else b"\n  ") + orjson.dumps(row))
            rows += 1
    out.write(b"\n]\n")
    return rows


def _select(columns: tuple[str, ...], replaced: dict[str, sql.Composable]) -> sql.Composed:
    return sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(replaced[c], sql.Identifier(c))
        if c in replaced
        else sql.SQL("v.{}").format(sql.Identifier(c))
        for c in columns
    )


def export_alerts(
    conn: psycopg.Connection,
    out: BinaryIO,
    fmt: Format,
    until: datetime,
    since: datetime | None = None,
    site: str | None = None,
) -> int:
    """Alerts of ``api.alerts`` opened before ``until`` and not closed before ``since``, oldest
    first, a customer meter's subject replaced by its pseudonym (``export_pseudonyms``, see
    :func:`load_pseudonyms`); times in UTC. Returns the rows written."""
    replaced: dict[str, sql.Composable] = {
        c: utc_text(sql.SQL("v.{}").format(sql.Identifier(c))) for c in _TIMES
    }
    replaced["subject"] = sql.SQL("coalesce(p.alias, v.subject)")
    if fmt == "csv":
        replaced["details"] = sql.SQL("v.details::text")
    where = [sql.SQL("v.opened_at < {}").format(sql.Literal(until))]
    if since is not None:
        where.append(
            sql.SQL("(v.closed_at IS NULL OR v.closed_at >= {})").format(sql.Literal(since))
        )
    if site:
        where.append(sql.SQL("v.site = {}").format(sql.Literal(site)))
    query = sql.SQL(
        "SELECT {} FROM api.alerts v LEFT JOIN export_pseudonyms p ON v.subject_type = 'device' "
        "AND p.site = v.site AND p.device = v.subject WHERE {} ORDER BY v.opened_at, v.id"
    ).format(_select(ALERT_COLUMNS, replaced), sql.SQL(" AND ").join(where))
    return stream(conn, out, query, fmt)


def export_energy(
    conn: psycopg.Connection,
    out: BinaryIO,
    fmt: Format,
    since: datetime,
    until: datetime,
    site: str | None = None,
) -> int:
    """Rows of ``api.energy_daily`` for the local days of each site that begin in [since,
    until), by site, day and device, a customer meter's id replaced by its pseudonym. Returns
    the rows written."""
    replaced: dict[str, sql.Composable] = {
        "device": sql.SQL("coalesce(p.alias, v.device)"),
        "day": sql.SQL("to_char(v.day, 'YYYY-MM-DD')"),
    }
    start = sql.SQL("(v.day::timestamp AT TIME ZONE s.timezone)")
    where = [
        sql.SQL("{} >= {}").format(start, sql.Literal(since)),
        sql.SQL("{} < {}").format(start, sql.Literal(until)),
    ]
    if site:
        where.append(sql.SQL("v.site = {}").format(sql.Literal(site)))
    query = sql.SQL(
        "SELECT {} FROM api.energy_daily v JOIN sites s ON s.site = v.site "
        "LEFT JOIN export_pseudonyms p ON p.site = v.site AND p.device = v.device "
        "WHERE {} ORDER BY v.site, v.day, coalesce(p.alias, v.device)"
    ).format(_select(ENERGY_COLUMNS, replaced), sql.SQL(" AND ").join(where))
    return stream(conn, out, query, fmt)
