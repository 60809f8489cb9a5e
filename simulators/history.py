"""Months of water-network history with known leaks, written straight to the database, for the
evaluation of leak detection (``sobriety anomaly evaluate``) and its benchmark. Its scenario
files are read by :mod:`simulators.history_scenario`.

The MQTT fleet (:mod:`simulators.fleet`) plays a town in accelerated real time and ends "now";
this generator writes a long past (months, a year) in one go: DMAs with inlet (and some outlet)
flow meters sampled every ``sample_s``, a pressure sensor, hourly smart customer meters (a share of
the customers only: the others consume unmetered), and the ground truth. Leak-free changes that a
detector must not take for leaks are part of it: school holidays (households away), public
holidays (Sunday-like days), a new large metered consumer, the DST nights, background leakage that
drifts with the seasons, a silent and a frozen flow meter. Leaks are bursts (steps) or incipient
(ramps), sized as a fraction of the DMA's minimum night flow (MNF), and repaired after a while.

Readings are written by binary ``COPY`` (a backfill: the ingest's validation is tested on its own
path); the inventory goes through ``sobriety inventory import``. Units: m³/h, m³, bar, hours.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import psycopg

from core.arrays import FloatArray
from core.errors import ConfigError
from core.inventory import (
    DEVICE_FILE_COLUMNS,
    DMA_FILE_COLUMNS,
    import_inventory,
    write_inventory_csv,
)
from simulators import physics
from simulators.history_scenario import HistoryScenario


@dataclass
class HistoryTruth:
    """What happened: leaks (times [s since epoch], flows [m³/h]) with the MNF they are sized
    against, leak-free changes, customer events and meter faults."""

    scenario: str
    seed: int
    site: str
    start: float
    end: float
    dmas: dict[str, dict[str, float]] = field(default_factory=dict)
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
    """Flow of a truth leak [m³/h] at times ``t`` [s since epoch]."""
    start, end = leak["start"], leak["end"]
    grow = np.clip((t - start) / max(leak["ramp_h"] * 3600.0, 1.0), 0.0, 1.0)
    flow = leak["flow_m3h"] * (1.0 if leak["kind"] == "burst" else grow)
    on = (t >= start) & (t < (np.inf if end is None else end))
    return np.where(on, flow, 0.0)


@dataclass
class _Dma:
    name: str
    customers: int
    smart: int
    mains_km: float
    background: float
    pressure_m: float
    outlet: bool
    base: FloatArray  # per customer, m³/h
    phase_s: FloatArray  # reading phase of smart meters
    index: FloatArray  # current index of every customer, m³
    in_index: float = 0.0
    out_index: float = 0.0
    extra: FloatArray = field(default_factory=lambda: np.zeros(0))  # leaks behind meters
    extra_from: FloatArray = field(default_factory=lambda: np.zeros(0))
    factor_from: FloatArray = field(default_factory=lambda: np.zeros(0))  # high consumers
    large_from: float = math.inf
    large_m3h: float = 0.0
    large_index: float = 100.0
    last_flow: float = 0.0
    last_index: float = 0.0
    leaks: list[dict[str, Any]] = field(default_factory=list)
    mnf: float = 0.0


class HistoryWriter:
    """Generates a history scenario and writes it into a database."""

    def __init__(self, scenario: HistoryScenario, seed: int) -> None:
        self.sc = scenario
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.tz = ZoneInfo(scenario.timezone)
        self.t0 = datetime.combine(scenario.start, datetime.min.time(), self.tz).timestamp()
        self.t1 = self.t0 + scenario.days * 86400.0
        self.truth = HistoryTruth(scenario.name, seed, scenario.site, self.t0, self.t1)
        self.dmas = [self._dma(i) for i in range(scenario.dmas)]
        self._plan_events()

    def _draw(self, bounds: tuple[float, float]) -> float:
        return float(self.rng.uniform(*bounds))

    def _dma(self, i: int) -> _Dma:
        sc = self.sc
        n = int(self.rng.integers(sc.customers[0], sc.customers[1] + 1))
        mains = self._draw(sc.mains_km)
        base = sc.consumption_m3_per_day / 24.0 * self.rng.lognormal(-0.125, 0.5, n)
        dma = _Dma(
            name=f"dma-{i + 1:02d}",
            customers=n,
            smart=round(n * sc.smart_meter_share),
            mains_km=mains,
            background=self._draw(sc.background_m3h_per_km) * mains,
            pressure_m=self._draw(sc.pressure_m),
            outlet=bool(self.rng.random() < sc.outlet_share),
            base=base,
            phase_s=self.rng.uniform(0, sc.customer_interval_s, n),
            index=self.rng.uniform(10.0, 2000.0, n),
            in_index=float(self.rng.uniform(1e4, 1e6)),
            out_index=float(self.rng.uniform(1e3, 1e5)),
            extra=np.zeros(n),
            extra_from=np.full(n, math.inf),
            factor_from=np.full(n, math.inf),
        )
        # Expected MNF: night use at the pattern's minimum plus background leakage.
        night = min(physics.demand_pattern(h, False) for h in (2.5, 3.0, 3.5))
        dma.mnf = float(base.sum()) * night + dma.background
        self.truth.dmas[dma.name] = {
            "customers": n,
            "smart_meters": dma.smart,
            "mains_km": mains,
            "background_m3h": dma.background,
            "mnf_m3h": dma.mnf,
            "outlet": float(dma.outlet),
        }
        return dma

    def _plan_events(self) -> None:
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
                leak = {
                    "site": sc.site,
                    "dma": dma.name,
                    "kind": kind,
                    "start": start,
                    "end": end,
                    "flow_m3h": frac * dma.mnf,
                    "ramp_h": ramp,
                    "size_fraction": frac,
                    "mnf_m3h": dma.mnf,
                }
                dma.leaks.append(leak)
                self.truth.leaks.append(leak)
        for fixed in sc.fixed_leaks:
            if fixed.dma >= len(self.dmas):
                raise ConfigError(f"fixed_leaks: dma {fixed.dma}: the scenario has "
                                  f"{len(self.dmas)} DMAs (0-{len(self.dmas) - 1})")  # fmt: skip
            dma = self.dmas[fixed.dma]
            start = self.t0 + fixed.start_day * 86400.0
            leak = {
                "site": sc.site, "dma": dma.name, "kind": fixed.kind, "start": start,
                "end": None if fixed.days is None else min(start + fixed.days * 86400.0, self.t1),
                "flow_m3h": fixed.size_fraction * dma.mnf,
                "ramp_h": fixed.ramp_days * 24.0 if fixed.kind == "incipient" else 0.0,
                "size_fraction": fixed.size_fraction, "mnf_m3h": dma.mnf,
            }  # fmt: skip
            dma.leaks.append(leak)
            self.truth.leaks.append(leak)
        smart = [(d, j) for d in self.dmas for j in range(d.smart)]
        picks = rng.permutation(len(smart))
        k = 0
        for _ in range(min(sc.customer_leaks, len(smart))):
            d, j = smart[int(picks[k])]
            k += 1
            d.extra[j] = self._draw(sc.customer_leak_m3h)
            d.extra_from[j] = self.t0 + float(rng.uniform(0.3, 0.8)) * span
            self.truth.customer_leaks.append(
                {
                    "device": _meter(d, j),
                    "dma": d.name,
                    "start": d.extra_from[j],
                    "flow_m3h": d.extra[j],
                }
            )
        for _ in range(min(sc.high_consumers, len(smart) - k)):
            d, j = smart[int(picks[k])]
            k += 1
            d.factor_from[j] = self.t0 + float(rng.uniform(0.6, 0.85)) * span
            self.truth.high_consumers.append(
                {"device": _meter(d, j), "dma": d.name, "start": d.factor_from[j]}
            )
        for _ in range(sc.large_consumers):
            d = self.dmas[int(rng.integers(len(self.dmas)))]
            d.large_from = self.t0 + float(rng.uniform(0.3, 0.7)) * span
            d.large_m3h = self._draw(sc.large_consumer_m3h)
            self.truth.changes.append(
                {
                    "kind": "new_large_consumer",
                    "dma": d.name,
                    "device": f"{d.name}-large",
                    "start": d.large_from,
                    "flow_m3h": d.large_m3h,
                }
            )
        for first, after, away in sc.school_holidays:
            self.truth.changes.append(
                {
                    "kind": "school_holidays",
                    "first": first.isoformat(),
                    "after": after.isoformat(),
                    "away": away,
                }
            )
        self.truth.changes.append(
            {"kind": "public_holidays", "days": [d.isoformat() for d in sc.public_holidays]}
        )
        for kind, days in (("silent", sc.silent_meter_days), ("frozen", sc.frozen_meter_days)):
            if days <= 0 or span < 20 * 86400.0:
                continue
            d = self.dmas[int(rng.integers(len(self.dmas)))]
            start = self.t0 + float(rng.uniform(0.3, 0.9)) * span
            self.truth.meter_faults.append(
                {
                    "kind": kind,
                    "device": f"fm-{d.name}-in",
                    "dma": d.name,
                    "start": start,
                    "end": min(start + days * 86400.0, self.t1),
                }
            )

    # --- inventory ---------------------------------------------------------------------------
    def write_inventory(self, directory: Path) -> tuple[Path, Path]:
        """``dmas.csv`` and ``devices.csv`` of the network."""
        site = self.sc.site
        dmas = [
            {
                "site": site,
                "dma": d.name,
                "mains_km": round(d.mains_km, 3),
                "connections": d.customers,
                "private_km": round(d.customers * 0.012, 3),
                "avg_pressure_m": round(d.pressure_m, 1),
            }
            for d in self.dmas
        ]
        devices: list[dict[str, object]] = []
        for d in self.dmas:
            meter = {"site": site, "dma": d.name}
            devices.append({**meter, "device": f"fm-{d.name}-in", "kind": "flow_meter",
                            "role": "inlet"})  # fmt: skip
            if d.outlet:
                devices.append({**meter, "device": f"fm-{d.name}-out", "kind": "flow_meter",
                                "role": "outlet"})  # fmt: skip
            devices.append({**meter, "device": f"ps-{d.name}", "kind": "pressure_sensor"})
            devices.extend(
                {**meter, "device": _meter(d, j), "kind": "water_meter"} for j in range(d.smart)
            )
            if math.isfinite(d.large_from):
                devices.append({**meter, "device": f"{d.name}-large", "kind": "water_meter"})
        return (
            write_inventory_csv(directory / "dmas.csv", dmas, DMA_FILE_COLUMNS),
            write_inventory_csv(directory / "devices.csv", devices, DEVICE_FILE_COLUMNS),
        )

    # --- data ----------------------------------------------------------------------------------
    def write(self, conn: psycopg.Connection, directory: Path) -> HistoryTruth:
        """Import the inventory, then write every reading of the period; returns the truth."""
        dmas_csv, devices_csv = self.write_inventory(directory)
        import_inventory(conn, dmas_csv)
        import_inventory(conn, devices_csv)
        conn.execute(
            "UPDATE sites SET timezone = %s WHERE site = %s", (self.sc.timezone, self.sc.site)
        )
        conn.commit()
        ids: dict[str, int] = {
            str(r[0]): int(r[1])
            for r in conn.execute("SELECT device, id FROM devices WHERE site = %s", (self.sc.site,))
        }
        for day in range(self.sc.days):
            rows = self._day(day, ids)
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY readings (time, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["timestamptz", "int4", "int2", "float8"])
                for t, dev, metric, value in rows:
                    copy.write_row((datetime.fromtimestamp(t, UTC), dev, metric, value))
            conn.commit()
            self.truth.readings += len(rows)
        return self.truth

    def _day(self, day: int, ids: dict[str, int]) -> list[tuple[float, int, int, float]]:
        sc, rng = self.sc, self.rng
        local = sc.start + timedelta(days=day)
        t_day = datetime.combine(local, datetime.min.time(), self.tz).timestamp()
        t_next = datetime.combine(
            local + timedelta(days=1), datetime.min.time(), self.tz
        ).timestamp()
        hours = np.arange(t_day, t_next, 3600.0)  # 23, 24 or 25 UTC hours
        sunday_like = local.weekday() >= 5 or local in sc.public_holidays
        away = next((a for f, e, a in sc.school_holidays if f <= local < e), 0.0)
        local_hour = np.array([datetime.fromtimestamp(t, self.tz).hour + 0.5 for t in hours])
        pattern = np.array([physics.demand_pattern(h, sunday_like) for h in local_hour])
        season = 1.0 + sc.seasonal_swing * math.cos(
            2 * math.pi * (local.timetuple().tm_yday - 30) / 365.0
        )
        rows: list[tuple[float, int, int, float]] = []
        steps = np.arange(t_day, t_next, float(sc.sample_s))
        for d in self.dmas:
            n = d.customers
            home = rng.random(n) >= away
            day_factor = float(rng.lognormal(0.0, sc.day_to_day))
            mean = d.base[:, None] * pattern[None, :] * day_factor  # m³/h per customer and hour
            p_use = np.clip(0.6 * pattern, 0.05, 0.95)[None, :]
            use = rng.random(mean.shape) < p_use
            flow = np.where(use, mean / p_use * rng.lognormal(-0.125, 0.5, mean.shape), 0.0)
            flow *= home[:, None]
            mid = hours[None, :] + 1800.0
            flow = flow * np.where(mid >= d.factor_from[:, None], 3.0, 1.0)
            flow = flow + np.where(mid >= d.extra_from[:, None], d.extra[:, None], 0.0)
            customer_sum = flow.sum(axis=0)  # per hour
            large = np.where(hours + 1800.0 >= d.large_from, d.large_m3h, 0.0)
            # Smart meter indexes, read every customer_interval_s at each meter's phase.
            start_index = d.index.copy()
            cum = np.concatenate([np.zeros((n, 1)), np.cumsum(flow, axis=1)], axis=1)
            d.index = start_index + cum[:, -1]
            for j in range(d.smart):
                reads = np.arange(t_day + d.phase_s[j], t_next, float(sc.customer_interval_s))
                pos = (reads - t_day) / 3600.0
                k = np.minimum(pos.astype(int), len(hours) - 1)
                vals = start_index[j] + cum[j, k] + flow[j, k] * (pos - k)
                dev = ids[_meter(d, j)]
                rows.extend(
                    (float(t), dev, 2, round(float(v), 3)) for t, v in zip(reads, vals, strict=True)
                )
            if math.isfinite(d.large_from):
                dev = ids[f"{d.name}-large"]
                large_cum = np.concatenate([[0.0], np.cumsum(large)])
                rows.extend(
                    (
                        float(hours[h] + 600.0),
                        dev,
                        2,
                        round(d.large_index + large_cum[h] + large[h] / 6.0, 3),
                    )
                    for h in range(len(hours))
                )
                d.large_index += float(large_cum[-1])
            # DMA meters every sample_s.
            h_of = ((steps - t_day) // 3600.0).astype(int)
            demand = customer_sum[h_of] + large[h_of]
            leak = sum((leak_flow(lk, steps) for lk in d.leaks), np.zeros(len(steps)))
            peak = float(d.base.sum()) * 2.5 + d.background
            outflow = (0.4 * customer_sum[h_of] + 0.1 * float(d.base.sum())) if d.outlet else 0.0
            pressure_bar = np.array(
                [physics.dma_pressure_bar(q, d.pressure_m * 1.1, peak) for q in demand]
            )
            bg = (
                d.background
                * season
                * pressure_bar
                / max(d.pressure_m * physics.M_WATER_TO_BAR, 1e-9)
            )
            inflow = demand + bg + leak + outflow
            noise = 1.0 + sc.flow_noise * rng.standard_normal(len(steps))
            measured = inflow * noise
            in_index = d.in_index + np.cumsum(inflow) * sc.sample_s / 3600.0
            d.in_index = float(in_index[-1])
            meter = f"fm-{d.name}-in"
            fault = self._fault(meter, steps)
            for s_i, t in enumerate(steps):
                if fault[s_i] == _SILENT:
                    continue
                if fault[s_i] == _NORMAL:
                    d.last_flow, d.last_index = float(measured[s_i]), float(in_index[s_i])
                rows.append((float(t), ids[meter], 1, round(d.last_flow, 4)))
                rows.append((float(t), ids[meter], 2, round(d.last_index, 3)))
            if d.outlet:
                out_measured = outflow * (1.0 + sc.flow_noise * rng.standard_normal(len(steps)))
                out_index = d.out_index + np.cumsum(outflow) * sc.sample_s / 3600.0
                d.out_index = float(out_index[-1])
                dev = ids[f"fm-{d.name}-out"]
                for s_i, t in enumerate(steps):
                    rows.append((float(t), dev, 1, round(float(out_measured[s_i]), 4)))
                    rows.append((float(t), dev, 2, round(float(out_index[s_i]), 3)))
            dev = ids[f"ps-{d.name}"]
            p_noise = pressure_bar + 0.005 * rng.standard_normal(len(steps))
            rows.extend(
                (float(t), dev, 3, round(float(p), 4)) for t, p in zip(steps, p_noise, strict=True)
            )
        return rows

    def _fault(self, meter: str, steps: FloatArray) -> npt.NDArray[np.int8]:
        """Per sample of ``meter``: normal, silent (no reading) or frozen (last value repeated)."""
        state = np.full(len(steps), _NORMAL, dtype=np.int8)
        for fault in self.truth.meter_faults:
            if fault["device"] == meter:
                during = (steps >= fault["start"]) & (steps < fault["end"])
                state[during] = _SILENT if fault["kind"] == "silent" else _FROZEN
        return state


_NORMAL, _SILENT, _FROZEN = 0, 1, 2


def _meter(d: _Dma, j: int) -> str:
    return f"wm-{d.name}-{j + 1:04d}"


def _overlaps(start: float, end: float | None, other: dict[str, Any]) -> bool:
    """Whether a leak from ``start`` to ``end`` (None: open) overlaps ``other``, with a week
    between them (a detector needs nights back at baseline to tell two leaks apart)."""
    week = 7 * 86400.0
    o_end = math.inf if other["end"] is None else other["end"] + week
    mine_end = math.inf if end is None else end + week
    return start < o_end and other["start"] < mine_end


def write_history(
    conn: psycopg.Connection, scenario: HistoryScenario, seed: int, directory: Path
) -> HistoryTruth:
    """Generate ``scenario`` with ``seed`` into the database behind ``conn`` (migrated)."""
    return HistoryWriter(scenario, seed).write(conn, directory)
