"""Retention per class of data (``[privacy]``, RGPD art. 5(1)(e): kept no longer than needed),
applied by ``sobriety privacy apply`` and by the periodic pass of ``sobriety run``.

Classes (days; 0 keeps forever), each cut floored to a UTC hour:

- ``customer_raw``: raw readings of the customer meters (kind ``water_meter``), older than
  ``customer_raw_days``;
- ``raw``: raw readings of every other device, older than ``raw_days``;
- ``aggregates``: the hourly rollup (``readings_hourly``), ``energy_daily`` and the alerts
  closed before ``aggregates_days`` (open ones are kept whatever their age).

Deletes run in bounded batches: at most ``batch_rows`` rows per transaction, at most
``max_batches`` transactions per class and pass (what is left waits for the next pass).

**The rollup outlives the raw readings.** Deleting readings fires the statement triggers of
``readings`` (migration 0004), which log each (device, hour) touched in
``readings_hourly_pending``; the next :func:`core.rollup.refresh` would recompute those hours
from the readings left — none — and delete their rollup rows. So each batch deletes, in the same
transaction, the pending marks that transaction wrote (``xmin`` = its own transaction id):
exactly the marks of the retention's DELETE, never another writer's. Because a cut is a whole
UTC hour, a deleted hour has lost all its readings and its rollup row is final. Before the
deletes, a refresh brings the rollup up to date, so the hours about to go are summarised
first. (A backfill committing readings older than the cut while a pass runs is recomputed from
what remains, as for any deletion.)

Under TimescaleDB the rollup is a continuous aggregate with no pending log: the raw classes are
refused there (use ``[storage] retention``, whose refresh window stops short of it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import LiteralString

import psycopg

from core import rollup
from core.config import PrivacyConfig
from core.db import DatabaseError, is_continuous_aggregate
from core.privacy import CUSTOMER_KINDS

__all__ = ["CLASSES", "RetentionReport", "apply", "cut_of"]

CLASSES = ("customer_raw", "raw", "aggregates")
"""The classes of data, as reported and as the label of the metric."""

_RAW: dict[str, LiteralString] = {
    "customer_raw": "d.kind = ANY (%(kinds)s)",
    "raw": "d.kind <> ALL (%(kinds)s)",
}
_DELETE_RAW = """WITH gone AS (
    DELETE FROM readings WHERE ctid = ANY (ARRAY(
        SELECT r.ctid FROM readings r JOIN devices d ON d.id = r.device_id
        WHERE r.time < %(cut)s AND {which} LIMIT %(limit)s))
    RETURNING 1)
SELECT count(*) FROM gone"""
_UNMARK = "DELETE FROM readings_hourly_pending WHERE xmin = pg_current_xact_id()::xid"
_AGGREGATES: tuple[tuple[str, LiteralString], ...] = (
    ("readings_hourly", "hour < %(cut)s"),
    ("energy_daily", "day < (%(cut)s AT TIME ZONE 'UTC')::date"),
    ("alerts", "closed_at < %(cut)s"),
)
_DELETE_ROWS = """WITH gone AS (
    DELETE FROM {table} WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {table} WHERE {where} LIMIT %(limit)s))
    RETURNING 1)
SELECT count(*) FROM gone"""


@dataclass
class RetentionReport:
    """What one pass deleted: rows per class and per table, the cut of each class (``None``:
    kept forever), the write transactions committed, whether every class is done (``False``:
    ``max_batches`` reached, the rest at the next pass) and the wall time [s]."""

    cuts: dict[str, datetime | None]
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    tables: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    complete: bool = True
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (``sobriety privacy apply --format json``)."""
        return {
            "cuts": {k: v.isoformat() if v else None for k, v in self.cuts.items()},
            "deleted": self.deleted,
            "tables": self.tables,
            "transactions": self.transactions,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """One line per class for people."""
        lines = []
        for name in CLASSES:
            cut = self.cuts[name]
            kept = f"before {cut:%Y-%m-%d %H:%M} UTC" if cut else "none (kept forever)"
            lines.append(f"{name}: {self.deleted[name]:,} rows deleted, {kept}")
        lines.append(
            f"{self.transactions} transactions in {self.seconds:.1f} s"
            + ("" if self.complete else "; more left for the next pass")
        )
        return "\n".join(lines)


def cut_of(days: int, now: datetime) -> datetime | None:
    """``now - days``, floored to the UTC hour; ``None`` for 0 (kept forever)."""
    if days == 0:
        return None
    cut = now.astimezone(UTC) - timedelta(days=days)
    return cut.replace(minute=0, second=0, microsecond=0)


def apply(
    conn: psycopg.Connection,
    config: PrivacyConfig,
    now: datetime,
    on_delete: Callable[[str, int], None] | None = None,
) -> RetentionReport:
    """Delete what ``config`` no longer keeps at ``now``; each batch commits, and
    ``on_delete(class, rows)`` is told after each commit. ``conn`` must be idle."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise DatabaseError("retention commits per batch: call it outside a transaction")
    started = time.perf_counter()
    report = RetentionReport(
        cuts={
            "customer_raw": cut_of(config.customer_raw_days, now),
            "raw": cut_of(config.raw_days, now),
            "aggregates": cut_of(config.aggregates_days, now),
        }
    )
    with conn.transaction():
        timescale = is_continuous_aggregate(conn)
    raw = [name for name in _RAW if report.cuts[name] is not None]
    if raw and timescale:
        raise DatabaseError(
            "[privacy] customer_raw_days / raw_days: not applied under TimescaleDB (the rollup "
            "is a continuous aggregate); set them to 0 and use [storage] retention"
        )
    if raw:
        rollup.refresh(conn)  # the hours about to go are summarised first
    kinds = sorted(CUSTOMER_KINDS)
    for name in raw:
        query = _DELETE_RAW.format(which=_RAW[name])
        params = {"cut": report.cuts[name], "kinds": kinds, "limit": config.batch_rows}
        _batches(conn, config, report, name, "readings", query, params, on_delete, unmark=True)
    cut = report.cuts["aggregates"]
    if cut is not None:
        for table, where in _AGGREGATES:
            if table == "readings_hourly" and timescale:
                continue  # a continuous aggregate: its own retention policy
            query = _DELETE_ROWS.format(table=table, where=where)
            params = {"cut": cut, "limit": config.batch_rows}
            _batches(conn, config, report, "aggregates", table, query, params, on_delete)
    report.seconds = time.perf_counter() - started
    return report


def _batches(
    conn: psycopg.Connection,
    config: PrivacyConfig,
    report: RetentionReport,
    name: str,
    table: str,
    query: LiteralString,
    params: Mapping[str, object],
    on_delete: Callable[[str, int], None] | None,
    unmark: bool = False,
) -> None:
    """Up to ``max_batches`` transactions of up to ``batch_rows`` deletions each; a batch that
    finds nothing is rolled back (no empty commit)."""
    for _ in range(config.max_batches):
        deleted = 0
        with conn.transaction():
            row = conn.execute(query, params, prepare=False).fetchone()
            deleted = int(row[0]) if row else 0
            if not deleted:
                raise psycopg.Rollback()
            if unmark:
                conn.execute(_UNMARK)
        if not deleted:
            return
        report.deleted[name] += deleted
        report.tables[table] = report.tables.get(table, 0) + deleted
        report.transactions += 1
        if on_delete is not None:
            on_delete(name, deleted)
        if deleted < config.batch_rows:
            return
    report.complete = False
