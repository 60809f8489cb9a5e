"""Commands of the water network: ``anomaly`` (periodic, ``scan``, ``balance``, ``evaluate``)
and ``alerts`` (``list``, ``ack``, ``resolve``). Each returns the exit code."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import orjson

from anomaly.config import AnomalyConfig
from app.data_commands import write_json
from app.services import install_signals
from core.config import Config
from core.errors import ConfigError


def cmd_anomaly(args: argparse.Namespace, config: Config) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from anomaly.service import AnomalyService, Scanner
    from core.db import connect

    action = args.anomaly_command
    if action == "evaluate":
        from app.evaluate import run_evaluation

        return run_evaluation(args, config)
    if action == "balance":
        from anomaly.report import balances

        until = args.until or datetime.now(UTC)
        with connect(config.db_conninfo()) as conn:
            rows = balances(conn, args.since, until, args.site)
        if args.format == "json":
            write_json(rows)
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
            report = Scanner(config.section(AnomalyConfig)).scan(
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
    service = AnomalyService(config.db_conninfo(), config.section(AnomalyConfig), registry)
    port = args.metrics_port if args.metrics_port is not None else config.metrics.port
    if port:
        start_http_server(port, config.metrics.host, registry=registry)
    install_signals(service.stop)
    service.run()
    return 0


def cmd_alerts(args: argparse.Namespace, config: Config) -> int:
    from anomaly.alerts import acknowledge, list_alerts, resolve
    from core.db import connect

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
            write_json(items)
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
