"""SQL side of the luminaire faults (:mod:`energy.faults`): the luminaires of a site with what
their expected power needs (``nominal_power_w``, the ``standby_w`` property, the lighting
program of their published config), their ``power`` and ``dim`` rows of ``readings_hourly`` on
a grid of whole hours, and the alerts they raise (kinds :data:`FAULT_KINDS`, subject type
``device``, subject the device id) through :mod:`core.alerts_lifecycle`.

Times cross as seconds since the epoch; powers in W, levels in %.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from core.clock import utc
from energy.faults import HourlyLamp

__all__ = ["FAULT_KINDS", "Luminaire", "luminaire_hours", "luminaires", "site_place"]

FAULT_KINDS = ("lamp_failure", "day_burner", "power_off_curve")
"""The kinds of alert the energy stage opens (subject type ``device``)."""


@dataclass(frozen=True, slots=True)
class Luminaire:
    """A luminaire of the inventory: ``nominal_w`` its input power at 100 % [W] (``None``:
    unknown), ``standby_w`` its ``standby_w`` property [W] (``None``: the configured default),
    ``program`` the lighting of its published config (``None``: none)."""

    device_id: int
    device: str
    nominal_w: float | None
    standby_w: float | None
    program: dict[str, Any] | None


def _power(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def site_place(conn: psycopg.Connection, site: str) -> tuple[float | None, float | None]:
    """(lat, lon) of ``site`` [°], ``None`` where unknown."""
    row = conn.execute("SELECT lat, lon FROM sites WHERE site = %s", (site,)).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def luminaires(
    conn: psycopg.Connection, site: str, only: Collection[int] | None = None
) -> list[Luminaire]:
    """The luminaires of ``site`` (those of ids ``only`` when given)."""
    rows = conn.execute(
        """SELECT d.id, d.device, d.nominal_power_w, d.properties ->> 'standby_w',
                  c.payload -> 'lighting'
           FROM devices d LEFT JOIN device_configs c ON c.device_id = d.id
           WHERE d.site = %(s)s AND d.kind = 'luminaire'
             AND (%(o)s::integer[] IS NULL OR d.id = ANY(%(o)s::integer[]))
           ORDER BY d.id""",
        {"s": site, "o": None if only is None else sorted(only)},
    ).fetchall()
    return [
        Luminaire(int(r[0]), str(r[1]), None if r[2] is None else float(r[2]), _power(r[3]), r[4])
        for r in rows
    ]


def luminaire_hours(
    conn: psycopg.Connection, device_ids: Collection[int], since: float, until: float
) -> tuple[np.ndarray, dict[int, HourlyLamp]]:
    """The grid of whole hours [s] from ``since`` to ``until`` and each device's ``power``
    and ``dim`` rollup rows on it (NaN where it has none)."""
    first = math.floor(since / 3600.0) * 3600.0
    hours = np.arange(first, until, 3600.0)
    rows = conn.execute(
        """SELECT h.device_id, m.name, extract(epoch FROM h.hour)::float8,
                  h.sum / nullif(h.count, 0), h.min, h.max, h.last
           FROM readings_hourly h JOIN metrics m ON m.id = h.metric_id
           WHERE h.device_id = ANY(%s) AND m.name IN ('power', 'dim')
             AND h.hour >= %s AND h.hour < %s""",
        (sorted(device_ids), utc(first), utc(until)),
    ).fetchall()
    n = len(hours)
    cols: dict[int, dict[str, np.ndarray]] = {}
    for device_id, metric, hour, mean, low, high, last in rows:
        k = int((hour - first) // 3600.0)
        if not 0 <= k < n:
            continue
        acc = cols.setdefault(
            int(device_id), {c: np.full(n, np.nan) for c in ("pm", "pl", "ph", "dl", "dh", "dz")}
        )
        if metric == "power":
            acc["pm"][k], acc["pl"][k], acc["ph"][k] = mean, low, high
        else:
            acc["dl"][k], acc["dh"][k], acc["dz"][k] = low, high, last
    return hours, {
        device_id: HourlyLamp(hours, c["pm"], c["pl"], c["ph"], c["dl"], c["dh"], c["dz"])
        for device_id, c in cols.items()
    }
