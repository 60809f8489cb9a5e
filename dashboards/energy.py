"""Énergie et PUE / Energy and PUE: the server room's PUE per day and month with its ISO/IEC
30134-2 category and the interim flag, pumping kWh per m³, every metered device's energy by
usage with its CO₂e and cost."""

from __future__ import annotations

from dashboards.panels import PanelBuilder, big_number, frame, grid, series
from dashboards.sdk import Lang, db, sql
from dashboards.sqlparts import SITES, dates_in_range, kind_label, local_midnight

SLUG = "energie"


def _usages(lang: Lang) -> dict[str, str]:
    return {
        "luminaire": lang("éclairage (luminaires)", "lighting (luminaires)"),
        "cabinet_meter": lang("éclairage (armoires)", "lighting (cabinets)"),
        "pump_meter": lang("pompage", "pumping"),
        "facility_meter": lang("salle serveurs (total)", "server room (total)"),
        "it_meter": lang("salle serveurs (informatique)", "server room (IT)"),
    }


def _days(alias: str, column: str = "day") -> str:
    return f"""JOIN api.sites s ON s.site = {alias}.site
WHERE {alias}.site {SITES}
  AND {dates_in_range(f"{alias}.{column}", "s.timezone")}"""


def _pue(lang: Lang) -> list[PanelBuilder]:
    category = lang("catégorie", "category")
    period = sql(
        f"""
        SELECT sum(p.facility_kwh) FILTER (WHERE p.facility_kwh IS NOT NULL AND p.it_kwh > 0)
               / nullif(sum(p.it_kwh) FILTER (WHERE p.facility_kwh IS NOT NULL AND p.it_kwh > 0),
                        0) AS "PUE"
        FROM api.pue_daily p
        {_days("p")}
    """,
        "table",
    )
    daily = sql(f"""
        SELECT {local_midnight("p.day", "s.timezone")} AS "time",
               p.site || ' (' || p.category || ')' AS metric, p.pue AS "PUE"
        FROM api.pue_daily p
        {_days("p")}
        ORDER BY 1
    """)
    monthly = sql(
        f"""
        SELECT p.site AS "{lang("commune", "site")}", p.month AS "{lang("mois", "month")}",
               p.facility_kwh AS "{lang("total (kWh)", "facility (kWh)")}",
               p.it_kwh AS "{lang("informatique (kWh)", "IT (kWh)")}",
               p.pue AS "PUE", p.category AS "{category}",
               p.days_paired AS "{lang("jours mesurés", "days measured")}",
               p.complete AS "{lang("complet", "complete")}",
               p.interim AS "{lang("provisoire (moins de 12 mois)", "interim (under 12 months)")}"
        FROM api.pue_monthly p
        JOIN api.sites s ON s.site = p.site
        WHERE p.site {SITES}
          AND p.month <= ($__timeTo()::timestamptz AT TIME ZONE s.timezone)::date
          AND p.month + interval '1 month'
              > ($__timeFrom()::timestamptz AT TIME ZONE s.timezone)::date
        ORDER BY 1, 2
    """,
        "table",
    )
    return [
        big_number(
            lang("PUE de la période", "PUE over the range"),
            lang(
                "Énergie totale de la salle / énergie informatique sur les jours où les deux "
                "sont mesurées (api.pue_daily) ; catégorie ISO/IEC 30134-2 dans le tableau "
                "mensuel. Un PUE au sens de la norme porte sur un an.",
                "Facility energy / IT energy over the days with both measured (api.pue_daily); "
                "ISO/IEC 30134-2 category in the monthly table. The standard's PUE is over a "
                "year.",
            ),
            [period],
            unit="none",
            decimals=2,
            height=8,
        ),
        series(
            lang("PUE par jour", "PUE per day"),
            lang(
                "PUE de chaque jour local, catégorie de mesure entre parenthèses (api.pue_daily).",
                "PUE of each local day, measurement category in brackets (api.pue_daily).",
            ),
            [daily],
            unit="none",
            axis="PUE",
            width=18,
        ),
        grid(
            lang("PUE par mois", "PUE per month"),
            lang(
                "Mois complets ou non, jours où les deux énergies sont mesurées, catégorie, et "
                "« provisoire » tant que la commune a moins de douze mois (api.pue_monthly).",
                "Complete months or not, days with both energies measured, category, and "
                "'interim' while the site has fewer than twelve months (api.pue_monthly).",
            ),
            [monthly],
        ),
    ]


