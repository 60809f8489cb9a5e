"""The month of a commune in energy (``sobriety energy report``): what the energy stage's views
hold for one site and one month, gathered into :class:`MonthReport` for
:mod:`app.energy_report_render` to print or draw.

The month is the site's own: its local days (``api.energy_daily``, ``api.pue_daily``,
``api.pumping_daily``) and its nights whose date — the evening — falls in the month
(``api.lighting_nights``). Only SQL aggregates are read, never raw readings; one query per
section. Every section carries its :class:`Coverage` (periods with data and complete out of the
month's, hours missing, device-days absent) so that a gap is always stated, never hidden.

The CO₂e and cost columns (migration 0014) and the service's own energy
(``api.service_energy_daily``, migration 0013) are read only where the database has them:
otherwise the figure is "unavailable", never zero. A cost is ``None`` without a tariff."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from core.errors import UsageError

__all__ = ["Coverage", "Extra", "Factor", "Lighting", "MonthReport", "Night", "Pue", "PueDay",
           "Pumping", "Service", "month_report", "parse_month"]  # fmt: skip

Status = Literal["ok", "partial", "none", "unavailable", "no_data"]
"""Of an optional figure (CO₂e, cost): every row has it, some, none (no factor or no tariff
pinned), the database has no such column (its migration is not applied), or no row at all."""


def parse_month(text: str) -> date:
    """``YYYY-MM`` → the first day of that month (an argparse type)."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}", text.strip()):
            raise ValueError(text)
        return datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a month YYYY-MM (2026-11)") from None


def _next_month(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the month a section's figures stand on. ``periods``: the month's nights or
    days; ``elapsed``: those already over at the time of the report; ``with_data`` / ``complete``:
    periods with figures / whose figures are complete (every registered device there, each
    complete); ``missing_hours``: hours without readings within the stored device-days [h];
    ``absent``: device-days (luminaire-nights) of the elapsed periods with no figure at all."""

    periods: int
    elapsed: int
    with_data: int
    complete: int
    missing_hours: float
    absent: int

    @property
    def whole(self) -> bool:
        """Every period of the month complete, nothing missing."""
        return self.complete == self.periods and self.missing_hours < 1e-3 and self.absent == 0


@dataclass(frozen=True, slots=True)
class Extra:
    """An optional figure summed over the month, with its :data:`Status`."""

    value: float | None
    status: Status


@dataclass(frozen=True, slots=True)
class Night:
    """One night of the site's lighting (every group): energy and no-dimming baseline [kWh]."""

    night: date
    luminaires: int
    kwh: float
    baseline_kwh: float | None
    complete: bool


@dataclass(frozen=True, slots=True)
class Lighting:
    """Public lighting over the month's nights [kWh, kg CO₂e, €]."""

    coverage: Coverage
    luminaires: int  # registered at the site
    luminaire_nights: int
    kwh: float | None
    baseline_kwh: float | None
    saved_kwh: float | None
    saved_fraction: float | None  # of the baseline
    kwh_per_luminaire_night: float | None
    kg_co2e: Extra
    saved_kg_co2e: Extra
    eur: Extra
    saved_eur: Extra
    nights: tuple[Night, ...]


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
            or self.pumping.coverage.with_data
            or self.pue.coverage.with_data
        )


def _columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    """The columns of every ``api`` view: what the applied migrations provide."""
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'api'"
    ):
        found.setdefault(str(table), set()).add(str(column))
    return found


def _fsum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


