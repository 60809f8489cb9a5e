"""The plan of a history (:mod:`simulators.history`): the DMAs drawn from a scenario — customers,
meters, sensors, hydraulics — and every event of the period with its ground truth (leaks,
leak-free changes, customer events, meter faults). Nothing here touches the database.

Two random streams: the first draws what the first evaluation already drew, in the same order
(the same seed gives the same customers and leaks as before the hydraulic model grew), the
second everything added since (inlets, sensors, FAVAD exponents, new changes)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from core.arrays import FloatArray
from core.errors import ConfigError
from simulators import physics
from simulators.history_scenario import HistoryScenario, MeterGroup

NIGHT_HOURS = (2.5, 3.0, 3.5)
"""Local hours whose lowest demand sizes the MNF."""


@dataclass
class HistoryTruth:
    """What happened: leaks (times [s since epoch], flows [m³/h] at the DMA's night pressure)
    with the MNF they are sized against, leak-free changes, customer events, meter faults, and
    the network (per DMA; per pressure sensor its static head [m] and distance share)."""

    scenario: str
    seed: int
    site: str
    start: float
    end: float
    dmas: dict[str, dict[str, Any]] = field(default_factory=dict)
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    customer_leaks: list[dict[str, Any]] = field(default_factory=list)
    high_consumers: list[dict[str, Any]] = field(default_factory=list)
    meter_faults: list[dict[str, Any]] = field(default_factory=list)
    readings: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def leak_flow(leak: dict[str, Any], t: FloatArray) -> FloatArray:
    """Flow of a truth leak [m³/h] at times ``t`` [s since epoch], at its reference (night)
    pressure: the written flow is this times the FAVAD factor of the pressure of the moment."""
    start, end = leak["start"], leak["end"]
    grow = np.clip((t - start) / max(leak["ramp_h"] * 3600.0, 1.0), 0.0, 1.0)
    flow = leak["flow_m3h"] * (1.0 if leak["kind"] == "burst" else grow)
    on = (t >= start) & (t < (np.inf if end is None else end))
    return np.where(on, flow, 0.0)


@dataclass
class DmaModel:
    """One DMA: what was drawn, and the state carried from one day to the next."""

    name: str
    customers: int
    smart: int
    mains_km: float
    background: float  # m³/h at the night pressure
    pressure_m: float
    outlet: bool
    base: FloatArray  # mean demand per customer, m³/h
    phase: FloatArray  # reading phase of each customer's meter, share of its interval (0-1)
    index: FloatArray  # current index of every customer, m³
    pattern: str = "residential"
    groups: list[MeterGroup] = field(default_factory=list)  # kinds of customer meters
    group: FloatArray = field(default_factory=lambda: np.zeros(0))  # group of each meter
    meter_mode: str = "volume/3600s"
    out_index: float = 0.0
    inlets: list[dict[str, Any]] = field(default_factory=list)  # name, index, share, drift
    share_mean: float = 1.0
    share_period_s: float = 5 * 86400.0
    share_phase: float = 0.0
    sensors: list[tuple[str, float, float]] = field(default_factory=list)  # name, head m, d
    peak_m3h: float = 1.0
    night_ratio: float = 0.0  # (night inflow / peak inflow)², the FAVAD reference
    extra: FloatArray = field(default_factory=lambda: np.zeros(0))  # leaks behind meters
    extra_from: FloatArray = field(default_factory=lambda: np.zeros(0))
    factor_from: FloatArray = field(default_factory=lambda: np.zeros(0))  # high consumers
    consumers: list[dict[str, Any]] = field(default_factory=list)  # large and institutions
    night_users: list[dict[str, Any]] = field(default_factory=list)  # unmetered, at night
    last_read: FloatArray = field(default_factory=lambda: np.zeros(0))  # index at last read
    last_read_t: FloatArray = field(default_factory=lambda: np.zeros(0))
    leaks: list[dict[str, Any]] = field(default_factory=list)
    mnf: float = 0.0


def meter_name(d: DmaModel, j: int) -> str:
    """Device name of customer ``j``'s meter."""
    return f"wm-{d.name}-{j + 1:04d}"


class Planner:
    """Draws the DMAs and the events of ``scenario`` with ``seed``."""

    def __init__(self, scenario: HistoryScenario, seed: int) -> None:
        self.sc = scenario
        self.rng = np.random.default_rng(seed)
        self.more = np.random.default_rng([seed, 1])
        tz = ZoneInfo(scenario.timezone)
        self.t0 = datetime.combine(scenario.start, datetime.min.time(), tz).timestamp()
        self.t1 = self.t0 + scenario.days * 86400.0
        self.truth = HistoryTruth(scenario.name, seed, scenario.site, self.t0, self.t1)
        self.dmas = [self._dma(i) for i in range(scenario.dmas)]
        self._leaks()
        self._customers()
        self._changes()

    def _draw(self, bounds: tuple[float, float], rng: np.random.Generator | None = None) -> float:
        return float((rng or self.rng).uniform(*bounds))

    def _dma(self, i: int) -> DmaModel:
        sc, rng, more = self.sc, self.rng, self.more
        n = int(rng.integers(sc.customers[0], sc.customers[1] + 1))
        mains = self._draw(sc.mains_km)
        base = sc.consumption_m3_per_day / 24.0 * rng.lognormal(-0.125, 0.5, n)
        d = DmaModel(
            name=f"dma-{i + 1:02d}",
            customers=n,
            smart=round(n * sc.dma_coverage(i)),
            mains_km=mains,
            background=self._draw(sc.background_m3h_per_km) * mains,
            pressure_m=self._draw(sc.pressure_m),
            outlet=bool(rng.random() < sc.outlet_share),
            base=base,
            phase=rng.uniform(0, sc.customer_interval_s[0], n) / sc.customer_interval_s[0],
            index=rng.uniform(10.0, 2000.0, n),
            pattern=sc.dma_pattern(i),
        )
        in_index = float(rng.uniform(1e4, 1e6))
        d.out_index = float(rng.uniform(1e3, 1e5))
        d.extra, d.extra_from = np.zeros(n), np.full(n, math.inf)
        d.factor_from = np.full(n, math.inf)
        self._meters(d, i)
        inlets = int(more.integers(sc.inlets[0], sc.inlets[1] + 1))
        d.inlets = [{"name": f"fm-{d.name}-in", "index": in_index}]
        if inlets == 2:
            d.inlets.append({"name": f"fm-{d.name}-in2", "index": float(more.uniform(1e4, 1e6))})
            d.share_mean = self._draw(sc.inlet_share, more)
            d.share_period_s = float(more.uniform(3.0, 10.0)) * 86400.0
            d.share_phase = float(more.uniform(0, 2 * math.pi))
        # Expected MNF: night use at the pattern's minimum plus background leakage; the
        # expected peak inflow (a weekday's evening) sets the head losses.
        night = min(physics.demand_pattern(h, False) for h in NIGHT_HOURS)
        occupancy = sc.touristic_occupancy[0] if d.pattern == "touristic" else 1.0
        households = float(base.sum()) * occupancy
        d.mnf = households * night + d.background
        peak = households * 2.5 + d.background
        passing = (0.4 * households * night + 0.1 * float(base.sum())) if d.outlet else 0.0
        passing_peak = (0.4 * households * 2.5 + 0.1 * float(base.sum())) if d.outlet else 0.0
        if d.pattern == "night_active":
            flow = self._draw(sc.night_active_m3h, more)
            d.consumers.append({"device": f"{d.name}-institution", "kind": "institution",
                                "start": -math.inf, "flow_m3h": flow, "index": 500.0,
                                "metered": sc.night_active_metered})  # fmt: skip
            d.mnf += flow * float(min(physics.institution_pattern(np.array(NIGHT_HOURS), False)))
            peak += flow * float(physics.institution_pattern(np.array(19.5), False))
        d.peak_m3h = peak + passing_peak
        d.night_ratio = ((d.mnf + passing) / d.peak_m3h) ** 2
        sensors = int(more.integers(sc.pressure_sensors[0], sc.pressure_sensors[1] + 1))
        for k in range(sensors):
            head = self._draw(sc.sensor_static_head, more) * d.pressure_m
            dist = self._draw(sc.sensor_distance, more)
            name = f"ps-{d.name}" if k == 0 else f"ps-{d.name}-{k + 1:02d}"
            d.sensors.append((name, head, dist))
            self.truth.sensors[name] = {"dma": d.name, "static_head_m": head, "distance": dist}
        self.truth.dmas[d.name] = {
            "customers": n,
            "smart_meters": d.smart,
            "mains_km": mains,
            "background_m3h": d.background,
            "mnf_m3h": d.mnf,
            "outlet": float(d.outlet),
            "coverage": d.smart / max(n, 1),
            "meter_mode": d.meter_mode if d.smart else "none",
            "pattern": d.pattern,
            "inlets": len(d.inlets),
            "pressure_sensors": sensors,
            "pressure_m": d.pressure_m,
            "peak_inflow_m3h": d.peak_m3h,
            "peak_loss_m": sc.head_loss_share * d.pressure_m,
            "night_ratio": d.night_ratio,
        }
        return d

    def _meters(self, d: DmaModel, i: int) -> None:
        """Split the smart meters into the DMA's groups (contiguous, by share)."""
        groups = d.groups = self.sc.groups(i)
        bounds = np.round(np.cumsum([0.0] + [g.share for g in groups]) * d.smart).astype(int)
        d.group = np.zeros(d.smart)
        for g, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            d.group[lo:hi] = g
        d.meter_mode = "+".join(f"{g.metrics}/{g.interval_s}s" for g in groups)
        # The read before the first of the period, for the mean flow of the first interval.
        interval = np.array([groups[int(g)].interval_s for g in d.group], dtype=np.float64)
        before = (1.0 - d.phase[: d.smart]) * interval
        d.last_read_t = self.t0 - before
        d.last_read = d.index[: d.smart] - d.base[: d.smart] * before / 3600.0

    def _leaks(self) -> None:
        sc, rng = self.sc, self.rng
        span = self.t1 - self.t0
        quiet = sc.leaks.quiet_days * 86400.0
        for dma in self.dmas:
            for _ in range(int(rng.poisson(sc.leaks.per_dma))):
                if span - quiet < 2 * 86400.0:
                    break
                start = self.t0 + quiet + float(rng.uniform(0, span - quiet - 86400.0))
                frac = math.exp(rng.uniform(*np.log(sc.leaks.size_fraction)))
                kind = "burst" if rng.random() < sc.leaks.burst_share else "incipient"
                repair = self._draw(sc.leaks.repair_days) * 86400.0
                ramp = self._draw(sc.leaks.ramp_days) * 24.0 if kind == "incipient" else 0.0
                end = start + repair if start + repair < self.t1 else None
                # Leaks in one DMA do not overlap: the second waits for the first repair.
                if any(_overlaps(start, end, other) for other in dma.leaks):
                    continue
                self._add_leak(dma, kind, start, end, frac, ramp, None)
        for fixed in sc.fixed_leaks:
            if fixed.dma >= len(self.dmas):
                raise ConfigError(f"fixed_leaks: dma {fixed.dma}: the scenario has "
                                  f"{len(self.dmas)} DMAs (0-{len(self.dmas) - 1})")  # fmt: skip
            dma = self.dmas[fixed.dma]
            start = self.t0 + fixed.start_day * 86400.0
            end = None if fixed.days is None else min(start + fixed.days * 86400.0, self.t1)
            ramp = fixed.ramp_days * 24.0 if fixed.kind == "incipient" else 0.0
            self._add_leak(dma, fixed.kind, start, end, fixed.size_fraction, ramp, fixed.n1)

    def _add_leak(self, dma: DmaModel, kind: str, start: float, end: float | None,
                  frac: float, ramp_h: float, n1: float | None) -> None:  # fmt: skip
        leak = {
            "site": self.sc.site, "dma": dma.name, "kind": kind, "start": start, "end": end,
            "flow_m3h": frac * dma.mnf, "ramp_h": ramp_h, "size_fraction": frac,
            "mnf_m3h": dma.mnf,
            "n1": self._draw(self.sc.leaks.n1, self.more) if n1 is None else n1,
            "distance": float(self.more.uniform(0.0, 1.0)),
        }  # fmt: skip
        dma.leaks.append(leak)
        self.truth.leaks.append(leak)

    def _customers(self) -> None:
        sc, rng, span = self.sc, self.rng, self.t1 - self.t0
        smart = [(d, j) for d in self.dmas for j in range(d.smart)]
        picks = rng.permutation(len(smart))
        k = 0
        for _ in range(min(sc.customer_leaks, len(smart))):
            d, j = smart[int(picks[k])]
            k += 1
            d.extra[j] = self._draw(sc.customer_leak_m3h)
            d.extra_from[j] = self.t0 + float(rng.uniform(0.3, 0.8)) * span
            self.truth.customer_leaks.append(
                {"device": meter_name(d, j), "dma": d.name, "start": d.extra_from[j],
                 "flow_m3h": d.extra[j]}
            )  # fmt: skip
        for _ in range(min(sc.high_consumers, len(smart) - k)):
            d, j = smart[int(picks[k])]
            k += 1
            d.factor_from[j] = self.t0 + float(rng.uniform(0.6, 0.85)) * span
            self.truth.high_consumers.append(
                {"device": meter_name(d, j), "dma": d.name, "start": d.factor_from[j]}
            )

    def _changes(self) -> None:
        sc, rng, more, span = self.sc, self.rng, self.more, self.t1 - self.t0
        for _ in range(sc.large_consumers):
            d = self.dmas[int(rng.integers(len(self.dmas)))]
            start = self.t0 + float(rng.uniform(0.3, 0.7)) * span
            flow = self._draw(sc.large_consumer_m3h)
            d.consumers.append({"device": f"{d.name}-large", "kind": "large", "start": start,
                                "flow_m3h": flow, "index": 100.0, "metered": True})  # fmt: skip
            self.truth.changes.append({"kind": "new_large_consumer", "dma": d.name,
                                       "device": f"{d.name}-large", "start": start,
                                       "flow_m3h": flow})  # fmt: skip
        for first, after, away in sc.school_holidays:
            self.truth.changes.append({"kind": "school_holidays", "first": first.isoformat(),
                                       "after": after.isoformat(), "away": away})  # fmt: skip
        self.truth.changes.append(
            {"kind": "public_holidays", "days": [d.isoformat() for d in sc.public_holidays]}
        )
        for kind, days in (("silent", sc.silent_meter_days), ("frozen", sc.frozen_meter_days)):
            if days <= 0 or span < 20 * 86400.0:
                continue
            d = self.dmas[int(rng.integers(len(self.dmas)))]
            start = self.t0 + float(rng.uniform(0.3, 0.9)) * span
            end = min(start + days * 86400.0, self.t1)
            self.truth.meter_faults.append({"kind": kind, "device": f"fm-{d.name}-in",
                                            "dma": d.name, "start": start, "end": end})  # fmt: skip
        drifting = more.permutation(len(self.dmas))[: sc.calibration_drifts]
        for i in drifting:
            d = self.dmas[int(i)]
            inlet = d.inlets[int(more.integers(len(d.inlets)))]
            inlet["drift"] = self._draw(sc.calibration_drift, more)
            inlet["drift_from"] = self.t0 + float(more.uniform(0.3, 0.7)) * span
            inlet["drift_ramp_s"] = sc.calibration_ramp_days * 86400.0
            self.truth.changes.append({"kind": "inlet_calibration_drift", "dma": d.name,
                                       "device": inlet["name"], "start": inlet["drift_from"],
                                       "drift": inlet["drift"],
                                       "ramp_days": sc.calibration_ramp_days})  # fmt: skip
        for _ in range(sc.night_consumers):
            d = self.dmas[int(more.integers(len(self.dmas)))]
            user = {"kind": "unmetered_night_consumer", "dma": d.name,
                    "start": self.t0 + float(more.uniform(0.3, 0.7)) * span,
                    "flow_m3h": self._draw(sc.night_consumer_m3h, more),
                    "hours": list(sc.night_consumer_hours)}  # fmt: skip
            d.night_users.append(user)
            self.truth.changes.append(user)


def _overlaps(start: float, end: float | None, other: dict[str, Any]) -> bool:
    """Whether a leak from ``start`` to ``end`` (None: open) overlaps ``other``, with a week
    between them (a detector needs nights back at baseline to tell two leaks apart)."""
    week = 7 * 86400.0
    o_end = math.inf if other["end"] is None else other["end"] + week
    mine_end = math.inf if end is None else end + week
    return start < o_end and other["start"] < mine_end
