"""Eau potable / Drinking water: night flows per DMA against their baseline, leak alerts (as
annotations with their estimated flow, and as a list with their state), the water balance with
the yield against the decree 2012-97 threshold and the ILI, the customer-meter alerts."""

from __future__ import annotations

from dashboards.panels import PanelBuilder, annotation, big_number, frame, grid, series
from dashboards.sdk import Lang, db, sql
from dashboards.sqlparts import (
    CUSTOMER_KINDS,
    SITES,
    WATER_KINDS,
    dates_in_range,
    dates_near_range,
    kind_label,
    local_midnight,
    overlaps_range,
)
from dashboards.water_balance import THRESHOLD, period_sql

SLUG = "eau"


def _kinds(lang: Lang) -> dict[str, str]:
    return {
        "leak": lang("fuite", "leak"),
        "data_gap": lang("données manquantes", "data gap"),
        "continuous_flow": lang("débit continu", "continuous flow"),
        "high_consumption": lang("surconsommation", "high consumption"),
    }


def _states(lang: Lang) -> dict[str, str]:
    return {
        "open": lang("ouverte", "open"),
        "acknowledged": lang("prise en compte", "acknowledged"),
        "resolved": lang("résolue", "resolved"),
    }


def _nights(lang: Lang) -> list[PanelBuilder]:
    query = sql(f"""
        SELECT n.window_start AS "time", n.site || ' / ' || n.dma AS "{lang("secteur", "DMA")}",
               n.mnf_m3h AS "{lang("débit minimum de nuit", "minimum night flow")}",
               n.net_m3h AS "{lang("débit net de nuit", "net night flow")}",
               n.baseline_m3h AS "{lang("référence", "baseline")}"
        FROM api.dma_nights n
        WHERE n.site {SITES} AND $__timeFilter(n.window_start)
        ORDER BY 1
    """)
    active = sql(
        f"""
        SELECT count(*) AS "{lang("fuites actives", "active leaks")}",
               sum(a.estimated_flow_m3h) AS "{lang("débit estimé", "estimated flow")}"
        FROM api.alerts a
        WHERE a.kind = 'leak' AND a.state <> 'resolved' AND a.site {SITES}
    """,
        "table",
    )
    return [
        big_number(
            lang("Fuites actives", "Active leaks"),
            lang(
                "Alertes de fuite non résolues et la somme de leurs débits estimés (api.alerts).",
                "Leak alerts not resolved and the sum of their estimated flows (api.alerts).",
            ),
            [active],
            unit="none",
            width=6,
            height=8,
        ),
        series(
            lang("Débit de nuit par secteur", "Night flow per DMA"),
            lang(
                "Par secteur et par nuit (fenêtre 02:00-04:00 locale) : débit minimum de nuit "
                "(entrées moins sorties), débit net (moins les compteurs clients relevés) et la "
                "référence robuste du détecteur (api.dma_nights). Les fuites sont en annotations.",
                "Per DMA and night (02:00-04:00 local window): minimum night flow (inlets minus "
                "outlets), net night flow (less the customer meters read) and the detector's "
                "robust baseline (api.dma_nights). Leaks are annotations.",
            ),
            [query],
            unit="m3/h",
            axis=lang("débit (m³/h)", "flow (m³/h)"),
            width=18,
        ),
    ]


def _alerts(lang: Lang) -> list[PanelBuilder]:
    columns = f"""
               a.opened_at AS "{lang("ouverte", "opened")}",
               {kind_label("a.kind", _kinds(lang))} AS "{lang("type", "kind")}",
               a.site AS "{lang("commune", "site")}",
               a.subject AS "{lang("objet", "subject")}",
               {kind_label("a.state", _states(lang))} AS "{lang("état", "state")}",
               a.estimated_flow_m3h AS "{lang("débit estimé (m³/h)", "estimated flow (m³/h)")}",
               a.started_at AS "{lang("début estimé", "estimated start")}",
               a.closed_at AS "{lang("close", "closed")}","""
    alerts = sql(
        f"""
        SELECT {columns.strip()}
               a.acknowledged_by AS "{lang("pris en compte par", "acknowledged by")}"
        FROM api.alerts a
        WHERE a.kind IN {WATER_KINDS} AND a.subject_type = 'dma' AND a.site {SITES}
          AND {overlaps_range("a.opened_at", "a.closed_at")}
        ORDER BY 1 DESC
    """,
        "table",
    )
    customers = sql(
        f"""
        SELECT {columns.strip()}
               d.dma AS "{lang("secteur", "DMA")}"
        FROM api.alerts a
        LEFT JOIN api.devices d ON d.site = a.site AND d.device = a.subject
        WHERE a.kind IN {CUSTOMER_KINDS} AND a.subject_type = 'device' AND a.site {SITES}
          AND {overlaps_range("a.opened_at", "a.closed_at")}
        ORDER BY 1 DESC
    """,
        "table",
    )
    return [
        grid(
            lang("Alertes du réseau", "Network alerts"),
            lang(
                "Alertes des secteurs (fuites, données manquantes) ouvertes pendant la période "
                "ou encore actives, avec leur état : ouverte, prise en compte, résolue "
                "(api.alerts).",
                "DMA alerts (leaks, data gaps) open during the range or still active, with "
                "their state: open, acknowledged, resolved (api.alerts).",
            ),
            [alerts],
        ),
        grid(
            lang("Alertes des compteurs clients", "Customer-meter alerts"),
            lang(
                "Débit continu (jamais à zéro sur 24 h, deux jours de suite) et surconsommation "
                "(7 jours au-dessus du double de l'habitude) par compteur (api.alerts).",
                "Continuous flow (never zero over 24 h, two days in a row) and high consumption "
                "(7 days above twice the usual) per meter (api.alerts).",
            ),
            [customers],
        ),
    ]


