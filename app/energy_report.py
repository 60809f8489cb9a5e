"""The month of a commune in energy (``sobriety energy report``): what the energy stage's views
hold for one site and one month, gathered into :class:`MonthReport` for
:mod:`app.energy_report_render` to print or draw.

The month is the site's own: its local days (``api.energy_daily``, ``api.pue_daily``,
``api.pumping_daily``) and its nights whose date — the evening — falls in the month
(``api.lighting_nights``, ``api.lighting_cabinets``: :mod:`app.energy_report_lighting`). Only
SQL aggregates are read, never raw readings; one query per section. Every section carries its
:class:`Coverage` (periods with data and complete out of the month's, hours missing, device-days
absent) so that a gap is always stated, never hidden.

The CO₂e and cost columns (migration 0014) and the service's own energy
(``api.service_energy_daily``, migration 0013) are read only where the database has them:
otherwise the figure is "unavailable", never zero. A cost is ``None`` without a tariff."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from app.energy_report_base import (
    Coverage,
    Extra,
    MonthScope,
    Status,
    api_columns,
    fsum,
    next_month,
    ratio,
)
from app.energy_report_lighting import CabinetNight, Cabinets, Lighting, Night, cabinets, lighting
from core.errors import UsageError

__all__ = ["CabinetNight", "Cabinets", "Coverage", "Extra", "Factor", "Lighting", "MonthReport",
           "Night", "Pue", "PueDay", "Pumping", "Service", "Status", "month_report",
           "parse_month"]  # fmt: skip


def parse_month(text: str) -> date:
    """``YYYY-MM`` → the first day of that month (an argparse type)."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}", text.strip()):
            raise ValueError(text)
        return datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a month YYYY-MM (2026-11)") from None


@dataclass(frozen=True, slots=True)
class Pumping:
    """Pumping over the month's days: energy [kWh], volume [m³], per m³, CO₂e and cost."""

    coverage: Coverage
    pumps: int
    kwh: float | None
    m3: float | None
    kwh_per_m3: float | None
    volume_missing_hours: float
    kg_co2e: Extra
    eur: Extra
    eur_per_m3: float | None


@dataclass(frozen=True, slots=True)
class PueDay:
    day: date
    pue: float | None
    complete: bool


@dataclass(frozen=True, slots=True)
class Pue:
    """The server room over the month (``api.pue_monthly``): facility over IT energy, its
    ISO/IEC 30134-2 category, ``interim`` while the site has fewer than twelve months."""

    coverage: Coverage
    facility_kwh: float | None
    it_kwh: float | None
    pue: float | None
    category: str | None
    interim: bool | None
    months: int  # months of PUE up to this one
    days: tuple[PueDay, ...]


@dataclass(frozen=True, slots=True)
class Service:
    """The supervision's own energy over the month (install-wide, ``api.service_energy_daily``)."""

    available: bool
    days_with_data: int
    kwh: float | None
    readings: int
    kwh_per_1000_readings: float | None
    methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Factor:
    """A CO₂e factor or tariff version used by the month's figures (``api.energy_factors``)."""

    id: str
    kind: str
    site: str | None
    valid_from: str
    value: float
    unit: str
    source: str | None


@dataclass(frozen=True, slots=True)
class MonthReport:
    """The month of a site: what ``sobriety energy report`` prints or draws."""

    site: str
    name: str | None
    timezone: str
    month: date  # its first day
    days: int
    in_progress: bool
    lighting: Lighting
    cabinets: Cabinets
    pumping: Pumping
    pue: Pue
    service: Service
    factors: tuple[Factor, ...]
    factors_available: bool

    @property
    def has_data(self) -> bool:
        """Anything at all for the site in the month (the service's energy is install-wide)."""
        return bool(
            self.lighting.coverage.with_data
            or self.cabinets.coverage.with_data
            or self.pumping.coverage.with_data
            or self.pue.coverage.with_data
        )


def _pumping(m: MonthScope) -> Pumping:
    query = sql.SQL(
        """SELECT p.day, count(*), sum(p.kwh), sum(p.m3) FILTER (WHERE p.kwh IS NOT NULL),
                  sum(p.m3), bool_and(p.complete),
                  (SELECT coalesce(sum(v.missing_hours), 0) FROM pumping_volume_daily v
                   JOIN devices d ON d.id = v.device_id
                   WHERE d.site = %(site)s AND v.day = p.day), {extras}
           FROM api.pumping_daily p
           WHERE p.site = %(site)s AND p.day >= %(first)s AND p.day < %(end)s
           GROUP BY p.day ORDER BY p.day"""
    ).format(extras=m.optional_sums("pumping_daily", ("kg_co2e", "eur")))
    rows = m.conn.execute(query, m.args).fetchall()
    pumps, missing, stored = m.device_days(("pump_meter",))
    kwh, m3_metered, m3 = (fsum(r[i] for r in rows) for i in (2, 3, 4))
    co2e, eur = m.extras("pumping_daily", ("kg_co2e", "eur"), rows, 7)
    done = [bool(r[5]) and int(r[1]) >= pumps for r in rows]
    return Pumping(
        coverage=m.coverage(done, missing, pumps, stored),
        pumps=pumps,
        kwh=kwh,
        m3=m3,
        kwh_per_m3=ratio(kwh, m3_metered),
        volume_missing_hours=math.fsum(float(r[6]) for r in rows),
        kg_co2e=co2e,
        eur=eur,
        eur_per_m3=ratio(eur.value, m3),
    )