def _usage(lang: Lang) -> list[PanelBuilder]:
    usage = lang("usage", "usage")
    labels = _usages(lang)
    pumping = sql(f"""
        SELECT {local_midnight("p.day", "s.timezone")} AS "time", p.site,
               sum(p.kwh) / nullif(sum(p.m3), 0) AS "kWh/m³"
        FROM api.pumping_daily p
        {_days("p")}
        GROUP BY 1, 2
        ORDER BY 1
    """)
    by_day = sql(f"""
        SELECT {local_midnight("e.day", "s.timezone")} AS "time",
               {kind_label("e.kind", labels)} AS metric, sum(e.kwh) AS "kWh"
        FROM api.energy_daily e
        {_days("e")}
        GROUP BY 1, 2
        ORDER BY 1
    """)
    by_kind = sql(
        f"""
        SELECT {kind_label("e.kind", labels)} AS "{usage}",
               sum(e.kwh) AS "kWh", sum(e.kg_co2e) AS "kg CO₂e", sum(e.eur) AS "€",
               bool_and(e.complete) AS "{lang("complet", "complete")}"
        FROM api.energy_daily e
        {_days("e")}
        GROUP BY 1
        ORDER BY 2 DESC
    """,
        "table",
    )
    totals = [
        ("kwh", lang("Énergie", "Energy"), "kwatth"),
        ("kg_co2e", lang("Émissions (kg CO₂e)", "Emissions (kg CO₂e)"), "masskg"),
        ("eur", lang("Coût (€)", "Cost (€)"), "currencyEUR"),
    ]
    stats = [
        big_number(
            title,
            lang(
                "Somme sur la période de tous les compteurs (api.energy_daily), avec les "
                "facteurs figés pour chaque jour (sans tarif, pas d'euros).",
                "Sum over the range of every meter (api.energy_daily), with the factors pinned "
                "for each day (no tariff, no euros).",
            ),
            [
                sql(
                    f'SELECT sum(e.{column}) AS "{title}"\nFROM api.energy_daily e\n{_days("e")}',
                    "table",
                )
            ],
            unit=unit,
            width=8,
        )
        for column, title, unit in totals
    ]
    return [
        *stats,
        series(
            lang("Énergie par usage", "Energy by usage"),
            lang(
                "kWh par jour local et par usage (type de compteur ; api.energy_daily). Les "
                "armoires alimentent les luminaires : ne pas additionner les deux.",
                "kWh per local day and usage (meter kind; api.energy_daily). Cabinets feed "
                "the luminaires: do not add the two.",
            ),
            [by_day],
            unit="kwatth",
            axis=lang("kWh par jour", "kWh per day"),
            bars=True,
            width=16,
        ),
        grid(
            lang("Bilan par usage", "Totals by usage"),
            lang(
                "kWh, kg CO₂e et € par usage sur la période (api.energy_daily).",
                "kWh, kg CO₂e and € per usage over the range (api.energy_daily).",
            ),
            [by_kind],
            width=8,
        ),
        series(
            lang("Pompage : kWh par m³", "Pumping: kWh per m³"),
            lang(
                "Énergie des pompes par m³ pompé, par jour local (api.pumping_daily).",
                "Pump energy per m³ pumped, per local day (api.pumping_daily).",
            ),
            [pumping],
            unit="none",
            axis="kWh/m³",
            width=24,
        ),
    ]


def build(lang: Lang) -> db.Dashboard:
    """The energy and PUE dashboard in ``lang``."""
    dash = frame(
        lang,
        SLUG,
        lang("Énergie et PUE", "Energy and PUE"),
        lang(
            "PUE de la salle serveurs, pompage, énergie par usage avec CO₂e et coût.",
            "Server-room PUE, pumping, energy by usage with CO₂e and cost.",
        ),
        [lang("énergie", "energy")],
    )
    for panel in [*_pue(lang), *_usage(lang)]:
        dash = dash.with_panel(panel)
    return dash
