"""The ``sobriety`` command line: its arguments, and the dispatch to the commands
(``app/data_commands.py``, ``app/water_commands.py``, ``app/services.py``,
``app/simulation.py``). Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app import data_commands, services, simulation, water_commands
from app.config import load_config
from core import __version__
from core.config import Config
from core.errors import ConfigError, SobrietyError

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

    contract = sub.add_parser("contract", help="the MQTT contract for device integrators")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True, metavar="WHAT")
    contract_sub.add_parser(
        "schema", help="JSON Schemas of the up, config, cmd and state payloads, keyed by channel"
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


_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "db": data_commands.cmd_db,
    "inventory": data_commands.cmd_inventory,
    "import": data_commands.cmd_import,
    "export": data_commands.cmd_export,
    "rejected": data_commands.cmd_rejected,
    "contract": data_commands.cmd_contract,
    "ingest": services.cmd_ingest,
    "run": services.cmd_ingest,
    "anomaly": water_commands.cmd_anomaly,
    "alerts": water_commands.cmd_alerts,
    "simulate": simulation.cmd_simulate,
    "demo": simulation.cmd_demo,
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
