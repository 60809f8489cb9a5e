"""``sobriety energy factors``: the CO₂e and cost factors (energy/factors.py) — list them, add a
version (``factors add``), repin a period to the factors now in force (``factors apply``)."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import date
from typing import Any

import orjson

from core.config import Config
from core.db import connect
from energy.factors import UNITS, add_factor, apply_factors, list_factors

__all__ = ["FACTORS_COMMANDS", "add_factors_parser", "cmd_factors"]

FACTORS_COMMANDS = ("factors", "factor")
"""The names of the command under ``energy`` (``factor`` an alias: ``energy factor add``)."""


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a date YYYY-MM-DD") from None


def _value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None


def add_factors_parser(actions: Any, period: Any, site: Any, fmt: Any) -> None:
    """Add ``factors`` (alias ``factor``) to the ``energy`` actions (``period``, ``site``,
    ``fmt``: the shared option helpers of app/cli_parser.py)."""
    units = ", ".join(f"{k} in {u}" for k, u in UNITS.items())
    factors = actions.add_parser(
        "factors",
        aliases=["factor"],
        help="the CO2e and cost factors: list, add a version, apply to a period",
        description="Without an action: the factors (every version; with --site those that "
        "can hold there). The kg CO2e and EUR of api.energy_daily, api.lighting_nights and "
        "api.pumping_daily use the factor pinned to each site and local day when it was first "
        "computed (the site's own over an all-sites one, then the latest valid from the day "
        "or before); a factor added later changes no day already pinned unless 'apply'.",
    )
    site(factors)
    fmt(factors)
    sub = factors.add_subparsers(dest="factors_command", metavar="ACTION")
    add = sub.add_parser(
        "add",
        help="add a factor version",
        description=f"Add a factor version ({units}), from a local date, for every site or "
        "one. Days already computed keep their factor until 'factors apply'.",
    )
    add.add_argument("--kind", required=True, choices=tuple(UNITS), help="co2e or tariff")
    add.add_argument(
        "--valid-from", type=_date, required=True, help="first local day it holds (YYYY-MM-DD)"
    )
    add.add_argument(
        "--value", type=_value, required=True, help="kgCO2e per kWh, or EUR per kWh (0 or more)"
    )
    add.add_argument(
        "--unit", required=True, help="kgCO2e/kWh for co2e, EUR/kWh for tariff (stated, checked)"
    )
    add.add_argument("--source", required=True, help="where the value comes from: name, year, link")
    site(add)
    apply = sub.add_parser(
        "apply",
        help="repin a period's days to the factors in force now",
        description="Repin every local day of every site (of --site) from the day of --since "
        "to the day of --until to the factors in force now: the one way past kg CO2e and "
        "EUR change.",
    )
    period(apply)
    site(apply)
    fmt(apply)


def _line(f: Any) -> str:
    where = f"at {f.site}" if f.site else "at every site"
    return (
        f"#{f.id} {f.kind} {where} from {f.valid_from.isoformat()}: {f.value:g} {f.unit} "
        f"({f.source})"
    )


def cmd_factors(args: argparse.Namespace, config: Config) -> int:
    """List the factors, ``add`` one or ``apply`` them to a period."""
    action = args.factors_command
    with connect(config.db_conninfo()) as conn:
        if action == "add":
            factor = add_factor(
                conn, args.kind, args.valid_from, args.value, args.unit, args.source, args.site
            )
            conn.commit()
            print(
                f"added {_line(factor)}; days already computed keep their factor "
                "(sobriety energy factors apply --since ... to repin a period)"
            )
            return 0
        if action == "apply":
            report = apply_factors(conn, args.since.timestamp(), args.until.timestamp(), args.site)
            conn.commit()
            if args.format == "json":
                print(orjson.dumps(dataclasses.asdict(report)).decode())
            else:
                print(
                    f"{report.sites} sites, {report.days} site-days: {report.pinned} pins made, "
                    f"{report.repinned} moved to the factors in force now"
                )
            return 0
        factors = list_factors(conn, args.site)
    if args.format == "json":
        print(orjson.dumps([dataclasses.asdict(f) for f in factors]).decode())
        return 0
    for factor in factors:
        print(_line(factor))
    for kind in UNITS:
        if not any(f.kind == kind for f in factors):
            what = "kg CO2e" if kind == "co2e" else "EUR"
            print(
                f"no {kind} factor set{f' for {args.site}' if args.site else ''}: the {what} "
                f"columns are empty (sobriety energy factors add --kind {kind} ...)"
            )
    return 0
