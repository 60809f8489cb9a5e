"""The lighting sections of ``sobriety energy report``: public lighting over the month's nights
(``api.lighting_nights``, with its kWh per km of street where the groups have a length) and the
lighting cabinets beside the luminaires they feed (``api.lighting_cabinets``). A night is the
local date of its evening; the month's are those whose evening falls in it. One query of SQL
aggregates per section, never raw readings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from psycopg import sql

from app.energy_report_base import Coverage, Extra, MonthScope, fsum, ratio

__all__ = ["CabinetNight", "Cabinets", "Lighting", "Night", "cabinets", "lighting"]


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
    """Public lighting over the month's nights [kWh, kg CO₂e, €]. ``kwh_per_km``: the month's
    energy of the groups with a street length over their length [kWh/km] — not per night —,
    ``None`` when no group has one; ``km_groups`` of the ``groups`` with nights have a length,
    ``street_km`` their total [km]."""

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
    groups: int
    km_groups: int
    street_km: float | None
    kwh_per_km: float | None


_LIGHTING_EXTRAS = ("kg_co2e", "saved_kg_co2e", "eur", "saved_eur")


def lighting(m: MonthScope) -> Lighting:
    """The month's public lighting: one row per night and one per lighting group (grouping
    sets), the group rows with the group's street length (``street_km``, migration 0015)."""
    query = sql.SQL(
        """SELECT night, count(*), sum(luminaires)::int, sum(kwh), sum(baseline_kwh),
                  sum(saved_kwh), bool_and(complete), GROUPING(night) = 1,
                  count(street_km) FILTER (WHERE street_km > 0),
                  max(street_km) FILTER (WHERE street_km > 0),
                  sum(kwh) FILTER (WHERE street_km > 0), {extras}
           FROM api.lighting_nights
           WHERE site = %(site)s AND night >= %(first)s AND night < %(end)s
           GROUP BY GROUPING SETS ((night), (lighting_group)) ORDER BY night"""
    ).format(extras=m.optional_sums("lighting_nights", _LIGHTING_EXTRAS))
    found = m.conn.execute(query, m.args).fetchall()
    rows = [r for r in found if not r[7]]
    km_groups = [r for r in found if r[7] and r[8]]
    luminaires, missing, _ = m.device_days(("luminaire",))
    nights = tuple(
        Night(r[0], int(r[2]), float(r[3]), r[4], bool(r[6]) and int(r[2]) >= luminaires)
        for r in rows
    )
    over = m.nights_over_end
    stored = sum(n.luminaires for n in nights if n.night < over)
    co2e, saved_co2e, eur, saved_eur = m.extras("lighting_nights", _LIGHTING_EXTRAS, rows, 11)
    kwh, baseline, saved = (fsum(r[i] for r in rows) for i in (3, 4, 5))
    luminaire_nights = sum(n.luminaires for n in nights)
    street_km = fsum(r[9] for r in km_groups)
    return Lighting(
        coverage=m.coverage([n.complete for n in nights], missing, luminaires, stored, over),
        luminaires=luminaires,
        luminaire_nights=luminaire_nights,
        kwh=kwh,
        baseline_kwh=baseline,
        saved_kwh=saved,
        saved_fraction=ratio(saved, baseline),
        kwh_per_luminaire_night=ratio(kwh, luminaire_nights),
        kg_co2e=co2e,
        saved_kg_co2e=saved_co2e,
        eur=eur,
        saved_eur=saved_eur,
        nights=nights,
        groups=len(found) - len(rows),
        km_groups=len(km_groups),
        street_km=street_km,
        kwh_per_km=ratio(fsum(r[10] for r in km_groups), street_km),
    )


@dataclass(frozen=True, slots=True)
class CabinetNight:
    """One night of the site's cabinets: their meters' energy beside that of the luminaires
    they feed and have a night of their own, and the difference where all do [kWh]."""

    night: date
    cabinets: int
    kwh: float
    luminaires_kwh: float | None
    difference_kwh: float | None
    complete: bool


CabinetsStatus = Literal["ok", "none", "unavailable"]
"""Of the cabinet section: cabinet nights in the month, none at all, or no such view."""