@dataclass(frozen=True, slots=True)
class _Month:
    """What every section's query needs: the site, the month's days [first, end), the end of
    the days already over, the columns of the ``api`` views."""

    conn: psycopg.Connection
    site: str
    first: date
    end: date
    today: date  # of the site: the days before it are over
    cols: dict[str, set[str]]

    @property
    def elapsed_end(self) -> date:
        return min(self.end, self.today)

    @property
    def args(self) -> dict[str, Any]:
        return {"site": self.site, "first": self.first, "end": self.end}

    def coverage(self, done: Sequence[bool], missing_h: float, devices: int, stored: int,
                 elapsed_end: date | None = None) -> Coverage:  # fmt: skip
        """The coverage of periods ``done`` (one flag per period with data): ``devices`` × the
        periods over, less the ``stored`` device-periods, are absent."""
        elapsed = max(0, ((elapsed_end or self.elapsed_end) - self.first).days)
        return Coverage((self.end - self.first).days, elapsed, len(done), sum(done), missing_h,
                        max(0, devices * elapsed - stored))  # fmt: skip

    def optional_sums(self, view: str, names: Sequence[str]) -> sql.Composable:
        """``sum(c), count(c)`` of each optional column, ``NULL, 0`` where the view lacks it."""
        have = self.cols.get(view, set())
        return sql.SQL(", ").join(
            sql.SQL("sum({0}), count({0})").format(sql.Identifier(c))
            if c in have
            else sql.SQL("NULL::float8, 0")
            for c in names
        )

    def extras(self, view: str, names: Sequence[str], rows: list[Any], at: int) -> list[Extra]:
        """The sums of :meth:`optional_sums` from column ``at`` of the rows on (the rows of the
        view each stands for in column 1), with their :data:`Status`."""
        out = []
        total_rows = sum(int(r[1]) for r in rows)
        for i, name in enumerate(names):
            counted = sum(int(r[at + 2 * i + 1]) for r in rows)
            if name not in self.cols.get(view, set()):
                out.append(Extra(None, "unavailable"))
            elif not rows:
                out.append(Extra(None, "no_data"))
            elif not counted:
                out.append(Extra(None, "none"))
            else:
                total = _fsum(r[at + 2 * i] for r in rows)
                out.append(Extra(total, "ok" if counted == total_rows else "partial"))
        return out

    def device_days(self, kinds: Sequence[str]) -> tuple[int, float, int]:
        """Registered devices of ``kinds``, their missing hours in the month's stored days and
        their device-days stored for the days already over (``energy_daily``)."""
        row = self.conn.execute(
            """SELECT count(DISTINCT d.id), coalesce(sum(e.missing_hours), 0),
                      count(e.day) FILTER (WHERE e.day < %(elapsed)s)
               FROM devices d
               LEFT JOIN energy_daily e ON e.device_id = d.id AND e.day >= %(first)s
                    AND e.day < %(end)s
               WHERE d.site = %(site)s AND d.kind = ANY(%(kinds)s)""",
            {**self.args, "kinds": list(kinds), "elapsed": self.elapsed_end},
        ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1]), int(row[2])


_LIGHTING_EXTRAS = ("kg_co2e", "saved_kg_co2e", "eur", "saved_eur")


def _lighting(m: _Month) -> Lighting:
    query = sql.SQL(
        """SELECT night, count(*), sum(luminaires)::int, sum(kwh), sum(baseline_kwh),
                  sum(saved_kwh), bool_and(complete), {extras}
           FROM api.lighting_nights
           WHERE site = %(site)s AND night >= %(first)s AND night < %(end)s
           GROUP BY night ORDER BY night"""
    ).format(extras=m.optional_sums("lighting_nights", _LIGHTING_EXTRAS))
    rows = m.conn.execute(query, m.args).fetchall()
    luminaires, missing, _ = m.device_days(("luminaire",))
    nights = tuple(
        Night(r[0], int(r[2]), float(r[3]), r[4], bool(r[6]) and int(r[2]) >= luminaires)
        for r in rows
    )
    # A night is over at the noon after it: those up to the day before yesterday surely are.
    over = min(m.end, m.today - timedelta(days=1))
    stored = sum(n.luminaires for n in nights if n.night < over)
    co2e, saved_co2e, eur, saved_eur = m.extras("lighting_nights", _LIGHTING_EXTRAS, rows, 7)
    kwh, baseline, saved = (_fsum(r[i] for r in rows) for i in (3, 4, 5))
    luminaire_nights = sum(n.luminaires for n in nights)
    return Lighting(
        coverage=m.coverage([n.complete for n in nights], missing, luminaires, stored, over),
        luminaires=luminaires,
        luminaire_nights=luminaire_nights,
        kwh=kwh,
        baseline_kwh=baseline,
        saved_kwh=saved,
        saved_fraction=_ratio(saved, baseline),
        kwh_per_luminaire_night=_ratio(kwh, luminaire_nights),
        kg_co2e=co2e,
        saved_kg_co2e=saved_co2e,
        eur=eur,
        saved_eur=saved_eur,
        nights=nights,
    )


def _pumping(m: _Month) -> Pumping:
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
    kwh, m3_metered, m3 = (_fsum(r[i] for r in rows) for i in (2, 3, 4))
    co2e, eur = m.extras("pumping_daily", ("kg_co2e", "eur"), rows, 7)
    done = [bool(r[5]) and int(r[1]) >= pumps for r in rows]
    return Pumping(
        coverage=m.coverage(done, missing, pumps, stored),
        pumps=pumps,
        kwh=kwh,
        m3=m3,
        kwh_per_m3=_ratio(kwh, m3_metered),
        volume_missing_hours=math.fsum(float(r[6]) for r in rows),
        kg_co2e=co2e,
        eur=eur,
        eur_per_m3=_ratio(eur.value, m3),
    )


def _pue(m: _Month) -> Pue:
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


def _service(m: _Month) -> Service:
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
    return Service(True, int(row[0]), kwh, readings, _ratio(kwh, readings / 1000), methods)


def _factors(m: _Month) -> tuple[Factor, ...]:
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
    end = _next_month(first)
    today = (now or datetime.now(ZoneInfo(zone))).astimezone(ZoneInfo(zone)).date()
    cols = _columns(conn)
    m = _Month(conn, site, first, end, today, cols)
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
        lighting=_lighting(m),
        pumping=_pumping(m),
        pue=_pue(m),
        service=_service(m),
        factors=_factors(m) if factors_available else (),
        factors_available=factors_available,
    )
