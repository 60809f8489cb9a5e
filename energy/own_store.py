"""SQL side of ``api.service_energy_daily``: the samples the service's processes take of
themselves (``service_cpu_samples``), and the days the energy service computes from them
(``service_energy_daily``, migration 0013). The math is in :mod:`energy.own_use`.

Times cross as seconds since the epoch (``extract(epoch …)``) and timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from core.clock import utc
from energy.config import EnergyConfig
from energy.integrate import day_edges
from energy.own_use import Coefficients, OwnDays, OwnSample, days_of

__all__ = ["load_samples", "refresh_service_energy", "save_days", "save_samples"]

MARGIN_S = 86400.0
"""Samples read beyond each end of the period [s], so the intervals that cross its midnights
are whole (an interval longer than this across an end is cut there)."""


def save_samples(conn: psycopg.Connection, samples: Sequence[OwnSample]) -> int:
    """Insert samples into ``service_cpu_samples`` (one already there is kept); rows sent."""
    rows = [
        (s.host, s.pid, utc(s.started_at), utc(s.sampled_at), s.role, s.cpu_s,
         s.machine_busy_s, s.machine_total_s,
         None if s.rapl_uj is None else list(s.rapl_uj),
         None if s.rapl_max_uj is None else list(s.rapl_max_uj), s.final)
        for s in samples
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO service_cpu_samples (host, pid, started_at, sampled_at, role, cpu_s,
                   machine_busy_s, machine_total_s, rapl_uj, rapl_max_uj, final)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT DO NOTHING""",
            rows,
        )
    return len(rows)


def load_samples(conn: psycopg.Connection, since: float, until: float) -> list[OwnSample]:
    """The samples taken in [since, until) [s], ordered by process and time."""
    rows = conn.execute(
        """SELECT host, role, pid, extract(epoch FROM started_at)::float8,
                  extract(epoch FROM sampled_at)::float8, cpu_s, machine_busy_s,
                  machine_total_s, rapl_uj, rapl_max_uj, final
           FROM service_cpu_samples
           WHERE sampled_at >= %s AND sampled_at < %s
           ORDER BY host, pid, started_at, sampled_at""",
        (utc(since), utc(until)),
    ).fetchall()
    return [_sample(r) for r in rows]


def _sample(r: tuple[Any, ...]) -> OwnSample:
    return OwnSample(
        host=r[0], role=r[1], pid=r[2], started_at=r[3], sampled_at=r[4], cpu_s=r[5],
        machine_busy_s=r[6], machine_total_s=r[7],
        rapl_uj=None if r[8] is None else tuple(r[8]),
        rapl_max_uj=None if r[9] is None else tuple(r[9]), final=r[10],
    )  # fmt: skip


def save_days(
    conn: psycopg.Connection,
    days: Sequence[date],
    figures: dict[tuple[str, str], OwnDays],
    config: EnergyConfig,
) -> int:
    """Replace the rows of ``days`` in ``service_energy_daily`` by ``figures`` (per host and
    role; a day no process touched is not written); rows written."""
    rows = [
        (day, host, role, int(f.processes[i]), float(f.cpu_s[i]), float(f.machine_busy_s[i]),
         float(f.kwh[i]), float(f.seconds[i]), float(f.rapl_seconds[i]),
         config.own_min_watts_per_core, config.own_max_watts_per_core, config.own_watts_source,
         config.own_timezone, bool(f.complete[i]))
        for (host, role), f in sorted(figures.items())
        for i, day in enumerate(days)
        if f.processes[i] > 0
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM service_energy_daily WHERE day >= %s AND day <= %s",
            (min(days), max(days)),
        )
        cur.executemany(
            """INSERT INTO service_energy_daily (day, host, role, processes, cpu_s,
                   machine_busy_s, kwh, seconds, rapl_seconds, min_w_per_core, max_w_per_core,
                   coefficient_source, timezone, complete)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            rows,
        )
    return len(rows)


def refresh_service_energy(
    conn: psycopg.Connection,
    config: EnergyConfig,
    since: float,
    until: float,
    now: float | None = None,
) -> int:
    """Compute the days (in ``energy.own_timezone``) from the one of ``since`` to the one of
    ``until`` [s] of ``service_energy_daily`` from the samples, replacing what was there, and
    commit; rows written. ``now`` [s] (default: the clock) only tells a day that has not ended
    from one that has. Idempotent."""
    zone = ZoneInfo(config.own_timezone)
    first = datetime.fromtimestamp(since, zone).date()
    last = datetime.fromtimestamp(until, zone).date()
    count = (last - first).days + 1
    edges = day_edges(first, count, zone)
    days = [first + timedelta(days=n) for n in range(count)]
    samples = load_samples(conn, float(edges[0]) - MARGIN_S, float(edges[-1]) + MARGIN_S)
    coefficients = Coefficients(config.own_min_watts_per_core, config.own_max_watts_per_core)
    figures = days_of(samples, edges, coefficients)
    now = time.time() if now is None else now
    for f in figures.values():
        f.complete &= edges[1:] <= now
    written = save_days(conn, days, figures, config)
    prune_samples(conn, now - config.own_keep_days * 86400.0)
    conn.commit()
    return written


def prune_samples(conn: psycopg.Connection, before: float) -> int:
    """Delete the CPU samples taken before ``before`` [s] (their days are computed: the days
    stay, they can no longer be recomputed); rows deleted. The caller's transaction."""
    cur = conn.execute("DELETE FROM service_cpu_samples WHERE sampled_at < %s", (utc(before),))
    return cur.rowcount
