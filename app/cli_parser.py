"""The arguments of every ``sobriety`` command, with their help: units, formats and the accepted
values of every option, and what each command runs. A wrong value is a usage error (exit 2)
that lists what is accepted."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from anomaly.alerts import ALERT_KINDS as WATER_ALERT_KINDS
from app.db_roles import add_db_roles_parser
from app.energy_commands import add_energy_parser
from app.export_commands import add_export_parsers
from app.policies_commands import add_policies_parser
from app.privacy_commands import add_privacy_parser
from app.publish_commands import add_publish_parser
from app.site_commands import add_site_parser
from core import __version__
from core.errors import RejectReason
from energy.fault_store import FAULT_KINDS

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_FORMAT = "an ISO 8601 time with offset (2026-11-01T00:00:00+01:00), now, or a duration before now (30m, 24h, 7d)"  # noqa: E501
ALERT_STATES = ("open", "acknowledged", "resolved", "active")
ALERT_KINDS = WATER_ALERT_KINDS + FAULT_KINDS  # the anomaly stage's and the luminaire faults
DEMO_MAX_DAYS = 31.0
"""The longest demo: a month of the demo town (about 300,000 messages)."""
REASONS = tuple(r.value for r in RejectReason)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with offset, ``now``, or a duration before now (``30m``, ``24h``,
    ``7d``)."""
    text = text.strip()
    if text == "now":
        return datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS_S[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {TIME_FORMAT}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: add a UTC offset (Z or +01:00)")
    return when


def _number(low: float, high: float, low_open: bool = True) -> type[float]:
    """A float type for argparse within (low, high] (or [low, high])."""

    class Bounded(float):
        def __new__(cls, text: str) -> Bounded:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
            above = value > low if low_open else value >= low
            if not (above and value <= high):
                side = "more than" if low_open else "at least"
                raise argparse.ArgumentTypeError(
                    f"{text!r}: expected {side} {low:g} and at most {high:g}"
                )
            return super().__new__(cls, value)

    return Bounded


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port from 0 (off) to 65535")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1 or more")
    return value


def _period(cmd: argparse.ArgumentParser, required_since: bool = True) -> None:
    cmd.add_argument(
        "--since", type=parse_time, required=required_since, help=f"start: {TIME_FORMAT}"
    )
    cmd.add_argument("--until", type=parse_time, help="end (default: now); same formats")