def _pue(m: MonthScope) -> Pue:
    rows = m.conn.execute(
        """SELECT p.day, p.pue, p.complete, mo.facility_kwh, mo.it_kwh, mo.pue, mo.category,
                  mo.interim, (SELECT count(*) FROM api.pue_monthly c
                               WHERE c.site = p.site AND c.month <= %(first)s)
           FROM api.pue_daily p
           LEFT JOIN api.pue_monthly mo ON mo.site = p.site AND mo.month = %(first)s
           WHERE p.site = %(site)s AND p.day >= %(first)s AND p.day < %(end)s ORDER BY p.day""",
        m.args,
    ).fetchall()
    meters, missing, stored = m.device_days(("facility_meter", "it_meter"))
    days = tuple(PueDay(r[0], r[1], bool(r[2])) for r in rows)
    fac, it, pue, category, interim, months = rows[0][3:] if rows else (None,) * 5 + (0,)
    cov = m.coverage([d.complete for d in days], missing, meters, stored)
    return Pue(cov, fac, it, pue, category, interim, int(months), days)


def _service(m: MonthScope) -> Service:
    cols = m.cols.get("service_energy_daily", set())
    if not {"day", "kwh", "readings_stored", "method"} <= cols:
        return Service(False, 0, None, 0, None, ())
    row = m.conn.execute(
        """SELECT count(DISTINCT day), sum(kwh), coalesce(sum(readings_stored), 0),
                  array_agg(DISTINCT method::text)
           FROM api.service_energy_daily WHERE day >= %(first)s AND day < %(end)s""",
        m.args,
    ).fetchone()
    assert row is not None
    methods = tuple(sorted(str(x) for x in (row[3] or ()) if x is not None))
    kwh, readings = row[1], int(row[2])
    return Service(True, int(row[0]), kwh, readings, ratio(kwh, readings / 1000), methods)


def _factors(m: MonthScope) -> tuple[Factor, ...]:
    """The factor and tariff versions the month's rows name (``co2e_factor_id``,
    ``tariff_id``)."""
    used = [
        sql.SQL("SELECT {c} AS id FROM api.{v} WHERE site = %(site)s AND {w} >= %(first)s "
                "AND {w} < %(end)s").format(
            c=sql.Identifier(column), v=sql.Identifier(view), w=sql.Identifier(when))
        for view, when in (("lighting_nights", "night"), ("energy_daily", "day"),
                           ("pumping_daily", "day"))
        for column in ("co2e_factor_id", "tariff_id")
        if column in m.cols.get(view, set())
    ]  # fmt: skip
    if not used:
        return ()
    query = sql.SQL(
        "SELECT f.id::text, f.kind, f.site, f.valid_from::text, f.value, f.unit, f.source "
        "FROM api.energy_factors f WHERE f.id IN (SELECT id FROM ({used}) u) "
        "ORDER BY f.kind, f.valid_from, f.id"
    ).format(used=sql.SQL(" UNION ").join(used))
    return tuple(Factor(*r) for r in m.conn.execute(query, m.args).fetchall())


def _site(conn: psycopg.Connection, site: str) -> tuple[str | None, str]:
    row = conn.execute("SELECT name, timezone FROM sites WHERE site = %s", (site,)).fetchone()
    if row is None:
        known = [str(r[0]) for r in conn.execute("SELECT site FROM sites ORDER BY 1")]
        raise UsageError(
            f"--site {site!r}: no such site; known sites: {', '.join(known) or 'none yet'}"
        )
    return row[0], str(row[1])


def month_report(
    conn: psycopg.Connection, site: str, month: date, now: datetime | None = None
) -> MonthReport:
    """The figures of ``site`` over ``month`` (its first day) in the site's local days and
    nights, as of ``now`` (default: now); :class:`UsageError` for an unknown site (the message
    lists the known ones)."""
    name, zone = _site(conn, site)
    first = month.replace(day=1)
    end = next_month(first)
    today = (now or datetime.now(ZoneInfo(zone))).astimezone(ZoneInfo(zone)).date()
    cols = api_columns(conn)
    m = MonthScope(conn, site, first, end, today, cols)
    factors_available = {"id", "kind", "valid_from", "value", "unit", "source"} <= cols.get(
        "energy_factors", set()
    )
    return MonthReport(
        site=site,
        name=name,
        timezone=zone,
        month=first,
        days=(end - first).days,
        in_progress=first <= today < end,
        lighting=lighting(m),
        cabinets=cabinets(m),
        pumping=_pumping(m),
        pue=_pue(m),
        service=_service(m),
        factors=_factors(m) if factors_available else (),
        factors_available=factors_available,
    )
