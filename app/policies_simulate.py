"""``sobriety policies simulate``: the what-if lighting energy of a site over a period of nights
— under the programs in force (the calendar) or a proposed one (``--program``) — against the
no-dimming baseline, from the inventory (``sites``: time zone, lat, lon; ``devices``: the
luminaires' groups, lighting classes, nominal powers and ``standby_w`` property, and the count
of cabinet meters) and the policies. The arithmetic is :func:`policies.energy.simulate_energy`;
this module reads, checks the arguments and prints. Its parser is registered by
:func:`add_simulate_parser`; the module with astral in it (``policies.energy``) is loaded only
when the command runs."""

from __future__ import annotations

import argparse
import math
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import psycopg

from app.policies_sites import policies_in_force, site_place
from core.config import Config
from core.db import connect
from core.errors import ConfigError, UsageError
from policies.config import PoliciesConfig

if TYPE_CHECKING:
    from policies.energy import Luminaire, SiteEnergy

__all__ = ["add_simulate_parser", "cmd_simulate", "format_table", "site_energy", "to_json"]


def _night(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a date YYYY-MM-DD (the evening of a night, local time)"
        ) from None


def add_simulate_parser(actions: Any) -> None:
    """Add ``simulate`` to the ``policies`` actions (what ``add_subparsers`` of the group
    returned); ``app/policies_commands.py`` runs it with :func:`cmd_simulate`."""
    simulate = actions.add_parser(
        "simulate",
        help="what-if: a site's lighting energy over a period, against no dimming",
        description="The lighting energy (kWh) a site's luminaires draw over the nights whose "
        "evening's local date is from --since to --until (both inclusive), each lighting group "
        "following its program of the calendar (or, with --program, that one), against the "
        "no-dimming baseline (full light from switch-on to switch-off): per group and in all, "
        "from the luminaires' nominal power and the driver's efficiency curve; at the cabinet "
        "meters too when [simulate] gives line losses or a cabinet overhead. Luminaires without "
        "a nominal power are counted, not invented. Exit 2 for an unknown site or program, a "
        "site without coordinates, or a period that is reversed or longer than 366 nights.",
    )
    simulate.add_argument("--site", required=True, help="the site (commune) id")
    # Not "since"/"until": the application's check of a period (a datetime --until strictly
    # after --since) is not this one (dates, one night when equal).
    for flag, dest, text in (
        ("--since", "since_night", "the first night (local date of its evening)"),
        ("--until", "until_night", "the last night, inclusive"),
    ):
        simulate.add_argument(
            flag, dest=dest, required=True, type=_night, metavar="YYYY-MM-DD", help=text
        )
    simulate.add_argument(
        "--program", help="every group follows this program (a proposal) instead of the calendar"
    )
    simulate.add_argument(
        "--policies",
        type=Path,
        metavar="FILE",
        help="a policies file (TOML); default: the [policies] section of the configuration",
    )
    simulate.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (table, json)"
    )


def cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    """``sobriety policies simulate --site S --since D1 --until D2 [--program P] [--policies
    FILE] [--format table|json]``."""
    policies = policies_in_force(args.policies, config).get(args.site)
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        result, timezone = site_energy(
            conn, args.site, args.since_night, args.until_night, policies, args.program
        )
    if args.format == "json":
        print(orjson.dumps(to_json(args.site, timezone, result)).decode())
    else:
        for line in format_table(args.site, timezone, result):
            print(line)
    return 0


def _standby(site: str, device: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"site {site!r}, device {device!r}: property standby_w = {text!r}: expected a power "
            "of 0 W or more"
        )
    return value


def _luminaires(conn: psycopg.Connection, site: str) -> tuple[list[Luminaire], int]:
    """The site's luminaires and its count of cabinet meters."""
    from policies.energy import Luminaire

    rows = conn.execute(
        "SELECT device, lighting_group, lighting_class, nominal_power_w, "
        "properties->>'standby_w' FROM devices WHERE site = %s AND kind = 'luminaire' "
        "ORDER BY device",
        (site,),
    ).fetchall()
    found = [
        Luminaire(
            str(device),
            group,
            klass,
            None if nominal is None else float(nominal),
            _standby(site, device, standby),
        )
        for device, group, klass, nominal, standby in rows
    ]
    row = conn.execute(
        "SELECT count(*) FROM devices WHERE site = %s AND kind = 'cabinet_meter'", (site,)
    ).fetchone()
    return found, int(row[0]) if row else 0


def site_energy(
    conn: psycopg.Connection,
    site: str,
    since: date,
    until: date,
    policies: PoliciesConfig,
    program: str | None = None,
) -> tuple[SiteEnergy, str]:
    """The energy of ``site`` over the nights of ``since`` to ``until`` (inclusive) and its
    time zone. :class:`UsageError` for an unknown site or program, a site without
    coordinates, or a reversed or too long period; :class:`ConfigError` for a time zone, a
    program of the calendar or a ``standby_w`` property that cannot be used."""
    from policies.energy import MAX_NIGHTS, simulate_energy

    if until < since:
        raise UsageError(
            f"--until {until.isoformat()} is before --since {since.isoformat()} (both are "
            "nights, inclusive: equal dates are one night)"
        )
    count = (until - since).days + 1
    if count > MAX_NIGHTS:
        raise UsageError(
            f"--since {since.isoformat()} --until {until.isoformat()}: {count} nights, at most "
            f"{MAX_NIGHTS}"
        )
    if program is not None and program not in policies.programs:
        raise UsageError(
            f"--program {program!r}: no such program; the policies' programs: "
            f"{', '.join(policies.programs)}"
        )
    timezone, lat, lon = site_place(conn, site)
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"site {site!r}: time zone {timezone!r} is not an IANA name") from None
    luminaires, cabinets = _luminaires(conn, site)
    try:
        result = simulate_energy(
            policies, luminaires, tz, lat, lon, since, until, program=program, cabinets=cabinets
        )
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    return result, timezone