def _site(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--site", help="only this site (commune) id; an unknown one is an error")


def _format(cmd: argparse.ArgumentParser, choices: tuple[str, ...] = ("text", "json")) -> None:
    cmd.add_argument(
        "--format", choices=choices, default=choices[0], help=f"output ({', '.join(choices)})"
    )


def _service_options(svc: argparse.ArgumentParser) -> None:
    svc.add_argument("--client-id", help="MQTT client id of the persistent session")
    svc.add_argument("--shared-group", help="MQTT 5 shared subscription group ($share/GROUP/...)")
    svc.add_argument("--spool-dir", type=Path, help="directory of the durable spool")
    svc.add_argument("--metrics-port", type=_port, help="Prometheus port (0: off; default 9108)")
    svc.add_argument(
        "--validate-config", action="store_true", help="check the configuration, print it, exit"
    )
    svc.add_argument("--workers", type=_count, help="ingest processes on one shared subscription")
    svc.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    svc.add_argument("--retire-session", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``sobriety`` command."""
    parser = argparse.ArgumentParser(
        prog="sobriety",
        description="Supervision of public lighting and drinking-water networks. Exit codes: "
        "0 done, 1 failed, 2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"sobriety {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file ($SOBRIETY_CONFIG)")
    parser.add_argument("--db-url", help="PostgreSQL URL postgresql://... ($SOBRIETY_DB_URL)")
    parser.add_argument("--mqtt-url", help="broker URL mqtt://host:port ($SOBRIETY_MQTT_URL)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the log on standard error shows (default INFO)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database administration", description="Database admin.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser(
        "upgrade",
        help="create the database if needed and apply the migrations (idempotent)",
        description="Create the database if it is missing, apply the pending migrations in one "
        "transaction (safe twice and from two processes at once), TimescaleDB when available.",
    )
    upgrade.add_argument(
        "--wait",
        type=_number(0.0, 86400.0, low_open=False),
        default=0.0,
        metavar="SECONDS",
        help="retry connecting for up to this long while the server is not reachable yet "
        "(a database container still starting; default 0: fail at once)",
    )
    rollup = db_sub.add_parser(
        "rollup",
        help="bring the hourly rollup (readings_hourly) up to date with the readings",
        description="Recompute the hourly aggregates (count, sum, min, max, first, last per "
        "device, metric and UTC hour) of every (device, hour) written or deleted since the last "
        "run, one transaction per batch; safe while the ingest writes and from two processes at "
        "once. Under TimescaleDB: run the continuous aggregate's refresh policy now.",
    )
    rollup.add_argument(
        "--batch-hours",
        type=_count,
        default=10_000,
        help="pending device-hours recomputed per transaction (default 10000)",
    )
    add_db_roles_parser(db_sub)

    inv = sub.add_parser("inventory", help="devices, DMAs and sites")
    inv_sub = inv.add_subparsers(dest="inventory_command", required=True, metavar="ACTION")
    inv_import = inv_sub.add_parser(
        "import",
        help="import a sites, devices or DMAs file (CSV or GeoJSON; idempotent)",
        description="Register devices (a 'device' column: site, device, kind, ...), DMAs "
        "('dma' without 'device': site, dma, ...) or sites ('site' without 'device' or 'dma': "
        "site, name, timezone, lat, lon). The whole file is checked first; errors name the "
        "file, line and column. Importing the same file twice changes nothing.",
    )
    inv_import.add_argument("file", type=Path, help="a .csv, .geojson or .json file")

    for name, text, about in (
        ("ingest", "run the MQTT ingest until stopped",
         "The MQTT ingest: {root}/+/+/up → validation → PostgreSQL, acknowledging only what "
         "is durable. Runs until SIGTERM or Ctrl-C (which flush and stop cleanly)."),
        ("run", "run every service in one process until stopped",
         "All services in one process: the ingest, the policies service (configs every "
         "policies.service.interval_s), leak detection every anomaly.interval_s, energy "
         "accounting every energy.interval_s and the retention of [privacy] every "
         "privacy.interval_s, "
         "each in a thread; metrics on one endpoint. Runs until SIGTERM or Ctrl-C."),
    ):  # fmt: skip
        _service_options(sub.add_parser(name, help=text, description=about))

    imp = sub.add_parser("import", help="backfill data from a file")
    imp_sub = imp.add_subparsers(dest="import_command", required=True, metavar="WHAT")
    imp_readings = imp_sub.add_parser(
        "readings",
        help="CSV time,site,device,metric,value,unit through the ingest's validation",
        description="Backfill readings: columns time,site,device,metric,value,unit, times ISO "
        "8601 with offset, unit empty for the canonical one. Bad lines are rejections with "
        "their reason (see `sobriety rejected`); good lines are stored once.",
    )
    imp_readings.add_argument("file", type=Path, help="the CSV file")

    exp = sub.add_parser("export", help="export data")
    exp_sub = exp.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    exp_readings = exp_sub.add_parser(
        "readings",
        help="readings as CSV on standard output",
        description="Readings of a period as CSV (time,site,device,metric,value,unit; UTC).",
    )
    _period(exp_readings)
    _site(exp_readings)
    _format(exp_readings, ("csv",))
    add_export_parsers(exp_sub, exp_readings, _period, _site, _format)

    sim = sub.add_parser(
        "simulate",
        help="run a simulated town against the broker",
        description="Run the simulated town against the configured broker; writes its "
        "inventory and truth.json. Start an ingest to store what it sends.",
    )
    sim.add_argument("--scenario", type=Path, help="scenario TOML (default: the demo town)")
    sim.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    sim.add_argument(
        "--speed",
        type=_number(0.0, 1e9, low_open=False),
        default=1440.0,
        help="simulated seconds per second (default 1440: a day per minute; 0: full speed)",
    )
    sim.add_argument(
        "--days", type=_number(0.0, 366.0), help="simulated days (default: the scenario's)"
    )
    sim.add_argument("--out", type=Path, help="inventory and truth.json (default var/sim/...)")
    sim.add_argument(
        "--import-inventory",
        action="store_true",
        help="import the town's inventory into the configured database first",
    )

    demo = sub.add_parser(
        "demo",
        help="the whole chain on a simulated town, checked against its ground truth",
        description="A simulated town through the whole chain (broker, ingest, database, leak "
        "detection), then a summary compared with the simulation's ground truth: any loss or "
        "mismatch is printed and the exit code is 1.",
    )
    demo.add_argument(
        "--days",
        type=_number(0.0, DEMO_MAX_DAYS),
        default=1.0,
        help=f"simulated days, up to {DEMO_MAX_DAYS:g} (default 1; 3 or more assess customer "
        "leaks)",
    )
    demo.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    demo.add_argument("--serve", action="store_true", help="keep the ingest running afterwards")
    demo.add_argument(
        "--embedded",
        action="store_true",
        help="use a database server of the demo's own even when a local one is reachable",
    )
    demo.add_argument("--workdir", type=Path, help="keep inventory, truth and services here")

    anomaly = sub.add_parser(
        "anomaly",
        help="leak detection: the periodic service, or one scan, a balance, an evaluation",
        description="Without an action: the periodic leak-detection service (a scan every "
        "anomaly.interval_s over the last anomaly.rescan_days), until stopped. With one: "
        "that action once.",
    )
    anomaly.add_argument("--metrics-port", type=_port, help="Prometheus port (0: off)")
    an_sub = anomaly.add_subparsers(dest="anomaly_command", metavar="ACTION")
    scan = an_sub.add_parser(
        "scan",
        help="one-shot detection over stored data (idempotent)",
        description="Detect leaks, data gaps and customer-meter anomalies over a period and "
        "reconcile the alerts; scanning a period twice leaves the same alerts.",
    )
    _period(scan)
    _site(scan)
    _format(scan)
    bal = an_sub.add_parser(
        "balance",
        help="water balance, yield (decree 2012-97) and ILI of each DMA",
        description="Per DMA over a period: volumes in and out, metered consumption, losses "
        "[m3], yield and the decree 2012-97 threshold [%%], ILC/ILP [m3/km/day], ILI.",
    )
    _period(bal)
    _site(bal)
    _format(bal)
    ev = an_sub.add_parser(
        "evaluate",
        help="score the detection on simulated histories with known leaks",
        description="For each scenario and seed: write a simulated history into a scratch "
        "database, scan it, score the alerts against its truth. A report per scenario and "
        "overall; exit 0 when every target is met on every scenario, 1 otherwise.",
    )
    ev.add_argument(
        "--scenario",
        action="append",
        metavar="FILE|NAME",
        help="a history scenario: a TOML file or a packaged name (evaluation, "
        "evaluation-autumn, evaluation-sparse, evaluation-large); repeat for more (default: "
        "every packaged evaluation*.toml)",
    )
    ev.add_argument("--seed", type=int, action="append", help="a seed; repeat for more (default 1)")
    ev.add_argument(
        "--days", type=_number(1.0, 3660.0, low_open=False), help="days (default: the scenario's)"
    )
    ev.add_argument(
        "--database", default="sobriety_evaluate", help="scratch database name (dropped after)"
    )
    _format(ev)
    ev.add_argument("--out", type=Path, help="write the JSON report here too")
    ev.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch database (several runs: one each, the name suffixed _1, _2, ...)",
    )

    add_policies_parser(sub)
    add_energy_parser(sub, _period, _site, _format, _port)
    add_publish_parser(sub)
    add_privacy_parser(sub, _format)
    add_site_parser(sub, _format)

    alerts = sub.add_parser("alerts", help="list, acknowledge and resolve alerts")
    al_sub = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    al_list = al_sub.add_parser(
        "list", help="alerts, newest first", description="Alerts, newest first."
    )
    _site(al_list)
    al_list.add_argument(
        "--state", choices=ALERT_STATES, help="open, acknowledged, resolved, or active (not "
        "resolved)"
    )  # fmt: skip
    al_list.add_argument("--kind", choices=ALERT_KINDS, help=f"one of {', '.join(ALERT_KINDS)}")
    al_list.add_argument(
        "--since", type=parse_time, help=f"still active at or after this time: {TIME_FORMAT}"
    )
    _format(al_list)
    for action, text in (("ack", "acknowledge an alert"), ("resolve", "resolve an alert")):
        cmd = al_sub.add_parser(action, help=text, description=f"{text.capitalize()}.")
        cmd.add_argument("id", type=int, help="the alert's id (see alerts list)")
        cmd.add_argument("--by", required=True, help="who (a name or a team)")
        if action == "resolve":
            cmd.add_argument("--note", help="what was done")

    rej = sub.add_parser(
        "rejected",
        help="list (or replay) rejected messages",
        description="Messages the ingest rejected, with their reason and raw payload; "
        "--replay validates the pending ones again (after registering a device, say).",
    )
    rej.add_argument("--since", type=parse_time, help=f"received since: {TIME_FORMAT}")
    rej.add_argument(
        "--reason", choices=REASONS, metavar="REASON", help=f"one of {', '.join(REASONS)}"
    )
    _site(rej)
    rej.add_argument("--pending", action="store_true", help="only those not replayed")
    _format(rej)
    rej.add_argument(
        "--replay", action="store_true", help="re-validate pending ones and store what passes"
    )

    contract = sub.add_parser("contract", help="the MQTT contract for device integrators")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True, metavar="WHAT")
    contract_sub.add_parser(
        "schema",
        help="JSON Schemas of the up, config, cmd and state payloads, keyed by channel",
        description="One JSON object keyed by channel (up, config, cmd, state), each a JSON "
        "Schema (draft 2020-12).",
    )
    return parser
