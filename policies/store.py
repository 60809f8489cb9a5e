"""SQL side of the policies stage: the inventory it reads (sites, devices), the DMAs under an
active leak alert (the anomaly stage's ``alerts``), and its own tables — ``device_configs`` (the
config last published to each device), ``device_states`` (the retained ``state`` last received),
``lighting_overrides`` — and the accounting baseline row of ``reporting_baseline``.

Times are ``timestamptz``; Python gets and gives seconds since the epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from core.clock import utc
from policies.config import Accounting
from policies.desired import InventoryDevice, InventorySite

__all__ = [
    "Override",
    "Published",
    "StateRow",
    "active_overrides",
    "add_override",
    "counts",
    "devices",
    "escalated_dmas",
    "luminaires_of",
    "mark_override_resent",
    "mark_resent",
    "override_resends",
    "published",
    "reject_state",
    "save_published",
    "save_states",
    "sites",
    "sync_accounting",
    "unapplied",
]


@dataclass(frozen=True, slots=True)
class Published:
    """The config last published to a device."""

    version: int
    digest: bytes
    published_at: float


@dataclass(frozen=True, slots=True)
class StateRow:
    """A ``state`` received from ``site/device`` at ``received_at`` [s since the epoch]."""

    site: str
    device: str
    online: bool
    config_version: int | None
    config_error: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class Override:
    """A manual lighting override: ``level`` [%] from ``starts_at`` to ``until`` [s since the
    epoch] on a lighting group or one luminaire."""

    id: int
    site: str
    lighting_group: str | None
    device: str | None
    level: float
    starts_at: float
    until: float
    reason: str
    luminaires: int
    created_by: str


def sites(conn: psycopg.Connection) -> dict[str, InventorySite]:
    """Every site with its time zone and coordinates."""
    rows = conn.execute("SELECT site, timezone, lat, lon FROM sites").fetchall()
    return {r[0]: InventorySite(r[0], r[1], r[2], r[3]) for r in rows}


def devices(conn: psycopg.Connection, site: str | None = None) -> list[InventoryDevice]:
    """Every device (of one site), ordered by site and id."""
    rows = conn.execute(
        """SELECT id, site, device, kind, dma, lighting_group, lighting_class FROM devices
           WHERE %(s)s::text IS NULL OR site = %(s)s ORDER BY site, device""",
        {"s": site},
    ).fetchall()
    return [InventoryDevice(*row) for row in rows]


def escalated_dmas(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """(site, dma) of the DMAs with a leak alert not resolved (open or acknowledged)."""
    rows = conn.execute(
        """SELECT DISTINCT site, subject FROM alerts
           WHERE kind = 'leak' AND subject_type = 'dma' AND state <> 'resolved'"""
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def published(conn: psycopg.Connection) -> dict[int, Published]:
    """The config last published to each device, by device id."""
    rows = conn.execute("SELECT device_id, version, digest, published_at FROM device_configs")
    return {r[0]: Published(r[1], bytes(r[2]), r[3].timestamp()) for r in rows}


def save_published(
    conn: psycopg.Connection,
    rows: Sequence[tuple[int, int, bytes, bytes, str | None, bool, float]],
) -> None:
    """Record configs the broker acknowledged: (device id, version, digest, payload JSON,
    program, escalated, published at [s])."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO device_configs AS c (device_id, version, digest, payload, program,
                   escalated, published_at)
               VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s)
               ON CONFLICT (device_id) DO UPDATE
               SET version = EXCLUDED.version, digest = EXCLUDED.digest,
                   payload = EXCLUDED.payload, program = EXCLUDED.program,
                   escalated = EXCLUDED.escalated, published_at = EXCLUDED.published_at,
                   resent_at = NULL, resends = 0""",
            [(d, v, g, p.decode(), prog, esc, utc(t)) for d, v, g, p, prog, esc, t in rows],
        )


def unapplied(
    conn: psycopg.Connection, now: float, resend_after_s: float
) -> list[tuple[int, str, str, bytes]]:
    """(device id, site, device, payload) of the configs an online device has not applied
    ``resend_after_s`` after they were published (or last resent)."""
    rows = conn.execute(
        """SELECT c.device_id, d.site, d.device, c.payload::text FROM device_configs c
           JOIN devices d ON d.id = c.device_id
           JOIN device_states s ON s.site = d.site AND s.device = d.device
           WHERE s.online AND s.config_version IS DISTINCT FROM c.version
             AND s.config_error IS NULL
             AND coalesce(c.resent_at, c.published_at) <= %s""",
        (utc(now - resend_after_s),),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3].encode()) for r in rows]


def mark_resent(conn: psycopg.Connection, device_ids: Sequence[int], at: float) -> None:
    """Record that these devices were sent their config again at ``at`` [s]."""
    if device_ids:
        conn.execute(
            """UPDATE device_configs SET resent_at = %s, resends = resends + 1
               WHERE device_id = ANY(%s)""",
            (utc(at), list(device_ids)),
        )


def save_states(conn: psycopg.Connection, rows: Iterable[StateRow]) -> int:
    """Upsert the states received (the last one per device wins); how many were written."""
    latest: dict[tuple[str, str], StateRow] = {}
    for row in rows:
        latest[(row.site, row.device)] = row
    if not latest:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO device_states AS s (site, device, online, config_version,
                   config_error, state_at)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (site, device) DO UPDATE
               SET online = EXCLUDED.online,
                   config_version = coalesce(EXCLUDED.config_version, s.config_version),
                   config_error = EXCLUDED.config_error, state_at = EXCLUDED.state_at""",
            [
                (r.site, r.device, r.online, r.config_version, r.config_error, utc(r.received_at))
                for r in latest.values()
            ],
        )
    return len(latest)


