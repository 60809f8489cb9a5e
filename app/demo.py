"""``sobriety demo``: the whole chain on a simulated town, then a summary checked against the
simulation's ground truth, and where to look.

Each run is its own. The broker: the one configured (``SOBRIETY_MQTT_URL``), else a Mosquitto of
the demo's own whenever the machine has the program, else the local one on 127.0.0.1, else amqtt
(:mod:`app.embedded`); against any broker but its own, whose limits it knows, the simulator runs
at most :data:`AHEAD_UNKNOWN_BROKER` messages ahead of what the ingest has written, so a broker
with Mosquitto's default queue (1000 messages) drops nothing. The database: the one configured
(``SOBRIETY_DB_URL``), whose demo communes' data are cleared first, else a fresh database for the
run on the local or embedded server (the databases of earlier runs that nothing uses are removed).
The ingest's MQTT session is the run's own and ended at exit. Days older than the ingest's time
window go through the ingest's backfill path (:mod:`ingest.backfill`: the same validation, as if
received then), the rest over MQTT.

Before the live run, the history of the town's water network (``[sites.water] history_days``
of the scenario, four weeks in the demo's) is written straight into the database
(:mod:`simulators.town_history`, binary ``COPY``), ending where the live devices start; a leak
of the history still flowing is carried on by the live run. The anomaly scan covers the history
and the live run.

The summary (:mod:`app.demo_report`) compares what was stored with what was sent and rejected
with what was injected, and the leaks of the truth with the leak alerts; a difference is printed
as such and the command fails.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import psycopg
from psycopg import sql

from anomaly.config import AnomalyConfig
from anomaly.service import Scanner
from app.cli_parser import DEMO_MAX_DAYS
from app.demo_energy import find_energy
from app.demo_faults import find_faults
from app.demo_policies import PolicyRun
from app.demo_report import DemoReport, gather, render, stored_readings
from app.embedded import ServiceError, Services, resolve_services
from app.own_meter import start_own_meter
from app.progress import progress_bar
from core import rollup
from core.config import Config
from core.db import connect, ensure_database, redact, upgrade, with_database
from core.errors import SobrietyError
from core.inventory import import_inventory
from energy.config import EnergyConfig
from energy.service import recompute
from ingest.backfill import Backfill
from ingest.config import IngestConfig
from ingest.pipeline import Limits, Pipeline
from ingest.service import IngestService
from ingest.store import Store
from simulators import (
    Fleet,
    build_town,
    load_scenario,
    packaged_scenario,
    write_inventory,
    write_sites,
)
from simulators.fleet import resolve_start
from simulators.town_history import HistoryWritten, TownHistory

log = logging.getLogger("sobriety.demo")

AHEAD_UNKNOWN_BROKER = 500
"""Messages the simulator may run ahead of the ingest on a broker we did not start (Mosquitto's
default queue holds 1000 per session and drops the rest)."""
AHEAD_OWN_BROKER = 100_000
"""The same on the demo's own Mosquitto, which queues two million."""
WRITE_TIMEOUT_S = 120.0
"""An ingest that writes nothing for this long while messages are due has failed."""
SETTLE_STALL_S = 10.0
"""Readings that stopped arriving for this long are lost: the summary says so."""
DEMO_DATABASE = "sobriety_demo"


