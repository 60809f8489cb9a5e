"""Éclairage public / Public lighting: energy per night against the no-dimming baseline, the
savings, the dim levels through the night, the programs in force, config drift, luminaire
faults (a table, annotations and a map) and the cabinets."""

from __future__ import annotations

from dashboards.panels import PanelBuilder, annotation, big_number, frame, grid, series
from dashboards.sdk import POSTGRES_DATASOURCE, Lang, cb, cm, db, dm, geomap, gm, sql
from dashboards.sqlparts import (
    LUMINAIRE_FAULTS,
    SITES,
    dates_in_range,
    kind_label,
    local_midnight,
    overlaps_range,
)

SLUG = "eclairage"

_NIGHTS = f"""FROM api.lighting_nights n
JOIN api.sites s ON s.site = n.site
WHERE n.site {SITES}
  AND {dates_in_range("n.night", "s.timezone")}"""

_FAULT_COLOURS = {
    "ok": "green",
    "lamp_failure": "red",
    "day_burner": "orange",
    "power_off_curve": "yellow",
}


def _fault_labels(lang: Lang) -> dict[str, str]:
    return {
        "lamp_failure": lang("lampe en panne", "lamp failure"),
        "day_burner": lang("allumée le jour", "day burner"),
        "power_off_curve": lang("puissance hors courbe", "power off its curve"),
    }


def _energy(lang: Lang) -> list[PanelBuilder]:
    kwh = lang("consommation", "energy used")
    base = lang("référence sans gradation", "no-dimming baseline")
    night = local_midnight("n.night", "s.timezone")
    per_night = sql(f"""
        SELECT {night} AS "time", n.site,
               sum(n.kwh) AS "{kwh}", sum(n.baseline_kwh) AS "{base}"
        {_NIGHTS}
        GROUP BY 1, 2
        ORDER BY 1
    """)
    per_luminaire = sql(f"""
        SELECT {night} AS "time", n.site,
               sum(n.kwh) / sum(n.luminaires) AS "{kwh}",
               sum(n.baseline_kwh)
                   / nullif(sum(n.luminaires) FILTER (WHERE n.baseline_kwh IS NOT NULL), 0)
                   AS "{base}"
        {_NIGHTS}
        GROUP BY 1, 2
        ORDER BY 1
    """)
    return [
        series(
            lang("Consommation par nuit", "Energy per night"),
            lang(
                "kWh des luminaires par nuit (à la date du soir) et ce qu'ils auraient consommé "
                "sans gradation (api.lighting_nights).",
                "Luminaires' kWh per night (at the evening's date) and what they would have "
                "used without dimming (api.lighting_nights).",
            ),
            [per_night],
            unit="kwatth",
            axis=lang("kWh par nuit", "kWh per night"),
            bars=True,
        ),
        series(
            lang("Consommation par luminaire-nuit", "Energy per luminaire-night"),
            lang(
                "kWh par luminaire et par nuit, mesurés et sans gradation (api.lighting_nights).",
                "kWh per luminaire and night, measured and without dimming (api.lighting_nights).",
            ),
            [per_luminaire],
            unit="kwatth",
            axis=lang("kWh par luminaire-nuit", "kWh per luminaire-night"),
            bars=True,
        ),
    ]


def _savings(lang: Lang) -> list[PanelBuilder]:
    source = lang(
        " Sur la période et les communes choisies (api.lighting_nights) ; CO₂e et euros avec "
        "les facteurs figés pour chaque nuit (api.energy_factors) : sans tarif, pas d'euros.",
        " Over the range and the sites chosen (api.lighting_nights); CO₂e and euros with the "
        "factors pinned for each night (api.energy_factors): no tariff, no euros.",
    )
    figures = [
        (
            "kwh",
            lang("Consommation", "Energy used"),
            lang("kWh des luminaires.", "Luminaires' kWh."),
            "kwatth",
        ),
        (
            "saved_kwh",
            lang("Économies par gradation", "Saved by dimming"),
            lang("Référence sans gradation moins consommation.", "Baseline minus energy used."),
            "kwatth",
        ),
        (
            "saved_eur",
            lang("Économies (€)", "Saved (€)"),
            lang("kWh économisés x tarif.", "kWh saved x tariff."),
            "currencyEUR",
        ),
        (
            "saved_kg_co2e",
            lang("Économies (kg CO₂e)", "Saved (kg CO₂e)"),
            lang("kWh économisés x facteur d'émission.", "kWh saved x emission factor."),
            "masskg",
        ),
    ]
    return [
        big_number(
            title,
            text + source,
            [sql(f'SELECT sum(n.{column}) AS "{title}"\n{_NIGHTS}', "table")],
            unit=unit,
        )
        for column, title, text, unit in figures
    ]


