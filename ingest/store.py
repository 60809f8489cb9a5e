"""Writes batches to PostgreSQL: binary ``COPY`` straight into ``readings``, or — when the batch
holds a reading already stored — into a staging table, then one deduplicating insert.

The fast path copies a batch into ``readings`` under a savepoint: it succeeds when every row is
new (the usual case: redeliveries are rare), and the batch's sums per device and quarter hour,
made while encoding it (:mod:`ingest.store_direct`), give the counts and ``device_status`` in one
more statement. A unique violation rolls back to the savepoint and the batch goes the staging
way: a temporary table (binary ``COPY``) and ``INSERT … ON CONFLICT DO NOTHING`` on (device,
metric, time), so a redelivered message is stored once; the same statement counts the batch's
messages and newly stored readings per device and local day. Either way the counts are the
same. Rejections are upserted on their fingerprint in the same transaction: a batch is durable
as a whole or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from core.clock import utc
from core.db import connect
from ingest.pipeline import Rejection, Row, Uplinks
from ingest.store_direct import DirectBatch, encode_direct

log = logging.getLogger(__name__)

_STAGE = """CREATE TEMPORARY TABLE IF NOT EXISTS readings_stage (
    t_us bigint NOT NULL, device_id integer NOT NULL, metric_id smallint NOT NULL,
    value double precision NOT NULL) ON COMMIT DELETE ROWS"""
_STAGE_TYPES = ("int8", "int4", "int2", "float8")
_MERGE = """INSERT INTO readings (time, device_id, metric_id, value)
    SELECT 'epoch'::timestamptz + t_us * interval '1 microsecond', device_id, metric_id, value
    FROM readings_stage
    ON CONFLICT DO NOTHING"""
_MERGE_COUNTED = """WITH stored AS (
        INSERT INTO readings (time, device_id, metric_id, value)
        SELECT 'epoch'::timestamptz + t_us * interval '1 microsecond', device_id, metric_id, value
        FROM readings_stage
        ON CONFLICT DO NOTHING
        RETURNING device_id, metric_id, time),
    quarters AS (
        SELECT device_id, quarter, sum(messages)::bigint AS messages,
               sum(readings)::bigint AS readings, bit_or(metric_mask) AS metric_mask
        FROM (SELECT device_id, date_bin('15 minutes', time, 'epoch') AS quarter,
                     0 AS messages, 1 AS readings, 1::bigint << metric_id AS metric_mask
              FROM stored
              UNION ALL
              SELECT device_id, 'epoch'::timestamptz + t_us / 900000000 * interval '15 minutes',
                     1, 0, 0
              FROM unnest(%s::integer[], %s::bigint[]) AS m (device_id, t_us)) AS both_sides
        GROUP BY 1, 2),
    counted AS (
        INSERT INTO device_reporting_daily AS c (device_id, day, messages, readings, metric_mask)
        SELECT q.device_id, (q.quarter AT TIME ZONE s.timezone)::date, sum(q.messages),
               sum(q.readings), bit_or(q.metric_mask)
        FROM quarters q JOIN devices d ON d.id = q.device_id JOIN sites s ON s.site = d.site
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (device_id, day) DO UPDATE
        SET messages = c.messages + EXCLUDED.messages, readings = c.readings + EXCLUDED.readings,
            metric_mask = c.metric_mask | EXCLUDED.metric_mask)
    SELECT coalesce(sum(readings), 0) FROM quarters"""
"""The merge that also counts, per device and local day (``device_reporting_daily``), the
messages (``unnest`` of the batch's :class:`~ingest.pipeline.Uplinks`) and the readings it newly
stored (its ``RETURNING``): one statement, so the counts are in the batch's transaction and cost
no extra round trip. Both sides are first summed per device and UTC quarter hour (a batch holds
many readings of a device within minutes), then given their local day: every UTC offset in use
today is a multiple of 15 minutes, so a quarter lies in one local day. Ordered by key:
concurrent writers (``--workers``) lock the rows in one order. ``device_reporting_daily`` has
room on its pages (fillfactor 50): the per-batch updates are HOT."""
_REPLAYED = """WITH pruned AS (
        DELETE FROM ingest_replayed_frames WHERE replayed_at < now() - interval '30 days')
    INSERT INTO ingest_replayed_frames (frame_id) VALUES (%s) ON CONFLICT DO NOTHING"""
"""Marks a spool frame counted; no row inserted: it was counted by an earlier replay."""
_STATUS = """INSERT INTO device_status AS s (device_id, last_reading_at, last_received_at)
    SELECT device_id, 'epoch'::timestamptz + max(t_us) * interval '1 microsecond', now()
    FROM readings_stage GROUP BY device_id
    ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE
    SET last_reading_at = greatest(s.last_reading_at, EXCLUDED.last_reading_at),
        last_received_at = EXCLUDED.last_received_at"""
"""Each device's latest reading, its rows locked in key order (concurrent writers)."""
_COPY_DIRECT = "COPY readings (time, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
_STATUS_FROM_SUMS = """INSERT INTO device_status AS s (device_id, last_reading_at, last_received_at)
    SELECT l.device_id, 'epoch'::timestamptz + l.last_us * interval '1 microsecond', now()
    FROM unnest(%s::integer[], %s::bigint[]) AS l (device_id, last_us){after}
    ORDER BY l.device_id
    ON CONFLICT (device_id) DO UPDATE
    SET last_reading_at = greatest(s.last_reading_at, EXCLUDED.last_reading_at),
        last_received_at = EXCLUDED.last_received_at"""
_STATUS_DIRECT = _STATUS_FROM_SUMS.format(after="")
"""``_STATUS`` after a direct ``COPY``: each device's latest reading, found in Python."""
_COUNTED_DIRECT = """WITH counted AS (
        INSERT INTO device_reporting_daily AS c (device_id, day, messages, readings, metric_mask)
        SELECT q.device_id,
               (('epoch'::timestamptz + q.quarter * interval '15 minutes')
                AT TIME ZONE s.timezone)::date,
               sum(q.messages), sum(q.readings), bit_or(q.metric_mask)
        FROM unnest(%s::integer[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
             AS q (device_id, quarter, messages, readings, metric_mask)
        JOIN devices d ON d.id = q.device_id JOIN sites s ON s.site = d.site
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (device_id, day) DO UPDATE
        SET messages = c.messages + EXCLUDED.messages, readings = c.readings + EXCLUDED.readings,
            metric_mask = c.metric_mask | EXCLUDED.metric_mask
        RETURNING 1)
    """ + _STATUS_FROM_SUMS.format(
    after="\n    CROSS JOIN (SELECT count(*) FROM counted) AS daily_first"
)
"""``_MERGE_COUNTED``'s last two steps and ``_STATUS`` after a direct ``COPY``, one statement:
the sums per device and UTC quarter hour come from :func:`~ingest.store_direct.encode_direct`
(every row stored), then their local day, in key order as there. The status rows are locked
after all the day rows (the join waits for the count of ``counted``), as the staging way does:
a fast and a merging writer never wait on each other in opposite orders."""
_REJECT = """INSERT INTO rejected_messages AS r (fingerprint, received_at, last_received_at,
        times_seen, topic, site, device, reason, detail, payload, payload_bytes)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (fingerprint) DO UPDATE
    SET times_seen = r.times_seen + EXCLUDED.times_seen,
        last_received_at = EXCLUDED.last_received_at, detail = EXCLUDED.detail
    WHERE r.last_received_at < EXCLUDED.last_received_at"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Rows newly stored, rows already present (duplicates), rejections written, and whether the
    batch went by the direct ``COPY``."""

    stored: int
    duplicates: int
    rejected: int
    direct: bool = False
    """The readings went by the direct ``COPY`` (none was stored already)."""


def _array_literal(values: Sequence[int]) -> str:
    """``{1,2,3}``: an array of integers as PostgreSQL parses it. psycopg adapts a list element
    by element (22 ms for two lists of 10,000 ints, measured); joining the text takes ~2 ms."""
    return "{" + ",".join(map(str, values)) + "}"


def _group_rejections(rejections: Sequence[Rejection]) -> list[tuple[object, ...]]:
    """One parameter row per fingerprint (first and last reception, count)."""
    grouped: dict[bytes, list[object]] = {}
    for rej in rejections:
        key = rej.fingerprint
        row = grouped.get(key)
        if row is None:
            grouped[key] = [
                key,
                utc(rej.received_at),
                utc(rej.received_at),
                1,
                rej.topic,
                rej.site,
                rej.device,
                rej.reason.value,
                rej.detail,
                rej.payload,
                rej.payload_bytes,
            ]
        else:
            row[2] = utc(rej.received_at)
            row[3] = int(row[3]) + 1  # type: ignore[call-overload]
    return [tuple(row) for row in grouped.values()]


def _write_direct(
    conn: psycopg.Connection,
    cur: psycopg.Cursor[tuple[object, ...]],
    rows: Sequence[Row],
    uplinks: Uplinks | None,
) -> bool:
    """Copy ``rows`` straight into ``readings`` under a savepoint, then count them and update
    ``device_status``. False, with nothing written, when a row is already stored (the unique
    violation rolls back to the savepoint: a redelivery; under TimescaleDB also a row in a
    compressed chunk) or out of a column's range: the staging merge then does it all."""
    try:
        batch = encode_direct(rows, uplinks)
    except struct.error:
        return False  # the staging COPY reports it as it always did
    try:
        with conn.transaction(), cur.copy(_COPY_DIRECT) as copy:
            copy.write(batch.payload)
    except psycopg.errors.UniqueViolation:
        log.debug("a batch of %d rows holds readings already stored: merged", len(rows))
        return False
    _count_direct(cur, batch, counted=uplinks is not None)
    return True


def _count_direct(
    cur: psycopg.Cursor[tuple[object, ...]], batch: DirectBatch, *, counted: bool
) -> None:
    status = (_array_literal(batch.status_ids), _array_literal(batch.status_last_us))
    if not counted:
        cur.execute(_STATUS_DIRECT, status)
        return
    cur.execute(
        _COUNTED_DIRECT,
        (
            _array_literal(batch.device_ids),
            _array_literal(batch.quarters),
            _array_literal(batch.messages),
            _array_literal(batch.readings),
            _array_literal(batch.metric_masks),
            *status,
        ),
    )


class Store:
    """One connection that writes batches. Raises ``psycopg.OperationalError`` when the
    database is unreachable; the caller spools and retries. ``direct_copy`` False: every batch
    goes the staging way (the escape hatch, and the benchmark's baseline)."""

    def __init__(self, conninfo: str, timeout_s: float = 5.0, direct_copy: bool = True) -> None:
        self._conninfo = conninfo
        self._timeout_s = timeout_s
        self._direct_copy = direct_copy
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = connect(self._conninfo, timeout_s=self._timeout_s)
            conn.execute("SET synchronous_commit = on")
            conn.execute(_STAGE)
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Close the connection (it is reopened on the next write)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def write(
        self,
        rows: Sequence[Row],
        rejections: Sequence[Rejection],
        replayed_ids: Sequence[int] = (),
        uplinks: Uplinks | None = None,
        frame_id: bytes | None = None,
    ) -> WriteResult:
        """Store ``rows`` and ``rejections`` in one transaction.

        ``replayed_ids`` are rejected messages that this write resolves (marked replayed in the
        same transaction). ``uplinks``: the MQTT messages that gave ``rows``, counted with the
        readings newly stored in ``device_reporting_daily`` (None: nothing counted — CSV imports
        and replays of rejected messages are not messages from devices; a backfill of
        MQTT-shaped messages passes its own).
        ``frame_id``: the spool frame replayed, whose ``uplinks`` are counted only the first time.
        """
        try:
            conn = self._connection()
        except Exception as exc:
            raise psycopg.OperationalError(str(exc)) from exc
        try:
            with conn.transaction(), conn.cursor() as cur:
                stored = 0
                if uplinks is not None and frame_id is not None:
                    cur.execute(_REPLAYED, (frame_id,))
                    if cur.rowcount == 0:
                        uplinks = None
                direct = False
                if rows and self._direct_copy:
                    direct = _write_direct(conn, cur, rows, uplinks)
                if direct:
                    stored = len(rows)
                elif rows:
                    with cur.copy(
                        "COPY readings_stage (t_us, device_id, metric_id, value) "
                        "FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(_STAGE_TYPES)
                        for row in rows:
                            copy.write_row(row)
                    if uplinks is None:
                        cur.execute(_MERGE)
                        stored = max(cur.rowcount, 0)
                    else:
                        cur.execute(
                            _MERGE_COUNTED,
                            (_array_literal(uplinks.device_ids), _array_literal(uplinks.t_us)),
                        )
                        counted = cur.fetchone()
                        stored = int(counted[0]) if counted else 0
                    cur.execute(_STATUS)
                grouped = _group_rejections(rejections)
                if grouped:
                    cur.executemany(_REJECT, grouped)
                if replayed_ids:
                    cur.execute(
                        "UPDATE rejected_messages SET replayed_at = now() WHERE id = ANY(%s)",
                        (list(replayed_ids),),
                    )
            return WriteResult(stored, len(rows) - stored, len(rejections), direct)
        except psycopg.OperationalError:
            self.close()
            raise
        except psycopg.Error as exc:
            if conn.broken:
                self.close()
                raise psycopg.OperationalError(str(exc)) from exc
            raise
