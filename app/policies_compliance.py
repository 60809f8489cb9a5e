"""``sobriety policies compliance``: the site's lighting against the arrêté of 27 December 2018
on light pollution, where the inventory has the data — reported, not enforced
(:mod:`policies.compliance` holds the rules). The luminaires come from ``devices``
(``kind = 'luminaire'``: group, lighting class, and the properties ``cct_k``, ``usage``,
``closing_time``), the site's time zone and coordinates from ``sites``; each night's program from
the calendar, its schedule under the site's sun.

Exit 0 when compliant, 1 when there are findings (the report is printed all the same), 2 for a
usage error. The module loads astral (through :mod:`core.lighting`) only when the command runs:
the parser is built without it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import psycopg

from app.policies_commands import Subcommands, parse_night
from app.policies_sites import policies_in_force, site_place
from core.config import Config
from core.db import connect
from core.errors import ConfigError, UsageError
from core.inventory import device_property
from policies.config import PoliciesConfig

if TYPE_CHECKING:
    from policies.compliance import Compliance, Luminaire

__all__ = [
    "DEFAULT_NIGHTS",
    "MAX_NIGHTS",
    "SiteCompliance",
    "add_compliance_parser",
    "cmd_compliance",
    "format_table",
    "site_compliance",
    "to_json",
]

DEFAULT_NIGHTS = 7
"""Nights checked without --date or --until: from --since (default: today at the site)."""
MAX_NIGHTS = 366
"""Longest period [nights]."""

_PROPERTIES = ("cct_k", "usage", "closing_time")


@dataclass(frozen=True, slots=True)
class InvalidProperty:
    """A luminaire property stored unchecked (by an import older than the check): ignored."""

    device: str
    name: str
    value: str
    expected: str


@dataclass(frozen=True, slots=True)
class SiteCompliance:
    """The compliance of ``site`` over its nights, and the properties that were ignored."""

    site: str
    timezone: str
    tz: tzinfo
    result: Compliance
    invalid: list[InvalidProperty] = field(default_factory=list)


def add_compliance_parser(actions: Subcommands) -> None:
    """Add ``compliance`` to the ``policies`` actions."""
    compliance = actions.add_parser(
        "compliance",
        help="the lighting against the arrêté of 27 December 2018 (reported, not enforced)",
        description="Check the luminaires of --site against the arrêté of 27 December 2018 on "
        "light pollution, where the inventory has the data (devices properties cct_k, usage, "
        "closing_time): roads, footpaths and car parks above 3000 K; parks and heritage lit "
        "more than one hour after their closing, and heritage lit after 01:00, by the programs "
        "in force night by night. Luminaires without the data are counted, not findings. "
        f"Period: --date D (one night) or --since D1 [--until D2] (default: {DEFAULT_NIGHTS} "
        "nights from today at the site), local dates of the evenings, inclusive. The policies: "
        "--policies FILE, else the [policies] section, else the defaults. Exit 0 when "
        "compliant, 1 when there are findings, 2 for a usage error (unknown site, a site "
        "without coordinates, a bad date or period).",
    )
    compliance.add_argument("--site", required=True, help="the site (commune) id")
    when = compliance.add_mutually_exclusive_group()
    when.add_argument(
        "--date",
        dest="night",
        type=parse_night,
        metavar="YYYY-MM-DD",
        help="one night: the local date of its evening",
    )
    when.add_argument(
        "--since",
        dest="first_night",
        type=parse_night,
        metavar="YYYY-MM-DD",
        help="the first night (local date of its evening); default today at the site",
    )
    compliance.add_argument(
        "--until",
        dest="last_night",
        type=parse_night,
        metavar="YYYY-MM-DD",
        help=f"the last night, inclusive; default {DEFAULT_NIGHTS - 1} nights after --since",
    )
    compliance.add_argument(
        "--policies",
        type=Path,
        metavar="FILE",
        help="a policies file (TOML); default: the [policies] section of the configuration",
    )
    compliance.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (table, json)"
    )


def _nights(args: argparse.Namespace, tz: tzinfo) -> list[date]:
    if args.night is not None:
        if args.last_night is not None:
            raise UsageError("--date is one night: no --until with it (or --since D1 --until D2)")
        return [args.night]
    first: date = args.first_night or datetime.now(tz).date()
    last: date = args.last_night or first + timedelta(days=DEFAULT_NIGHTS - 1)
    if last < first:
        raise UsageError(
            f"--until must be on or after --since (got --since {first.isoformat()} "
            f"--until {last.isoformat()})"
        )
    count = (last - first).days + 1
    if count > MAX_NIGHTS:
        raise UsageError(f"--since to --until is {count} nights: at most {MAX_NIGHTS}")
    return [first + timedelta(days=n) for n in range(count)]


def _luminaires(
    conn: psycopg.Connection, site: str
) -> tuple[list[Luminaire], list[InvalidProperty]]:
    from policies.compliance import Luminaire

    rows = conn.execute(
        "SELECT device, lighting_group, lighting_class, properties->>'cct_k', "
        "properties->>'usage', properties->>'closing_time' FROM devices "
        "WHERE site = %s AND kind = 'luminaire' ORDER BY device",
        (site,),
    )
    found: list[Luminaire] = []
    invalid: list[InvalidProperty] = []
    for device, group, klass, *texts in rows:
        values: dict[str, str | None] = {}
        for name, text in zip(_PROPERTIES, texts, strict=True):
            values[name] = None
            if text is None or not str(text).strip():
                continue
            try:
                values[name] = device_property(name, str(text).strip())
            except ValueError as exc:
                invalid.append(InvalidProperty(device, name, str(text), str(exc)))
        cct = values["cct_k"]
        found.append(
            Luminaire(
                device=device,
                group=group,
                lighting_class=klass,
                cct_k=None if cct is None else float(cct),
                usage=values["usage"],
                closing_time=values["closing_time"],
            )
        )
    return found, invalid


def site_compliance(
    conn: psycopg.Connection, site: str, args: argparse.Namespace, policies: PoliciesConfig
) -> SiteCompliance:
    """The compliance of ``site`` over the nights of ``args`` (``night``, ``first_night``,
    ``last_night``). :class:`UsageError` for an unknown site, a site without coordinates or a
    bad period; :class:`ConfigError` for a time zone or a program that cannot be resolved."""
    from core.lighting import SunCache
    from policies.compliance import check_compliance

    timezone, lat, lon = site_place(conn, site)
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"site {site!r}: time zone {timezone!r} is not an IANA name") from None
    nights = _nights(args, tz)
    luminaires, invalid = _luminaires(conn, site)
    cache = SunCache()
    try:
        result = check_compliance(
            luminaires, policies, nights, tz, lambda night: cache.get(lat, lon, night, tz)
        )
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    return SiteCompliance(site, timezone, tz, result, invalid)


def cmd_compliance(args: argparse.Namespace, config: Config) -> int:
    """``sobriety policies compliance``: 0 when compliant, 1 when there are findings."""
    policies = policies_in_force(args.policies, config).get(args.site)
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        found = site_compliance(conn, args.site, args, policies)
    if args.format == "json":
        print(orjson.dumps(to_json(found)).decode())
    else:
        for line in format_table(found):
            print(line)
    return 0 if found.result.compliant else 1


def _iso(t: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(round(t), tz).isoformat(timespec="seconds")


def _minutes(seconds: float) -> float:
    return round(seconds / 60.0, 1)


def to_json(found: SiteCompliance) -> dict[str, Any]:
    """The JSON document of ``policies compliance --format json`` (keys in English)."""
    result, tz = found.result, found.tz
    findings: list[dict[str, Any]] = [
        {"kind": "cct_above_3000k", "device": f.device, "group": f.group, "usage": f.usage,
         "cct_k": f.cct_k}
        for f in result.cct
    ]  # fmt: skip
    findings += [
        {
            "kind": f.kind,
            "night": f.night.isoformat(),
            "device": f.device,
            "group": f.group,
            "usage": f.usage,
            "closing_time": f.closing_time,
            "program": f.program,
            "deadline": _iso(f.deadline, tz),
            "lit_from": _iso(f.lit_from, tz),
            "lit_until": _iso(f.lit_until, tz),
            "lit_beyond_min": _minutes(f.lit_s),
        }
        for f in result.lit
    ]
    unchecked = result.unchecked
    return {
        "site": found.site,
        "timezone": found.timezone,
        "since": result.nights[0].isoformat(),
        "until": result.nights[-1].isoformat(),
        "nights": len(result.nights),
        "luminaires": result.luminaires,
        "compliant": result.compliant,
        "findings": findings,
        "unchecked": {
            "usage_missing": unchecked.usage_missing,
            "cct_k_missing": unchecked.cct_k_missing,
            "closing_time_missing": unchecked.closing_time_missing,
        },
        "invalid_properties": [
            {"device": i.device, "property": i.name, "value": i.value, "expected": i.expected}
            for i in found.invalid
        ],
    }


def _local(t: float, tz: tzinfo) -> str:
    """Local time with its UTC offset (a fall-back night has 02:30 twice)."""
    local = datetime.fromtimestamp(round(t), tz).strftime("%Y-%m-%d %H:%M %z")
    return local[:-2] + ":" + local[-2:]


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, tuple("-" * w for w in widths), *rows)
    ]


_LIT_TITLES = {
    "lit_after_closing": "Allumé plus d'une heure après la fermeture / lit more than one hour "
    "after closing (parcs, patrimoine / parks, heritage)",
    "lit_after_1am": "Patrimoine allumé après 1 h / heritage lit after 01:00",
}


def format_table(found: SiteCompliance) -> list[str]:
    """The lines of ``policies compliance --format table``: French first, English beside."""
    result, tz = found.result, found.tz
    first, last = result.nights[0].isoformat(), result.nights[-1].isoformat()
    lines = [
        f"site {found.site} ({found.timezone}), nuits du / nights from {first} au / to {last} "
        f"({len(result.nights)})",
        "Arrêté du 27 décembre 2018 (nuisances lumineuses) : constat, sans application / "
        "reported, not enforced",
        f"luminaires : {result.luminaires}",
    ]
    if result.cct:
        lines.append(
            f"Température de couleur > 3000 K / colour temperature above 3000 K (voirie, "
            f"cheminements, stationnement / roads, footpaths, car parks): {len(result.cct)}"
        )
        lines += _table(
            ("luminaire", "groupe / group", "usage", "K"),
            [(f.device, f.group or "-", f.usage, f"{f.cct_k:g}") for f in result.cct],
        )
    for kind, title in _LIT_TITLES.items():
        rows = [
            (
                f.night.isoformat(),
                f.device,
                f.group or "-",
                f.usage,
                f.closing_time or "-",
                f.program,
                _local(f.deadline, tz),
                _local(f.lit_until, tz),
                f"{_minutes(f.lit_s):g} min",
            )
            for f in result.lit
            if f.kind == kind
        ]
        if rows:
            lines.append(f"{title}: {len(rows)}")
            lines += _table(
                (
                    "nuit / night",
                    "luminaire",
                    "groupe / group",
                    "usage",
                    "fermeture / closing",
                    "programme / program",
                    "limite / limit",
                    "allumé jusqu'à / lit until",
                    "au-delà / beyond",
                ),
                rows,
            )
    u = result.unchecked
    lines.append(
        "Non vérifié / not checked: "
        f"sans usage / no usage {u.usage_missing}, sans cct_k / no cct_k {u.cct_k_missing}, "
        f"parcs et patrimoine sans closing_time / parks and heritage without closing_time "
        f"{u.closing_time_missing}"
    )
    for i in found.invalid:
        lines.append(
            f"  propriété ignorée / property ignored: {i.device} {i.name} = {i.value!r} "
            f"(attendu / expected {i.expected})"
        )
    count = len(result.cct) + len(result.lit)
    lines.append(
        "conforme / compliant"
        if result.compliant
        else f"non conforme / not compliant: {count} constat(s) / finding(s)"
    )
    return lines