def _dimming(lang: Lang) -> PanelBuilder:
    query = sql(f"""
        SELECT r.time, r.site || ' / ' || coalesce(d.lighting_group, '-') AS metric,
               sum(r.sum) / sum(r.count) AS "dim"
        FROM api.readings_hourly r
        JOIN api.devices d ON d.site = r.site AND d.device = r.device
        WHERE r.metric = 'dim' AND r.kind = 'luminaire' AND r.site {SITES}
          AND $__timeFilter(r.time)
        GROUP BY 1, 2
        ORDER BY 1
    """)
    return (
        series(
            lang("Niveau de gradation au fil de la nuit", "Dim level through the night"),
            lang(
                "Niveau moyen par groupe d'éclairage et par heure, en % de la pleine puissance "
                "(api.readings_hourly, métrique dim).",
                "Mean level per lighting group and hour, in % of full power (api.readings_hourly, "
                "metric dim).",
            ),
            [query],
            unit="percent",
            axis=lang("niveau (%)", "level (%)"),
            width=24,
        )
        .min(0)
        .max(100)
    )


def _programs(lang: Lang) -> list[PanelBuilder]:
    group, program = lang("groupe", "group"), lang("programme", "program")
    luminaires, applied = lang("luminaires", "luminaires"), lang("appliqué", "applied")
    published = lang("publié le", "published at")
    programs = sql(
        f"""
        SELECT c.site AS "{lang("commune", "site")}",
               coalesce(c.lighting_group, '-') AS "{group}",
               coalesce(c.program, '-') AS "{program}",
               count(*) AS "{luminaires}",
               count(*) FILTER (WHERE c.applied_version = c.version) AS "{applied}",
               max(c.published_at) AS "{published}"
        FROM api.device_configs c
        WHERE c.kind = 'luminaire' AND c.site {SITES}
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
    """,
        "table",
    )
    drift = sql(
        f"""
        SELECT c.site AS "{lang("commune", "site")}", c.device AS "{lang("appareil", "device")}",
               c.kind AS "{lang("type", "kind")}",
               c.published_version AS "{lang("version publiée", "published version")}",
               c.applied_version AS "{lang("version appliquée", "applied version")}",
               c.online AS "{lang("en ligne", "online")}",
               c.config_error AS "{lang("erreur", "error")}",
               c.published_at AS "{published}"
        FROM api.config_drift c
        WHERE c.kind IN ('luminaire', 'cabinet_meter') AND c.site {SITES}
        ORDER BY 1, 2
    """,
        "table",
    )
    return [
        grid(
            lang("Programmes en vigueur", "Programs in force"),
            lang(
                "Programme de gradation publié à chaque luminaire (config retenue), par groupe ; "
                "« appliqué » : ceux dont l'état annonce cette version (api.device_configs).",
                "The dimming program published to each luminaire (retained config), per group; "
                "'applied': those whose state reports that version (api.device_configs).",
            ),
            [programs],
            width=12,
        ),
        grid(
            lang("Écarts de configuration", "Config drift"),
            lang(
                "Luminaires et armoires sans config publiée, sans état reçu ou appliquant une "
                "autre version que la publiée ; l'erreur dit pourquoi (api.config_drift).",
                "Luminaires and cabinets with no config published, no state received or running "
                "another version than the published one; the error says why (api.config_drift).",
            ),
            [drift],
            width=12,
        ),
    ]


def _faults(lang: Lang) -> list[PanelBuilder]:
    labels = _fault_labels(lang)
    faults = sql(
        f"""
        SELECT a.opened_at AS "{lang("ouverte", "opened")}",
               a.site AS "{lang("commune", "site")}",
               a.subject AS "{lang("luminaire", "luminaire")}",
               d.lighting_group AS "{lang("groupe", "group")}",
               {kind_label("a.kind", labels)} AS "{lang("défaut", "fault")}",
               a.state AS "{lang("état", "state")}",
               a.closed_at AS "{lang("close", "closed")}"
        FROM api.alerts a
        JOIN api.devices d ON d.site = a.site AND d.device = a.subject
        WHERE a.subject_type = 'device' AND a.kind IN {LUMINAIRE_FAULTS} AND a.site {SITES}
          AND {overlaps_range("a.opened_at", "a.closed_at")}
        ORDER BY 1 DESC
    """,
        "table",
    )
    positions = sql(
        f"""
        SELECT d.site, d.device, d.lighting_group, d.lat, d.lon, coalesce(f.kind, 'ok') AS state
        FROM api.devices d
        LEFT JOIN LATERAL (
            SELECT a.kind FROM api.alerts a
            WHERE a.site = d.site AND a.subject_type = 'device' AND a.subject = d.device
              AND a.kind IN {LUMINAIRE_FAULTS} AND a.state <> 'resolved'
            ORDER BY a.opened_at DESC
            LIMIT 1
        ) f ON true
        WHERE d.kind = 'luminaire' AND d.site {SITES} AND d.lat IS NOT NULL AND d.lon IS NOT NULL
        ORDER BY 1, 2
    """,
        "table",
    )
    texts = {"ok": lang("en service", "ok"), **labels}
    mapping = dm.ValueMap(
        options={
            state: dm.ValueMappingResult(text=texts[state], color=colour, index=i)
            for i, (state, colour) in enumerate(_FAULT_COLOURS.items())
        }
    )
    markers = (
        cb.MapLayerOptions()
        .type("markers")
        .name(lang("luminaires", "luminaires"))
        .location(
            cb.FrameGeometrySource()
            .mode(cm.FrameGeometrySourceMode.COORDS)
            .latitude("lat")
            .longitude("lon")
        )
        .config(
            {
                "showLegend": True,
                "style": {
                    "color": {"field": "state", "fixed": "green"},
                    "opacity": 0.8,
                    "size": {"fixed": 6, "max": 12, "min": 4},
                    "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                },
            }
        )
        .tooltip(True)
    )
    map_panel = (
        geomap.Panel()
        .title(lang("Carte des luminaires", "Luminaire map"))
        .description(
            lang(
                "Chaque luminaire à sa position (api.devices), coloré par son défaut actif "
                "(alerte non résolue de api.alerts) ou vert s'il n'en a pas.",
                "Each luminaire at its position (api.devices), coloured by its active fault (an "
                "alert of api.alerts not resolved), green when it has none.",
            )
        )
        .datasource(POSTGRES_DATASOURCE)
        .targets([positions])
        .mappings([mapping])
        .view(geomap.MapViewConfig().id("fit").all_layers(True).zoom(14))
        .basemap(cb.MapLayerOptions().type("default").name(lang("fond", "basemap")))
        .layers([markers])
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True))
        .tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS))
        .span(12)
        .height(12)
    )
    table_panel = grid(
        lang("Défauts de luminaires", "Luminaire faults"),
        lang(
            "Alertes des luminaires (lampe en panne, allumée le jour, puissance hors courbe) "
            "ouvertes pendant la période ou encore actives (api.alerts).",
            "Luminaire alerts (lamp failure, day burner, power off its curve) open during the "
            "range or still active (api.alerts).",
        ),
        [faults],
        width=12,
        height=12,
    )
    return [table_panel, map_panel]


