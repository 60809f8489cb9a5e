"""The lifecycle of an alert of the ``alerts`` table (migration 0003), for any stage: one
active (open or acknowledged) alert per (site, subject type, subject, kind), updated while the
anomaly lasts, resolved by the service (``resolved_by`` 'sobriety') when its signal is back to
normal; an acknowledged alert stays acknowledged until then; a resolved one is history and is
never reopened (a fault seen again after it is a new alert).

Times cross as seconds since the epoch; they are data times, not the clock's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg

from core.clock import utc

__all__ = ["ActiveAlert", "Found", "Outcome", "active_alerts", "manual_resolutions", "reconcile"]


@dataclass(slots=True)
class Found:
    """A fault as a detector found it [s since epoch]: ``opened_at`` when it was confirmed
    (``None``: carried on from an active alert), ``started_at`` its estimated start,
    ``seen_until`` the last data time it was seen (``None``: not seen again), ``ended_at``
    when its signal had been back to normal long enough (``None``: still on)."""

    kind: str
    site: str
    subject_type: str
    subject: str
    opened_at: float | None
    started_at: float
    seen_until: float | None
    ended_at: float | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """What a reconciliation did."""

    opened: int = 0
    updated: int = 0
    closed: int = 0

    def add(self, other: Outcome) -> None:
        """Count ``other``'s work too."""
        self.opened += other.opened
        self.updated += other.updated
        self.closed += other.closed


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert not resolved yet: its id, state and times [s]."""

    id: int
    state: str
    started_at: float
    updated_at: float


def _ts(value: float | None) -> datetime | None:
    return None if value is None else utc(value)


def active_alerts(
    conn: psycopg.Connection, site: str, subject_type: str, kinds: tuple[str, ...]
) -> dict[tuple[str, str], ActiveAlert]:
    """The active alerts of ``kinds`` at ``site``, by (subject, kind)."""
    rows = conn.execute(
        """SELECT subject, kind, id, state,
                  extract(epoch FROM coalesce(started_at, opened_at))::float8,
                  extract(epoch FROM updated_at)::float8
           FROM alerts WHERE site = %s AND subject_type = %s AND kind = ANY(%s)
             AND state <> 'resolved'""",
        (site, subject_type, list(kinds)),
    ).fetchall()
    return {(r[0], r[1]): ActiveAlert(r[2], r[3], r[4], r[5]) for r in rows}


def manual_resolutions(
    conn: psycopg.Connection, site: str, subject_type: str, kinds: tuple[str, ...]
) -> dict[tuple[str, str], list[float]]:
    """When [s] a person (not the service) resolved an alert, by (subject, kind)."""
    out: dict[tuple[str, str], list[float]] = {}
    for subject, kind, at in conn.execute(
        """SELECT subject, kind, extract(epoch FROM resolved_at)::float8 FROM alerts
           WHERE site = %s AND subject_type = %s AND kind = ANY(%s) AND state = 'resolved'
             AND resolved_by IS DISTINCT FROM 'sobriety' ORDER BY resolved_at""",
        (site, subject_type, list(kinds)),
    ):
        out.setdefault((subject, kind), []).append(float(at))
    return out


def reconcile(conn: psycopg.Connection, found: Found) -> Outcome:
    """Write one found fault: the alert it continues (active, or resolved over the same span:
    then nothing changes) is updated — ``updated_at`` the latest data time, ``started_at`` the
    earliest estimate, the details replaced — and resolved at ``ended_at`` when that is past
    the last time the fault was seen; a fault no alert covers opens one (already resolved when
    it ended within the data)."""
    out = Outcome()
    details = orjson.dumps(found.details, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    end = found.ended_at if found.ended_at is not None else float("inf")
    row = conn.execute(
        """SELECT id, state, extract(epoch FROM updated_at)::float8 FROM alerts
           WHERE site = %s AND subject_type = %s AND subject = %s AND kind = %s
             AND coalesce(started_at, opened_at) < %s
             AND (closed_at IS NULL OR closed_at > %s)
           ORDER BY state = 'resolved', opened_at DESC LIMIT 1""",
        (found.site, found.subject_type, found.subject, found.kind,
         _ts(min(end, 1e11)), _ts(found.started_at)),
    ).fetchone()  # fmt: skip
    if row is None:
        if found.opened_at is None or found.seen_until is None:
            return out  # carried on from an alert since resolved by hand: nothing new
        resolved = found.ended_at is not None
        conn.execute(
            """INSERT INTO alerts (kind, site, subject_type, subject, state, opened_at,
                   started_at, updated_at, closed_at, resolved_at, resolved_by, details)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)""",
            (found.kind, found.site, found.subject_type, found.subject,
             "resolved" if resolved else "open", _ts(found.opened_at), _ts(found.started_at),
             _ts(found.seen_until), _ts(found.ended_at), _ts(found.ended_at),
             "sobriety" if resolved else None, details),
        )  # fmt: skip
        out.opened += 1
        out.closed += int(resolved)
        return out
    alert_id, state, updated_at = int(row[0]), str(row[1]), float(row[2])
    if state == "resolved":
        return out  # history stays as it was
    if found.seen_until is not None:
        conn.execute(
            """UPDATE alerts SET details = %s::jsonb, updated_at = greatest(updated_at, %s),
                   started_at = least(coalesce(started_at, opened_at), %s)
               WHERE id = %s""",
            (details, _ts(found.seen_until), _ts(found.started_at), alert_id),
        )
        out.updated += 1
        updated_at = max(updated_at, found.seen_until)
    if found.ended_at is not None and found.ended_at > updated_at:
        conn.execute(
            """UPDATE alerts SET state = 'resolved', closed_at = %s, resolved_at = %s,
                   resolved_by = 'sobriety',
                   details = details || jsonb_build_object('closed', 'back to normal')
               WHERE id = %s AND state <> 'resolved'""",
            (_ts(found.ended_at), _ts(found.ended_at), alert_id),
        )
        out.closed += 1
    return out