class DemoError(SobrietyError):
    """The demo could not run to the end; the message says why."""


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
    """Run the demo and print its summary to ``out``; keep serving until ``stop`` if ``serve``.
    The report's ``problems`` are empty when everything matched the ground truth."""
    if not 0 < days <= DEMO_MAX_DAYS:
        raise DemoError(f"--days {days:g}: expected more than 0 and at most {DEMO_MAX_DAYS:g}")
    started = time.monotonic()
    run_id = f"{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"
    scratch = Path(tempfile.mkdtemp(prefix="sobriety-demo-")) if workdir is None else workdir
    scratch.mkdir(parents=True, exist_ok=True)
    services = resolve_services(
        db_url=configured_db,
        mqtt_url=configured_mqtt,
        workdir=scratch / "services",
        embedded=embedded,
        database=f"{DEMO_DATABASE}_{run_id}",
        prefer_mosquitto=prefer_binaries,
        prefer_local_postgres=prefer_binaries,
        private_broker_first=True,
    )
    try:
        scenario = load_scenario(packaged_scenario("demo"))
        town = build_town(scenario, seed)
        sites = [s.spec.site for s in town.sites]
        database_note = _prepare_database(services, sites, config)
        out.write(
            f"broker:   {services.mqtt_url} ({services.mqtt_origin}, "
            f"MQTT {services.mqtt_protocol})\n"
            f"database: {redact(services.db_url)} ({services.db_origin}: {database_note})\n"
        )
        out.flush()
        live_start = resolve_start(scenario, days)
        sites_csv = write_sites(town, scratch / "inventory")
        dmas_csv, devices_csv = write_inventory(
            town, scratch / "inventory", start=live_start, days=days
        )  # a meter replaced during the run is in the inventory with its instant
        with connect(services.db_url) as conn:
            import_inventory(conn, sites_csv)
            import_inventory(conn, dmas_csv)
            import_inventory(conn, devices_csv)
        history = TownHistory(town, live_start)
        ingest_config = _ingest_config(config, services, scenario.root, run_id, scratch, serve)
        service = _start_ingest(ingest_config)
        # The demo's own CPU (its ingest, simulator and stages in this process) and energy.
        stop_meter = start_own_meter(services.db_url, config.section(EnergyConfig), "demo")
        policies = PolicyRun(ingest_config, services.db_url)
        try:
            if not service.subscribed.wait(30.0):
                raise ServiceError(f"the ingest did not subscribe at {services.mqtt_url}")
            published = policies.publish()
            out.write(
                f"policies: {policies.source}: {published.published} configs published "
                "(retained) before the devices connect\n"
            )
            out.flush()
            fleet, backfill, written = _simulate(
                history, days, services, service, ingest_config, run_id, out
            )
            truth = fleet.truth
            history.describe_leaks(truth, fleet.town)
            _settle(service, services.db_url, sites, truth.start, truth.readings)
            truth_path = scratch / "truth.json"
            truth.write(truth_path)
            anomaly = config.section(AnomalyConfig)
            stop_meter()  # its last sample, before the energy stage counts it
            _account_energy(services.db_url, config, truth.start, truth.end)
            with connect(services.db_url) as conn:
                Scanner(config.per_site(AnomalyConfig)).scan(conn, history.start, truth.end)
                conn.commit()
                report = gather(conn, truth, town, anomaly, written)
                report.energy = find_energy(conn, truth, town)
                report.problems.extend(report.energy.problems)
                report.luminaire_faults = find_faults(conn, truth, config.section(EnergyConfig))
                report.problems.extend(report.luminaire_faults.problems)
                report.policies = policies.finish(conn, fleet, sites, truth.start, truth.end)
                report.problems.extend(report.policies.problems)
            report.run_id = run_id
            report.services = services
            report.database_note = database_note
            report.messages_live = fleet.sent_live
            report.messages_backfilled = fleet.sent_backfilled
            report.backfill = backfill
            report.truth_path = truth_path
            report.truth_removed_at_exit = workdir is None and not serve
            report.metrics_url = (
                f"http://{ingest_config.metrics.host}:{ingest_config.metrics.port}/metrics"
                if ingest_config.metrics.port
                else None
            )
            report.seconds = time.monotonic() - started
            out.write(render(report, serve))
            out.flush()
            if serve:
                out.write("serving: the ingest keeps running; Ctrl-C to stop\n")
                out.flush()
                stop.wait()
        finally:
            stop_meter()
            policies.close()
            service.stop(end_session=True)  # this run's session ends with it
        return report
    finally:
        services.close()
        if workdir is None and not serve:
            shutil.rmtree(scratch, ignore_errors=True)


def _account_energy(db_url: str, config: Config, since: float, until: float) -> None:
    """The energy stage over the run, as ``sobriety energy recompute`` does it: the hourly
    rollup refreshed, then every local day and night of the run's sites computed."""
    with connect(db_url, autocommit=True) as conn:
        rollup.refresh(conn)
    with connect(db_url) as conn:
        recompute(conn, config.per_site(EnergyConfig), since, until)


