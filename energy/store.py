"""SQL side of the energy stage: the metered devices of a site with what their figures need
(inventory properties, the reporting they were told), their ``energy`` and ``power`` rows of
``readings_hourly``, the raw counter readings of the hours a rollup cannot tell, and the
``energy_daily`` table it writes.

Times cross as seconds since the epoch (``extract(epoch …)``) and timestamps.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import psycopg

from core.clock import utc
from energy.daily import CounterHours, DayFigures
from energy.integrate import HourlyPower

__all__ = [
    "MeteredDevice",
    "counter_hours",
    "metered_devices",
    "power_hours",
    "raw_counter",
    "save_days",
    "save_nights",
    "save_volumes",
    "sites",
    "sync_settings",
]


@dataclass(frozen=True, slots=True)
class MeteredDevice:
    """A device with ``energy`` or ``power`` rollups in the period."""

    device_id: int
    device: str
    kind: str
    has_energy: bool
    properties: dict[str, Any]
    nominal_power_w: float | None
    reporting: dict[str, Any] | None  # the reporting of its published config, if any


def sites(
    conn: psycopg.Connection, site: str | None = None, devices: Collection[int] | None = None
) -> list[tuple[str, str]]:
    """(site, time zone) of every site, or of one; only those of ids ``devices`` when given."""
    rows = conn.execute(
        """SELECT site, timezone FROM sites
           WHERE (%(s)s::text IS NULL OR site = %(s)s)
             AND (%(d)s::integer[] IS NULL
                  OR site IN (SELECT site FROM devices WHERE id = ANY(%(d)s::integer[])))
           ORDER BY 1""",
        {"s": site, "d": None if devices is None else sorted(devices)},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def metered_devices(
    conn: psycopg.Connection, site: str, since: float, until: float
) -> list[MeteredDevice]:
    """The devices of ``site`` with ``energy`` or ``power`` rollup rows in [since, until)."""
    rows = conn.execute(
        """WITH m AS (SELECT (SELECT id FROM metrics WHERE name = 'energy') AS energy,
                             (SELECT id FROM metrics WHERE name = 'power') AS power),
           found AS (
               SELECT d.id,
                      EXISTS (SELECT 1 FROM readings_hourly h, m WHERE h.device_id = d.id
                              AND h.metric_id = m.energy AND h.hour >= %(a)s
                              AND h.hour < %(b)s) AS has_energy,
                      EXISTS (SELECT 1 FROM readings_hourly h, m WHERE h.device_id = d.id
                              AND h.metric_id = m.power AND h.hour >= %(a)s
                              AND h.hour < %(b)s) AS has_power
               FROM devices d WHERE d.site = %(s)s)
           SELECT d.id, d.device, d.kind, f.has_energy, d.properties, d.nominal_power_w,
                  c.payload -> 'reporting'
           FROM found f JOIN devices d ON d.id = f.id
           LEFT JOIN device_configs c ON c.device_id = d.id
           WHERE f.has_energy OR f.has_power
           ORDER BY d.id""",
        {"s": site, "a": utc(since), "b": utc(until)},
    ).fetchall()
    return [MeteredDevice(*row) for row in rows]


def _epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8"


def counter_hours(
    conn: psycopg.Connection,
    device_ids: Sequence[int],
    since: float,
    until: float,
    metric: str = "energy",
) -> dict[int, CounterHours]:
    """The rollup rows of a cumulative ``metric`` (``energy`` [Wh], ``volume`` [m³]) of each
    device in [since, until), by device id."""
    rows = conn.execute(
        f"""SELECT device_id, {_epoch("hour")}, count, first, {_epoch("first_time")}, last,
                  {_epoch("last_time")}, min, max
           FROM readings_hourly
           WHERE device_id = ANY(%s) AND metric_id = (SELECT id FROM metrics WHERE name = %s)
             AND hour >= %s AND hour < %s
           ORDER BY device_id, hour""",
        (list(device_ids), metric, utc(since), utc(until)),
    ).fetchall()
    out: dict[int, CounterHours] = {}
    if not rows:
        return out
    a = np.array([r[1:] for r in rows], dtype=float)
    ids = np.array([r[0] for r in rows])
    bounds = np.flatnonzero(np.diff(ids)) + 1
    for part, block in zip(np.split(ids, bounds), np.split(a, bounds), strict=True):
        out[int(part[0])] = CounterHours(
            hour=block[:, 0], count=block[:, 1].astype(np.int64), first=block[:, 2],
            first_time=block[:, 3], last=block[:, 4], last_time=block[:, 5], min=block[:, 6],
            max=block[:, 7],
        )  # fmt: skip
    return out


def raw_counter(
    conn: psycopg.Connection, wanted: Sequence[tuple[int, float]], metric: str = "energy"
) -> dict[int, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """The raw readings of a cumulative ``metric`` for the (device id, hour [s]) asked:
    device → hour → (times [s], values)."""
    out: dict[int, dict[float, tuple[np.ndarray, np.ndarray]]] = {}
    if not wanted:
        return out
    rows = conn.execute(
        f"""SELECT r.device_id, u.h, {_epoch("r.time")}, r.value
           FROM unnest(%s::integer[], %s::float8[]) AS u (device_id, h)
           JOIN readings r ON r.device_id = u.device_id
               AND r.time >= to_timestamp(u.h) AND r.time < to_timestamp(u.h + 3600)
           WHERE r.metric_id = (SELECT id FROM metrics WHERE name = %s)
           ORDER BY 1, 2, 3""",
        ([d for d, _ in wanted], [h for _, h in wanted], metric),
    ).fetchall()
    grouped: dict[tuple[int, float], tuple[list[float], list[float]]] = {}
    for device_id, hour, t, value in rows:
        times, values = grouped.setdefault((device_id, hour), ([], []))
        times.append(t)
        values.append(value)
    for (device_id, hour), (times, values) in grouped.items():
        out.setdefault(device_id, {})[hour] = (np.array(times), np.array(values))
    return out


def power_hours(
    conn: psycopg.Connection, device_ids: Sequence[int], since: float, until: float
) -> HourlyPower:
    """The ``power`` rollup rows of the devices in [since, until), ``device`` the index of each
    device in ``device_ids``."""
    rows = conn.execute(
        f"""SELECT array_position(%s::integer[], device_id) - 1, {_epoch("hour")}, count, sum,
                  min, max, first, {_epoch("first_time")}, last, {_epoch("last_time")}
           FROM readings_hourly
           WHERE device_id = ANY(%s) AND metric_id = (SELECT id FROM metrics WHERE name = 'power')
             AND hour >= %s AND hour < %s
           ORDER BY 1, 2""",
        (list(device_ids), list(device_ids), utc(since), utc(until)),
    ).fetchall()
    a = np.array([r[1:] for r in rows], dtype=float).reshape(-1, 9)
    return HourlyPower(
        device=np.array([r[0] for r in rows], dtype=np.int64), hour=a[:, 0],
        count=a[:, 1].astype(np.int64), sum_w=a[:, 2], min_w=a[:, 3], max_w=a[:, 4],
        first_w=a[:, 5], first_time=a[:, 6], last_w=a[:, 7], last_time=a[:, 8],
    )  # fmt: skip


def save_days(
    conn: psycopg.Connection,
    device_id: int,
    days: Sequence[date],
    source: str,
    figures: DayFigures,
) -> int:
    """Upsert the device's figures for ``days`` into ``energy_daily``; rows written."""
    rows = [
        (
            device_id, day, float(figures.kwh[i]), source, bool(figures.complete[i]),
            float(figures.missing_hours[i]), int(figures.resets[i]), int(figures.rollovers[i]),
            int(figures.replacements[i]), int(figures.flagged[i]), int(figures.glitches[i]),
        )
        for i, day in enumerate(days)
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO energy_daily AS e (device_id, day, kwh, source, complete,
                   missing_hours, resets, rollovers, replacements, flagged, glitches)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (device_id, day) DO UPDATE
               SET kwh = EXCLUDED.kwh, source = EXCLUDED.source, complete = EXCLUDED.complete,
                   missing_hours = EXCLUDED.missing_hours, resets = EXCLUDED.resets,
                   rollovers = EXCLUDED.rollovers, replacements = EXCLUDED.replacements,
                   flagged = EXCLUDED.flagged, glitches = EXCLUDED.glitches,
                   computed_at = now()""",
            rows,
        )
    return len(rows)


def save_volumes(
    conn: psycopg.Connection, device_id: int, days: Sequence[date], figures: DayFigures
) -> int:
    """Upsert a pump's volume per day (``figures.kwh`` holds m³ here: the counter rules are
    unit-free) into ``pumping_volume_daily``; rows written."""
    rows = [
        (device_id, day, float(figures.kwh[i]) * 1000.0, bool(figures.complete[i]),
         float(figures.missing_hours[i]))
        for i, day in enumerate(days)
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO pumping_volume_daily AS p (device_id, day, m3, complete, missing_hours)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (device_id, day) DO UPDATE
               SET m3 = EXCLUDED.m3, complete = EXCLUDED.complete,
                   missing_hours = EXCLUDED.missing_hours, computed_at = now()""",
            rows,
        )
    return len(rows)