def to_json(site: str, timezone: str, result: SiteEnergy) -> dict[str, Any]:
    """The JSON document of ``policies simulate --format json`` (energies in kWh, hours per
    luminaire summed over the nights)."""
    doc: dict[str, Any] = {
        "site": site,
        "timezone": timezone,
        "since": result.since.isoformat(),
        "until": result.until.isoformat(),
        "program": result.program,
        "nights": len(result.nights),
        "hours": result.hours,
        "luminaires": result.luminaires,
        "missing_power": result.missing_power,
        "standby_w": result.standby_w,
        "kwh": result.kwh,
        "baseline_kwh": result.baseline_kwh,
        "saved_kwh": result.saved_kwh,
        "saved_fraction": result.saved_fraction,
        "groups": [
            {
                "group": g.group,
                "programs": [{"program": p, "nights": n} for p, n in g.programs.items()],
                "luminaires": g.luminaires,
                "missing_power": g.missing_power,
                "lit_hours": g.lit_hours,
                "baseline_hours": g.baseline_hours,
                "kwh": g.kwh,
                "baseline_kwh": g.baseline_kwh,
                "saved_kwh": g.saved_kwh,
                "saved_fraction": g.saved_fraction,
            }
            for g in result.groups
        ],
        "per_night": [
            {
                "night": n.night.isoformat(),
                "hours": n.hours,
                "kwh": n.kwh,
                "baseline_kwh": n.baseline_kwh,
                "saved_kwh": n.saved_kwh,
                **(
                    {"cabinet_kwh": n.cabinet_kwh, "cabinet_baseline_kwh": n.cabinet_baseline_kwh}
                    if result.at_cabinets
                    else {}
                ),
            }
            for n in result.nights
        ],
        "cabinet": None,
    }
    cabinet_kwh, cabinet_baseline = result.cabinet_kwh, result.cabinet_baseline_kwh
    if cabinet_kwh is not None and cabinet_baseline is not None:
        saved = cabinet_baseline - cabinet_kwh
        doc["cabinet"] = {
            "cabinets": result.cabinets,
            "line_loss_fraction": result.line_loss_fraction,
            "cabinet_overhead_w": result.cabinet_overhead_w,
            "kwh": cabinet_kwh,
            "baseline_kwh": cabinet_baseline,
            "saved_kwh": saved,
            "saved_fraction": saved / cabinet_baseline if cabinet_baseline > 0 else None,
        }
    return doc


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f} %"


def format_table(site: str, timezone: str, result: SiteEnergy) -> list[str]:
    """The lines of ``policies simulate --format table``: the period, one row per group and a
    total (kWh at the luminaires), then the figures at the cabinet meters when configured."""
    program = result.program or "calendrier / calendar"
    lines = [
        f"site {site} ({timezone}), nuits / nights {result.since.isoformat()} .. "
        f"{result.until.isoformat()} ({len(result.nights)}), programme / program: {program}",
        f"luminaires: {result.luminaires}, sans puissance nominale / without nominal power: "
        f"{result.missing_power}",
    ]
    header = (
        "groupe / group",
        "programmes / programs",
        "luminaires",
        "h allumées / lit h",
        "kWh",
        "référence / baseline kWh",
        "économie / saved kWh",
        "%",
    )
    rows = [
        (
            g.group if g.group is not None else "(sans groupe / no group)",
            ", ".join(f"{p} ({n})" for p, n in g.programs.items()),
            f"{g.luminaires}"
            + (f" ({g.missing_power} sans puissance / no power)" if g.missing_power else ""),
            f"{g.lit_hours:.1f}",
            f"{g.kwh:.2f}",
            f"{g.baseline_kwh:.2f}",
            f"{g.saved_kwh:.2f}",
            _percent(g.saved_fraction),
        )
        for g in result.groups
    ]
    rows.append(
        (
            "total",
            "",
            str(result.luminaires),
            "",
            f"{result.kwh:.2f}",
            f"{result.baseline_kwh:.2f}",
            f"{result.saved_kwh:.2f}",
            _percent(result.saved_fraction),
        )
    )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, tuple("-" * w for w in widths), *rows)
    )
    cabinet_kwh, cabinet_baseline = result.cabinet_kwh, result.cabinet_baseline_kwh
    if cabinet_kwh is not None and cabinet_baseline is not None:
        saved = cabinet_baseline - cabinet_kwh
        fraction = saved / cabinet_baseline if cabinet_baseline > 0 else None
        lines.append(
            f"aux compteurs des armoires / at the cabinet meters ({result.cabinets} cabinets, "
            f"line losses {100.0 * result.line_loss_fraction:g} %, overhead "
            f"{result.cabinet_overhead_w:g} W each): {cabinet_kwh:.2f} kWh, baseline "
            f"{cabinet_baseline:.2f} kWh, saved {saved:.2f} kWh ({_percent(fraction)})"
        )
    if not result.groups:
        lines.append("aucun luminaire / no luminaire at this site")
    return lines
