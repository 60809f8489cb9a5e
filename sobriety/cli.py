"""The ``sobriety`` command line. Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from sobriety import __version__
from sobriety.config import Config, load_config
from sobriety.errors import ConfigError, SobrietyError

log = logging.getLogger("sobriety")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with offset, or a duration before now (``30m``, ``24h``, ``7d``)."""
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS_S[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an ISO 8601 time with offset or a duration like 24h"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: add a UTC offset (Z or +01:00)")
    return when


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sobriety",
        description="Supervision of public lighting and drinking-water networks.",
    )
    parser.add_argument("--version", action="version", version=f"sobriety {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file ($SOBRIETY_CONFIG)")
    parser.add_argument("--db-url", help="PostgreSQL URL ($SOBRIETY_DB_URL)")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port ($SOBRIETY_MQTT_URL)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="create the database if needed and apply migrations")

    inv = sub.add_parser("inventory", help="devices, DMAs and lighting groups")
    inv_sub = inv.add_subparsers(dest="inventory_command", required=True, metavar="ACTION")
    inv_import = inv_sub.add_parser("import", help="import a devices or DMAs file (CSV/GeoJSON)")
    inv_import.add_argument("file", type=Path)

    for name, text in (("ingest", "run the MQTT ingest"), ("run", "run all services")):
        svc = sub.add_parser(name, help=text)
        svc.add_argument("--client-id", help="MQTT client id of the persistent session")
        svc.add_argument("--shared-group", help="MQTT 5 shared subscription group")
        svc.add_argument("--spool-dir", type=Path, help="directory of the durable spool")
        svc.add_argument("--metrics-port", type=int, help="Prometheus port (0: off)")
        svc.add_argument(
            "--validate-config", action="store_true", help="check the configuration and exit"
        )
        svc.add_argument("--workers", type=int, help="ingest processes on one shared subscription")
        svc.add_argument("--worker", type=int, help=argparse.SUPPRESS)
        svc.add_argument("--retire-session", help=argparse.SUPPRESS)

    imp = sub.add_parser("import", help="backfill data")
    imp_sub = imp.add_subparsers(dest="import_command", required=True, metavar="WHAT")
    imp_readings = imp_sub.add_parser("readings", help="CSV time,site,device,metric,value,unit")
    imp_readings.add_argument("file", type=Path)

    exp = sub.add_parser("export", help="export data")
    exp_sub = exp.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    exp_readings = exp_sub.add_parser("readings", help="readings as CSV on standard output")
    exp_readings.add_argument("--since", type=parse_time, required=True)
    exp_readings.add_argument("--until", type=parse_time, required=True)
    exp_readings.add_argument("--site")
    exp_readings.add_argument("--format", choices=["csv"], default="csv")

    sim = sub.add_parser("simulate", help="run a simulated town against the broker")
    sim.add_argument("--scenario", type=Path, help="scenario TOML (default: the demo town)")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument(
        "--speed",
        type=float,
        default=1440.0,
        help="simulated seconds per second (default 1440: a day per minute; 0: full speed)",
    )
    sim.add_argument("--days", type=float, help="simulated days (default: the scenario's)")
    sim.add_argument("--out", type=Path, help="inventory and truth.json (default var/sim/...)")
    sim.add_argument(
        "--import-inventory",
        action="store_true",
        help="import the town's inventory into the configured database first",
    )

    demo = sub.add_parser("demo", help="the whole chain on a simulated town, then a summary")
    demo.add_argument("--days", type=float, default=1.0, help="simulated days (default 1)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--serve", action="store_true", help="keep the ingest running afterwards")
    demo.add_argument(
        "--embedded",
        action="store_true",
        help="start embedded broker and database even when local ones are reachable",
    )
    demo.add_argument("--workdir", type=Path, help="keep inventory, truth and services here")

    anomaly = sub.add_parser("anomaly", help="leak detection: periodic, or one scan, or evaluation")
    anomaly.add_argument("--metrics-port", type=int, help="Prometheus port (0: off)")
    an_sub = anomaly.add_subparsers(dest="anomaly_command", metavar="ACTION")
    scan = an_sub.add_parser("scan", help="one-shot detection over stored data")
    scan.add_argument("--since", type=parse_time, required=True)
    scan.add_argument("--until", type=parse_time, help="default: now")
    scan.add_argument("--site")
    scan.add_argument("--format", choices=["json", "text"], default="text")
    bal = an_sub.add_parser("balance", help="water balance, yield and ILI of each DMA")
    bal.add_argument("--since", type=parse_time, required=True)
    bal.add_argument("--until", type=parse_time, help="default: now")
    bal.add_argument("--site")
    bal.add_argument("--format", choices=["json", "text"], default="text")
    ev = an_sub.add_parser("evaluate", help="score the detection on simulated leaks")
    ev.add_argument("--scenario", type=Path, help="history scenario TOML (default: evaluation)")
    ev.add_argument("--seed", type=int, action="append", help="one or more seeds (default 1)")
    ev.add_argument("--days", type=float, help="simulated days (default: the scenario's)")
    ev.add_argument("--database", default="sobriety_evaluate", help="scratch database name")
    ev.add_argument("--format", choices=["json", "text"], default="text")
    ev.add_argument("--out", type=Path, help="write the JSON report here too")
    ev.add_argument("--keep", action="store_true", help="keep the scratch database (one seed)")

    alerts = sub.add_parser("alerts", help="list, acknowledge and resolve alerts")
    al_sub = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    al_list = al_sub.add_parser("list", help="alerts, newest first")
    al_list.add_argument("--site")
    al_list.add_argument("--state", choices=["open", "acknowledged", "resolved", "active"])
    al_list.add_argument("--kind")
    al_list.add_argument("--since", type=parse_time)
    al_list.add_argument("--format", choices=["json", "text"], default="text")
    for action, text in (("ack", "acknowledge an alert"), ("resolve", "resolve an alert")):
        cmd = al_sub.add_parser(action, help=text)
        cmd.add_argument("id", type=int)
        cmd.add_argument("--by", required=True, help="who (a name or a team)")
        if action == "resolve":
            cmd.add_argument("--note", help="what was done")

    rej = sub.add_parser("rejected", help="list (or replay) rejected messages")
    rej.add_argument("--since", type=parse_time)
    rej.add_argument("--reason")
    rej.add_argument("--site")
    rej.add_argument("--pending", action="store_true", help="only those not replayed")
    rej.add_argument("--format", choices=["json", "text"], default="text")
    rej.add_argument(
        "--replay", action="store_true", help="re-validate pending ones and store what passes"
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": args.db_url},
        "mqtt": {
            "url": args.mqtt_url,
            "client_id": getattr(args, "client_id", None),
            "shared_group": getattr(args, "shared_group", None),
        },
        "ingest": {
            "spool_dir": getattr(args, "spool_dir", None),
            "workers": getattr(args, "workers", None),
        },
        "metrics": {"port": getattr(args, "metrics_port", None)},
    }
    return load_config(args.config, overrides=overrides)


