"""Everything of a commune, exported before it leaves (``sobriety site remove --export DIR``):
reversibility. CSV files with a header, streamed from the api views as the ``sobriety export``
commands write them — ``site.csv``, ``dmas.csv``, ``devices.csv`` (the inventory as
``api.devices`` shows it), ``readings.csv`` (every raw reading kept), ``alerts.csv``,
``energy.csv`` — and the customer meters under their keyed pseudonym unless
``--no-pseudonymise`` (the commune's own copy, warned as personal data)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from core.config import Config
from core.exports import customer_meters, export_alerts, export_energy, load_pseudonyms, stream
from ingest.export import export_readings

__all__ = ["export_site"]

_INVENTORY = {
    "site.csv": "SELECT v.* FROM api.sites v WHERE v.site = {site}",
    "dmas.csv": "SELECT v.* FROM api.dmas v WHERE v.site = {site} ORDER BY v.dma",
    "devices.csv": (
        "SELECT v.site, coalesce(p.alias, v.device) AS device, v.kind, v.dma, v.role, v.lat, "
        "v.lon, v.lighting_group, v.lighting_class, v.nominal_power_w, v.properties::text AS "
        "properties FROM api.devices v LEFT JOIN export_pseudonyms p ON p.site = v.site AND "
        "p.device = v.device WHERE v.site = {site} ORDER BY 2"
    ),
}


def export_site(
    conn: psycopg.Connection, config: Config, site: str, directory: Path, keep_ids: bool
) -> list[str]:
    """Write the commune's files into ``directory`` (made if absent; existing files of these
    names are replaced); their names. The key is checked before any file is written."""
    meters = customer_meters(conn, site)
    key = None
    if meters and not keep_ids:
        key = config.privacy_key()
    elif meters:
        print(
            f"sobriety: warning: --no-pseudonymise: the export holds the ids of {len(meters)} "
            "customer meters, personal data (RGPD): hand it to the commune only",
            file=sys.stderr,
        )
    directory.mkdir(parents=True, exist_ok=True)
    literal = sql.Literal(site)
    written: list[str] = []
    with conn.transaction():
        load_pseudonyms(conn, key, site)
        for name, text in _INVENTORY.items():
            with (directory / name).open("wb") as out:
                stream(conn, out, sql.SQL(text).format(site=literal), "csv")
            written.append(name)
        first = conn.execute(
            "SELECT min(r.time) FROM readings r JOIN devices d ON d.id = r.device_id "
            "WHERE d.site = %s",
            (site,),
        ).fetchone()
        since = first[0] if first and first[0] else datetime(1970, 1, 1, tzinfo=UTC)
        until = datetime.now(UTC) + timedelta(days=2)  # the future window of the ingest too
        with (directory / "readings.csv").open("wb") as out:
            export_readings(conn, out, since, until, site, key)
        written.append("readings.csv")
        load_pseudonyms(conn, key, site)  # export_readings loaded its own: the same rows
        with (directory / "alerts.csv").open("wb") as out:
            export_alerts(conn, out, "csv", until, None, site)
        written.append("alerts.csv")
        with (directory / "energy.csv").open("wb") as out:
            export_energy(conn, out, "csv", since - timedelta(days=1), until, site)
        written.append("energy.csv")
    return written