def _prepare_database(services: Services, sites: list[str], config: Config) -> str:
    """Make the database the run's own; what was done, for the summary."""
    if services.db_origin == "configured":
        ensure_database(services.db_url)
        with connect(services.db_url) as conn:
            upgrade(conn, config.storage)
            conn.commit()
            cleared = clear_sites(conn, sites)
            conn.commit()
        return (
            f"the configured database; the earlier data of {', '.join(sites)} cleared first "
            f"({cleared:,} rows)"
        )
    removed = _remove_earlier_runs(services.db_url)
    ensure_database(services.db_url)
    with connect(services.db_url) as conn:
        upgrade(conn, config.storage)
        conn.commit()
    note = "a fresh database for this run"
    if removed:
        note += f"; removed those of earlier runs nothing used ({', '.join(removed)})"
    return note


def clear_sites(conn: psycopg.Connection, sites: list[str]) -> int:
    """Delete what earlier runs stored for ``sites`` (readings, rejections, alerts, nights,
    device status, message counts, published configs, device states, overrides, the energy
    figures; the inventory stays, the import updates it). Rows deleted."""
    devices = "SELECT id FROM devices WHERE site = ANY(%(sites)s)"
    statements = [
        f"DELETE FROM readings WHERE device_id IN ({devices})",
        f"DELETE FROM device_status WHERE device_id IN ({devices})",
        f"DELETE FROM device_reporting_daily WHERE device_id IN ({devices})",
        f"DELETE FROM device_configs WHERE device_id IN ({devices})",
        "DELETE FROM device_states WHERE site = ANY(%(sites)s)",
        "DELETE FROM lighting_overrides WHERE site = ANY(%(sites)s)",
        "DELETE FROM rejected_messages WHERE site = ANY(%(sites)s)",
        "DELETE FROM alerts WHERE site = ANY(%(sites)s)",
        "DELETE FROM dma_nights WHERE site = ANY(%(sites)s)",
        f"DELETE FROM energy_daily WHERE device_id IN ({devices})",
        f"DELETE FROM luminaire_nights WHERE device_id IN ({devices})",
        f"DELETE FROM cabinet_nights WHERE device_id IN ({devices})",
        f"DELETE FROM pumping_volume_daily WHERE device_id IN ({devices})",
        "DELETE FROM energy_day_factors WHERE site = ANY(%(sites)s)",
    ]
    return sum(conn.execute(q, {"sites": sites}).rowcount for q in statements)


def _remove_earlier_runs(db_url: str) -> list[str]:
    """Drop the demo databases of earlier runs on this server that no session uses."""
    removed: list[str] = []
    try:
        admin = connect(with_database(db_url, "postgres"), autocommit=True)
    except SobrietyError as exc:
        log.info("could not look for earlier demo databases (%s)", exc)
        return removed
    with admin:
        names = [
            str(r[0])
            for r in admin.execute(
                """SELECT datname FROM pg_database d
                   WHERE (datname = %s OR datname LIKE %s)
                   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)
                   ORDER BY 1""",
                (DEMO_DATABASE, DEMO_DATABASE + r"\_%"),
            )
        ]
        for name in names:
            try:
                admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:  # in use after all: keep it
                log.info("kept %s (%s)", name, exc)
            else:
                removed.append(name)
    return removed


def _ingest_config(
    config: Config, services: Services, root: str, run_id: str, scratch: Path, serve: bool
) -> Config:
    return config.replace(
        config.database.model_copy(update={"url": services.db_url}),
        config.mqtt.model_copy(
            update={
                "url": services.mqtt_url,
                "protocol": services.mqtt_protocol,
                "root": root,
                "client_id": f"sobriety-demo-{run_id}",
                "shared_group": None,
                "session_expiry_s": 3600 if serve else 300,
            }
        ),
        config.section(IngestConfig).model_copy(
            update={"spool_dir": scratch / "spool", "workers": 1}
        ),
    )


def _start_ingest(ingest_config: Config) -> IngestService:
    service = IngestService(ingest_config)
    try:
        service.start()
    except OSError as exc:  # the metrics port is taken: run without the endpoint
        log.warning("metrics endpoint unavailable (%s); continuing without it", exc)
        service.stop()
        no_endpoint = ingest_config.metrics.model_copy(update={"port": 0})
        service = IngestService(ingest_config.replace(no_endpoint))
        service.start()
    return service


