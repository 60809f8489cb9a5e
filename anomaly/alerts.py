"""Alerts as people see them: list, acknowledge, resolve (``sobriety alerts ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.errors import SobrietyError

ALERT_KINDS = ("leak", "data_gap", "continuous_flow", "high_consumption")
"""The kinds of alert this stage opens."""
COLUMNS = (
    "id, kind, site, subject_type, subject, opened_at, closed_at, state, estimated_flow_m3h, "
    "details, started_at, updated_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by"
)


class AlertError(SobrietyError):
    """An alert that does not exist or cannot take that step of its lifecycle."""


def list_alerts(
    conn: psycopg.Connection,
    site: str | None = None,
    state: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Alerts, newest first; ``state`` ``active`` means open or acknowledged."""
    where: list[str] = []
    params: list[object] = []
    if site is not None:
        where.append("site = %s")
        params.append(site)
    if state == "active":
        where.append("state <> 'resolved'")
    elif state is not None:
        where.append("state = %s")
        params.append(state)
    if kind is not None:
        where.append("kind = %s")
        params.append(kind)
    if since is not None:
        where.append("(closed_at IS NULL OR closed_at >= %s)")
        params.append(since)
    sql = f"SELECT {COLUMNS} FROM api.alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql + " ORDER BY opened_at DESC, id DESC", params)
        yield from cur


def acknowledge(conn: psycopg.Connection, alert_id: int, by: str) -> None:
    """Mark an open alert as seen by ``by``; it stays active and keeps being updated."""
    _step(conn, alert_id, by, "acknowledged", {"open"})


def resolve(conn: psycopg.Connection, alert_id: int, by: str, note: str | None = None) -> None:
    """Close an alert by hand (repaired, or an accepted change): the detector then takes the
    current level as the new normal for that subject."""
    _step(conn, alert_id, by, "resolved", {"open", "acknowledged"}, note)


def _step(
    conn: psycopg.Connection,
    alert_id: int,
    by: str,
    target: str,
    allowed: set[str],
    note: str | None = None,
) -> None:
    if not by.strip():
        raise AlertError("--by: say who (a name or a team)")
    row = conn.execute("SELECT state FROM alerts WHERE id = %s FOR UPDATE", (alert_id,)).fetchone()
    if row is None:
        raise AlertError(f"alert {alert_id}: no such alert")
    if row[0] not in allowed:
        raise AlertError(f"alert {alert_id} is {row[0]}: cannot become {target}")
    if target == "acknowledged":
        conn.execute(
            """UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(),
                   acknowledged_by = %s WHERE id = %s""",
            (by, alert_id),
        )
    else:
        conn.execute(
            """UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_by = %s,
                   closed_at = now(),
                   details = details || jsonb_build_object('note', %s::text)
               WHERE id = %s""",
            (by, note, alert_id),
        )
    conn.commit()
