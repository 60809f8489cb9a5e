"""Compliance of the lighting with the arrêté of 27 December 2018 on light pollution (nuisances
lumineuses), where the inventory has the data: reported, not enforced. Pure: luminaires, the
policies and the site's sun in, findings out (no I/O).

Two rules:

- **colour temperature** (art. 3 II 3°): at most :data:`CCT_MAX_K` for the lighting of
  roads and footpaths (category a, the safety of movement) and of open-air car parks
  (category e) — usages :data:`CCT_USAGES`. Parks, heritage and sports grounds are not under
  this limit. The stricter limits of protected areas (art. 4: sites of astronomical
  observation, nature reserves; 2 700 K or 2 400 K) are not checked: the inventory does not say
  where they are.
- **switch-off** (art. 2): parks and gardens are switched off one hour after their closing at
  the latest, heritage put in light at 01:00 at the latest. Here: a luminaire of usage ``park``
  or ``heritage`` with a ``closing_time`` that the programs in force leave lit (level > 0 —
  a part-night switch-off counts as off, an exception that keeps it lit as lit) later than
  ``closing_time`` + :data:`AFTER_CLOSING_S` is a ``lit_after_closing`` finding, and a
  ``heritage`` luminaire lit after 01:00 a ``lit_after_1am`` finding (with or without a
  closing time). Night by night, the program of each night from the calendar
  (:func:`policies.programs.program_for`), its schedule from :func:`core.lighting.night_schedule`
  — the astronomical expectation: a photocell, a presence boost or a manual override is not in
  it.

What the inventory does not say is counted, not a finding: luminaires without ``usage``
(neither rule can be judged), without ``cct_k`` (usage under the colour rule, or no usage),
parks and heritage without ``closing_time`` (heritage still gets the 01:00 check).

Instants in seconds since the epoch (UTC), temperatures in K, local times ``HH:MM`` in the
site's time zone with the noon rule of the programs (at or after 12:00 the evening of the
night, before 12:00 the next morning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, tzinfo
from typing import Final, Literal

from core.lighting import NightSchedule, SunTimes, local_instant, night_schedule
from core.messages import LightingProgram
from policies.config import PoliciesConfig
from policies.programs import device_program, program_for

__all__ = [
    "AFTER_CLOSING_S",
    "CCT_MAX_K",
    "CCT_USAGES",
    "CLOSING_USAGES",
    "HERITAGE_LATEST",
    "CctFinding",
    "Compliance",
    "LitFinding",
    "Luminaire",
    "Unchecked",
    "check_compliance",
    "lit_after",
]

CCT_MAX_K: Final = 3000.0
"""Highest colour temperature of the lighting of roads, footpaths and car parks [K]."""
CCT_USAGES: Final = ("road", "pedestrian", "parking")
"""Usages under the colour-temperature limit (categories a and e of art. 1)."""
CLOSING_USAGES: Final = ("park", "heritage")
"""Usages switched off at the latest one hour after closing (as the issue asks)."""
AFTER_CLOSING_S: Final = 3600.0
"""How long a park may stay lit after its closing [s]."""
HERITAGE_LATEST: Final = "01:00"
"""Local time at which heritage put in light is off at the latest."""

LitKind = Literal["lit_after_closing", "lit_after_1am"]


@dataclass(frozen=True, slots=True)
class Luminaire:
    """A luminaire as the inventory has it: ``cct_k`` [K], ``usage`` (one of
    :data:`core.inventory.LUMINAIRE_USAGES`), ``closing_time`` (local ``HH:MM``); ``None``
    where the inventory says nothing."""

    device: str
    group: str | None = None
    lighting_class: str | None = None
    cct_k: float | None = None
    usage: str | None = None
    closing_time: str | None = None


@dataclass(frozen=True, slots=True)
class CctFinding:
    """A luminaire of a usage under the limit whose colour temperature is above
    :data:`CCT_MAX_K`."""

    device: str
    group: str | None
    usage: str
    cct_k: float


@dataclass(frozen=True, slots=True)
class LitFinding:
    """A luminaire lit after its ``deadline`` [s] on the night of ``night`` under ``program``:
    lit from ``lit_from`` (the first lit instant at or after the deadline) until ``lit_until``
    (the end of its last lit interval), ``lit_s`` [s] in all after the deadline."""

    kind: LitKind
    night: date
    device: str
    group: str | None
    usage: str
    closing_time: str | None
    program: str
    deadline: float
    lit_from: float
    lit_until: float
    lit_s: float


@dataclass(frozen=True, slots=True)
class Unchecked:
    """Luminaires whose data is missing, by what is missing."""

    usage_missing: int = 0
    cct_k_missing: int = 0
    closing_time_missing: int = 0


@dataclass(frozen=True, slots=True)
class Compliance:
    """The findings over ``nights`` for ``luminaires`` luminaires."""

    luminaires: int
    nights: tuple[date, ...]
    cct: list[CctFinding] = field(default_factory=list)
    lit: list[LitFinding] = field(default_factory=list)
    unchecked: Unchecked = field(default_factory=Unchecked)

    @property
    def compliant(self) -> bool:
        """No finding (what could not be checked does not count)."""
        return not self.cct and not self.lit


def lit_after(schedule: NightSchedule, deadline: float) -> tuple[float, float, float] | None:
    """``(lit_from, lit_until, lit_s)``: when ``schedule`` is lit (level > 0) after
    ``deadline`` [s] — the first lit instant at or after it, the end of the last lit interval
    and the time lit after it [s] — or ``None`` when it is off from ``deadline`` on. Intervals
    are half-open: a switch-off exactly at the deadline is in time."""
    if schedule.on is None or schedule.off is None:
        return None
    first: float | None = None
    until = 0.0
    total = 0.0
    changes = schedule.changes
    for index, (at, level) in enumerate(changes):
        end = changes[index + 1][0] if index + 1 < len(changes) else schedule.off
        start = max(at, deadline)
        if level > 0 and end > start:
            first = start if first is None else first
            until = end
            total += end - start
    return None if first is None else (first, until, total)


def _cct_findings(luminaires: Iterable[Luminaire]) -> list[CctFinding]:
    return [
        CctFinding(lum.device, lum.group, lum.usage, lum.cct_k)
        for lum in luminaires
        if lum.usage in CCT_USAGES and lum.cct_k is not None and lum.cct_k > CCT_MAX_K
    ]


def _unchecked(luminaires: Sequence[Luminaire]) -> Unchecked:
    return Unchecked(
        usage_missing=sum(lum.usage is None for lum in luminaires),
        cct_k_missing=sum(
            lum.cct_k is None and (lum.usage is None or lum.usage in CCT_USAGES)
            for lum in luminaires
        ),
        closing_time_missing=sum(
            lum.usage in CLOSING_USAGES and lum.closing_time is None for lum in luminaires
        ),
    )


def _deadlines(lum: Luminaire, night: date, tz: tzinfo) -> list[tuple[LitKind, float]]:
    found: list[tuple[LitKind, float]] = []
    if lum.usage in CLOSING_USAGES and lum.closing_time is not None:
        closing = local_instant(night, lum.closing_time, tz)
        found.append(("lit_after_closing", closing + AFTER_CLOSING_S))
    if lum.usage == "heritage":
        found.append(("lit_after_1am", local_instant(night, HERITAGE_LATEST, tz)))
    return found


def check_compliance(
    luminaires: Sequence[Luminaire],
    policies: PoliciesConfig,
    nights: Sequence[date],
    tz: tzinfo,
    sun_of: Callable[[date], SunTimes],
) -> Compliance:
    """The findings for ``luminaires`` over ``nights`` (local dates of the evenings) at a site
    in time zone ``tz`` whose sun on a night is ``sun_of(night)``
    (:func:`core.lighting.sun_times` at the site, or a fixed one in tests): colour temperature
    once per luminaire, switch-off night by night. :class:`LookupError` for a program the
    policies do not have."""
    lit: list[LitFinding] = []
    schedules: dict[tuple[LightingProgram, date], NightSchedule] = {}
    for night in nights:
        sun: SunTimes | None = None
        for lum in luminaires:
            deadlines = _deadlines(lum, night, tz)
            if not deadlines:
                continue
            name = program_for(policies, lum.group, night)
            program, _notes = device_program(
                policies, name, lum.lighting_class, lum.group, lum.device
            )
            schedule = schedules.get((program, night))
            if schedule is None:
                sun = sun_of(night) if sun is None else sun
                schedule = schedules[(program, night)] = night_schedule(program, night, tz, sun)
            for kind, deadline in deadlines:
                after = lit_after(schedule, deadline)
                if after is not None:
                    lit.append(
                        LitFinding(
                            kind=kind,
                            night=night,
                            device=lum.device,
                            group=lum.group,
                            usage=str(lum.usage),
                            closing_time=lum.closing_time,
                            program=name,
                            deadline=deadline,
                            lit_from=after[0],
                            lit_until=after[1],
                            lit_s=after[2],
                        )
                    )
    return Compliance(
        luminaires=len(luminaires),
        nights=tuple(nights),
        cct=_cct_findings(luminaires),
        lit=lit,
        unchecked=_unchecked(luminaires),
    )
