"""The hourly rollup of readings (``readings_hourly``, migration 0004), kept current incrementally.

One row per (device, metric, hour): ``hour`` is the UTC start of the hour
(``date_bin('1 hour', time, 'epoch')``); ``count``, ``sum``, ``min``, ``max`` of the values in
[hour, hour + 1 h), in the metric's canonical unit; ``first``/``last`` the values at
``first_time``/``last_time``, the earliest and latest reading of the hour.

**How it is kept current (plain PostgreSQL).** Statement-level triggers on ``readings`` append the
(device, hour) pairs each INSERT, COPY, UPDATE or DELETE touched to ``readings_hourly_pending``
(no unique constraint: writers never wait on each other). :func:`refresh` drains that log in
chunks of at most ``batch_hours`` entries, one transaction per chunk:

1. ``pg_advisory_xact_lock``: one refresh at a time (two interleaved refreshes could let an older
   recomputation overwrite a newer one);
2. claim: ``DELETE … WHERE ctid = ANY (ARRAY(SELECT ctid … WHERE ctid > cursor LIMIT n))
   RETURNING`` — a TID range scan from where the previous chunk stopped, so a year of backlog
   is never rescanned from its dead start; pages appended after the refresh began are left for
   the next one, so it ends even under continuous ingest;
3. recompute every metric of the claimed (device, hour) pairs from ``readings``; insert the new
   rows, update those that changed, delete those whose readings are all gone; commit.

*Concurrency (READ COMMITTED).* Step 2 runs after the lock is held, and step 3 in a later
statement, so with a later snapshot. A mark is claimed only if its writer committed before the
claim's snapshot — and then its readings (written in the same transaction as the mark) are
visible to step 3. A writer that commits after the claim's snapshot has its mark left in the log
(invisible to the claim) and recomputed by a later chunk or the next refresh. So no write is
ever lost; at worst a (device, hour) is recomputed twice. ``tests/test_rollup.py`` holds a
refresh between its claim and its recompute while writers commit.

*SQL chosen, measured* (PostgreSQL 15, 2 shared vCPUs, 2 M readings = 200 devices × 3 metrics
every 15 min, 166,800 device-hours, chunks of 10,000; the machine was shared: best of several
runs, ±30 %):

- readings of a chunk: a range scan of ``readings_time_idx`` over the chunk's hours, keeping the
  claimed pairs (11.5 s for the whole backlog), against primary-key probes ``(device_id,
  metric_id = ANY (every metric), time range)`` per pair (25 s; without the metric condition
  the probe walked all of the device's history: 69 s). Probes win when the chunk is sparse:
  1,000 device-hours scattered over five weeks took 0.5 s by probes, 1.4 s by range. So a chunk
  is read by range when its pairs cover at least :data:`DENSE_SHARE` of (devices × hours
  spanned), by probes otherwise.
- the claimed pairs are matched by a hashed ``= ANY`` of one bigint per pair, the new and the
  stored rows paired by a FULL JOIN (hashed or merged, never a nested loop), and rows updated
  and deleted by ``ctid = ANY (ARRAY(…))`` (a TID scan): right after a bulk load, before
  autovacuum analysed the tables, semi-joins and CTE joins planned as nested loops took 8.0 s
  for 911 pairs (0.14 s so), and a 40-fold overestimate made the UPDATE hash-join the whole
  rollup.
- first/last: ``(array_agg(value ORDER BY time))[1]`` and ``[count(*)]`` (one shared aggregate,
  exact) against ``min(ARRAY[date_part('epoch', time), value])``: 1.34 s against 1.14 s (best of
  9) for a full GROUP BY of the 2 M rows, and 1.25 s for no first/last at all — below the noise;
  the exact one is kept. ``sum(value ORDER BY time)`` (+10 % on that GROUP BY: 1.02 s against
  0.92 s) gives the same bits whichever path computed it, so a recomputation that changes
  nothing writes nothing.
- writes: a plain INSERT of new rows and an UPDATE of the rows whose values changed, not
  ``INSERT … ON CONFLICT DO UPDATE``: 500,400 new rows in 2.3 s plain against 4.4 s upserted.

Whole (``bench/rollup_bench.py``, four runs): the backlog costs 1.3 to 2.4 times one full
GROUP BY of the raw table (server CPU 1.2 to 1.5 times), a refresh after an hour of new data
(2,400 readings) 29 to 57 ms, 124 to 300 times less than that GROUP BY.

**TimescaleDB.** Where the extension is in use, ``readings_hourly`` is a continuous aggregate of
the same name and columns (``core/db.py``), and :func:`refresh` runs its refresh policy now.

**Followers.** Each chunk also logs the pairs it recomputed to ``readings_hourly_changes`` and
each refresh prunes what its followers have read (:mod:`core.rollup_changes`): how a stage that
derives its tables from the rollup learns of late data of any age.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg

from core import rollup_changes
from core.db import DatabaseError, is_continuous_aggregate

__all__ = ["DEFAULT_BATCH_HOURS", "DENSE_SHARE", "RefreshReport", "dense", "refresh"]

DEFAULT_BATCH_HOURS = 10_000
"""Pending entries (device-hours) claimed per chunk: ~40 k readings and 30 k rollup rows for 3
metrics every 15 min, ~0.5 s of work; larger chunks were not faster (measured 2 k to 50 k)."""
DENSE_SHARE = 0.03
"""A chunk whose pairs cover at least this share of (devices x hours spanned) reads readings by
time range; a sparser one probes the primary key per pair (break-even measured at 0.02 to 0.1)."""
_LOCK_KEY = 0x50B1E8  # advisory lock id of the refresh (the migration runner's is 0x50B1E7)
_HOUR = timedelta(hours=1)

_CLAIM = """WITH claimed AS (
    DELETE FROM readings_hourly_pending
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM readings_hourly_pending
        WHERE ctid > %(after)s::tid AND ctid < %(end)s::tid
        LIMIT %(limit)s))
    RETURNING ctid, device_id, hour)
