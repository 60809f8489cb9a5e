"""Following the hourly rollup: which (device, hour) pairs it recomputed since a follower last
looked (``readings_hourly_changes``, migration 0016).

Every chunk of :func:`core.rollup.refresh` logs the pairs it recomputed (:func:`record`, in the
chunk's transaction). A follower — a stage that derives its own tables from the rollup, such as
energy — calls :func:`follow` to learn what changed after its position, does its work, then
:func:`advance` in the same transaction as that work: a crash in between leaves its position
where it was, so the next pass does the work again (followers' work is idempotent), and nothing
is skipped. Refreshes are serialised by their advisory lock and each chunk commits before the
next allocates ids, so entries become visible in id order: a follower that read up to id ``n``
never later finds a committed entry below ``n`` it had not seen.

:func:`prune` (called by each refresh) deletes what every follower has read, and forgets a
follower that has not advanced for :data:`KEEP_S` (its entries are then pruned too; its next
:func:`follow` says ``whole=False``: it must rescan). Under TimescaleDB the continuous
aggregate's own refresh writes no log: :func:`follow` then says ``whole=False`` every time.

Times in seconds since the epoch (UTC hours' starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from core.db import is_continuous_aggregate

__all__ = ["KEEP_S", "Changes", "advance", "follow", "prune", "record"]

KEEP_S = 7 * 86400.0
"""A follower that has not advanced for this long [s] is forgotten and its entries pruned."""


@dataclass(frozen=True)
class Changes:
    """What the rollup recomputed after a follower's position, up to ``upto`` (the id to
    :func:`advance` to). ``hours``: per device id, its first and last changed hour [s since the
    epoch, UTC hour starts]. ``whole``: every change since the follower last advanced is here;
    ``False`` when the follower is new or was forgotten (it must rescan what it needs)."""

    upto: int
    whole: bool
    hours: dict[int, tuple[float, float]] = field(default_factory=dict)


def record(conn: psycopg.Connection, devices: list[int], hours: list[datetime]) -> None:
    """Log that the rollup recomputed the pairs ``zip(devices, hours)`` (the caller's
    transaction: the refresh chunk's)."""
    conn.execute(
        """INSERT INTO readings_hourly_changes (device_id, hour)
           SELECT DISTINCT t.device_id, t.hour
           FROM unnest(%s::integer[], %s::timestamptz[]) AS t (device_id, hour)
           ORDER BY t.hour, t.device_id""",
        (devices, hours),
        prepare=False,
    )


def follow(conn: psycopg.Connection, follower: str) -> Changes:
    """What changed after ``follower``'s position (registering it, at the log's end, the first
    time: that registration is committed at once so that nothing after it is pruned). Under
    TimescaleDB, nothing is logged: ``whole=False``, always."""
    if is_continuous_aggregate(conn):
        return Changes(0, whole=False)
    row = conn.execute(
        "SELECT last_id FROM readings_hourly_followers WHERE follower = %s", (follower,)
    ).fetchone()
    end = conn.execute("SELECT coalesce(max(id), 0) FROM readings_hourly_changes").fetchone()
    upto = int(end[0]) if end is not None else 0
    if row is None:
        conn.execute(
            """INSERT INTO readings_hourly_followers (follower, last_id) VALUES (%s, %s)
               ON CONFLICT (follower) DO NOTHING""",
            (follower, upto),
        )
        conn.commit()
        return Changes(upto, whole=False)
    position = int(row[0])
    rows = conn.execute(
        """SELECT device_id, extract(epoch FROM min(hour))::float8,
                  extract(epoch FROM max(hour))::float8
           FROM readings_hourly_changes WHERE id > %s AND id <= %s GROUP BY device_id""",
        (position, upto),
    ).fetchall()
    return Changes(max(upto, position), whole=True, hours={int(r[0]): (r[1], r[2]) for r in rows})


def advance(conn: psycopg.Connection, follower: str, upto: int) -> None:
    """Move ``follower``'s position to ``upto`` (the caller's transaction: the one of the work
    done for those changes)."""
    conn.execute(
        """INSERT INTO readings_hourly_followers AS f (follower, last_id) VALUES (%s, %s)
           ON CONFLICT (follower) DO UPDATE
               SET last_id = greatest(f.last_id, excluded.last_id), updated_at = now()""",
        (follower, upto),
    )


def prune(conn: psycopg.Connection, keep_s: float = KEEP_S) -> int:
    """Forget followers idle for more than ``keep_s`` [s]; delete the entries every remaining
    follower has read (all of them without a follower); entries deleted. The caller's
    transaction."""
    conn.execute(
        """DELETE FROM readings_hourly_followers
           WHERE updated_at < now() - make_interval(secs => %s)""",
        (keep_s,),
    )
    cur = conn.execute(
        """DELETE FROM readings_hourly_changes
           WHERE id <= coalesce((SELECT min(last_id) FROM readings_hourly_followers),
                                (SELECT max(id) FROM readings_hourly_changes))"""
    )
    return cur.rowcount
