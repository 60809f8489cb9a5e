"""Supervision: the ingest from its Prometheus metrics (rate, lag, rejections by reason,
spool, database and broker), rejections and silent devices from the database, config drift,
the radio messages adaptive reporting saves and the service's own energy per 1,000 readings."""

from __future__ import annotations

from dashboards.panels import PanelBuilder, big_number, frame, grid, series
from dashboards.sdk import Lang, db, promql, sql
from dashboards.sqlparts import SITES, dates_in_range, local_midnight

SLUG = "supervision"

SILENT_AFTER = "6 hours"
"""A device is silent when nothing reached the ingest from it for this long before the end of
the range (the slowest default reporting of a device kind, a customer meter's daily batch
aside, is well under it)."""

_RATE = "$__rate_interval"


def _prometheus(lang: Lang) -> list[PanelBuilder]:
    rate = series(
        lang("Débit d'ingestion", "Ingest rate"),
        lang(
            "Messages MQTT reçus et relevés stockés par seconde (sobriety_ingest_*).",
            "MQTT messages received and readings stored per second (sobriety_ingest_*).",
        ),
        [
            promql(
                f"sum(rate(sobriety_ingest_messages_received_total[{_RATE}]))",
                lang("messages reçus", "messages received"),
                "A",
            ),
            promql(
                f"sum(rate(sobriety_ingest_readings_stored_total[{_RATE}]))",
                lang("relevés stockés", "readings stored"),
                "B",
            ),
            promql(
                f"sum(rate(sobriety_ingest_readings_duplicate_total[{_RATE}]))",
                lang("doublons", "duplicates"),
                "C",
            ),
        ],
        unit="reqps",
        axis=lang("par seconde", "per second"),
    )
    lag = series(
        lang("Retard d'ingestion", "Ingest lag"),
        lang(
            "Du relevé le plus récent d'un message à son écriture (quantiles 50 et 95 %), et "
            "durée d'écriture d'un lot (95 %).",
            "From a message's newest reading to its commit (50th and 95th percentiles), and "
            "the time to write one batch (95th).",
        ),
        [
            promql(
                "histogram_quantile(0.5, sum by (le) "
                f"(rate(sobriety_ingest_reading_lag_seconds_bucket[{_RATE}])))",
                lang("retard médian", "median lag"),
                "A",
            ),
            promql(
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(sobriety_ingest_reading_lag_seconds_bucket[{_RATE}])))",
                lang("retard 95 %", "95th percentile lag"),
                "B",
            ),
            promql(
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(sobriety_ingest_batch_write_seconds_bucket[{_RATE}])))",
                lang("écriture d'un lot 95 %", "batch write 95th"),
                "C",
            ),
        ],
        unit="s",
        axis=lang("secondes", "seconds"),
    )
    rejected = series(
        lang("Rejets par motif", "Rejections by reason"),
        lang(
            "Messages rejetés par seconde, par motif (sobriety_ingest_messages_rejected_total).",
            "Messages rejected per second, by reason (sobriety_ingest_messages_rejected_total).",
        ),
        [
            promql(
                f"sum by (reason) (rate(sobriety_ingest_messages_rejected_total[{_RATE}]))",
                "{{reason}}",
            )
        ],
        unit="reqps",
        axis=lang("par seconde", "per second"),
    )
    spool = series(
        lang("Tampon local et messages en attente", "Spool and pending messages"),
        lang(
            "Octets en attente de la base dans le tampon local (sobriety_ingest_spool_bytes) ; "
            "messages reçus pas encore durables (sobriety_ingest_messages_pending).",
            "Bytes waiting in the local spool for the database (sobriety_ingest_spool_bytes); "
            "messages received not yet durable (sobriety_ingest_messages_pending).",
        ),
        [
            promql(
                "sum(sobriety_ingest_spool_bytes)", lang("tampon (octets)", "spool (bytes)"), "A"
            ),
            promql(
                "sum(sobriety_ingest_messages_pending)",
                lang("messages en attente", "messages pending"),
                "B",
            ),
        ],
        unit="short",
    )
    links = big_number(
        lang("Base et courtier", "Database and broker"),
        lang(
            "1 : la dernière écriture en base a réussi / connecté au courtier MQTT "
            "(sobriety_ingest_database_up, sobriety_ingest_broker_connected ; le minimum des "
            "processus d'ingestion).",
            "1: the last database write succeeded / connected to the MQTT broker "
            "(sobriety_ingest_database_up, sobriety_ingest_broker_connected; the minimum over "
            "the ingest processes).",
        ),
        [
            promql("min(sobriety_ingest_database_up)", lang("base", "database"), "A"),
            promql("min(sobriety_ingest_broker_connected)", lang("courtier", "broker"), "B"),
        ],
        unit="bool_yes_no",
        width=24,
    )
    return [rate, lag, rejected, spool, links]


