"""What the policies give one luminaire on one night, and one device at one moment: pure
functions over a :class:`~policies.config.PoliciesConfig` (no I/O).

- :func:`program_for`: the program a lighting group follows on the night of a local date
  (calendar rules, then the group's program, then the default);
- :func:`device_program`: the :class:`core.messages.LightingProgram` a luminaire is sent — the
  steps raised to the floor of its lighting class, and the part-night level of the exceptions
  it belongs to — with a note for every adjustment;
- :func:`reporting_for`: the :class:`core.messages.Reporting` of a device kind by day, by night
  or escalated (a DMA under suspicion of a leak).

Levels in % of full light. A floor raises a dimming step (and a presence boost) below it; it does
not raise the part-night switch-off (level 0): switching off is a deliberate choice, and only
the luminaires of an exception stay lit then, at the exception's floor (itself raised to the
class floor).
"""

from __future__ import annotations

from datetime import date

from core.messages import LightingProgram, Reporting
from policies.config import WEEKDAYS, CalendarRule, PoliciesConfig, Program

__all__ = [
    "device_program",
    "floor_adjustments",
    "program_for",
    "reporting_for",
    "rule_applies",
]


def rule_applies(rule: CalendarRule, group: str | None, day: date) -> bool:
    """Whether ``rule`` holds for ``group`` on the night of the local date ``day`` (the
    evening's date: the night of Saturday to Sunday is a Saturday)."""
    if rule.groups is not None and group not in rule.groups:
        return False
    if rule.weekdays is not None and WEEKDAYS[day.weekday()] not in rule.weekdays:
        return False
    start, end = rule.from_, rule.to
    if start is None and end is None:
        return True
    if start is not None and end is not None and len(start) == 5:  # MM-DD, every year
        month_day = day.strftime("%m-%d")
        if start <= end:
            return start <= month_day <= end
        return month_day >= start or month_day <= end  # over New Year
    iso = day.isoformat()
    return (start is None or start <= iso) and (end is None or iso <= end)


def program_for(policies: PoliciesConfig, group: str | None, day: date) -> str:
    """The name of the program ``group`` (``None``: a luminaire without a group) follows on the
    night of the local date ``day``: the first calendar rule that applies, else the group's
    program (``calendars.groups``), else ``calendars.default``."""
    calendars = policies.calendars
    for rule in calendars.rules:
        if rule_applies(rule, group, day):
            return rule.program
    if group is not None and group in calendars.groups:
        return calendars.groups[group]
    return calendars.default


def _program(policies: PoliciesConfig, name: str) -> Program:
    try:
        return policies.programs[name]
    except KeyError:
        raise LookupError(
            f"no program {name!r} in the policies (one of {', '.join(policies.programs)})"
        ) from None


def _class_floor(policies: PoliciesConfig, lighting_class: str | None) -> tuple[str, float] | None:
    if not lighting_class:
        return None
    klass = lighting_class.strip().upper()
    floor = policies.floors.get(klass)
    return None if floor is None else (klass, floor)


def _floored(
    name: str, program: Program, floor: tuple[str, float] | None
) -> tuple[list[tuple[str, float]], float, list[str]]:
    """The steps and presence boost of ``program`` raised to ``floor`` (class, level [%]),
    with a note per raise."""
    steps = list(program.steps)
    boost = program.presence_boost
    notes: list[str] = []
    if floor is None:
        return steps, boost, notes
    klass, level = floor
    for index, (when, step) in enumerate(program.steps):
        if step < level:
            steps[index] = (when, level)
            notes.append(
                f"program {name}, step {index + 1} ({when}, {step:g} %): raised to {level:g} % "
                f"(floor of class {klass})"
            )
    if boost < level:
        notes.append(
            f"program {name}, presence boost {boost:g} %: raised to {level:g} % "
            f"(floor of class {klass})"
        )
        boost = level
    return steps, boost, notes


def device_program(
    policies: PoliciesConfig,
    program_name: str,
    lighting_class: str | None,
    group: str | None,
    device: str,
) -> tuple[LightingProgram, list[str]]:
    """The program a luminaire (``device`` of lighting ``group``, of ``lighting_class``) is
    sent when it follows ``program_name``, and a note per adjustment: each step below the floor
    of its class raised (``program residential, step 2 (23:30, 20 %): raised to 30 % (floor of
    class M4)``), and its part-night level when an exception keeps it lit.

    A class without a floor (or no class) raises nothing. :class:`LookupError` for a program
    the policies do not have."""
    program = _program(policies, program_name)
    floor = _class_floor(policies, lighting_class)
    steps, boost, notes = _floored(program_name, program, floor)
    part_night_level = 0.0
    if program.part_night is not None:
        lit = [
            ex
            for ex in policies.exceptions
            if (group is not None and group in ex.groups) or device in ex.devices
        ]
        if lit:
            kept = max(lit, key=lambda ex: ex.floor)
            part_night_level = kept.floor
            start, end = program.part_night
            note = (
                f"program {program_name}, part-night {start}-{end}: stays lit at "
                f"{kept.floor:g} % (exception: {kept.reason})"
            )
            if floor is not None and part_night_level < floor[1]:
                part_night_level = floor[1]
                note += f", raised to {floor[1]:g} % (floor of class {floor[0]})"
            notes.append(note)
    lighting = LightingProgram(
        on_offset_min=program.on_offset_min,
        off_offset_min=program.off_offset_min,
        steps=tuple(steps),
        presence_boost=boost,
        presence_hold_s=program.presence_hold_s,
        on_lux=program.on_lux if program.on == "lux" else None,
        off_lux=program.off_lux if program.off == "lux" else None,
        lux_window_min=program.lux_window_min,
        part_night=program.part_night,
        part_night_level=part_night_level,
    )
    return lighting, notes


def floor_adjustments(policies: PoliciesConfig) -> list[str]:
    """Every raise the floors make: for each program and each lighting class of ``floors``,
    the notes of :func:`device_program` about its steps (and presence boost)."""
    notes: list[str] = []
    for name, program in policies.programs.items():
        for klass, level in policies.floors.items():
            notes.extend(_floored(name, program, (klass, level))[2])
    return notes


def reporting_for(policies: PoliciesConfig, kind: str, night: bool, escalated: bool) -> Reporting:
    """The reporting of a device of ``kind``: every ``night_interval_s`` at night (between
    sunset and sunrise at the site) or ``day_interval_s`` by day, and every
    ``escalated_interval_s`` day and night when ``escalated`` (a sensor of a DMA with an active
    leak alert); the batch, deadbands and maximum silence stay those of the kind.
    :class:`LookupError` for an unknown kind."""
    try:
        rates = policies.reporting[kind]
    except KeyError:
        raise LookupError(
            f"no reporting for device kind {kind!r} (one of {', '.join(policies.reporting)})"
        ) from None
    if escalated:
        interval = rates.escalated_interval_s
    else:
        interval = rates.night_interval_s if night else rates.day_interval_s
    return Reporting(
        interval_s=interval,
        batch=rates.batch,
        deadband=dict(rates.deadband),
        max_silence_s=rates.max_silence_s,
    )
