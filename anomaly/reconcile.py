"""The alerts side of the anomaly stage: reconciliation of what the detectors found with the
``alerts`` table (idempotent scans, one active alert per subject and kind), and the
``dma_nights`` rows. Times [s since epoch] in, ``timestamptz`` in the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from core.clock import utc


@dataclass(slots=True)
class Found:
    """An anomaly found by a detector, to be written as an alert (times [s since epoch])."""

    kind: str
    site: str
    subject_type: str
    subject: str
    opened_at: float
    started_at: float | None
    ended_at: float | None
    seen_until: float
    flow_m3h: float | None
    details: dict[str, Any]
    end_reason: str = "returned to baseline"


@dataclass(slots=True)
class Reconciled:
    """What a reconciliation did."""

    opened: int = 0
    updated: int = 0
    closed: int = 0


def _ts(value: float | None) -> datetime | None:
    return None if value is None else utc(value)


def reconcile(
    conn: psycopg.Connection,
    site: str,
    subject_type: str,
    subject: str,
    kind: str,
    found: list[Found],
    since: float,
    until: float,
) -> Reconciled:
    """Make the alerts of one subject and kind agree with what the detector found between
    ``since`` and ``until``: an alert whose span overlaps an episode is updated (and resolved
    by the service when the episode ended), a new episode opens an alert, and an active alert
    opened in the range that no episode confirms any more is closed at ``until``."""
    result = Reconciled()
    existing = conn.execute(
        """SELECT id, state, extract(epoch FROM opened_at),
                  extract(epoch FROM closed_at), resolved_by
           FROM alerts
           WHERE site = %s AND subject_type = %s AND subject = %s AND kind = %s
             AND opened_at < %s AND (closed_at IS NULL OR closed_at >= %s)
           ORDER BY opened_at""",
        (site, subject_type, subject, kind, _ts(until), _ts(since - 86400.0)),
    ).fetchall()
    matched: set[int] = set()
    for ep in found:
        ep_end = ep.ended_at if ep.ended_at is not None else float("inf")
        hit = None
        for row in existing:
            opened = float(row[2])
            closed = float(row[3]) if row[3] is not None else float("inf")
            if row[0] not in matched and opened <= ep_end and closed >= ep.opened_at:
                hit = row
                break
        details = orjson.dumps(ep.details, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        if hit is None:
            state = "resolved" if ep.ended_at is not None else "open"
            conn.execute(
                """INSERT INTO alerts (kind, site, subject_type, subject, state, opened_at,
                       started_at, updated_at, closed_at, resolved_at, resolved_by,
                       estimated_flow_m3h, details)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)""",
                (
                    kind,
                    site,
                    subject_type,
                    subject,
                    state,
                    _ts(ep.opened_at),
                    _ts(ep.started_at),
                    _ts(ep.seen_until),
                    _ts(ep.ended_at),
                    _ts(ep.ended_at),
                    "sobriety" if ep.ended_at is not None else None,
                    ep.flow_m3h,
                    details,
                ),
            )
            result.opened += 1
            if ep.ended_at is not None:
                result.closed += 1
            continue
        matched.add(hit[0])
        if hit[1] == "resolved":
            continue  # resolved (by a person or earlier): history stays as it was
        conn.execute(
            """UPDATE alerts SET estimated_flow_m3h = %s, details = %s::jsonb,
                   updated_at = greatest(updated_at, %s), started_at = %s
               WHERE id = %s""",
            (ep.flow_m3h, details, _ts(ep.seen_until), _ts(ep.started_at), hit[0]),
        )
        result.updated += 1
        if ep.ended_at is not None:
            _close(conn, hit[0], ep.ended_at, ep.end_reason)
            result.closed += 1
    for row in existing:
        if row[0] in matched or row[1] == "resolved" or float(row[2]) < since:
            continue
        _close(conn, row[0], until, "not confirmed by a later scan")
        result.closed += 1
    return result


def _close(conn: psycopg.Connection, alert_id: int, at: float, why: str) -> None:
    conn.execute(
        """UPDATE alerts SET state = 'resolved', closed_at = %s, resolved_at = %s,
               resolved_by = 'sobriety', details = details || jsonb_build_object('closed', %s)
           WHERE id = %s AND state <> 'resolved'""",
        (_ts(at), _ts(at), why, alert_id),
    )


def active_since(conn: psycopg.Connection, site: str) -> float | None:
    """Earliest start [s since epoch] of the active (not resolved) alerts of a site."""
    row = conn.execute(
        """SELECT extract(epoch FROM min(coalesce(started_at, opened_at)))
           FROM alerts WHERE site = %s AND state <> 'resolved'""",
        (site,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def active_subjects(conn: psycopg.Connection, site: str, subject_type: str, kind: str) -> set[str]:
    """Subjects of a kind with an active (not resolved) alert."""
    return {
        r[0]
        for r in conn.execute(
            """SELECT subject FROM alerts WHERE site = %s AND subject_type = %s AND kind = %s
               AND state <> 'resolved'""",
            (site, subject_type, kind),
        )
    }


def manual_resolutions(conn: psycopg.Connection, site: str, kind: str) -> dict[str, list[float]]:
    """Times [s since epoch] at which a person resolved an alert, per subject."""
    out: dict[str, list[float]] = {}
    for subject, at in conn.execute(
        """SELECT subject, extract(epoch FROM resolved_at) FROM alerts
           WHERE site = %s AND kind = %s AND state = 'resolved'
             AND resolved_by IS DISTINCT FROM 'sobriety' ORDER BY resolved_at""",
        (site, kind),
    ):
        out.setdefault(subject, []).append(float(at))
    return out


_NIGHT_COLUMNS = (
    "site, dma, night, window_start, window_end, mnf_m3h, metered_m3h, net_m3h, baseline_m3h, "
    "meter_coverage, gap, meters_reported, pressure_drop_z, note"
)


def write_nights(conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Upsert rows of ``dma_nights`` (site, dma, night, window_start, window_end, mnf,
    metered, net, baseline, coverage, gap, meters reported, pressure drop, note): COPY into a
    temporary table, then one upsert (a year of 100 DMAs is 36,500 rows)."""
    if not rows:
        return
    conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS dma_nights_stage "
        "(LIKE dma_nights INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    with conn.cursor() as cur:
        with cur.copy(f"COPY dma_nights_stage ({_NIGHT_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(
            f"""INSERT INTO dma_nights ({_NIGHT_COLUMNS})
               SELECT {_NIGHT_COLUMNS} FROM dma_nights_stage
               ON CONFLICT (site, dma, night) DO UPDATE SET
                   window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
                   mnf_m3h = EXCLUDED.mnf_m3h, metered_m3h = EXCLUDED.metered_m3h,
                   net_m3h = EXCLUDED.net_m3h, baseline_m3h = EXCLUDED.baseline_m3h,
                   meter_coverage = EXCLUDED.meter_coverage, gap = EXCLUDED.gap,
                   meters_reported = EXCLUDED.meters_reported,
                   pressure_drop_z = EXCLUDED.pressure_drop_z, note = EXCLUDED.note,
                   computed_at = now()"""
        )
        cur.execute("DELETE FROM dma_nights_stage")
