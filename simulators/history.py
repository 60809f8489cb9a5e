"""Months of water-network history with known leaks, written straight to the database, for the
evaluation of leak detection (``sobriety anomaly evaluate``) and its benchmark. Its scenario
files are read by :mod:`simulators.history_scenario`.

The MQTT fleet (:mod:`simulators.fleet`) plays a town in accelerated real time and ends "now";
this generator writes a long past (months, a year) in one go, a day at a time: DMAs with one or
two inlet (and some outlet) flow meters sampled every ``sample_s``, one or more pressure sensors,
smart customer meters on a share of the customers (the others consume unmetered) that report an
index, a mean flow or both, hourly to daily, and the ground truth. Leak-free changes that a
detector must not take for leaks are part of it: school holidays (households away, holiday
homes full), public holidays (Sunday-like days), a new large metered consumer, institutions
running at night, the DST nights, background leakage that drifts with the seasons, a silent and
a frozen flow meter, optionally an inlet meter whose calibration drifts and an unmetered night
user. Leaks are bursts (steps) or incipient (ramps), sized as a fraction of the DMA's minimum
night flow (MNF), pressure-dependent (FAVAD), and repaired after a while.

The parts: :mod:`~simulators.history_plan` draws the network and the events (the truth),
:mod:`~simulators.history_meters` the customers and their meters,
:mod:`~simulators.history_pressure` the hydraulics (inflow and pressure, the model is there),
:mod:`~simulators.history_rows` the binary ``COPY``. Readings are written by binary ``COPY`` (a
backfill: the ingest's validation is tested on its own path); the inventory goes through
``sobriety inventory import``. Units: m³/h, m³, bar, hours.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import psycopg

from core.arrays import FloatArray
from core.inventory import (
    DEVICE_FILE_COLUMNS,
    DMA_FILE_COLUMNS,
    import_inventory,
    write_inventory_csv,
)
from simulators import physics
from simulators.history_meters import (
    FLOW,
    VOLUME,
    Day,
    consumer_flows,
    customer_flows,
    night_user_flow,
    write_consumers,
    write_customer_meters,
)
from simulators.history_plan import DmaModel, HistoryTruth, Planner, leak_flow, meter_name
from simulators.history_pressure import Hydraulics, solve
from simulators.history_rows import COPY_SQL, Rows
from simulators.history_scenario import HistoryScenario

__all__ = ["HistoryTruth", "HistoryWriter", "leak_flow", "write_history"]

PRESSURE = 3
"""Metric id of pressure [bar]."""


class HistoryWriter:
    """Generates a history scenario and writes it into a database."""

    def __init__(self, scenario: HistoryScenario, seed: int) -> None:
        plan = Planner(scenario, seed)
        self.sc = scenario
        self.seed = seed
        self.rng = plan.rng
        self.tz = ZoneInfo(scenario.timezone)
        self.t0, self.t1 = plan.t0, plan.t1
        self.truth = plan.truth
        self.dmas = plan.dmas

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
            devices.extend({**meter, "device": inlet["name"], "kind": "flow_meter",
                            "role": "inlet"} for inlet in d.inlets)  # fmt: skip
            if d.outlet:
                devices.append({**meter, "device": f"fm-{d.name}-out", "kind": "flow_meter",
                                "role": "outlet"})  # fmt: skip
            devices.extend(
                {**meter, "device": name, "kind": "pressure_sensor"} for name, _, _ in d.sensors
            )
            devices.extend(
                {**meter, "device": meter_name(d, j), "kind": "water_meter"} for j in range(d.smart)
            )
            devices.extend(
                {**meter, "device": c["device"], "kind": "water_meter"}
                for c in d.consumers
                if c["metered"]
            )
        return (
            write_inventory_csv(directory / "dmas.csv", dmas, DMA_FILE_COLUMNS),
            write_inventory_csv(directory / "devices.csv", devices, DEVICE_FILE_COLUMNS),
        )

    # --- data ----------------------------------------------------------------------------------
    def write(self, conn: psycopg.Connection, directory: Path) -> HistoryTruth:
        """Import the inventory, then write every reading of the period, a day per ``COPY``
        and transaction; returns the truth."""
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
        for index in range(self.sc.days):
            day = self.day(index)
            rows = Rows()
            for d in self.dmas:
                self.dma_day(d, day, ids, rows)
            with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(rows.encode())
            conn.commit()
            self.truth.readings += rows.count
        return self.truth

    def day(self, index: int) -> Day:
        """Day ``index`` (0: the scenario's start) in local time."""
        sc = self.sc
        local = sc.start + timedelta(days=index)
        t_day = datetime.combine(local, datetime.min.time(), self.tz).timestamp()
        t_next = datetime.combine(
            local + timedelta(days=1), datetime.min.time(), self.tz
        ).timestamp()
        hours = np.arange(t_day, t_next, 3600.0)  # 23, 24 or 25 UTC hours
        sunday_like = local.weekday() >= 5 or local in sc.public_holidays
        holidays = [a for f, e, a in sc.school_holidays if f <= local < e]
        local_hour = np.array([datetime.fromtimestamp(t, self.tz).hour + 0.5 for t in hours])
        pattern = np.array([physics.demand_pattern(h, sunday_like) for h in local_hour])
        season = 1.0 + sc.seasonal_swing * math.cos(
            2 * math.pi * (local.timetuple().tm_yday - 30) / 365.0
        )
        return Day(t_day, t_next, hours, local_hour, sunday_like,
                   holidays[0] if holidays else 0.0, bool(holidays), season, pattern)  # fmt: skip

    def dma_day(self, d: DmaModel, day: Day, ids: dict[str, int], rows: Rows) -> Hydraulics:
        """One day of DMA ``d`` into ``rows``; its hydraulics (for tests and notes)."""
        sc, rng = self.sc, self.rng
        flow = customer_flows(d, day, sc, rng)
        customer_sum = flow.sum(axis=0)  # per hour
        write_customer_meters(d, day, flow, sc, ids, rows)
        consumers = consumer_flows(d, day, rng)
        write_consumers(d, day, consumers, ids, rows)
        hourly = customer_sum + np.sum(consumers, axis=0) if consumers else customer_sum
        # DMA meters every sample_s.
        steps = np.arange(day.t_day, day.t_next, float(sc.sample_s))
        h_of = ((steps - day.t_day) // 3600.0).astype(int)
        demand = hourly[h_of] + night_user_flow(d, steps, day.local_hour[h_of])
        passing = (0.4 * customer_sum[h_of] + 0.1 * float(d.base.sum())) if d.outlet else 0.0
        hydraulics = solve(d, sc, steps, demand, np.broadcast_to(passing, steps.shape),
                           day.season)  # fmt: skip
        self._inlets(d, steps, hydraulics.inflow, ids, rows)
        if d.outlet:
            outflow = np.asarray(passing)
            measured = outflow * (1.0 + sc.flow_noise * rng.standard_normal(len(steps)))
            index = d.out_index + np.cumsum(outflow) * sc.sample_s / 3600.0
            d.out_index = float(index[-1])
            dev = ids[f"fm-{d.name}-out"]
            rows.add(steps, dev, FLOW, measured, 4)
            rows.add(steps, dev, VOLUME, index, 3)
        noise = sc.pressure_noise_bar * rng.standard_normal(hydraulics.pressure_bar.shape)
        for (name, _, _), pressure in zip(d.sensors, hydraulics.pressure_bar + noise, strict=True):
            rows.add(steps, ids[name], PRESSURE, pressure, 4)
        return hydraulics

    def _inlets(self, d: DmaModel, steps: FloatArray, inflow: FloatArray,
                ids: dict[str, int], rows: Rows) -> None:  # fmt: skip
        """Flow and index of each inlet meter: its share of the inflow (two inlets: a share
        varying over days), noise, calibration drift, faults."""
        sc = self.sc
        if len(d.inlets) == 1:
            shares = [np.ones(len(steps))]
        else:
            wave = np.sin(2 * math.pi * (steps - self.t0) / d.share_period_s + d.share_phase)
            first = np.clip(d.share_mean + sc.inlet_share_swing * wave, 0.05, 0.95)
            shares = [first, 1.0 - first]
        for inlet, share in zip(d.inlets, shares, strict=True):
            true = inflow * share
            if "drift" in inlet:
                grown = (steps - inlet["drift_from"]) / max(inlet["drift_ramp_s"], 1.0)
                true = true * (1.0 + inlet["drift"] * np.clip(grown, 0.0, 1.0))
            measured = true * (1.0 + sc.flow_noise * self.rng.standard_normal(len(steps)))
            index = inlet["index"] + np.cumsum(true) * sc.sample_s / 3600.0
            inlet["index"] = float(index[-1])
            state = self._fault(inlet["name"], steps)
            flows, indexes, keep = _apply_faults(state, measured, index, inlet)
            dev = ids[inlet["name"]]
            rows.add(steps[keep], dev, FLOW, flows[keep], 4)
            rows.add(steps[keep], dev, VOLUME, indexes[keep], 3)

    def _fault(self, meter: str, steps: FloatArray) -> npt.NDArray[np.int8]:
        """Per sample of ``meter``: normal, silent (no reading) or frozen (last value repeated)."""
        state = np.full(len(steps), _NORMAL, dtype=np.int8)
        for fault in self.truth.meter_faults:
            if fault["device"] == meter:
                during = (steps >= fault["start"]) & (steps < fault["end"])
                state[during] = _SILENT if fault["kind"] == "silent" else _FROZEN
        return state


_NORMAL, _SILENT, _FROZEN = 0, 1, 2


def _apply_faults(
    state: npt.NDArray[np.int8], flow: FloatArray, index: FloatArray, inlet: dict[str, Any]
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Readings of a meter under faults: a frozen meter repeats its last normal reading (of
    an earlier day, kept in ``inlet``), a silent one sends nothing."""
    normal = state == _NORMAL
    if normal.all():
        inlet["last_flow"], inlet["last_index"] = float(flow[-1]), float(index[-1])
        return flow, index, normal
    last = np.maximum.accumulate(np.where(normal, np.arange(len(state)), -1))
    before = last < 0
    at = np.maximum(last, 0)
    flows = np.where(before, inlet.get("last_flow", 0.0), flow[at])
    indexes = np.where(before, inlet.get("last_index", 0.0), index[at])
    inlet["last_flow"], inlet["last_index"] = float(flows[-1]), float(indexes[-1])
    return flows, indexes, state != _SILENT


def write_history(
    conn: psycopg.Connection, scenario: HistoryScenario, seed: int, directory: Path
) -> HistoryTruth:
    """Generate ``scenario`` with ``seed`` into the database behind ``conn`` (migrated)."""
    return HistoryWriter(scenario, seed).write(conn, directory)
