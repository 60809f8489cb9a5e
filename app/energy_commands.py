"""The ``energy`` command: without an action the periodic service (``energy.interval_s``), with
``recompute --since --until [--site]`` the local days of a period once."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from app.energy_factors import FACTORS_COMMANDS, add_factors_parser, cmd_factors
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


def cmd_energy(args: argparse.Namespace, config: Config) -> int:
    """Run the service or ``recompute``."""
    from energy.config import EnergyConfig

    if args.energy_command in FACTORS_COMMANDS:
        return cmd_factors(args, config)
    if args.energy_command == "recompute":
        from core import rollup
        from energy.service import recompute

        with connect(config.db_conninfo(), autocommit=True) as conn:
            rollup.refresh(conn)
        with connect(config.db_conninfo()) as conn:
            report = recompute(
                conn,
                config.section(EnergyConfig),
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
        service = EnergyService(config.db_conninfo(), config.section(EnergyConfig), registry)
        return service.run, service.stop

    return serve_stage(args, config, build)
