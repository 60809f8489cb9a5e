"""``sobriety demo``: the whole chain on a simulated town, then a summary and where to look.

Uses the broker and database it is configured with (``SOBRIETY_MQTT_URL``, ``SOBRIETY_DB_URL``),
else local ones on 127.0.0.1 when reachable, else embedded ones it starts itself
(:mod:`app.embedded`). Then: database upgrade, demo town inventory import, the ingest, the
simulated days at full speed, and a summary a technical service understands.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psycopg

from app.embedded import ServiceError, resolve_services
from app.progress import progress_bar
from core.config import Config
from core.db import connect, ensure_database, redact, upgrade
from core.inventory import import_inventory
from ingest.config import IngestConfig
from ingest.service import IngestService
from simulators import Fleet, build_town, load_scenario, packaged_scenario, write_inventory

log = logging.getLogger("sobriety.demo")


@dataclass
class DemoReport:
    """What the demo did, for the summary and for tests."""

    db_url: str
    mqtt_url: str
    db_origin: str
    mqtt_origin: str
    sites: list[str]
    messages_sent: int = 0
    readings_sent: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    expected_rejections: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    silent_devices: list[str] = field(default_factory=list)
    lighting_kwh: dict[str, float] = field(default_factory=dict)
    water_inflow_m3: dict[str, float] = field(default_factory=dict)
    truth_path: Path | None = None
    seconds: float = 0.0


def run_demo(
    config: Config,
    *,
    days: float,
    seed: int,
    embedded: bool,
    configured_db: str | None,
    configured_mqtt: str | None,
    workdir: Path | None,
    serve: bool,
    stop: threading.Event,
    out: TextIO,
    prefer_binaries: bool = True,
) -> DemoReport:
    """Run the demo; print the summary to ``out``; keep serving until ``stop`` if ``serve``."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="sobriety-demo-")) if workdir is None else workdir
    scratch.mkdir(parents=True, exist_ok=True)
    services = resolve_services(
        db_url=configured_db,
        mqtt_url=configured_mqtt,
        workdir=scratch / "services",
        embedded=embedded,
        prefer_mosquitto=prefer_binaries,
        prefer_local_postgres=prefer_binaries,
    )
    try:
        out.write(
            f"broker:   {services.mqtt_url} ({services.mqtt_origin}, "
            f"MQTT {services.mqtt_protocol})\n"
            f"database: {redact(services.db_url)} ({services.db_origin})\n"
        )
        ensure_database(services.db_url)
        with connect(services.db_url) as conn:
            upgrade(conn, config.storage)
        scenario = load_scenario(packaged_scenario("demo"))
        town = build_town(scenario, seed)
        dmas_csv, devices_csv = write_inventory(town, scratch / "inventory")
        with connect(services.db_url) as conn:
            import_inventory(conn, dmas_csv)
            import_inventory(conn, devices_csv)
        sites = [s.spec.site for s in town.sites]
        report = DemoReport(
            services.db_url,
            services.mqtt_url,
            services.db_origin,
            services.mqtt_origin,
            sites,
            devices=len(town.devices),
        )
        ingest_config = config.replace(
            config.database.model_copy(update={"url": services.db_url}),
            config.mqtt.model_copy(
                update={
                    "url": services.mqtt_url,
                    "protocol": services.mqtt_protocol,
                    "root": scenario.root,
                    "client_id": "sobriety-demo-ingest",
                    "shared_group": None,
                    "session_expiry_s": 3600 if serve else 60,
                }
            ),
            config.section(IngestConfig).model_copy(
                update={"spool_dir": scratch / "spool", "workers": 1}
            ),
        )
        service = IngestService(ingest_config)
        try:
            service.start()
        except OSError as exc:  # the metrics port is taken: run without the endpoint
            log.warning("metrics endpoint unavailable (%s); continuing without it", exc)
            service.stop()
            no_endpoint = ingest_config.metrics.model_copy(update={"port": 0})
            ingest_config = ingest_config.replace(no_endpoint)
            service = IngestService(ingest_config)
            service.start()
        try:
            if not service.subscribed.wait(30.0):
                raise ServiceError(f"the ingest did not subscribe at {services.mqtt_url}")
            fleet = Fleet(
                town,
                services.mqtt_url,
                speed=0.0,
                days=days,
                protocol=services.mqtt_protocol,
                client_prefix="sobriety-demo",
            )
            fleet.connect()
            with progress_bar("simulating") as progress:
                truth = fleet.run(progress=progress)
            fleet.wait_published()
            fleet.close()
            report.truth_path = scratch / "truth.json"
            truth.write(report.truth_path)
            report.messages_sent, report.readings_sent = truth.messages, truth.readings
            report.expected_rejections = dict(truth.expected_rejections)
            _wait_ingested(service, truth.readings, sum(truth.expected_rejections.values()))
            report.readings_stored = int(service.metrics.value("readings_stored_total"))
            report.readings_duplicate = int(service.metrics.value("readings_duplicate_total"))
            report.rejected = service.metrics.rejected_by_reason()
            with connect(services.db_url) as conn:
                _summarise(conn, report, truth.end)
            report.seconds = time.monotonic() - started
            _print_summary(report, config, out, scratch)
            if serve:
                out.write("serving: the ingest keeps running; Ctrl-C to stop\n")
                out.flush()
                stop.wait()
        finally:
            service.stop()
        return report
    finally:
        services.close()
        if workdir is None and not serve:
            shutil.rmtree(scratch, ignore_errors=True)