def _cmd_db(args: argparse.Namespace, config: Config) -> int:
    from sobriety.db import connect, ensure_database, is_hypertable, upgrade

    conninfo = config.db_conninfo()
    if ensure_database(conninfo, config.database.connect_timeout_s):
        print("database created")
    with connect(conninfo, timeout_s=config.database.connect_timeout_s) as conn:
        applied = upgrade(conn, config.storage)
        hyper = is_hypertable(conn)
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    print("readings storage: " + ("TimescaleDB hypertable" if hyper else "plain PostgreSQL"))
    return 0


def _cmd_inventory(args: argparse.Namespace, config: Config) -> int:
    from sobriety.db import connect
    from sobriety.inventory import import_inventory

    with connect(config.db_conninfo()) as conn:
        result = import_inventory(conn, args.file)
    print(
        f"{args.file}: {result.table}: {result.inserted} new, {result.updated} updated, "
        f"{result.unchanged} unchanged"
        + (f"; new sites: {', '.join(result.sites_created)}" if result.sites_created else "")
    )
    return 0


def _install_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    from ingest.service import IngestService
    from ingest.workers import (
        main_argv,
        retire_session,
        retire_stale_sessions,
        run_workers,
        worker_config,
    )

    if args.validate_config:
        print(config.model_dump_json(indent=2))
        return 0
    if args.retire_session:
        return retire_session(worker_config(config, None, args.retire_session))
    registry = None
    if args.command == "run" and args.worker is None:
        registry = _start_anomaly(config)
    if args.worker is None:
        retire_stale_sessions(config, config.ingest.workers, main_argv())
        if config.ingest.workers > 1:
            return run_workers(config, config.ingest.workers, main_argv())
    if args.worker is not None:
        config = worker_config(config, args.worker)
    service = IngestService(config, registry=registry)
    _install_signals(service.stopping.set)
    service.run()
    return 0


def _start_anomaly(config: Config) -> Any:
    """``sobriety run``: the anomaly service in a thread, its metrics in the ingest's registry."""
    from prometheus_client import CollectorRegistry

    from anomaly.service import AnomalyService

    registry = CollectorRegistry()
    service = AnomalyService(config.db_conninfo(), config.anomaly, registry)
    threading.Thread(target=service.run, name="anomaly", daemon=True).start()
    return registry