SELECT (SELECT count(*) FROM claimed), (SELECT max(ctid) FROM claimed)::text,
       coalesce(array_agg(device_id), '{}'), coalesce(array_agg(hour), '{}')
FROM (SELECT DISTINCT device_id, hour FROM claimed) AS p"""

_AGGREGATES = """count(*)::integer AS count, sum(r.value ORDER BY r.time) AS sum,
    min(r.value) AS min, max(r.value) AS max, (array_agg(r.value ORDER BY r.time))[1] AS first,
    min(r.time) AS first_time, (array_agg(r.value ORDER BY r.time))[count(*)] AS last,
    max(r.time) AS last_time"""
_HOUR_KEY = "({alias}.device_id::bigint * 10000000 + (date_part('epoch', {hour}) / 3600)::bigint)"
"""A (device, hour) as one bigint, matched against the chunk's keys by a hashed ``= ANY``: a
filter, not a join, so no plan turns quadratic when the statistics lag behind a bulk load."""
_FRESH_BY_RANGE = f"""SELECT r.device_id, r.metric_id, date_bin('1 hour', r.time, 'epoch') AS hour,
    {_AGGREGATES}
    FROM readings r
    WHERE r.time >= %(lo)s AND r.time < %(hi)s AND r.metric_id = ANY (%(metrics)s::smallint[])
      AND {_HOUR_KEY.format(alias="r", hour="date_bin('1 hour', r.time, 'epoch')")}
          = ANY (%(keys)s::bigint[])
    GROUP BY r.device_id, r.metric_id, date_bin('1 hour', r.time, 'epoch')"""
_FRESH_BY_KEY = f"""SELECT r.device_id, r.metric_id, p.hour, {_AGGREGATES}
    FROM pairs p
    JOIN readings r ON r.device_id = p.device_id AND r.metric_id = ANY (%(metrics)s::smallint[])
     AND r.time >= p.hour AND r.time < p.hour + interval '1 hour'
    GROUP BY r.device_id, r.metric_id, p.hour"""
_STALE_BY_RANGE = f"""SELECT h.ctid AS row_id, h.device_id, h.metric_id, h.hour
    FROM readings_hourly h
    WHERE h.device_id = ANY (%(chunk_devices)s::integer[])
      AND h.metric_id = ANY (%(metrics)s::smallint[]) AND h.hour >= %(lo)s AND h.hour < %(hi)s
      AND {_HOUR_KEY.format(alias="h", hour="h.hour")} = ANY (%(keys)s::bigint[])"""
_STALE_BY_KEY = """SELECT h.ctid AS row_id, h.device_id, h.metric_id, h.hour
    FROM pairs p JOIN readings_hourly h ON h.device_id = p.device_id
     AND h.metric_id = ANY (%(metrics)s::smallint[]) AND h.hour = p.hour"""
_VALUES = ("count", "sum", "min", "max", "first", "first_time", "last", "last_time")
# fresh FULL JOIN stale (a full join is hashed or merged, never a nested loop): a row of the
# rollup to insert (no row_id), to update (both), or to delete (no fresh values). Rows are
# updated and deleted by ctid = ANY (ARRAY(...)): a TID scan whatever the estimates (a hash
# join over the whole rollup was chosen when the per-pair estimates ran 40 times too high).
_RECOMPUTE = """WITH pairs AS (
    SELECT * FROM unnest(%(devices)s::integer[], %(hours)s::timestamptz[]) AS p(device_id, hour)),
