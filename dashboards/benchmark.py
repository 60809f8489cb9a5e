"""Comparaison des communes / Commune benchmark: the communes of the installation side by side
per month — lighting kWh per luminaire-night and the share saved by dimming, the network's
yield and ILI, the server room's PUE — from ``api.commune_benchmark_monthly`` (migration 0021).

For the operator only: the view shows a commune's role no row, and the dashboard is in the
operator's folders only (:data:`dashboards.render.OPERATOR_ONLY`). The months shown are the
local calendar months that meet the range, whole; the bars compare the communes over those
months by ratios of sums (kWh / luminaire-nights, saved kWh / baseline kWh [fraction],
(metered + exported) / input [%], losses / UARL, facility kWh / IT kWh).
"""

from __future__ import annotations

from dashboards.panels import PanelBuilder, bars, frame, grid
from dashboards.sdk import Lang, db, sql
from dashboards.sqlparts import SITES, months_in_range

SLUG = "comparaison"

_FROM = f"""FROM api.commune_benchmark_monthly b
JOIN api.sites s ON s.site = b.site
WHERE b.site {SITES}
  AND {months_in_range("b.month", "s.timezone")}"""


def _table(lang: Lang) -> list[PanelBuilder]:
    per_night = lang("kWh par luminaire-nuit", "kWh per luminaire-night")
    query = sql(
        f"""
        SELECT coalesce(b.name, b.site) AS "{lang("commune", "site")}",
               to_char(b.month, 'YYYY-MM') AS "{lang("mois", "month")}",
               b.kwh_per_luminaire_night AS "{per_night}",
               100 * b.lighting_saved_fraction
                   AS "{lang("économies par gradation (%)", "saved by dimming (%)")}",
               b.lighting_nights AS "{lang("nuits d'éclairage", "lighting nights")}",
               b.yield_percent AS "{lang("rendement (%)", "yield (%)")}",
               b.ili AS "ILI",
               b.water_days AS "{lang("jours de bilan", "balance days")}",
               b.pue AS "PUE",
               b.pue_category AS "{lang("catégorie PUE", "PUE category")}",
               b.pue_days_paired AS "{lang("jours PUE", "PUE days")}",
               b.lighting_complete AS "{lang("éclairage complet", "lighting complete")}",
               b.water_complete AS "{lang("eau complète", "water complete")}",
               b.pue_complete AS "{lang("PUE complet", "PUE complete")}"
        {_FROM}
        ORDER BY b.month, 1
    """,
        "table",
    )
    return [
        grid(
            lang("Indicateurs par commune et par mois", "Indicators per commune and month"),
            lang(
                "Chaque commune, chaque mois local qui touche la période (mois entiers ; "
                "api.commune_benchmark_monthly, réservé à l'exploitant) : kWh par "
                "luminaire-nuit et part économisée par la gradation (api.lighting_nights), "
                "rendement et ILI de ses secteurs (api.water_balance_daily), PUE de la salle "
                "serveurs (api.pue_monthly), avec les nuits, jours mesurés et la complétude de "
                "chaque domaine.",
                "Each commune, each local month that meets the range (whole months; "
                "api.commune_benchmark_monthly, operators only): kWh per luminaire-night and "
                "the share saved by dimming (api.lighting_nights), its DMAs' yield and ILI "
                "(api.water_balance_daily), the server room's PUE (api.pue_monthly), with the "
                "nights, days measured and each domain's completeness.",
            ),
            [query],
            height=9,
        )
    ]


def _bar(
    lang: Lang, title: str, description: str, value: str, unit: str, width: int = 8
) -> PanelBuilder:
    commune = lang("commune", "site")
    query = sql(
        f"""
        SELECT coalesce(min(b.name), b.site) AS "{commune}",
               {value} AS "{title}"
        {_FROM}
        GROUP BY b.site
        ORDER BY 1
    """,
        "table",
    )
    return bars(title, description, [query], x_field=commune, unit=unit, axis=title, width=width)


def _bars(lang: Lang) -> list[PanelBuilder]:
    over = lang(
        " sur les mois de la période, par commune (api.commune_benchmark_monthly).",
        " over the months of the range, per commune (api.commune_benchmark_monthly).",
    )
    return [
        _bar(
            lang,
            lang("kWh par luminaire-nuit", "kWh per luminaire-night"),
            lang("Énergie de l'éclairage / luminaires-nuits", "Lighting energy / luminaire-nights")
            + over,
            "sum(b.lighting_kwh) / nullif(sum(b.luminaire_nights), 0)",
            "kwatth",
        ),
        _bar(
            lang,
            lang("Économies par gradation", "Saved by dimming"),
            lang(
                "1 - énergie / énergie sans gradation (nuits avec référence)",
                "1 - energy / energy without dimming (nights with a baseline)",
            )
            + over,
            "sum(b.lighting_saved_kwh) / nullif(sum(b.lighting_baseline_kwh), 0)",
            "percentunit",
        ),
        _bar(
            lang,
            lang("Rendement du réseau", "Network yield"),
            lang(
                "(consommation comptée + export) / volume mis en distribution, tous secteurs",
                "(metered consumption + export) / volume in, every DMA",
            )
            + over,
            "100 * sum(b.water_metered_m3 + b.water_output_m3) / nullif(sum(b.water_input_m3), 0)",
            "percent",
        ),
        _bar(
            lang,
            "ILI",
            lang(
                "Pertes / pertes inévitables de Lambert (borne haute)",
                "Losses / Lambert's unavoidable losses (an upper bound)",
            )
            + over,
            "sum(b.water_losses_with_uarl_m3) / nullif(sum(b.uarl_m3), 0)",
            "none",
            width=12,
        ),
        _bar(
            lang,
            "PUE",
            lang(
                "Énergie totale de la salle / énergie informatique (jours avec les deux)",
                "Facility energy / IT energy (days with both)",
            )
            + over,
            "sum(b.facility_kwh) / nullif(sum(b.it_kwh), 0)",
            "none",
            width=12,
        ),
    ]


def build(lang: Lang) -> db.Dashboard:
    """The commune benchmark in ``lang`` (for the operator's folders only)."""
    dash = frame(
        lang,
        SLUG,
        lang("Comparaison des communes", "Commune benchmark"),
        lang(
            "Les communes côte à côte par mois : éclairage, eau potable, PUE. Réservé à "
            "l'exploitant.",
            "The communes side by side per month: lighting, drinking water, PUE. For the "
            "operator only.",
        ),
        [lang("comparaison", "benchmark"), lang("exploitant", "operator")],
    ).time("now-3M/M", "now")
    for panel in [*_table(lang), *_bars(lang)]:
        dash = dash.with_panel(panel)
    return dash
