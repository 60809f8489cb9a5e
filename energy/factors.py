"""CO₂e and cost factors: versioned, and pinned to the days they were first used for.

A factor (table ``energy_factors``) has a kind — ``co2e`` [kgCO2e/kWh] or ``tariff``
[EUR/kWh] —, the site it is for (``None``: every site), the local date from which it holds
(``valid_from``), a value, its unit and its source. Its id is its version: a correction is a
new factor, never an edit. The factor in force for a site and a local day is the site's own
over an all-sites one, then the latest ``valid_from`` on or before the day, then the latest
entered.

:func:`pin_factors` records, per site, day and kind, the factor in force the first time a day
is computed (``energy_day_factors``) and never changes a pin already there: a factor added later
leaves the past alone. A day computed while no factor of a kind existed has no pin of that kind
(its kg CO₂e or € is NULL) and gets one at its next computation once a factor exists — it had
no figure, so nothing is rewritten. :func:`apply_factors` repins a period on request
(``sobriety energy factors apply``). The ``api`` views multiply kWh by the pinned factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

from core.errors import UsageError

__all__ = [
    "UNITS",
    "ApplyReport",
    "Factor",
    "FactorError",
    "add_factor",
    "apply_factors",
    "check_factor",
    "list_factors",
    "pin_factors",
]

UNITS: dict[str, str] = {"co2e": "kgCO2e/kWh", "tariff": "EUR/kWh"}
"""The unit each kind of factor is given in: kg CO₂e, or euros, per kWh."""


class FactorError(UsageError):
    """A factor that cannot be stored: unknown kind, wrong unit, bad value, unknown site."""


@dataclass(frozen=True, slots=True)
class Factor:
    """One version of a factor: ``value`` [kgCO2e/kWh for co2e, EUR/kWh for tariff] from the
    local date ``valid_from`` at ``site`` (``None``: every site)."""

    id: int
    kind: str
    site: str | None
    valid_from: date
    value: float
    unit: str
    source: str
    created_at: datetime


@dataclass
class ApplyReport:
    """What :func:`apply_factors` did: site-days looked at, pins made where there was none,
    pins moved to the factor now in force."""

    sites: int = 0
    days: int = 0
    pinned: int = 0
    repinned: int = 0


def check_factor(kind: str, unit: str, value: float, source: str) -> None:
    """:class:`FactorError` unless ``kind`` is known, ``unit`` is its unit, ``value`` is a
    finite number ≥ 0 and ``source`` says something."""
    if kind not in UNITS:
        raise FactorError(f"factor kind {kind!r}: expected one of {', '.join(UNITS)}")
    if unit != UNITS[kind]:
        raise FactorError(f"factor unit {unit!r}: a {kind} factor is in {UNITS[kind]}")
    if not (math.isfinite(value) and value >= 0):
        raise FactorError(f"factor value {value!r}: expected a finite number, 0 or more")
    if not source.strip():
        raise FactorError("factor source: say where the value comes from (name, year, link)")


_COLUMNS = "id, kind, site, valid_from, value, unit, source, created_at"


def add_factor(
    conn: psycopg.Connection,
    kind: str,
    valid_from: date,
    value: float,
    unit: str,
    source: str,
    site: str | None = None,
) -> Factor:
    """Store a new factor version (``value`` in ``unit``: kgCO2e/kWh or EUR/kWh) and return
    it. Days already pinned keep their factor; :func:`apply_factors` moves them."""
    check_factor(kind, unit, value, source)
    if site is not None:
        known = [str(r[0]) for r in conn.execute("SELECT site FROM sites ORDER BY 1")]
        if site not in known:
            raise FactorError(
                f"factor site {site!r}: no such site; known sites: {', '.join(known) or 'none'}"
            )
    row = conn.execute(
        f"""INSERT INTO energy_factors (kind, site, valid_from, value, unit, source)
            VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
        (kind, site, valid_from, float(value), unit, source.strip()),
    ).fetchone()
    assert row is not None
    return Factor(*row)


def list_factors(
    conn: psycopg.Connection, site: str | None = None, kind: str | None = None
) -> list[Factor]:
    """Every factor (of ``kind``), or those that can hold at ``site`` (its own and the
    all-sites ones), by kind, all-sites first, then valid_from and version."""
    if kind is not None and kind not in UNITS:
        raise FactorError(f"factor kind {kind!r}: expected one of {', '.join(UNITS)}")
    rows = conn.execute(
        f"""SELECT {_COLUMNS} FROM energy_factors
            WHERE (%(site)s::text IS NULL OR site = %(site)s OR site IS NULL)
              AND (%(kind)s::text IS NULL OR kind = %(kind)s)
            ORDER BY kind, site NULLS FIRST, valid_from, id""",
        {"site": site, "kind": kind},
    ).fetchall()
    return [Factor(*r) for r in rows]


_IN_FORCE = """
    SELECT %(site)s::text, d.day, k.kind, f.id
    FROM unnest(%(days)s::date[]) AS d (day)
    CROSS JOIN (VALUES ('co2e'), ('tariff')) AS k (kind)
    CROSS JOIN LATERAL (
        SELECT id FROM energy_factors
        WHERE kind = k.kind AND (site = %(site)s OR site IS NULL) AND valid_from <= d.day
        ORDER BY (site IS NULL), valid_from DESC, id DESC
        LIMIT 1) f"""
"""Per day and kind, the factor in force at a site: its own over all-sites, the latest
valid_from on or before the day, the latest entered."""


def pin_factors(conn: psycopg.Connection, site: str, days: Sequence[date]) -> int:
    """Pin the factors in force to the local ``days`` (and lighting nights, by the date of
    their evening) of ``site`` that have no pin yet; pins already there stay. Pins made."""
    if not days:
        return 0
    cur = conn.execute(
        f"""INSERT INTO energy_day_factors (site, day, kind, factor_id) {_IN_FORCE}
            ON CONFLICT (site, day, kind) DO NOTHING""",
        {"site": site, "days": sorted(set(days))},
    )
    return max(cur.rowcount, 0)


def _local_days(since: float, until: float, timezone: str) -> list[date]:
    zone = ZoneInfo(timezone)
    first = datetime.fromtimestamp(since, zone).date()
    last = datetime.fromtimestamp(until, zone).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def apply_factors(
    conn: psycopg.Connection, since: float, until: float, site: str | None = None
) -> ApplyReport:
    """Repin the local days from the one of ``since`` to the one of ``until`` [s] of every
    site (or ``site``) to the factors in force now: the one way the past changes."""
    report = ApplyReport()
    rows = conn.execute(
        "SELECT site, timezone FROM sites WHERE %(s)s::text IS NULL OR site = %(s)s ORDER BY 1",
        {"s": site},
    ).fetchall()
    if site is not None and not rows:
        raise FactorError(f"site {site!r}: no such site")
    for name, timezone in rows:
        days = _local_days(since, until, timezone)
        found = conn.execute(
            f"""INSERT INTO energy_day_factors AS p (site, day, kind, factor_id) {_IN_FORCE}
                ON CONFLICT (site, day, kind) DO UPDATE
                SET factor_id = EXCLUDED.factor_id, pinned_at = now()
                WHERE p.factor_id <> EXCLUDED.factor_id
                RETURNING (xmax = 0)""",
            {"site": name, "days": days},
        ).fetchall()
        report.sites += 1
        report.days += len(days)
        report.pinned += sum(1 for (inserted,) in found if inserted)
        report.repinned += sum(1 for (inserted,) in found if not inserted)
    return report