fresh AS MATERIALIZED ({fresh}),
stale AS MATERIALIZED ({stale}),
changes AS MATERIALIZED (
    SELECT s.row_id, f.device_id, f.metric_id, f.hour, {f_values}
    FROM fresh f FULL JOIN stale s
      ON s.device_id = f.device_id AND s.metric_id = f.metric_id AND s.hour = f.hour),
inserted AS (
    INSERT INTO readings_hourly (device_id, metric_id, hour, {values})
    SELECT device_id, metric_id, hour, {values} FROM changes WHERE row_id IS NULL
    RETURNING 1),
updated AS (
    UPDATE readings_hourly h SET ({values}) = ({c_values})
    FROM changes c
    WHERE h.ctid = ANY (ARRAY(SELECT row_id FROM changes WHERE row_id IS NOT NULL
                                                         AND device_id IS NOT NULL))
      AND h.ctid = c.row_id AND ({h_values}) IS DISTINCT FROM ({c_values})
    RETURNING 1),
deleted AS (
    DELETE FROM readings_hourly
    WHERE ctid = ANY (ARRAY(SELECT row_id FROM changes WHERE device_id IS NULL))
    RETURNING 1)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM updated),
       (SELECT count(*) FROM deleted)"""


def _recompute(fresh: str, stale: str) -> str:
    def cols(alias: str) -> str:
        return ", ".join(f"{alias}.{c}" for c in _VALUES)

    return _RECOMPUTE.format(
        fresh=fresh,
        stale=stale,
        values=", ".join(_VALUES),
        f_values=cols("f"),
        c_values=cols("c"),
        h_values=cols("h"),
    )


_RECOMPUTE_BY_RANGE = _recompute(_FRESH_BY_RANGE, _STALE_BY_RANGE)
_RECOMPUTE_BY_KEY = _recompute(_FRESH_BY_KEY, _STALE_BY_KEY)


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one :func:`refresh` did.

    ``claimed``: pending-log entries consumed (a (device, hour) written by several statements
    counts once per statement); ``device_hours``: (device, UTC hour) pairs recomputed, every
    metric of each (distinct within a chunk; a pair whose marks fall in two chunks counts
    twice); ``written``: rollup rows inserted or changed; ``deleted``: rollup rows removed
    because their readings are gone; ``chunks``: transactions committed; ``seconds``: wall
    time [s]. ``continuous_aggregate``: TimescaleDB refreshed its continuous aggregate
    instead (the counts are then 0: TimescaleDB does not report them).
    """

    claimed: int
    device_hours: int
    written: int
    deleted: int
    chunks: int
    seconds: float
    continuous_aggregate: bool = False

    def summary(self) -> str:
        """One line for people: ``rollup: 1,234 device-hours refreshed, … in 0.4 s``."""
        if self.continuous_aggregate:
            return f"rollup: TimescaleDB continuous aggregate refreshed in {self.seconds:.1f} s"
        return (
            f"rollup: {self.device_hours:,} device-hours refreshed, {self.written:,} rows "
            f"written, {self.deleted:,} deleted in {self.seconds:.1f} s"
        )


def dense(pairs: int, devices: int, span_hours: int, share: float = DENSE_SHARE) -> bool:
    """Whether ``pairs`` (device, hour) pairs among ``devices`` devices over ``span_hours``
    consecutive hours are dense enough to read ``readings`` by time range."""
    return pairs >= share * max(devices, 1) * max(span_hours, 1)


def refresh(conn: psycopg.Connection, batch_hours: int = DEFAULT_BATCH_HOURS) -> RefreshReport:
    """Bring ``readings_hourly`` up to date with ``readings``; commit once per chunk.

    ``batch_hours``: most pending entries (device-hours) claimed per chunk. ``conn`` must not
    be inside a transaction (each chunk commits). Safe to run from several processes at once
    and concurrently with any writer (see the module's docstring).
    """
    if batch_hours < 1:
        raise ValueError(f"batch_hours must be 1 or more, got {batch_hours}")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise DatabaseError("rollup refresh commits per chunk: call it outside a transaction")
    started = time.perf_counter()
    try:
        with conn.transaction():
            if is_continuous_aggregate(conn):
                timescale = True
            else:
                timescale = False
                metrics, devices, end = _refresh_context(conn)
        if timescale:
            return _refresh_timescale(conn, started)
        totals = [0, 0, 0, 0, 0]  # claimed, device-hours, written, deleted, chunks
        after = "(0,0)"
        while True:
            with conn.transaction():
                step = _chunk(conn, after, end, batch_hours, metrics, devices)
            if step is None:
                break
            after, counts = step
            totals = [t + c for t, c in zip(totals, (*counts, 1), strict=True)]
        with conn.transaction():
            rollup_changes.prune(conn)
    except psycopg.errors.UndefinedTable as exc:
        raise DatabaseError(f"no rollup tables ({exc}): run `sobriety db upgrade`") from None
    claimed, device_hours, written, deleted, chunks = totals
    return RefreshReport(
        claimed, device_hours, written, deleted, chunks, time.perf_counter() - started
    )