def _wait_ingested(
    service: IngestService, readings: int, rejections: int, timeout_s: float = 300.0
) -> None:
    """Wait until the ingest has written as many readings (new or duplicate) and rejections as
    were sent, or nothing has moved for 10 s."""
    metrics = service.metrics
    deadline = time.monotonic() + timeout_s
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        done = metrics.value("readings_stored_total") + metrics.value("readings_duplicate_total")
        rejected = sum(metrics.rejected_by_reason().values())
        if done >= readings and rejected >= rejections and service.batcher.pending() == 0:
            return
        if done != last:
            last, still_since = done, time.monotonic()
        elif time.monotonic() - still_since > 10.0:
            log.warning("ingest idle with %d of %d readings written", int(done), readings)
            return
        time.sleep(0.1)  # polls the ingest's counters: the condition is a count, not an event


def _summarise(conn: psycopg.Connection, report: DemoReport, end: float) -> None:
    start = end - 86400.0
    silent = conn.execute(
        "SELECT site || '/' || device FROM api.devices WHERE site = ANY(%s) AND "
        "(last_reading_at IS NULL OR last_reading_at < to_timestamp(%s) - interval '2 hours') "
        "ORDER BY 1",
        (report.sites, end),
    ).fetchall()
    report.silent_devices = [r[0] for r in silent]
    # Energy and water of the last simulated day, from the meters' counters.
    for site, kwh in conn.execute(
        "SELECT site, sum(delta) / 1000.0 FROM (SELECT site, device, max(value) - min(value) "
        "AS delta FROM api.readings WHERE site = ANY(%s) AND kind = 'cabinet_meter' AND "
        "metric = 'energy' AND time BETWEEN to_timestamp(%s) AND to_timestamp(%s) "
        "GROUP BY site, device) d GROUP BY site ORDER BY site",
        (report.sites, start, end),
    ):
        report.lighting_kwh[site] = float(kwh)
    for site, dma, m3 in conn.execute(
        "SELECT r.site, d.dma, max(r.value) - min(r.value) FROM api.readings r "
        "JOIN api.devices d USING (site, device) WHERE r.site = ANY(%s) AND d.role = 'inlet' "
        "AND r.metric = 'volume' AND r.time BETWEEN to_timestamp(%s) AND to_timestamp(%s) "
        "GROUP BY r.site, d.dma ORDER BY 1, 2",
        (report.sites, start, end),
    ):
        report.water_inflow_m3[f"{site}/{dma}"] = float(m3)


def _print_summary(report: DemoReport, config: Config, out: TextIO, scratch: Path) -> None:
    w = out.write
    w("\n== sobriety demo: one simulated town through the whole chain ==\n")
    w(f"communes: {', '.join(report.sites)}; {report.devices} devices\n")
    w(
        f"messages sent: {report.messages_sent:,}; readings sent: {report.readings_sent:,}; "
        f"readings stored: {report.readings_stored:,} "
        f"(+{report.readings_duplicate:,} repeated, stored once)\n"
    )
    rejected = ", ".join(f"{k}: {v}" for k, v in sorted(report.rejected.items())) or "none"
    expected = ", ".join(f"{k}: {v}" for k, v in sorted(report.expected_rejections.items()))
    w(f"rejected messages by reason: {rejected} (injected faults: {expected or 'none'})\n")
    silent = report.silent_devices
    w(
        f"devices silent for the last 2 hours: {len(silent)}"
        + (f" ({', '.join(silent[:8])}{', ...' if len(silent) > 8 else ''})" if silent else "")
        + "\n"
    )
    for site, kwh in report.lighting_kwh.items():
        w(f"public lighting energy, {site}: {kwh:,.1f} kWh (cabinet meters)\n")
    for dma, m3 in report.water_inflow_m3.items():
        w(f"water into {dma}: {m3:,.1f} m3\n")
    w(f"done in {report.seconds:.0f} s\n\nwhere to look:\n")
    if report.db_origin not in {"configured", "local"}:
        w("  (the embedded broker and database stop when the demo exits: use --serve)\n")
    w(
        f"  database {redact(report.db_url)}: views api.readings, api.devices, "
        "api.rejected_messages\n"
    )
    w("  SOBRIETY_DB_URL=... sobriety export readings --since 2d --until 2100-01-01T00:00:00Z\n")
    if config.metrics.port:
        w(
            f"  metrics http://{config.metrics.host}:{config.metrics.port}/metrics "
            "(while --serve runs)\n"
        )
    if report.truth_path is not None:
        w(
            f"  ground truth {report.truth_path}"
            + (
                " (removed at exit; use --workdir to keep it)"
                if "sobriety-demo-" in str(scratch)
                else ""
            )
            + "\n"
        )
    out.flush()
