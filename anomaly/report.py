"""Water balance of every DMA over a period, from meter indexes aggregated in SQL."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import psycopg

from anomaly import store
from anomaly.balance import water_balance


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def balances(
    conn: psycopg.Connection, since: datetime, until: datetime, site: str | None = None
) -> list[dict[str, Any]]:
    """One row per DMA: volumes in and out [m³], metered consumption [m³], losses [m³], yield
    and the decree threshold [%], ILC and ILP [m³/km/day], UARL [m³/day], ILI; and how many
    meters of each role reported (a meter without data makes the balance incomplete, which the
    row says rather than hides: ``incomplete``; ``meters``: per role, meters and those with
    data)."""
    days = (until - since).total_seconds() / 86400.0
    rows: list[dict[str, Any]] = []
    for name, _tz in store.sites(conn, site):
        volumes = store.dma_volumes(conn, name, since, until)
        for info in store.dmas(conn, name):
            vol = volumes.get(info.dma, {})
            inlet = vol.get("inlet", {"m3": 0.0, "meters": 0, "reporting": 0})
            outlet = vol.get("outlet", {"m3": 0.0, "meters": 0, "reporting": 0})
            customers = vol.get("customers", {"m3": 0.0, "meters": 0, "reporting": 0})
            bal = water_balance(
                days,
                inlet["m3"],
                outlet["m3"],
                customers["m3"],
                info.mains_km,
                info.connections,
                info.private_km,
                info.avg_pressure_m,
            )
            missing = [
                f"{role}: {v['meters'] - v['reporting']} of {v['meters']} meters without data"
                for role, v in (("inlet", inlet), ("outlet", outlet), ("customers", customers))
                if v["reporting"] < v["meters"]
            ]
            rows.append(
                {
                    "site": name,
                    "dma": info.dma,
                    "since": since.isoformat(),
                    "until": until.isoformat(),
                    "days": round(days, 3),
                    "inflow_m3": round(bal.inflow_m3, 3),
                    "outflow_m3": round(bal.outflow_m3, 3),
                    "consumption_m3": round(bal.consumption_m3, 3),
                    "losses_m3": round(bal.losses_m3, 3),
                    "yield_percent": _round(bal.yield_percent, 1),
                    "threshold_percent": _round(bal.threshold_percent, 1),
                    "compliant": bal.compliant,
                    "ilc_m3_km_day": _round(bal.ilc_m3_km_day, 3),
                    "ilp_m3_km_day": _round(bal.ilp_m3_km_day, 3),
                    "uarl_m3_day": _round(bal.uarl_m3_day, 3),
                    "ili": _round(bal.ili, 2),
                    "incomplete": missing,
                    "meters": {
                        role: {"meters": v["meters"], "reporting": v["reporting"]}
                        for role, v in (
                            ("inlet", inlet),
                            ("outlet", outlet),
                            ("customers", customers),
                        )
                    },
                }
            )
    return rows
