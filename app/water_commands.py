"""Commands of the water network: ``anomaly`` (periodic, ``scan``, ``balance``, ``evaluate``)
and ``alerts`` (``list``, ``ack``, ``resolve``). Each returns the exit code."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import orjson

from anomaly.config import AnomalyConfig
from app.data_commands import write_json
from app.services import serve_stage
from core.config import Config


def cmd_anomaly(args: argparse.Namespace, config: Config) -> int:
    from anomaly.service import AnomalyService, Scanner
    from core.db import connect

    action = args.anomaly_command
    if action == "evaluate":
        from app.evaluate import run_evaluation

        return run_evaluation(args, config)
    if action == "balance":
        from anomaly.report import balances

        with connect(config.db_conninfo()) as conn:
            rows = balances(conn, args.since, args.until, args.site)
        if args.format == "json":
            write_json(rows)
        elif not rows:
            print("no DMA" + (f" at {args.site}" if args.site else "") + ": nothing to balance")
        else:
            for r in rows:
                print(balance_line(r))
        return 0
    if action == "scan":
        with connect(config.db_conninfo()) as conn:
            report = Scanner(config.per_site(AnomalyConfig)).scan(
                conn, args.since.timestamp(), args.until.timestamp(), args.site
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
                f"alerts opened: {counts(report.opened)}; closed: {counts(report.closed)}"
            )
            if report.meters_backwards:
                print(f"meters whose index went backwards: {', '.join(report.meters_backwards)}")
        return 0

    def build(registry: Any) -> tuple[Callable[[], None], Callable[[], None]]:
        service = AnomalyService(config.db_conninfo(), config.per_site(AnomalyConfig), registry)
        return service.run, service.stop

    return serve_stage(args, config, build)


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
        shown = 0
        for a in items:
            shown += 1
            flow = a["estimated_flow_m3h"]
            print(
                f"{a['id']:>6} {a['state']:<12} {a['kind']:<16} {a['site']}/{a['subject']}  "
                f"opened {a['opened_at']:%Y-%m-%d %H:%M %Z}"
                + (f"  ~{flow:.3f} m3/h" if flow is not None else "")
                + (f"  closed {a['closed_at']:%Y-%m-%d %H:%M}" if a["closed_at"] else "")
            )
        if not shown:
            print("no alert" + _filters(args))
    return 0


def _filters(args: argparse.Namespace) -> str:
    said = [
        f"{name} {value}"
        for name, value in (
            ("at", args.site), ("in state", args.state), ("of kind", args.kind),
            ("active since", args.since.isoformat() if args.since else None),
        )
        if value
    ]  # fmt: skip
    return (" " + ", ".join(said)) if said else ""


def counts(by_kind: dict[str, int]) -> str:
    """``leak: 2, data_gap: 1``, or ``none``."""
    shown = [f"{k}: {v}" for k, v in sorted(by_kind.items()) if v]
    return ", ".join(shown) or "none"


def _figure(value: float | None, text: str, why: str) -> str:
    return text.format(value) if value is not None else f"n/a ({why})"


def balance_line(r: dict[str, Any]) -> str:
    """One DMA's water balance for people: a figure that cannot be computed says why."""
    no_inflow = any(str(m).startswith("inlet") for m in r["incomplete"])
    why = "no inlet meter data" if no_inflow else "no water in"
    compliant = {True: "met", False: "NOT met", None: "n/a"}[r["compliant"]]
    line = (
        f"{r['site']}/{r['dma']}: in {r['inflow_m3']:.1f} m3, out {r['outflow_m3']:.1f}, metered "
        f"{r['consumption_m3']:.1f}, losses {r['losses_m3']:.1f} m3; yield "
        + _figure(r["yield_percent"], "{:.1f} %", why)
        + " (decree 2012-97 threshold "
        + _figure(r["threshold_percent"], "{:.1f} %", "no mains length")
        + f": {compliant}); ILI "
        + _figure(
            r["ili"] if r["ili"] else None,
            "{:.2f}",
            why if no_inflow else "no UARL: mains, connections or pressure unknown",
        )
    )
    if r["incomplete"]:
        line += "; incomplete: " + "; ".join(map(str, r["incomplete"]))
    return line
