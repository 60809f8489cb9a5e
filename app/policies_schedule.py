"""``sobriety policies schedule``: what the policies give each lighting group of a site over one
night — the program in force (:func:`policies.programs.program_for`) and its schedule
(:func:`core.lighting.night_schedule`) under the site's sun (:func:`core.lighting.sun_times`),
read from the inventory (``sites``: time zone, lat, lon; ``devices``: the luminaires' groups and
lighting classes).

A group's luminaires may have different lighting classes, hence different floors: a group's
schedule is that of its most common class (ties: the first in alphabetical order; no class at
all: no floor). Exceptions that name the whole group apply (its part-night level); an exception
naming single devices does not change the group's schedule. Luminaires without a group form the
group ``null`` (the calendar's rules for every group, and its default)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from app.policies_sites import site_place
from core.errors import ConfigError, UsageError
from core.lighting import NightSchedule, night_schedule, sun_times
from policies.config import PoliciesConfig
from policies.programs import device_program, program_for

__all__ = ["GroupSchedule", "SiteNight", "format_table", "site_night", "to_json"]


@dataclass(frozen=True, slots=True)
class GroupSchedule:
    """One lighting group over the night: its program, the lighting class whose floor applies
    (``None``: none), its luminaires and its schedule."""

    group: str | None
    program: str
    lighting_class: str | None
    luminaires: int
    schedule: NightSchedule
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SiteNight:
    """The night of local date ``night`` at ``site``: the sun [s since the epoch, ``None`` where
    it does not set or rise] and each group's schedule."""

    site: str
    night: date
    timezone: str
    tz: tzinfo
    sunset: float | None
    sunrise: float | None
    groups: list[GroupSchedule]


def _luminaires(conn: psycopg.Connection, site: str) -> dict[str | None, Counter[str | None]]:
    """The classes of the site's luminaires, per lighting group."""
    groups: dict[str | None, Counter[str | None]] = {}
    rows = conn.execute(
        "SELECT lighting_group, lighting_class FROM devices WHERE site = %s AND kind = 'luminaire'",
        (site,),
    )
    for group, klass in rows:
        klass = klass.strip().upper() if klass and klass.strip() else None
        groups.setdefault(group, Counter())[klass] += 1
    return groups


def _main_class(classes: Counter[str | None]) -> str | None:
    """The most common lighting class (ties: alphabetical); ``None`` when none has one."""
    named = [(n, k) for k, n in classes.items() if k is not None]
    if not named:
        return None
    return min(named, key=lambda item: (-item[0], item[1]))[1]


def _group_order(group: str | None) -> tuple[int, str]:
    return (1, "") if group is None else (0, group)


def site_night(
    conn: psycopg.Connection,
    site: str,
    night: date,
    policies: PoliciesConfig,
    group: str | None = None,
) -> SiteNight:
    """The schedule of every lighting group of ``site`` (or only ``group``) over the night of
    the local date ``night``. :class:`UsageError` for an unknown site, a site without
    coordinates or an unknown group; :class:`ConfigError` for a time zone or a program that
    cannot be resolved."""
    timezone, lat, lon = site_place(conn, site)
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"site {site!r}: time zone {timezone!r} is not an IANA name") from None
    groups = _luminaires(conn, site)
    if group is not None:
        if group not in groups:
            names = sorted(g for g in groups if g is not None)
            raise UsageError(
                f"--group {group!r}: no luminaire of site {site!r} in that group; its groups: "
                f"{', '.join(names) or 'none'}"
            )
        groups = {group: groups[group]}
    sun = sun_times(lat, lon, night, tz)
    found: list[GroupSchedule] = []
    for name in sorted(groups, key=_group_order):
        classes = groups[name]
        klass = _main_class(classes)
        program_name = program_for(policies, name, night)
        try:
            program, notes = device_program(policies, program_name, klass, name, "")
        except LookupError as exc:
            raise ConfigError(f"group {name!r}: {exc}") from None
        found.append(
            GroupSchedule(
                group=name,
                program=program_name,
                lighting_class=klass,
                luminaires=sum(classes.values()),
                schedule=night_schedule(program, night, tz, sun),
                notes=tuple(notes),
            )
        )
    return SiteNight(site, night, timezone, tz, sun.sunset, sun.sunrise, found)


def _iso(t: float | None, tz: tzinfo) -> str | None:
    """ISO 8601 with the UTC offset in force at ``t`` in ``tz`` (to the second)."""
    if t is None:
        return None
    return datetime.fromtimestamp(round(t), tz).isoformat(timespec="seconds")


def to_json(result: SiteNight) -> dict[str, Any]:
    """The JSON document of ``policies schedule --format json``."""
    tz = result.tz
    return {
        "site": result.site,
        "night": result.night.isoformat(),
        "timezone": result.timezone,
        "sunset": _iso(result.sunset, tz),
        "sunrise": _iso(result.sunrise, tz),
        "groups": [
            {
                "group": g.group,
                "program": g.program,
                "on": _iso(g.schedule.on, tz),
                "off": _iso(g.schedule.off, tz),
                "changes": [
                    {"at": _iso(at, tz), "level": level} for at, level in g.schedule.changes
                ],
            }
            for g in result.groups
        ],
    }


def _local_utc(t: float | None, tz: tzinfo) -> tuple[str, str]:
    if t is None:
        return "-", "-"
    seconds = round(t)
    local = datetime.fromtimestamp(seconds, tz).strftime("%Y-%m-%d %H:%M:%S %z")
    utc = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return local[:-2] + ":" + local[-2:], utc


def format_table(result: SiteNight) -> list[str]:
    """The lines of ``policies schedule --format table``: the sun, then one row per change of
    level of each group (switch on, steps, switch off), local time and UTC."""
    tz = result.tz
    lines = [
        f"site {result.site}, nuit du / night of {result.night.isoformat()} ({result.timezone})"
    ]
    for label, t in (
        ("coucher du soleil / sunset", result.sunset),
        ("lever du soleil / sunrise", result.sunrise),
    ):
        local, utc = _local_utc(t, tz)
        text = f"{local} ({utc})" if t is not None else "aucun / none"
        lines.append(f"{label}: {text}")
    header = (
        "groupe / group",
        "programme / program",
        "heure locale / local time",
        "UTC",
        "niveau / level",
    )
    rows: list[tuple[str, str, str, str, str]] = []
    for g in result.groups:
        name = g.group if g.group is not None else "(sans groupe / no group)"
        klass = f" [{g.lighting_class}]" if g.lighting_class else ""
        program = f"{g.program}{klass}"
        s = g.schedule
        if s.on is None or s.off is None:
            rows.append((name, program, "-", "-", "éteint / never lit"))
            continue
        for index, (at, level) in enumerate(s.changes):
            label = f"{level:g} %" + (" (allumage / on)" if index == 0 else "")
            rows.append(
                (
                    name if index == 0 else "",
                    program if index == 0 else "",
                    *_local_utc(at, tz),
                    label,
                )
            )
        rows.append(("", "", *_local_utc(s.off, tz), "0 % (extinction / off)"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, tuple("-" * w for w in widths), *rows)
    )
    notes = [note for g in result.groups for note in g.notes]
    if notes:
        lines.append("notes:")
        lines += [f"  {note}" for note in dict.fromkeys(notes)]
    if not result.groups:
        lines.append("aucun luminaire / no luminaire at this site")
    return lines