def _simulate(
    history: TownHistory,
    days: float,
    services: Services,
    service: IngestService,
    ingest_config: Config,
    run_id: str,
    out: TextIO,
) -> tuple[Fleet, Backfill | None, HistoryWritten | None]:
    """Write the history of the water network, then play the days from its end: those older
    than the ingest's window through the backfill, the rest over MQTT with back-pressure;
    returns once everything sent is durable. The history is written once the fleet is built
    (its models hold the state the history ends at) and before it connects."""
    icfg = ingest_config.section(IngestConfig)
    town, start = history.live_town(), history.t0  # the live town carries the history's leaks
    live_days = max(icfg.past_window_s / 86400.0 - 1.0, 0.5)  # a day of margin in the window
    backfill_until = start + (days - live_days) * 86400.0
    backfill = None
    store = None
    if days > live_days:
        with connect(services.db_url) as conn:
            ids = {(s, d): i for s, d, i in conn.execute("SELECT site, device, id FROM devices")}
        limits = Limits(
            icfg.max_payload_bytes, icfg.max_records, icfg.past_window_s, icfg.future_window_s
        )
        store = Store(services.db_url)
        pipeline = Pipeline(lambda site, dev: ids.get((site, dev)), town.scenario.root, limits)
        backfill = Backfill(store, pipeline, icfg.batch_rows)
    ahead = (
        AHEAD_OWN_BROKER if services.mqtt_origin == "private mosquitto" else AHEAD_UNKNOWN_BROKER
    )

    def pace(sent: int) -> None:
        if sent - service.written > ahead and not service.wait_written(
            sent - ahead // 2, WRITE_TIMEOUT_S
        ):
            raise DemoError(
                f"the ingest wrote nothing for {WRITE_TIMEOUT_S:.0f} s "
                f"({service.written:,} of {sent:,} messages written)"
            )

    fleet = Fleet(
        town,
        services.mqtt_url,
        speed=0.0,
        days=days,
        start=start,
        protocol=services.mqtt_protocol,
        client_prefix=f"sobriety-demo-{run_id}",
        backfill=backfill.add if backfill is not None else None,
        backfill_until=backfill_until,
        pace=pace,
    )
    written = None
    try:
        if history.days:
            with connect(services.db_url) as conn:
                written = history.write(conn, fleet.models)
            out.write(
                f"history:  {history.days} days of the water network before the live run, "
                f"{written.readings:,} readings by binary COPY in {written.seconds:.1f} s\n"
            )
            out.flush()
        fleet.connect()
        with progress_bar("simulating") as progress:
            fleet.run(progress=progress)
        fleet.wait_published()
    finally:
        fleet.close()
    try:
        if backfill is not None:
            backfill.flush()
    finally:
        if store is not None:
            store.close()
    _wait_written(service, fleet.sent_live)
    return fleet, backfill, written


def _wait_written(service: IngestService, sent: int) -> None:
    """Until the ingest made durable every message published (they all reached the broker);
    an ingest that stops making progress for :data:`WRITE_TIMEOUT_S` is reported, and the
    summary then shows what is missing."""
    while service.written < sent:
        before = service.written
        if not service.wait_written(sent, WRITE_TIMEOUT_S) and service.written == before:
            log.warning("ingest idle with %d of %d messages written", service.written, sent)
            return


def _settle(
    service: IngestService, db_url: str, sites: list[str], since: float, readings: int
) -> None:
    """Before counting: what went to the spool (the database busy for a moment) is replayed,
    no batch is open, and — a message delivered twice after a reconnection counts twice in
    ``written`` — the readings themselves (of the live run, from ``since``) are in the
    database, or stopped arriving for :data:`SETTLE_STALL_S` (a loss, which the summary then
    shows)."""
    last, still_since = -1, time.monotonic()
    with connect(db_url, autocommit=True) as conn:
        while True:
            busy = service.spool.size_bytes > 0 or service.batcher.pending() > 0
            stored = stored_readings(conn, sites, since)[1]
            if not busy and stored >= readings:
                return
            if stored != last or busy:
                last, still_since = stored, time.monotonic()
            elif time.monotonic() - still_since > SETTLE_STALL_S:
                log.warning("%d of %d readings in the database", stored, readings)
                return
            time.sleep(0.1)  # polls a row count and the spool: there is no event to wait on
