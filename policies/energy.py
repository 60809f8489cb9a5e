"""What-if lighting energy: the energy the luminaires of a site draw over a period of nights
under the programs in force (or one proposed program), against the no-dimming baseline — full
light from switch-on to switch-off. Pure: no I/O (``sobriety policies simulate`` in
``app/policies_simulate.py`` reads the inventory and calls :func:`simulate_energy`).

Units: powers in W, energies in Wh inside and kWh in the results, durations in hours, levels in
% of full light (fractions of 1 for the power curve), instants in s since the epoch (UTC).

- **The period** is the nights whose evening's local date is in [``since``, ``until``], both
  inclusive; a night runs from local noon to the next local noon (:mod:`core.lighting`), so it
  lasts 23 h or 25 h across a DST change.
- **Each luminaire** follows, night by night, the program of its lighting group
  (:func:`policies.programs.program_for`, or the proposed program for every group), with its
  own adjustments (:func:`policies.programs.device_program`: the floor of its lighting class,
  the part-night level of the exceptions that name its group or itself). Luminaires with the
  same group, class and exceptions follow the same program: its schedule
  (:func:`core.lighting.night_schedule` under the site's sun, once per night) is computed once
  per distinct program and night, and integrated for all of them at once.
- **Integration** is exact for the piecewise-constant schedule (a level holds between its
  changes, as the controllers hold it): ``Σ duration × P(level)`` with the one power curve
  :func:`core.luminaire.luminaire_power_w` at the luminaire's nominal power. The baseline is
  ``(off − on) × P(100 %)``. A night the program does not light (a polar day) counts 0 h.
- **Standby** [W] (``simulate.standby_w``, or a luminaire's own) is drawn whenever the driver
  is powered — the whole night window, lit or not — and is the same with and without dimming.
- **At the cabinet meters** (when ``simulate.line_loss_fraction`` or
  ``simulate.cabinet_overhead_w`` is set): the luminaires' energy × (1 + line losses) + the
  cabinets' overhead over the whole night window.
- A luminaire without a nominal power is counted as missing and left out of every energy
  figure (its lit hours still count): nothing is invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo

import numpy as np

from core.arrays import FloatArray
from core.lighting import NightSchedule, SunCache, night_schedule
from core.luminaire import luminaire_power_w
from core.messages import LightingProgram
from policies.config import PoliciesConfig
from policies.programs import device_program, program_for

__all__ = [
    "MAX_NIGHTS",
    "GroupEnergy",
    "Luminaire",
    "NightEnergy",
    "SiteEnergy",
    "nights_between",
    "schedule_energy_wh",
    "schedule_segments",
    "simulate_energy",
]

MAX_NIGHTS = 366
"""The longest period :func:`simulate_energy` accepts [nights]."""


@dataclass(frozen=True, slots=True)
class Luminaire:
    """One luminaire of the inventory: its lighting ``group`` and ``lighting_class`` (``None``:
    none), its nominal input power at full light [W] (``None``: unknown) and its driver's
    standby [W] (``None``: the policies' ``simulate.standby_w``)."""

    device: str
    group: str | None
    lighting_class: str | None
    nominal_w: float | None
    standby_w: float | None = None


@dataclass(slots=True)
class GroupEnergy:
    """One lighting group over the period: the nights it followed each program, its
    luminaires (and how many have no nominal power), the hours lit under the programs and
    from switch-on to switch-off (the baseline's), per luminaire, summed over the nights, and
    the energies [kWh] at the luminaires."""

    group: str | None
    programs: dict[str, int] = field(default_factory=dict)
    luminaires: int = 0
    missing_power: int = 0
    lit_hours: float = 0.0
    baseline_hours: float = 0.0
    kwh: float = 0.0
    baseline_kwh: float = 0.0

    @property
    def saved_kwh(self) -> float:
        """Baseline minus the programs [kWh]."""
        return self.baseline_kwh - self.kwh

    @property
    def saved_fraction(self) -> float | None:
        """Saved over baseline (``None`` when the baseline is 0)."""
        return self.saved_kwh / self.baseline_kwh if self.baseline_kwh > 0 else None


@dataclass(frozen=True, slots=True)
class NightEnergy:
    """The site over one night: its length (local noon to noon) [h], the energies at the
    luminaires [kWh], and at the cabinet meters (``None`` when no loss is configured)."""

    night: date
    hours: float
    kwh: float
    baseline_kwh: float
    cabinet_kwh: float | None
    cabinet_baseline_kwh: float | None

    @property
    def saved_kwh(self) -> float:
        """Baseline minus the programs [kWh] at the luminaires."""
        return self.baseline_kwh - self.kwh


@dataclass(frozen=True, slots=True)
class SiteEnergy:
    """The whole period at one site: per night and per group, and the totals [kWh]."""

    since: date
    until: date
    program: str | None
    luminaires: int
    missing_power: int
    cabinets: int
    standby_w: float
    line_loss_fraction: float
    cabinet_overhead_w: float
    hours: float
    nights: list[NightEnergy]
    groups: list[GroupEnergy]

    @property
    def kwh(self) -> float:
        """At the luminaires, under the programs [kWh]."""
        return sum(n.kwh for n in self.nights)

    @property
    def baseline_kwh(self) -> float:
        """At the luminaires, without dimming [kWh]."""
        return sum(n.baseline_kwh for n in self.nights)

    @property
    def saved_kwh(self) -> float:
        """Baseline minus the programs at the luminaires [kWh]."""
        return self.baseline_kwh - self.kwh

    @property
    def saved_fraction(self) -> float | None:
        """Saved over baseline (``None`` when the baseline is 0)."""
        return self.saved_kwh / self.baseline_kwh if self.baseline_kwh > 0 else None

    @property
    def at_cabinets(self) -> bool:
        """Whether cabinet losses are configured (cabinet figures are given)."""
        return self.line_loss_fraction > 0 or self.cabinet_overhead_w > 0

    @property
    def cabinet_kwh(self) -> float | None:
        """At the cabinet meters, under the programs [kWh] (``None``: no loss configured)."""
        return sum(n.cabinet_kwh or 0.0 for n in self.nights) if self.at_cabinets else None

    @property
    def cabinet_baseline_kwh(self) -> float | None:
        """At the cabinet meters, without dimming [kWh] (``None``: no loss configured)."""
        if not self.at_cabinets:
            return None
        return sum(n.cabinet_baseline_kwh or 0.0 for n in self.nights)


def nights_between(since: date, until: date) -> list[date]:
    """The nights of the period: every local date of an evening from ``since`` to ``until``,
    both inclusive. :class:`ValueError` when ``until`` is before ``since`` or the period is
    longer than :data:`MAX_NIGHTS`."""
    count = (until - since).days + 1
    if count < 1:
        raise ValueError(f"until {until.isoformat()} is before since {since.isoformat()}")
    if count > MAX_NIGHTS:
        raise ValueError(f"{count} nights: at most {MAX_NIGHTS}")
    return [since + timedelta(days=n) for n in range(count)]


def schedule_segments(schedule: NightSchedule) -> tuple[FloatArray, FloatArray]:
    """The schedule as (durations [h], levels [%]): each level holds from its change to the
    next one, the last until the switch-off. Empty when the schedule is not lit."""
    if schedule.on is None or schedule.off is None or not schedule.changes:
        return np.zeros(0), np.zeros(0)
    starts = np.array([at for at, _level in schedule.changes], dtype=float)
    levels = np.array([level for _at, level in schedule.changes], dtype=float)
    ends = np.append(starts[1:], schedule.off)
    return (ends - starts) / 3600.0, levels


def schedule_energy_wh(
    schedule: NightSchedule, nominal_w: FloatArray
) -> tuple[FloatArray, FloatArray, float]:
    """The lamp energy [Wh] of luminaires of nominal powers ``nominal_w`` [W] following
    ``schedule`` (standby excluded), their baseline [Wh] (100 % from on to off), and the hours
    lit (level above 0) under the schedule — exact for the piecewise-constant levels."""
    nominal = np.asarray(nominal_w, dtype=float)
    hours, levels = schedule_segments(schedule)
    if not len(hours):
        zero = np.zeros_like(nominal)
        return zero, zero.copy(), 0.0
    power = luminaire_power_w(levels[:, None] / 100.0, nominal[None, :], 0.0)  # (segments, n)
    energy = np.asarray(hours @ power, dtype=float)
    baseline = np.asarray(hours.sum() * luminaire_power_w(1.0, nominal, 0.0), dtype=float)
    return energy, baseline, float(hours[levels > 0].sum())


def _noon(day: date, tz: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=tz).timestamp()


def _class(value: str | None) -> str | None:
    return value.strip().upper() if value and value.strip() else None


def _group_order(group: str | None) -> tuple[int, str]:
    return (1, "") if group is None else (0, group)


def simulate_energy(
    policies: PoliciesConfig,
    luminaires: Sequence[Luminaire],
    tz: tzinfo,
    lat: float,
    lon: float,
    since: date,
    until: date,
    *,
    program: str | None = None,
    cabinets: int = 0,
    sun: SunCache | None = None,
) -> SiteEnergy:
    """The energy of ``luminaires`` at a site at (``lat``, ``lon``) [°] in ``tz`` over the
    nights of ``since`` to ``until`` (inclusive), each group following its calendar's program
    or, with ``program``, that one; ``cabinets`` is the count of the site's cabinet meters
    (their overhead). :class:`LookupError` for a program the policies do not have,
    :class:`ValueError` for a period :func:`nights_between` refuses."""
    days = nights_between(since, until)
    if program is not None and program not in policies.programs:
        raise LookupError(
            f"no program {program!r} in the policies (one of {', '.join(policies.programs)})"
        )
    settings = policies.simulate
    cache = sun if sun is not None else SunCache()
    names = sorted({lum.group for lum in luminaires}, key=_group_order)
    group_index = {name: k for k, name in enumerate(names)}
    groups = [GroupEnergy(name) for name in names]
    n = len(luminaires)
    has_power = np.array([lum.nominal_w is not None for lum in luminaires], dtype=bool)
    nominal = np.array([lum.nominal_w or 0.0 for lum in luminaires], dtype=float)
    standby = np.array(
        [settings.standby_w if lum.standby_w is None else lum.standby_w for lum in luminaires],
        dtype=float,
    )
    standby = np.where(has_power, standby, 0.0)
    for lum in luminaires:
        g = groups[group_index[lum.group]]
        g.luminaires += 1
        g.missing_power += lum.nominal_w is None
    # Luminaires that the policies cannot tell apart: same group, class and exceptions naming
    # the device itself (those naming its group come with the group).
    kinds: dict[tuple[str | None, str | None, tuple[int, ...]], list[int]] = {}
    for i, lum in enumerate(luminaires):
        named = tuple(k for k, ex in enumerate(policies.exceptions) if lum.device in ex.devices)
        kinds.setdefault((lum.group, _class(lum.lighting_class), named), []).append(i)
    members = [(key, np.array(idx, dtype=np.intp)) for key, idx in kinds.items()]
    resolved: dict[tuple[str, tuple[str | None, str | None, tuple[int, ...]]], LightingProgram] = {}
    reference = {key: luminaires[int(idx[0])].device for key, idx in members}
    lines = 1.0 + settings.line_loss_fraction
    found: list[NightEnergy] = []
    total_hours = 0.0
    for day in days:
        hours = (_noon(day + timedelta(days=1), tz) - _noon(day, tz)) / 3600.0
        total_hours += hours
        sun_times = cache.get(lat, lon, day, tz)
        schedules: dict[LightingProgram, NightSchedule] = {}
        night_wh = np.zeros(len(groups))
        night_base_wh = np.zeros(len(groups))
        for key, idx in members:
            group, klass, _named = key
            name = program if program is not None else program_for(policies, group, day)
            lighting = resolved.get((name, key))
            if lighting is None:
                lighting, _notes = device_program(policies, name, klass, group, reference[key])
                resolved[(name, key)] = lighting
            schedule = schedules.get(lighting)
            if schedule is None:
                schedule = schedules[lighting] = night_schedule(lighting, day, tz, sun_times)
            energy, baseline, lit = schedule_energy_wh(schedule, nominal[idx])
            powered = has_power[idx]
            on, off = schedule.on, schedule.off
            on_hours = 0.0 if on is None or off is None else (off - on) / 3600.0
            g = groups[group_index[group]]
            g.lit_hours += lit * len(idx)
            g.baseline_hours += on_hours * len(idx)
            stand = standby[idx] * hours
            night_wh[group_index[group]] += float(np.sum((energy + stand)[powered]))
            night_base_wh[group_index[group]] += float(np.sum((baseline + stand)[powered]))
        for g in groups:  # the program of each group that night (one per group and night)
            name = program if program is not None else program_for(policies, g.group, day)
            g.programs[name] = g.programs.get(name, 0) + 1
        for k, g in enumerate(groups):
            g.kwh += float(night_wh[k]) / 1000.0
            g.baseline_kwh += float(night_base_wh[k]) / 1000.0
        kwh, base = float(night_wh.sum()) / 1000.0, float(night_base_wh.sum()) / 1000.0
        overhead = cabinets * settings.cabinet_overhead_w * hours / 1000.0
        at_cabinets = settings.line_loss_fraction > 0 or settings.cabinet_overhead_w > 0
        found.append(
            NightEnergy(
                day,
                hours,
                kwh,
                base,
                kwh * lines + overhead if at_cabinets else None,
                base * lines + overhead if at_cabinets else None,
            )
        )
    for g in groups:
        if g.luminaires:
            g.lit_hours /= g.luminaires
            g.baseline_hours /= g.luminaires
    return SiteEnergy(
        since=since,
        until=until,
        program=program,
        luminaires=n,
        missing_power=int(n - has_power.sum()),
        cabinets=cabinets,
        standby_w=settings.standby_w,
        line_loss_fraction=settings.line_loss_fraction,
        cabinet_overhead_w=settings.cabinet_overhead_w,
        hours=total_hours,
        nights=found,
        groups=groups,
    )