def reject_state(
    conn: psycopg.Connection, topic: str, site: str | None, device: str | None, detail: str,
    payload: bytes, received_at: float, max_bytes: int = 65536,
) -> None:  # fmt: skip
    """Store a ``state`` message that could not be read in ``rejected_messages`` (reason
    ``invalid_payload``), once per topic and payload."""
    fingerprint = hashlib.sha256(b"state\0" + topic.encode() + b"\0" + payload).digest()
    at = utc(received_at)
    conn.execute(
        """INSERT INTO rejected_messages AS r (fingerprint, received_at, last_received_at,
               topic, site, device, reason, detail, payload, payload_bytes)
           VALUES (%s, %s, %s, %s, %s, %s, 'invalid_payload', %s, %s, %s)
           ON CONFLICT (fingerprint) DO UPDATE
           SET times_seen = r.times_seen + 1, last_received_at = EXCLUDED.last_received_at""",
        (fingerprint, at, at, topic, site, device, detail, payload[:max_bytes], len(payload)),
    )


def luminaires_of(
    conn: psycopg.Connection, site: str, group: str | None, device: str | None
) -> list[str]:
    """The luminaires of a lighting group (or the one named) at ``site``."""
    rows = conn.execute(
        """SELECT device FROM devices WHERE site = %s AND kind = 'luminaire'
             AND (%s::text IS NULL OR lighting_group = %s)
             AND (%s::text IS NULL OR device = %s) ORDER BY device""",
        (site, group, group, device, device),
    ).fetchall()
    return [r[0] for r in rows]


def add_override(
    conn: psycopg.Connection, site: str, group: str | None, device: str | None, level: float,
    starts_at: float, until: float, reason: str, luminaires: int,
) -> int:  # fmt: skip
    """Record an override; its id."""
    row = conn.execute(
        """INSERT INTO lighting_overrides (site, lighting_group, device, level, starts_at,
               until, reason, luminaires)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (site, group, device, level, utc(starts_at), utc(until), reason, luminaires),
    ).fetchone()
    assert row is not None
    return int(row[0])


def active_overrides(
    conn: psycopg.Connection, now: float, site: str | None = None
) -> list[Override]:
    """The overrides in force at ``now`` [s] (started, not yet ended), soonest end first."""
    rows = conn.execute(
        """SELECT id, site, lighting_group, device, level, starts_at, until, reason,
                  luminaires, created_by
           FROM lighting_overrides
           WHERE starts_at <= %(t)s AND until > %(t)s
             AND (%(s)s::text IS NULL OR site = %(s)s)
           ORDER BY until, id""",
        {"t": utc(now), "s": site},
    ).fetchall()
    return [_override(r) for r in rows]


def override_resends(
    conn: psycopg.Connection, now: float
) -> list[tuple[int, str, str, float, float]]:
    """(override id, site, luminaire, level [%], until [s]) of the luminaires of an override in
    force whose ``state`` came after it was sent (or last resent): a luminaire that was offline,
    or restarted, is sent the override again for the time that remains."""
    rows = conn.execute(
        """SELECT o.id, d.site, d.device, o.level, o.until FROM lighting_overrides o
           JOIN devices d ON d.site = o.site AND d.kind = 'luminaire'
               AND (d.device = o.device OR d.lighting_group = o.lighting_group)
           JOIN device_states s ON s.site = d.site AND s.device = d.device
           WHERE o.starts_at <= %(t)s AND o.until > %(t)s AND s.online
             AND s.state_at > coalesce(o.resent_at, o.starts_at)
           ORDER BY o.id, d.device""",
        {"t": utc(now)},
    ).fetchall()
    return [(int(r[0]), r[1], r[2], float(r[3]), r[4].timestamp()) for r in rows]


def mark_override_resent(conn: psycopg.Connection, ids: Iterable[int], at: float) -> None:
    """Record that overrides were resent at ``at`` [s]."""
    conn.execute(
        "UPDATE lighting_overrides SET resent_at = %s WHERE id = ANY(%s)", (utc(at), list(ids))
    )


def _override(r: tuple[Any, ...]) -> Override:
    return Override(
        int(r[0]), r[1], r[2], r[3], float(r[4]), r[5].timestamp(), r[6].timestamp(), r[7],
        int(r[8]), r[9],
    )  # fmt: skip


def counts(conn: psycopg.Connection) -> dict[str, int]:
    """For the metrics: devices drifted (``api.config_drift``), of them online, and devices
    escalated."""
    row = conn.execute(
        """SELECT (SELECT count(*) FROM api.config_drift),
                  (SELECT count(*) FROM api.config_drift WHERE online),
                  (SELECT count(*) FROM device_configs WHERE escalated)"""
    ).fetchone()
    assert row is not None
    return {"drifted": int(row[0]), "drifted_online": int(row[1]), "escalated": int(row[2])}


def sync_accounting(conn: psycopg.Connection, accounting: Accounting) -> None:
    """Write the configured baseline of ``api.reporting_daily`` to ``reporting_baseline``."""
    conn.execute(
        """UPDATE reporting_baseline SET interval_s = %s, uplink_energy_j = %s, updated_at = now()
           WHERE interval_s <> %s OR uplink_energy_j <> %s""",
        (
            accounting.baseline_interval_s,
            accounting.uplink_energy_j,
            accounting.baseline_interval_s,
            accounting.uplink_energy_j,
        ),
    )