@dataclass(frozen=True, slots=True)
class Cabinets:
    """The lighting cabinets over the month's nights [kWh]. Counts are of cabinet-nights
    (``cabinet_nights``, ``complete``: the meter's energy complete; ``compared``: every
    luminaire fed has its night, so the ``difference`` — line losses and the loads the
    inventory does not know — is known; ``program_nights``: the baseline from the lighting
    programs in force, no luminaire measured) or luminaire-nights fed (``luminaire_nights``,
    ``measured`` of them with their own night). ``difference_fraction`` is of the compared
    nights' cabinet energy, the ``program_saved_fraction`` of their baseline."""

    status: CabinetsStatus
    coverage: Coverage
    cabinets: int  # cabinet meters registered at the site
    cabinets_with_data: int
    cabinet_nights: int
    complete: int
    kwh: float | None
    luminaire_nights: int
    measured: int
    luminaires_kwh: float | None
    compared: int
    difference_kwh: float | None
    difference_fraction: float | None
    program_nights: int
    program_baseline_kwh: float | None
    program_saved_kwh: float | None
    program_saved_fraction: float | None
    nights: tuple[CabinetNight, ...]


def cabinets(m: MonthScope) -> Cabinets:
    """The month's cabinets, one row per night; ``status`` ``none`` without a cabinet night
    (the figures ``None``, never 0), ``unavailable`` without the view (migration 0012)."""
    registered, missing, _ = m.device_days(("cabinet_meter",))
    over = m.nights_over_end
    if "lighting_cabinets" not in m.cols:
        cov = m.coverage([], missing, 0, 0, over)
        return Cabinets("unavailable", cov, registered, 0, 0, 0, None, 0, 0, None, 0, None,
                        None, 0, None, None, None, ())  # fmt: skip
    rows = m.conn.execute(
        """SELECT night, count(*), array_agg(DISTINCT cabinet), sum(kwh),
                  count(*) FILTER (WHERE complete), bool_and(complete), sum(luminaires)::int,
                  sum(measured)::int, sum(luminaires_kwh), count(difference_kwh),
                  sum(difference_kwh), sum(kwh) FILTER (WHERE difference_kwh IS NOT NULL),
                  count(*) FILTER (WHERE baseline_source = 'program'),
                  sum(baseline_kwh) FILTER (WHERE baseline_source = 'program'),
                  sum(saved_kwh) FILTER (WHERE baseline_source = 'program')
           FROM api.lighting_cabinets
           WHERE site = %(site)s AND night >= %(first)s AND night < %(end)s
           GROUP BY night ORDER BY night""",
        m.args,
    ).fetchall()
    nights = tuple(
        CabinetNight(r[0], int(r[1]), float(r[3]), r[8], r[10] if r[9] == r[1] else None,
                     bool(r[5]) and int(r[1]) >= registered)
        for r in rows
    )  # fmt: skip
    stored = sum(n.cabinets for n in nights if n.night < over)
    kwh, luminaires_kwh, difference, compared_kwh, baseline, saved = (
        fsum(r[i] for r in rows) for i in (3, 8, 10, 11, 13, 14)
    )
    return Cabinets(
        status="ok" if rows else "none",
        coverage=m.coverage([n.complete for n in nights], missing, registered, stored, over),
        cabinets=registered,
        cabinets_with_data=len({c for r in rows for c in r[2]}),
        cabinet_nights=sum(int(r[1]) for r in rows),
        complete=sum(int(r[4]) for r in rows),
        kwh=kwh,
        luminaire_nights=sum(int(r[6]) for r in rows),
        measured=sum(int(r[7]) for r in rows),
        luminaires_kwh=luminaires_kwh,
        compared=sum(int(r[9]) for r in rows),
        difference_kwh=difference,
        difference_fraction=ratio(difference, compared_kwh),
        program_nights=sum(int(r[12]) for r in rows),
        program_baseline_kwh=baseline,
        program_saved_kwh=saved,
        program_saved_fraction=ratio(saved, baseline),
        nights=nights,
    )
