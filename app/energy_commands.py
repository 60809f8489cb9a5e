"""The ``energy`` command: without an action the periodic service (``energy.interval_s``), with
``recompute --since --until [--site]`` the local days of a period once."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from app.energy_factors import FACTORS_COMMANDS, add_factors_parser, cmd_factors
from app.energy_report import parse_month
from core.config import Config
from core.db import connect

__all__ = ["add_energy_parser", "cmd_energy"]


def add_energy_parser(sub: Any, period: Any, site: Any, fmt: Any, port: Any) -> None:
    """Add ``energy`` to the ``sobriety`` subcommands (``period``, ``site``, ``fmt``: the
    shared option helpers of app/cli_parser.py; ``port`` the type of a port)."""
    energy = sub.add_parser(
        "energy",
        help="energy accounting: the periodic service, or one recompute",
        description="Without an action: the energy service (the hourly rollup refreshed, then "
        "the last energy.rescan_days local days of every metered device recomputed into "
        "api.energy_daily every energy.interval_s), until stopped. With one: that action once.",
    )
    energy.add_argument("--metrics-port", type=port, help="Prometheus port (0: off)")
    actions = energy.add_subparsers(dest="energy_command", metavar="ACTION")
    again = actions.add_parser(
        "recompute",
        help="compute the local days of a period into api.energy_daily",
        description="Compute the energy per local day of every metered device (of --site) "
        "from the day of --since to the day of --until: from its energy counter (resets, "
        "rollovers, replacements, spurious readings handled and counted) or else its power "
        "samples (gaps flagged, not filled). Idempotent.",
    )
    period(again)
    site(again)
    fmt(again)
    add_factors_parser(actions, period, site, fmt)
    _add_report_parser(actions)


def cmd_energy(args: argparse.Namespace, config: Config) -> int:
    """Run the service or ``recompute``."""
    from energy.config import EnergyConfig

    if args.energy_command in FACTORS_COMMANDS:
        return cmd_factors(args, config)
    if args.energy_command == "report":
        return _cmd_report(args, config)
    if args.energy_command == "recompute":
        from core import rollup
        from energy.service import recompute

        with connect(config.db_conninfo(), autocommit=True) as conn:
            rollup.refresh(conn)
        with connect(config.db_conninfo()) as conn:
            report = recompute(
                conn,
                config.per_site(EnergyConfig),
                args.since.timestamp(),
                args.until.timestamp(),
                args.site,
            )
        if args.format == "json":
            print(orjson.dumps(dataclasses.asdict(report)).decode())
        else:
            sources = ", ".join(f"{k} {v}" for k, v in sorted(report.by_source.items()))
            print(
                f"{report.sites} sites, {report.devices} metered devices "
                f"({sources or 'none'}): {report.days_written} device-days written"
            )
        return 0
    from app.services import serve_stage
    from energy.service import EnergyService

    def build(registry: Any) -> tuple[Callable[[], None], Callable[[], None]]:
        service = EnergyService(config.db_conninfo(), config.per_site(EnergyConfig), registry)
        return service.run, service.stop

    return serve_stage(args, config, build)


def _add_report_parser(actions: Any) -> None:
    """``energy report``: the month of a commune (app/energy_report.py)."""
    report = actions.add_parser(
        "report",
        help="the month of a commune: lighting, pumping, PUE, the service's own energy",
        description="The month of a site in its local days and nights (a night is counted in "
        "the month of its evening): lighting kWh and savings against the no-dimming baseline "
        "(kWh, EUR, kg CO2e), kWh per luminaire-night, pumping kWh per m3, PUE with its "
        "ISO/IEC 30134-2 category (interim while the site has fewer than twelve months), the "
        "service's kWh per 1,000 readings, the factor versions used; each section with its "
        "completeness (periods complete out of the month's, hours missing). A month without "
        "data says so (exit 0); an unknown site is an error (exit 2).",
    )
    report.add_argument("--site", required=True, help="the site (commune) id")
    report.add_argument(
        "--month", type=parse_month, required=True, help="the month, YYYY-MM (2026-11)"
    )
    report.add_argument(
        "--format",
        choices=("table", "csv", "json", "png"),
        default="table",
        help="table (default), csv (one row per figure), json, or png (two charts; needs --out)",
    )
    report.add_argument(
        "--lang", choices=("fr", "en"), default="fr", help="labels: fr (default) or en"
    )
    report.add_argument(
        "--out", type=Path, help="write here (default: standard output; png: required)"
    )


def _cmd_report(args: argparse.Namespace, config: Config) -> int:
    """``energy report``: print or write the month of a site."""
    from app import energy_report_render as render
    from app.energy_report import month_report
    from core.errors import UsageError

    if args.format == "png" and args.out is None:
        raise UsageError("--format png needs --out FILE (a PNG is not written to a terminal)")
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        month = month_report(conn, args.site, args.month)
    if args.format == "png":
        render.render_png(month, args.out, args.lang)
        return 0
    if args.format == "csv":
        text = render.render_csv(month, args.lang)
    elif args.format == "json":
        text = render.render_json(month)
    else:
        text = render.render_table(month, args.lang)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0
