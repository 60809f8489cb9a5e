"""Faults of what meters report, not of what they measure: counter resets, rollovers, meter
replacements, spurious zeros, devices that report power without a counter and power-reporting
gaps (``[faults]`` in :mod:`simulators.scenario`).

A device with an ``energy`` counter reports ``register(E)`` where ``E`` is its physical counter
(the energy it really consumed, on top of the index it started with): ``E + base``, or
``(E + base) mod counter_max_wh`` for a register that rolls over. A reset sets ``base`` so that
the register reads 0 at the instant, a replacement so that it reads the new meter's index; a
spurious zero replaces one reading by 0. A power-only device leaves ``energy`` out of every
sample (its energy must come from its power); a power gap leaves ``power`` out of a device's
samples for ``power_gap_s`` (its other metrics go on) — on a power-only device when there is
one, where the gap is a hole in its energy. The true energy of every
device (``Truth.energy_wh``) is untouched: these are faults of the reporting.

The plan (:func:`plan_meter_faults`) depends on the town (scenario and seed), the start and the
duration of the run only, drawn from a generator of its own so that the physics and the other
faults of a run are those of the same run without these faults; the inventory
(:func:`simulators.town.write_inventory`) carries what it declares: ``counter_max_wh`` of a
rolling register and ``replaced_at`` (ISO 8601 UTC) of a replaced meter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from core.arrays import FloatArray
from simulators.devices import KIND_METRICS, Group
from simulators.truth import Truth

if TYPE_CHECKING:
    from simulators.town import Town

Key = tuple[int, int]
"""A device: (group index, index in the group)."""
Device = tuple[str, str]
"""A device: (site, device id)."""
INVENTORY_COLUMNS = ("counter_max_wh", "replaced_at")
"""Devices-file columns (``devices.properties``) that declare the counter faults."""
_SEED_TAG = 0x6D65746572  # "meter": this plan's generator, apart from the fleet's
COUNTER_KINDS = frozenset(k for k, ms in KIND_METRICS.items() if any(m[0] == "energy" for m in ms))
"""Kinds with an ``energy`` counter."""
POWER_KINDS = frozenset(k for k, ms in KIND_METRICS.items() if any(m[0] == "power" for m in ms))
"""Kinds that report ``power`` (every one of them also has a counter)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """One fault: ``kind``, device, ``at`` [s since epoch, on a simulation step]; for a
    rollover ``at`` is the instant aimed at (the register wraps when its energy says)."""

    kind: str
    site: str
    device: str
    at: float
    fraction: float = 0.0  # for a replacement: new index = fraction x the index replaced


@dataclass
class MeterFaultPlan:
    """Every meter fault of a run."""

    faults: list[Planned] = field(default_factory=list)
    counter_max_wh: float = 0.0
    power_only: list[Device] = field(default_factory=list)  # report no energy counter

    def of(self, kind: str) -> list[Planned]:
        """The faults of ``kind``."""
        return [f for f in self.faults if f.kind == kind]

    def inventory(self) -> dict[Device, dict[str, object]]:
        """What the inventory declares per device: ``counter_max_wh`` of a rolling register,
        ``replaced_at`` (ISO 8601 UTC) of a replaced meter."""
        out: dict[Device, dict[str, object]] = {}
        for f in self.faults:
            if f.kind == "counter_rollover":
                out.setdefault((f.site, f.device), {})["counter_max_wh"] = _number(
                    self.counter_max_wh
                )
            elif f.kind == "meter_replaced":
                out.setdefault((f.site, f.device), {})["replaced_at"] = datetime.fromtimestamp(
                    f.at, UTC
                ).isoformat()
        return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def plan_meter_faults(town: Town, t0: float, days: float) -> MeterFaultPlan:
    """The meter faults of ``town`` for a run from ``t0`` [s since epoch] lasting ``days``.

    Resets, rollovers, replacements and spurious zeros go to distinct devices with a counter
    as long as there are enough of them; power gaps to devices that report power. Times fall on
    simulation steps, between 5 % and 85 % of the run (rollovers aim at 30-60 %).
    """
    spec = town.scenario.faults
    rng = np.random.default_rng([town.seed, _SEED_TAG])
    step = float(town.scenario.step_s)
    span = days * 86400.0
    counters = [(d.site, d.device) for d in town.devices if d.kind in COUNTER_KINDS]
    powers = [(d.site, d.device) for d in town.devices if d.kind in POWER_KINDS]
    plan = MeterFaultPlan(counter_max_wh=spec.counter_max_wh)
    if spec.power_only and powers:
        order = rng.permutation(len(powers))[: spec.power_only]
        plan.power_only = [powers[int(k)] for k in sorted(order.tolist())]
        counters = [c for c in counters if c not in set(plan.power_only)]

    def at(lo: float, hi: float) -> float:
        return t0 + math.ceil(float(rng.uniform(lo, hi)) * span / step) * step

    counted = (
        ("counter_reset", spec.counter_resets),
        ("counter_rollover", spec.counter_rollovers),
        ("meter_replaced", spec.meter_replacements),
        ("spurious_zero", spec.spurious_zeros),
    )
    wanted = sum(n for _k, n in counted)
    if wanted and counters:
        order = rng.permutation(len(counters))
        picks = [counters[int(order[n % len(order)])] for n in range(wanted)]
        n = 0
        for kind, count in counted:
            for _ in range(count):
                site, device = picks[n]
                n += 1
                when = at(0.3, 0.6) if kind == "counter_rollover" else at(0.05, 0.85)
                fraction = float(rng.uniform(0.1, 0.5)) if kind == "meter_replaced" else 0.0
                plan.faults.append(Planned(kind, site, device, when, fraction))
    gappable = plan.power_only or powers
    if spec.power_gaps and gappable:
        for n in range(spec.power_gaps):
            if plan.power_only:  # each power-only device in turn
                site, device = plan.power_only[n % len(plan.power_only)]
            else:
                site, device = powers[int(rng.integers(len(powers)))]
            plan.faults.append(Planned("power_gap", site, device, at(0.05, 0.85)))
    plan.faults.sort(key=lambda f: (f.at, f.kind, f.site, f.device))
    return plan