def _cabinets(lang: Lang) -> PanelBuilder:
    query = sql(
        f"""
        SELECT c.site AS "{lang("commune", "site")}", c.cabinet AS "{lang("armoire", "cabinet")}",
               count(*) AS "{lang("nuits", "nights")}",
               sum(c.kwh) AS "{lang("armoire (kWh)", "cabinet (kWh)")}",
               sum(c.luminaires_kwh) AS "{lang("luminaires (kWh)", "luminaires (kWh)")}",
               sum(c.difference_kwh) AS "{lang("écart (kWh)", "difference (kWh)")}",
               sum(c.baseline_kwh) AS "{lang("sans gradation (kWh)", "no dimming (kWh)")}",
               sum(c.saved_kwh) AS "{lang("économies (kWh)", "saved (kWh)")}",
               round((100 * (1 - sum(c.kwh) / nullif(sum(c.baseline_kwh), 0)))::numeric, 1)
                   AS "{lang("économies (%)", "saved (%)")}"
        FROM api.lighting_cabinets c
        JOIN api.sites s ON s.site = c.site
        WHERE c.site {SITES}
          AND {dates_in_range("c.night", "s.timezone")}
        GROUP BY 1, 2
        ORDER BY 1, 2
    """,
        "table",
    )
    return grid(
        lang("Armoires", "Cabinets"),
        lang(
            "Par armoire sur la période : son compteur, la somme de ses luminaires, l'écart "
            "(pertes en ligne, charges inconnues ; quand tous ses luminaires sont mesurés), la "
            "référence sans gradation et les économies (api.lighting_cabinets).",
            "Per cabinet over the range: its meter, the sum of its luminaires, the difference "
            "(line losses, unknown loads; when all its luminaires are measured), the no-dimming "
            "baseline and the savings (api.lighting_cabinets).",
        ),
        [query],
    )


def _fault_annotations(lang: Lang) -> db.AnnotationQuery:
    labels = _fault_labels(lang)
    query = sql(
        f"""
        SELECT a.opened_at AS "time", a.closed_at AS timeend,
               a.site || ' / ' || a.subject || ' : ' || {kind_label("a.kind", labels)} AS text,
               'luminaire,' || a.kind || ',' || a.site AS tags
        FROM api.alerts a
        WHERE a.subject_type = 'device' AND a.kind IN {LUMINAIRE_FAULTS} AND a.site {SITES}
          AND {overlaps_range("a.opened_at", "a.closed_at")}
        ORDER BY 1
    """,
        "table",
    )
    return annotation(lang("Défauts de luminaires", "Luminaire faults"), "orange", query)


def build(lang: Lang) -> db.Dashboard:
    """The public lighting dashboard in ``lang``."""
    dash = frame(
        lang,
        SLUG,
        lang("Éclairage public", "Public lighting"),
        lang(
            "Consommation par nuit et économies de la gradation, programmes, défauts des "
            "luminaires, armoires.",
            "Energy per night and what dimming saves, programs, luminaire faults, cabinets.",
        ),
        [lang("éclairage", "lighting")],
    ).annotation(_fault_annotations(lang))
    for panel in [
        *_savings(lang),
        *_energy(lang),
        _dimming(lang),
        *_faults(lang),
        *_programs(lang),
        _cabinets(lang),
    ]:
        dash = dash.with_panel(panel)
    return dash
