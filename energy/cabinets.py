"""The lighting cabinets per night (table ``cabinet_nights``, view ``api.lighting_cabinets``).

A cabinet meter's energy per night comes from its counter by the rules of the other meters
(:mod:`energy.service` writes it with :func:`save_energy`). After the luminaires of a site are
done, :func:`complete_nights` sets beside it what the luminaires it feeds (their ``cabinet``
property) say: how many, how many have a night of their own, the sum of their energy, and the
no-dimming baseline — each luminaire's ``nominal_power_w`` × the hours it was lit, from its own
dim telemetry where it has some, else from the lighting program of its published config
(``device_configs``) under the site's sun (:func:`energy.lighting.program_lit_hours`). A
luminaire with neither (no telemetry, no config, a site without coordinates) leaves the
baseline incomplete; it is never guessed.

The program is the one the config holds now: recomputing an old night uses today's program
(the service's rescan of the last days is not affected; a history recompute after a program
change is).

Energies in kWh, times in seconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from pydantic import ValidationError

from core.lighting import SunCache, night_schedule
from core.messages import LightingProgram
from energy.daily import DayFigures
from energy.lighting import program_lit_hours

__all__ = ["complete_nights", "save_energy"]


def save_energy(
    conn: psycopg.Connection, device_id: int, nights: Sequence[date], figures: DayFigures
) -> int:
    """Upsert a cabinet meter's energy per night (the rest is set by
    :func:`complete_nights`); rows written."""
    rows = [
        (device_id, night, float(figures.kwh[i]), bool(figures.complete[i]))
        for i, night in enumerate(nights)
    ]
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO cabinet_nights (device_id, night, kwh, complete)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (device_id, night) DO UPDATE
               SET kwh = EXCLUDED.kwh, complete = EXCLUDED.complete, computed_at = now()""",
            rows,
        )
    return len(rows)


@dataclass(frozen=True, slots=True)
class _Lamp:
    cabinet_id: int
    night: date
    nominal_w: float | None
    measured: bool  # has a night of its own
    kwh: float | None
    complete: bool
    baseline_kwh: float | None  # from its own telemetry
    program: dict[str, Any] | None  # the lighting of its published config


def _lamps(conn: psycopg.Connection, site: str, first: date, last: date) -> list[_Lamp]:
    rows = conn.execute(
        """SELECT c.device_id, c.night, l.nominal_power_w, n.device_id IS NOT NULL, n.kwh,
                  coalesce(n.complete, false), n.baseline_kwh, g.payload -> 'lighting'
           FROM cabinet_nights c
           JOIN devices cab ON cab.id = c.device_id AND cab.site = %(s)s
           JOIN devices l ON l.site = cab.site AND l.kind = 'luminaire'
                         AND l.properties ->> 'cabinet' = cab.device
           LEFT JOIN luminaire_nights n ON n.device_id = l.id AND n.night = c.night
           LEFT JOIN device_configs g ON g.device_id = l.id
           WHERE c.night BETWEEN %(a)s AND %(b)s""",
        {"s": site, "a": first, "b": last},
    ).fetchall()
    return [_Lamp(*row) for row in rows]


def _program(payload: dict[str, Any] | None) -> LightingProgram | None:
    if not payload:
        return None
    try:
        return LightingProgram.model_validate(payload)
    except ValidationError:  # a config the policies could not have published: not guessed
        return None


def complete_nights(conn: psycopg.Connection, site: str, first: date, last: date) -> int:
    """Set the luminaires' side of the site's cabinet nights from ``first`` to ``last``
    (inclusive); cabinet nights updated."""
    place = conn.execute("SELECT timezone, lat, lon FROM sites WHERE site = %s", (site,)).fetchone()
    if place is None:
        return 0
    zone = ZoneInfo(place[0])
    lat, lon = place[1], place[2]
    sun = SunCache()
    programs: dict[str, LightingProgram | None] = {}
    lit_of: dict[tuple[str, date], float | None] = {}
    totals: dict[tuple[int, date], list[Any]] = {}
    for lamp in _lamps(conn, site, first, last):
        # luminaires, measured, kwh, complete, baseline, by telemetry, by program
        acc = totals.setdefault((lamp.cabinet_id, lamp.night), [0, 0, 0.0, True, 0.0, 0, 0])
        acc[0] += 1
        if lamp.measured:
            acc[1] += 1
            acc[2] += lamp.kwh or 0.0
        acc[3] = acc[3] and lamp.measured and lamp.complete
        if lamp.measured and lamp.baseline_kwh is not None:
            acc[4] += lamp.baseline_kwh
            acc[5] += 1
            continue
        if lamp.nominal_w is None or lamp.program is None or lat is None or lon is None:
            continue
        key = repr(sorted(lamp.program.items()))
        if key not in programs:
            programs[key] = _program(lamp.program)
        program = programs[key]
        if program is None:
            continue
        if (key, lamp.night) not in lit_of:
            sky = sun.get(lat, lon, lamp.night, zone)
            lit_of[(key, lamp.night)] = program_lit_hours(
                night_schedule(program, lamp.night, zone, sky)
            )
        hours = lit_of[(key, lamp.night)]
        if hours is not None:
            acc[4] += lamp.nominal_w * hours / 1000.0
            acc[6] += 1
    conn.execute(
        """UPDATE cabinet_nights c SET luminaires = 0, measured = 0, luminaires_kwh = NULL,
               luminaires_complete = false, baseline_kwh = NULL, baseline_telemetry = 0,
               baseline_program = 0
           FROM devices d WHERE d.id = c.device_id AND d.site = %s
             AND c.night BETWEEN %s AND %s""",
        (site, first, last),
    )  # a luminaire moved to another cabinet, or removed, counts no more
    rows = [
        (n, measured, kwh if measured else None, complete and n > 0,
         baseline if by_telemetry + by_program else None, by_telemetry, by_program, cab, night)
        for (cab, night), (n, measured, kwh, complete, baseline, by_telemetry, by_program)
        in totals.items()
    ]  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            """UPDATE cabinet_nights SET luminaires = %s, measured = %s, luminaires_kwh = %s,
                   luminaires_complete = %s, baseline_kwh = %s, baseline_telemetry = %s,
                   baseline_program = %s
               WHERE device_id = %s AND night = %s""",
            rows,
        )
    return len(rows)