@dataclass
class _Register:
    """What a counter shows for its physical counter ``E`` [Wh]: ``E + base``, modulo
    ``modulus`` when it rolls over."""

    base: float = 0.0
    modulus: float | None = None
    wraps: int = 0

    def show(self, energy_wh: float) -> float:
        value = energy_wh + self.base
        if self.modulus is not None:
            return value % self.modulus
        return max(value, 0.0)

    def turns(self, energy_wh: float) -> int:
        """Times the register went past its maximum so far."""
        if self.modulus is None:
            return 0
        return math.floor((energy_wh + self.base) / self.modulus)


Expected = Callable[[Key, float], float]
"""The energy [Wh] device ``key`` is expected to count from the start to a time [s]."""


class MeterFaults:
    """The meter faults of one run, applied to what the devices report."""

    def __init__(
        self,
        plan: MeterFaultPlan,
        groups: list[Group],
        where: Mapping[Device, Key],
        truth: Truth,
        expected_wh: Expected,
        power_gap_s: float,
    ) -> None:
        self.plan, self.groups, self.truth = plan, groups, truth
        self.power_gap_s = power_gap_s
        self.registers: dict[Key, _Register] = {}
        self.pending = [(f, where[(f.site, f.device)]) for f in plan.faults]
        self.zero_next: set[Key] = set()
        self.gap_until: dict[Key, float] = {}
        self.power_only = {where[d] for d in plan.power_only}
        for device in plan.power_only:
            truth.count_fault("power_only")
            truth.events.append({"kind": "power_only", "site": device[0], "device": device[1]})
        for f, key in self.pending:
            if f.kind != "counter_rollover":
                continue
            # The register starts below its maximum by what it should count until ``at``.
            start = self._energy(key)
            headroom = min(expected_wh(key, f.at), 0.5 * plan.counter_max_wh)
            reg = self.registers.setdefault(key, _Register())
            reg.modulus = plan.counter_max_wh
            reg.base = plan.counter_max_wh - headroom - start
        self.pending = [(f, k) for f, k in self.pending if f.kind != "counter_rollover"]
        self.rolling = [k for k, r in self.registers.items() if r.modulus is not None]

    def _energy(self, key: Key) -> float:
        return float(self.groups[key[0]].values()["energy"][key[1]])

    def _event(self, kind: str, key: Key, at: float, **extra: float) -> None:
        group = self.groups[key[0]]
        self.truth.count_fault(kind)
        self.truth.events.append(
            {"kind": kind, "device": group.ids[key[1]], "site": group.site, "at": at, **extra}
        )

    def inject(self, t: float) -> None:
        """Start the faults due at ``t`` (after the physics of the step) and record the
        rollovers that happened during it."""
        while self.pending and self.pending[0][0].at <= t:
            f, key = self.pending.pop(0)
            if f.kind == "spurious_zero":
                self.zero_next.add(key)  # recorded when the reading is taken
            elif f.kind == "power_gap":
                self.gap_until[key] = t + self.power_gap_s
                group = self.groups[key[0]]
                self.truth.count_fault(f.kind)
                self.truth.events.append(
                    {
                        "kind": f.kind,
                        "device": group.ids[key[1]],
                        "site": group.site,
                        "start": t,
                        "end": t + self.power_gap_s,
                    }
                )
            else:
                energy = self._energy(key)
                reg = self.registers.setdefault(key, _Register())
                if f.kind == "counter_reset":
                    reg.base = -energy
                    reg.wraps = reg.turns(energy)
                    self._event(f.kind, key, t)
                else:  # meter_replaced
                    index = round(f.fraction * reg.show(energy), 2)
                    reg.base = index - energy
                    reg.wraps = reg.turns(energy)
                    self._event(f.kind, key, t, new_index_wh=index)
        for key in self.rolling:
            reg = self.registers[key]
            turns = reg.turns(self._energy(key))
            if turns > reg.wraps:
                reg.wraps = turns
                assert reg.modulus is not None
                self._event("counter_rollover", key, t, counter_max_wh=reg.modulus)

    def skip(self, key: Key, t: float) -> frozenset[str]:
        """The metrics device ``key`` leaves out of its sample at ``t``."""
        gap = self.gap_until.get(key, -1.0) > t
        if key in self.power_only:
            return _POWER_AND_ENERGY if gap else _ENERGY
        return _POWER if gap else _NONE

    def reported(self, key: Key, t: float, values: dict[str, FloatArray]) -> dict[str, FloatArray]:
        """``values`` of device ``key``'s group as it reports them at ``t``: its counter as its
        register shows it (a spurious zero is recorded here, at the reading it replaces)."""
        reg = self.registers.get(key)
        zero = key in self.zero_next
        if reg is None and not zero:
            return values
        i = key[1]
        energy = values["energy"].copy()
        if zero:
            self.zero_next.discard(key)
            energy[i] = 0.0
            self._event("spurious_zero", key, t)
        else:
            assert reg is not None
            energy[i] = reg.show(float(energy[i]))
        return {**values, "energy": energy}


_POWER = frozenset({"power"})
_ENERGY = frozenset({"energy"})
_POWER_AND_ENERGY = frozenset({"power", "energy"})
_NONE: frozenset[str] = frozenset()
