"""A commune (site) as a whole: registered in one statement, and its data deleted from every
table that holds some, for ``sobriety site add`` and ``sobriety site remove --delete-data``.

The tables are found in the catalog, not listed here, so that a stage's later migration is
covered without touching this module: every base table of schema ``public`` with a
``device_id`` column loses the rows of the site's devices, every one with a ``site`` column the
rows of the site, children before the tables their foreign keys reference, and ``sites`` last.
Raw readings go first, a bounded number of devices per transaction (a year of a device is tens
of thousands of rows); the hourly rollup and its marks after them, so nothing recomputes a
deleted hour. ``site_readers`` (its roles) goes with the site (ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql

from core.contract import valid_segment
from core.errors import UsageError

__all__ = ["SiteDeletion", "SiteRecord", "delete_site_data", "register_site", "site_counts"]


@dataclass(frozen=True)
class SiteRecord:
    """A commune: its id (the topic segment), name, IANA time zone, coordinates [°]."""

    site: str
    name: str
    timezone: str
    lat: float
    lon: float

    def check(self) -> None:
        """:class:`UsageError` naming the option of the first value that is not acceptable."""
        if not valid_segment(self.site):
            raise UsageError(f"--site {self.site!r}: expected 1-64 characters of A-Za-z0-9_.-")
        if not self.name.strip():
            raise UsageError("--name: expected the commune's name (not empty)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(
                f"--timezone {self.timezone!r}: expected an IANA time zone such as "
                "Europe/Paris, America/Cayenne or Indian/Reunion"
            ) from None
        if not -90.0 <= self.lat <= 90.0:
            raise UsageError(f"--lat {self.lat}: expected a latitude in [-90, 90] degrees")
        if not -180.0 <= self.lon <= 180.0:
            raise UsageError(f"--lon {self.lon}: expected a longitude in [-180, 180] degrees")


def register_site(conn: psycopg.Connection, record: SiteRecord) -> str:
    """Insert or update the site (in the caller's transaction): ``'created'``, ``'updated'``
    or ``'unchanged'``. The ingest and the services see it at their next inventory reload
    (``NOTIFY sobriety_inventory``)."""
    record.check()
    before = conn.execute(
        "SELECT name, timezone, lat, lon FROM sites WHERE site = %s", (record.site,)
    ).fetchone()
    values = (record.name, record.timezone, record.lat, record.lon)
    if before is not None and tuple(before) == values:
        return "unchanged"
    conn.execute(
        """INSERT INTO sites (site, name, timezone, lat, lon) VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (site) DO UPDATE SET name = EXCLUDED.name, timezone = EXCLUDED.timezone,
               lat = EXCLUDED.lat, lon = EXCLUDED.lon""",
        (record.site, *values),
    )
    conn.execute("NOTIFY sobriety_inventory")
    return "created" if before is None else "updated"


@dataclass
class SiteDeletion:
    """Rows deleted per table."""

    rows: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, count: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _tables(conn: psycopg.Connection, column: str) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            """SELECT c.relname FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attname = %s
                 AND NOT a.attisdropped
               ORDER BY 1""",
            (column,),
        )
    ]


def _children_first(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """``tables`` ordered so that a table comes before every table it references."""
    edges = conn.execute(
        """SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
           WHERE c.contype = 'f' AND c.conrelid <> c.confrelid"""
    ).fetchall()
    refs = {t: {p for c, p in edges if c == t and p in tables} for t in tables}
    ordered: list[str] = []
    left = set(tables)
    while left:
        # a table none of the remaining ones references can go now
        ready = sorted(t for t in left if not any(t in refs[o] for o in left if o != t))
        if not ready:  # a cycle: let the database say which key blocks
            ready = sorted(left)
        ordered.extend(ready)
        left -= set(ready)
    return ordered


def site_counts(conn: psycopg.Connection, site: str) -> dict[str, int]:
    """Rows of ``site`` per table (the devices' rows counted through ``device_id``)."""
    counts: dict[str, int] = {}
    for table in _tables(conn, "device_id"):
        query = sql.SQL(
            "SELECT count(*) FROM {} WHERE device_id IN (SELECT id FROM devices WHERE site = %s)"
        ).format(sql.Identifier(table))
        row = conn.execute(query, (site,)).fetchone()
        counts[table] = int(row[0]) if row else 0
    for table in _tables(conn, "site"):
        if table in counts:
            continue
        query = sql.SQL("SELECT count(*) FROM {} WHERE site = %s").format(sql.Identifier(table))
        row = conn.execute(query, (site,)).fetchone()
        counts[table] = int(row[0]) if row else 0
    return {t: n for t, n in counts.items() if n}


def delete_site_data(
    conn: psycopg.Connection,
    site: str,
    devices_per_batch: int = 20,
    progress: Callable[[str, int], None] | None = None,
) -> SiteDeletion:
    """Delete every row of ``site``, then the site, committing after each batch (a stop
    half-way leaves a site with less data, never an inconsistent one: run it again).
    ``progress(table, rows)`` is called after each batch."""
    report = SiteDeletion()
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM devices WHERE site = %s", (site,))]
    conn.commit()
    by_device = _tables(conn, "device_id")
    by_site = [t for t in _tables(conn, "site") if t != "sites"]
    first = [t for t in ("readings",) if t in by_device]
    later = _children_first(conn, [t for t in by_device if t not in first])
    for table in first:  # the raw readings, a few devices at a time
        for start in range(0, len(ids), devices_per_batch):
            batch = ids[start : start + devices_per_batch]
            query = sql.SQL("DELETE FROM {} WHERE device_id = ANY(%s)").format(
                sql.Identifier(table)
            )
            count = conn.execute(query, (batch,)).rowcount
            conn.commit()
            report.add(table, count)
            if progress is not None:
                progress(table, count)
    with conn.transaction():
        for table in later:
            query = sql.SQL("DELETE FROM {} WHERE device_id = ANY(%s)").format(
                sql.Identifier(table)
            )
            report.add(table, conn.execute(query, (ids,)).rowcount)
        for table in _children_first(conn, by_site):
            query = sql.SQL("DELETE FROM {} WHERE site = %s").format(sql.Identifier(table))
            report.add(table, conn.execute(query, (site,)).rowcount)
        report.add("sites", conn.execute("DELETE FROM sites WHERE site = %s", (site,)).rowcount)
        conn.execute("NOTIFY sobriety_inventory")
    if progress is not None:
        progress("sites", 1)
    return report