def _database(lang: Lang) -> list[PanelBuilder]:
    rejections = sql(f"""
        SELECT $__timeGroupAlias(r.received_at, '1h'), r.reason AS metric,
               sum(r.times_seen) AS "{lang("rejets", "rejections")}"
        FROM api.rejected_messages r
        WHERE (r.site IS NULL OR r.site {SITES}) AND $__timeFilter(r.received_at)
        GROUP BY 1, 2
        ORDER BY 1
    """)
    silent = sql(
        f"""
        SELECT d.site AS "{lang("commune", "site")}", d.device AS "{lang("appareil", "device")}",
               d.kind AS "{lang("type", "kind")}",
               d.last_received_at AS "{lang("dernier message", "last message")}",
               d.last_reading_at AS "{lang("dernier relevé", "last reading")}"
        FROM api.devices d
        WHERE d.site {SITES}
          AND (d.last_received_at IS NULL
               OR d.last_received_at < $__timeTo()::timestamptz - interval '{SILENT_AFTER}')
        ORDER BY 4 NULLS FIRST, 1, 2
    """,
        "table",
    )
    drift = sql(
        f"""
        SELECT c.kind AS "{lang("type", "kind")}", count(*) AS "{lang("appareils", "devices")}",
               count(*) FILTER (WHERE c.published_version IS NULL)
                   AS "{lang("sans config publiée", "no config published")}",
               count(*) FILTER (WHERE c.config_error IS NOT NULL)
                   AS "{lang("config refusée", "config refused")}",
               count(*) FILTER (WHERE c.online IS NOT TRUE) AS "{lang("hors ligne", "offline")}"
        FROM api.config_drift c
        WHERE c.site {SITES}
        GROUP BY 1
        ORDER BY 1
    """,
        "table",
    )
    return [
        series(
            lang("Rejets enregistrés par motif", "Stored rejections by reason"),
            lang(
                "Messages rejetés par heure de réception et par motif, avec leur contenu brut "
                "en base (api.rejected_messages ; un message répété compte à chaque fois).",
                "Rejected messages per hour received and reason, their raw payload kept in the "
                "database (api.rejected_messages; a repeated message counts each time).",
            ),
            [rejections],
            unit="short",
            bars=True,
            stacked=True,
        ),
        grid(
            lang("Appareils silencieux", "Silent devices"),
            lang(
                f"Appareils dont rien n'est arrivé depuis plus de {SILENT_AFTER.split()[0]} h "
                "avant la fin de la période, ou jamais (api.devices).",
                f"Devices with nothing received for over {SILENT_AFTER.split()[0]} h before "
                "the end of the range, or ever (api.devices).",
            ),
            [silent],
            width=12,
        ),
        grid(
            lang("Écarts de configuration", "Config drift"),
            lang(
                "Par type d'appareil : ceux qui n'appliquent pas la config publiée "
                "(api.config_drift).",
                "Per device kind: those not running the published config (api.config_drift).",
            ),
            [drift],
            width=12,
        ),
    ]


def _savings(lang: Lang) -> list[PanelBuilder]:
    saved = sql(f"""
        SELECT {local_midnight("r.day", "s.timezone")} AS "time", r.site,
               1 - sum(r.messages) / nullif(sum(r.baseline_messages), 0)
                   AS "{lang("messages évités", "messages saved")}"
        FROM api.reporting_daily r
        JOIN api.sites s ON s.site = r.site
        WHERE r.site {SITES}
          AND {dates_in_range("r.day", "s.timezone")}
        GROUP BY 1, 2
        ORDER BY 1
    """)
    per_1000 = lang("kWh par 1 000 relevés", "kWh per 1,000 readings")
    own = sql(f"""
        SELECT {local_midnight("e.day", "split_part(e.timezone, ',', 1)")} AS "time",
               e.kwh_per_1000_readings AS "{per_1000}"
        FROM api.service_energy_daily e
        WHERE {dates_in_range("e.day", "split_part(e.timezone, ',', 1)")}
        ORDER BY 1
    """)
    return [
        series(
            lang(
                "Messages évités par le reporting adaptatif", "Messages saved by adaptive reporting"
            ),
            lang(
                "Part des messages radio évitée par les cadences et le regroupement, face à un "
                "message par métrique toutes les 15 min (api.reporting_daily).",
                "Share of radio messages saved by rates and batching, against one message per "
                "metric every 15 min (api.reporting_daily).",
            ),
            [saved],
            unit="percentunit",
            axis=lang("évités", "saved"),
            bars=True,
        ),
        series(
            lang("Consommation du service", "The service's own energy"),
            lang(
                "kWh du service par 1 000 relevés stockés, par jour (api.service_energy_daily ; "
                "pour toute l'installation, pas par commune).",
                "The service's kWh per 1,000 readings stored, per day (api.service_energy_daily; "
                "for the whole installation, not per site).",
            ),
            [own],
            unit="kwatth",
            axis=lang("kWh / 1 000 relevés", "kWh / 1,000 readings"),
            bars=True,
        ),
    ]


def build(lang: Lang) -> db.Dashboard:
    """The supervision dashboard in ``lang``."""
    dash = frame(
        lang,
        SLUG,
        lang("Supervision", "Supervision"),
        lang(
            "Santé de la chaîne : ingestion, rejets, appareils silencieux, configurations, "
            "messages évités, consommation du service.",
            "Health of the chain: ingest, rejections, silent devices, configs, messages saved, "
            "the service's own energy.",
        ),
        ["supervision"],
    )
    for panel in [*_prometheus(lang), *_database(lang), *_savings(lang)]:
        dash = dash.with_panel(panel)
    return dash