def _balance(lang: Lang) -> list[PanelBuilder]:
    dma = lang("secteur", "DMA")
    whole = sql(
        period_sql(
            f"""site || ' / ' || dma AS "{dma}",
       inflow_m3 AS "{lang("volume mis en distribution (m³)", "volume in (m³)")}",
       outflow_m3 AS "{lang("volume exporté (m³)", "volume out (m³)")}",
       consumption_m3 AS "{lang("consommation comptée (m³)", "metered consumption (m³)")}",
       losses_m3 AS "{lang("pertes (m³)", "losses (m³)")}",
       yield_percent AS "{lang("rendement (%)", "yield (%)")}",
       {THRESHOLD} AS "{lang("seuil décret 2012-97 (%)", "decree 2012-97 threshold (%)")}",
       yield_percent >= {THRESHOLD} AS "{lang("conforme", "compliant")}",
       ilc AS "{lang("ILC (m³/km/j)", "ILC (m³/km/d)")}",
       ilp AS "{lang("ILP (m³/km/j)", "ILP (m³/km/d)")}",
       ili AS "ILI",
       days_measured AS "{lang("jours mesurés", "days measured")}",
       complete AS "{lang("complet", "complete")}"
    """,
            "1",
        ),
        "table",
    )
    daily = sql(f"""
        SELECT {local_midnight("w.day", "s.timezone")} AS "time",
               w.site || ' / ' || w.dma AS "{dma}",
               w.yield_percent AS "{lang("rendement", "yield")}",
               w.threshold_percent AS "{lang("seuil", "threshold")}"
        FROM api.water_balance_daily w
        JOIN api.sites s ON s.site = w.site
        WHERE w.site {SITES}
          AND {dates_near_range("w.day")}
          AND {dates_in_range("w.day", "s.timezone")}
        ORDER BY 1
    """)
    return [
        grid(
            lang("Bilan hydraulique", "Water balance"),
            lang(
                "Par secteur sur les jours locaux de la période (api.water_balance_daily, tenu "
                "par l'étape anomalies : index des compteurs, règles de « sobriety anomaly "
                "balance ») : volumes, pertes, rendement = (consommation + export) / volume mis "
                "en distribution, seuil du décret 2012-97 (85 %, ou 65 + ILC/5), ILC et ILP "
                "(m³/km/jour), ILI = pertes / pertes inévitables de Lambert (borne haute : pertes "
                "apparentes non séparées), jours mesurés et complets.",
                "Per DMA over the local days of the range (api.water_balance_daily, kept by the "
                "anomaly stage: meter indexes, the rules of 'sobriety anomaly balance'): volumes, "
                "losses, yield = (consumption + export) / volume in, the decree 2012-97 "
                "threshold (85 %, or 65 + ILC/5), ILC and ILP (m³/km/day), ILI = losses / "
                "Lambert's unavoidable losses (an upper bound: apparent losses not separated), "
                "days measured and complete.",
            ),
            [whole],
        ),
        series(
            lang("Rendement journalier", "Daily yield"),
            lang(
                "Rendement de chaque secteur par jour local et le seuil du décret 2012-97 pour "
                "ce jour (api.water_balance_daily).",
                "Each DMA's yield per local day and the decree 2012-97 threshold for that day "
                "(api.water_balance_daily).",
            ),
            [daily],
            unit="percent",
            axis=lang("rendement (%)", "yield (%)"),
            width=24,
            bars=False,
        ),
    ]


def _leak_annotations(lang: Lang) -> db.AnnotationQuery:
    query = sql(
        f"""
        SELECT coalesce(a.started_at, a.opened_at) AS "time", a.closed_at AS timeend,
               {lang("'Fuite '", "'Leak '")} || a.site || ' / ' || a.subject || ' : ~'
                   || round(a.estimated_flow_m3h::numeric, 3) || ' m³/h ('
                   || {kind_label("a.state", _states(lang))} || ')' AS text,
               'leak,' || a.site || ',' || a.subject || ',' || a.state AS tags
        FROM api.alerts a
        WHERE a.kind = 'leak' AND a.site {SITES}
          AND {overlaps_range("a.opened_at", "a.closed_at")}
        ORDER BY 1
    """,
        "table",
    )
    return annotation(lang("Fuites", "Leaks"), "red", query)


def build(lang: Lang) -> db.Dashboard:
    """The drinking-water dashboard in ``lang``."""
    dash = frame(
        lang,
        SLUG,
        lang("Eau potable", "Drinking water"),
        lang(
            "Débits de nuit et fuites par secteur, alertes, bilan hydraulique, rendement et ILI.",
            "Night flows and leaks per DMA, alerts, water balance, yield and ILI.",
        ),
        [lang("eau", "water")],
    ).annotation(_leak_annotations(lang))
    for panel in [*_nights(lang), *_alerts(lang), *_balance(lang)]:
        dash = dash.with_panel(panel)
    return dash