def _refresh_context(conn: psycopg.Connection) -> tuple[list[int], int, str]:
    """Metric ids, device count, and the end of the pending log's heap as a ctid bound."""
    row = conn.execute(
        "SELECT (SELECT array_agg(id ORDER BY id) FROM metrics), (SELECT count(*) FROM devices),"
        " pg_relation_size('readings_hourly_pending') / current_setting('block_size')::bigint"
    ).fetchone()
    assert row is not None
    metrics, devices, blocks = row
    return list(metrics or []), int(devices), f"({int(blocks)},0)"


def _chunk(
    conn: psycopg.Connection, after: str, end: str, limit: int, metrics: list[int], devices: int
) -> tuple[str, tuple[int, int, int, int]] | None:
    """One chunk, in the caller's transaction: claim, recompute, write. ``None`` when the log
    holds nothing more between ``after`` and ``end``; else the new cursor and (claimed,
    device-hours, written, deleted)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    conn.execute("SET LOCAL work_mem = '64MB'")  # the chunk's sort and hashes stay in memory
    conn.execute("SET LOCAL jit = off")  # compiling cost more than it saved (measured)
    row = conn.execute(_CLAIM, {"after": after, "end": end, "limit": limit}, prepare=False)
    claimed, last, chunk_devices, hours = row.fetchone() or (0, None, [], [])
    if not claimed:
        return None
    written, deleted = _write(conn, chunk_devices, hours, metrics, devices)
    rollup_changes.record(conn, chunk_devices, hours)  # for the stages that follow the rollup
    return str(last), (int(claimed), len(hours), written, deleted)


def _write(
    conn: psycopg.Connection,
    chunk_devices: list[int],
    hours: list[datetime],
    metrics: list[int],
    devices: int,
) -> tuple[int, int]:
    """Recompute the (device, hour) pairs ``zip(chunk_devices, hours)``; (written, deleted)."""
    query, params = _plan(chunk_devices, hours, metrics, devices)
    row = conn.execute(query, params, prepare=False).fetchone()
    assert row is not None
    inserted, updated, deleted = row
    return int(inserted) + int(updated), int(deleted)


def _plan(
    chunk_devices: list[int], hours: list[datetime], metrics: list[int], devices: int
) -> tuple[LiteralString, dict[str, Any]]:
    """The recompute statement for these pairs (by time range or by key) and its parameters."""
    lo, hi = min(hours), max(hours) + _HOUR
    distinct = sorted(set(chunk_devices))
    by_range = dense(len(hours), max(devices, len(distinct)), (hi - lo) // _HOUR)
    params: dict[str, Any] = {
        "devices": chunk_devices,
        "hours": hours,
        "metrics": metrics,
        "chunk_devices": distinct,
        "lo": lo,
        "hi": hi,
        "keys": [
            d * 10_000_000 + int(h.timestamp()) // 3600
            for d, h in zip(chunk_devices, hours, strict=True)
        ],
    }
    return (_RECOMPUTE_BY_RANGE if by_range else _RECOMPUTE_BY_KEY), params


def _refresh_timescale(conn: psycopg.Connection, started: float) -> RefreshReport:
    """Run the continuous aggregate's refresh policy now (its window: what the policy covers),
    or refresh the whole aggregate when it has no policy. Needs autocommit (TimescaleDB refuses
    to refresh inside a transaction block)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT j.job_id FROM timescaledb_information.jobs j "
            "JOIN timescaledb_information.continuous_aggregates c "
            "ON j.hypertable_schema = c.materialization_hypertable_schema "
            "AND j.hypertable_name = c.materialization_hypertable_name "
            "WHERE c.view_schema = current_schema() AND c.view_name = 'readings_hourly' "
            "AND j.proc_name = 'policy_refresh_continuous_aggregate'"
        ).fetchone()
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        if row is not None:
            conn.execute("CALL run_job(%s)", (row[0],))
        else:
            conn.execute("CALL refresh_continuous_aggregate('readings_hourly', NULL, NULL)")
    finally:
        conn.autocommit = autocommit
    return RefreshReport(0, 0, 0, 0, 0, time.perf_counter() - started, continuous_aggregate=True)