def _pipeline(config: Config, history: bool) -> Any:
    from ingest.importer import history_limits
    from ingest.pipeline import Limits, Pipeline
    from sobriety.db import connect

    with connect(config.db_conninfo()) as conn:
        ids = {(s, d): i for s, d, i in conn.execute("SELECT site, device, id FROM devices")}
    icfg = config.ingest
    limits = (
        history_limits(icfg.future_window_s)
        if history
        else Limits(
            icfg.max_payload_bytes, icfg.max_records, icfg.past_window_s, icfg.future_window_s
        )
    )
    return Pipeline(lambda site, device: ids.get((site, device)), config.mqtt.root, limits)


def _cmd_import(args: argparse.Namespace, config: Config) -> int:
    from ingest.importer import import_readings
    from ingest.store import Store

    store = Store(config.db_conninfo())
    try:
        report = import_readings(args.file, store, _pipeline(config, history=True), time.time())
    finally:
        store.close()
    rejected = sum(report.rejected.values())
    print(
        f"{args.file}: {report.lines} lines, {report.stored} readings stored, "
        f"{report.duplicates} already present, {rejected} rejected"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in sorted(report.rejected.items()))})"
            if rejected
            else ""
        )
    )
    if rejected:
        print("see: sobriety rejected --reason REASON --format json", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ingest.export import export_readings
    from sobriety.db import connect

    with connect(config.db_conninfo()) as conn:
        export_readings(conn, sys.stdout.buffer, args.since, args.until, args.site)
    sys.stdout.buffer.flush()
    return 0


def _cmd_rejected(args: argparse.Namespace, config: Config) -> int:
    from ingest.rejected import iter_rejected, replay
    from ingest.store import Store
    from sobriety.db import connect

    with connect(config.db_conninfo()) as conn:
        if args.replay:
            store = Store(config.db_conninfo())
            try:
                report = replay(
                    conn,
                    store,
                    _pipeline(config, history=False),
                    args.since,
                    args.reason,
                    args.site,
                )
            finally:
                store.close()
            still = ", ".join(f"{k}: {v}" for k, v in sorted(report.still_rejected.items()))
            print(
                f"replayed {report.resolved} messages, {report.stored} readings stored; "
                f"still rejected: {still or 'none'}"
            )
            return 0
        items = iter_rejected(conn, args.since, args.reason, args.site, args.pending)
        out = sys.stdout
        if args.format == "json":
            _write_json(items)
        else:
            for item in items:
                out.write(
                    f"{item['received_at']}  {item['reason']:<24} {item['topic']}  "
                    f"{item['detail']}\n"
                )
    return 0


def _write_json(items: Any) -> None:
    out = sys.stdout
    out.write("[")
    for n, item in enumerate(items):
        out.write(("," if n else "") + "\n  " + orjson.dumps(item).decode())
    out.write("\n]\n")


def _cmd_anomaly(args: argparse.Namespace, config: Config) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from anomaly.service import AnomalyService, Scanner
    from sobriety.db import connect

    action = args.anomaly_command
    if action == "evaluate":
        from anomaly.evaluate import run_evaluation

        return run_evaluation(args, config)
    if action == "balance":
        from anomaly.report import balances

        until = args.until or datetime.now(UTC)
        with connect(config.db_conninfo()) as conn:
            rows = balances(conn, args.since, until, args.site)
        if args.format == "json":
            _write_json(rows)
        else:
            for r in rows:
                print(
                    f"{r['site']}/{r['dma']}: in {r['inflow_m3']:.1f} m3, out "
                    f"{r['outflow_m3']:.1f}, metered {r['consumption_m3']:.1f}, losses "
                    f"{r['losses_m3']:.1f} m3; yield {r['yield_percent']}% (decree threshold "
                    f"{r['threshold_percent']}%: {r['compliant']}); ILI {r['ili']}"
                )
        return 0
    if action == "scan":
        until = args.until or datetime.now(UTC)
        if until <= args.since:
            raise ConfigError("--until must be after --since")
        with connect(config.db_conninfo()) as conn:
            report = Scanner(config.anomaly).scan(
                conn, args.since.timestamp(), until.timestamp(), args.site
            )
        summary = {
            "dmas": report.dmas,
            "nights": report.nights,
            "night_gaps": report.gaps,
            "opened": report.opened,
            "updated": report.updated,
            "closed": report.closed,
            "meters_going_backwards": report.meters_backwards,
        }
        if args.format == "json":
            print(orjson.dumps(summary).decode())
        else:
            print(
                f"scanned {report.dmas} DMAs, {report.nights} nights ({report.gaps} gaps); "
                f"alerts opened {report.opened}, closed {report.closed}"
            )
            if report.meters_backwards:
                print(f"meters whose index went backwards: {', '.join(report.meters_backwards)}")
        return 0
    registry = CollectorRegistry()
    service = AnomalyService(config.db_conninfo(), config.anomaly, registry)
    port = args.metrics_port if args.metrics_port is not None else config.metrics.port
    if port:
        start_http_server(port, config.metrics.host, registry=registry)
    _install_signals(service.stop)
    service.run()
    return 0


def _cmd_alerts(args: argparse.Namespace, config: Config) -> int:
    from anomaly.alerts import acknowledge, list_alerts, resolve
    from sobriety.db import connect

    with connect(config.db_conninfo()) as conn:
        if args.alerts_command == "ack":
            acknowledge(conn, args.id, args.by)
            print(f"alert {args.id} acknowledged by {args.by}")
            return 0
        if args.alerts_command == "resolve":
            resolve(conn, args.id, args.by, args.note)
            print(f"alert {args.id} resolved by {args.by}")
            return 0
        items = list_alerts(conn, args.site, args.state, args.kind, args.since)
        if args.format == "json":
            _write_json(items)
            return 0
        for a in items:
            flow = a["estimated_flow_m3h"]
            print(
                f"{a['id']:>6} {a['state']:<12} {a['kind']:<16} {a['site']}/{a['subject']}  "
                f"opened {a['opened_at']:%Y-%m-%d %H:%M %Z}"
                + (f"  ~{flow:.3f} m3/h" if flow is not None else "")
                + (f"  closed {a['closed_at']:%Y-%m-%d %H:%M}" if a["closed_at"] else "")
            )
    return 0


def _cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    from simulators import Fleet, build_town, load_scenario, packaged_scenario, write_inventory
    from sobriety.db import connect
    from sobriety.inventory import import_inventory

    scenario = load_scenario(args.scenario or packaged_scenario("demo"))
    if args.speed < 0:
        raise ConfigError(f"--speed {args.speed}: expected 0 (full speed) or more")
    town = build_town(scenario, args.seed)
    out = args.out or Path("var") / "sim" / f"{scenario.name}-{args.seed}"
    dmas_csv, devices_csv = write_inventory(town, out / "inventory")
    print(f"inventory: {dmas_csv} and {devices_csv} ({len(town.devices)} devices)")
    if args.import_inventory:
        with connect(config.db_conninfo()) as conn:
            import_inventory(conn, dmas_csv)
            import_inventory(conn, devices_csv)
    fleet = Fleet(
        town, config.mqtt.url, speed=args.speed, days=args.days, protocol=config.mqtt.protocol
    )
    fleet.connect()
    stop = threading.Event()
    _install_signals(stop.set)
    try:
        truth = fleet.run(progress=True, stop=stop)
        fleet.wait_published()
    finally:
        fleet.close()
    truth.write(out / "truth.json")
    rejections = ", ".join(f"{k}: {v}" for k, v in sorted(truth.expected_rejections.items()))
    print(
        f"sent {truth.messages:,} messages, {truth.readings:,} valid readings; "
        f"faults that the ingest must reject: {rejections or 'none'}; truth: {out / 'truth.json'}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace, config: Config) -> int:
    import os

    from sobriety.demo import run_demo

    default = load_config(None, env={})
    configured_db = (
        args.db_url
        or os.environ.get("SOBRIETY_DB_URL")
        or (config.database.url if config.database.url != default.database.url else None)
    )
    configured_mqtt = (
        args.mqtt_url
        or os.environ.get("SOBRIETY_MQTT_URL")
        or (config.mqtt.url if config.mqtt.url != default.mqtt.url else None)
    )
    if configured_db:
        configured_db = config.db_conninfo()
    stop = threading.Event()
    _install_signals(stop.set)
    run_demo(
        config,
        days=args.days,
        seed=args.seed,
        embedded=args.embedded,
        configured_db=configured_db,
        configured_mqtt=configured_mqtt,
        workdir=args.workdir,
        serve=args.serve,
        stop=stop,
        out=sys.stdout,
    )
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "db": _cmd_db,
    "inventory": _cmd_inventory,
    "ingest": _cmd_ingest,
    "run": _cmd_ingest,
    "import": _cmd_import,
    "export": _cmd_export,
    "rejected": _cmd_rejected,
    "simulate": _cmd_simulate,
    "demo": _cmd_demo,
    "anomaly": _cmd_anomaly,
    "alerts": _cmd_alerts,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sobriety`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"sobriety: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args, config)
    except ConfigError as exc:
        print(f"sobriety: configuration error: {exc}", file=sys.stderr)
        return 2
    except SobrietyError as exc:
        print(f"sobriety: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