def save_nights(
    conn: psycopg.Connection,
    device_id: int,
    nights: Sequence[date],
    kwh: Sequence[float],
    lit_hours: Sequence[float],
    baseline_kwh: Sequence[float | None],
    complete: Sequence[bool],
) -> int:
    """Upsert a luminaire's nights into ``luminaire_nights``; rows written."""
    rows = [
        (device_id, night, float(kwh[i]), float(lit_hours[i]),
         None if baseline_kwh[i] is None else float(baseline_kwh[i]),  # type: ignore[arg-type]
         bool(complete[i]))
        for i, night in enumerate(nights)
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO luminaire_nights AS n (device_id, night, kwh, lit_hours,
                   baseline_kwh, complete)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (device_id, night) DO UPDATE
               SET kwh = EXCLUDED.kwh, lit_hours = EXCLUDED.lit_hours,
                   baseline_kwh = EXCLUDED.baseline_kwh, complete = EXCLUDED.complete,
                   computed_at = now()""",
            rows,
        )
    return len(rows)


def sync_settings(conn: psycopg.Connection, pue_category: str) -> None:
    """Write the configured PUE category to ``energy_settings`` (the PUE views read it)."""
    conn.execute(
        """UPDATE energy_settings SET pue_category = %s, updated_at = now()
           WHERE pue_category <> %s""",
        (pue_category, pue_category),
    )


def replaced_instants(properties: dict[str, Any]) -> tuple[float, ...]:
    """The ``replaced_at`` property of a device as instants [s] (none when absent)."""
    text = properties.get("replaced_at")
    if not text:
        return ()
    try:
        return (datetime.fromisoformat(str(text)).timestamp(),)
    except ValueError:
        return ()
