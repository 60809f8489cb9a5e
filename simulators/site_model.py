"""The physical state of one simulated site, advanced step by step: the luminaires and their
cabinets, the water network (customers, DMAs, leaks, the pumping station) and the server room.
Vectorised over devices with numpy; every random draw comes from the generator it is given, in a
fixed order, so a scenario, seed and start time give the same run. Units: W, Wh, m³/h, m³, bar,
°C, seconds since the epoch."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import numpy as np

from core import lighting
from core.arrays import FloatArray
from core.lighting import NightSchedule
from core.luminaire import luminaire_power_w
from core.messages import LightingProgram
from simulators import physics
from simulators.scenario import Scenario
from simulators.town import SiteTown


class SiteModel:
    """The physical state of one site, advanced step by step."""

    def __init__(
        self, town: SiteTown, scenario: Scenario, t0: float, rng: np.random.Generator
    ) -> None:
        self.town = town
        spec = town.spec
        self.tz = zoneinfo.ZoneInfo(spec.timezone)
        self.t0 = t0
        self.rng = rng
        light = spec.lighting
        n = len(town.luminaires)
        self.lum_nominal = town.lum_nominal_w
        self.lum_standby = light.standby_w
        self.lum_energy = rng.uniform(1e4, 5e5, n)  # Wh already on the counters
        self.lum_energy_true = np.zeros(n)
        self.lum_power = np.zeros(n)
        self.lum_dim = np.zeros(n)
        self.lum_presence = np.array(town.lum_presence, dtype=bool)
        self.presence_count = np.zeros(n)
        self.boost_until = np.full(n, -np.inf)
        self.override_until = np.full(n, -np.inf)
        self.override_level = np.zeros(n)
        self.programs: list[LightingProgram] = [light.program]
        self.program_of = np.zeros(n, dtype=int)
        days = scenario.days * 86400.0
        self.failed_at = np.full(n, np.inf)
        self.day_burner = np.zeros(n, dtype=bool)
        self.drift = np.zeros(n)
        picks = rng.permutation(n)
        k = 0
        self.events: list[dict[str, Any]] = []
        for _ in range(min(light.lamp_failures, n)):
            i = int(picks[k])
            k += 1
            self.failed_at[i] = t0 + float(rng.uniform(0.1, 0.9)) * days
            self.events.append(
                {"kind": "lamp_failure", "device": town.luminaires[i], "at": self.failed_at[i]}
            )
        for _ in range(min(light.day_burners, max(n - k, 0))):
            i = int(picks[k])
            k += 1
            self.day_burner[i] = True
            self.events.append({"kind": "day_burner", "device": town.luminaires[i], "at": t0})
        for _ in range(min(light.drifting, max(n - k, 0))):
            i = int(picks[k])
            k += 1
            self.drift[i] = light.drift_per_day
            self.events.append(
                {
                    "kind": "power_drift",
                    "device": town.luminaires[i],
                    "at": t0,
                    "per_day": light.drift_per_day,
                }
            )
        cab = np.array(town.lum_cabinet, dtype=int)
        self.cab_index = cab
        ncab = len(town.cabinets)
        self.cab_power = np.zeros(ncab)
        self.cab_energy = rng.uniform(1e5, 5e6, ncab)
        self.cab_energy_true = np.zeros(ncab)
        # Per night (the local date of the evening, noon to noon): each luminaire's and
        # cabinet's true energy [Wh] and the seconds each luminaire was lit (commanded level
        # above 0, as its dim telemetry reports it) — the no-dimming baseline's hours.
        self.lum_night_wh: dict[date, FloatArray] = {}
        self.lum_night_lit_s: dict[date, FloatArray] = {}
        self.cab_night_wh: dict[date, FloatArray] = {}
        # Water.
        water = spec.water
        self.water = water
        self.cust_base = town.customer_base_m3h
        self.cust_volume = town.customer_start_m3.copy()
        self.cust_volume_true = np.zeros(len(town.customers))
        self.cust_dma = np.array(town.customer_dma, dtype=int)
        self.cust_noise = np.ones(len(town.customers))
        self.cust_leak = np.zeros(len(town.customers))
        for i in rng.permutation(len(town.customers))[: water.customer_leaks]:
            self.cust_leak[int(i)] = water.customer_leak_m3h
            self.events.append(
                {
                    "kind": "customer_leak",
                    "device": town.customers[int(i)],
                    "at": t0,
                    "flow_m3h": water.customer_leak_m3h,
                }
            )
        nd = len(town.dmas)
        self.noise_hour = -1
        self.dma_inflow = np.zeros(nd)
        self.dma_outflow = np.zeros(nd)
        self.dma_inflow_read = np.zeros(nd)
        self.dma_outflow_read = np.zeros(nd)
        self.dma_pressure = np.zeros(nd)
        self.dma_in_volume = rng.uniform(1e4, 1e5, nd)
        self.dma_out_volume = rng.uniform(1e3, 1e4, nd)
        self.dma_totals = {
            k: np.zeros(nd)
            for k in ("inflow_m3", "outflow_m3", "consumption_m3", "background_m3", "leak_m3")
        }
        mean_demand = np.array([self.cust_base[self.cust_dma == d].sum() for d in range(nd)])
        self.dma_peak = (
            mean_demand * 2.2 + water.background_leakage_m3h_per_km * water.mains_km_per_dma
        )
        self.leaks = list(water.leaks)
        self.leak_flow = np.zeros(len(self.leaks))
        self.leak_series: list[list[tuple[float, float]]] = [[] for _ in self.leaks]
        self.pump_flow = 0.0
        self.pump_power = 0.0
        self.pump_energy = float(rng.uniform(1e6, 1e7))
        self.pump_energy_true = 0.0
        self.pump_volume = float(rng.uniform(1e5, 1e6))
        self.pump_volume_true = 0.0
        # Server room.
        room = spec.server_room
        self.room = room
        self.it_power = 0.0
        self.facility_power = 0.0
        self.outdoor_c = room.outdoor_mean_c
        self.it_energy = float(rng.uniform(1e6, 1e7))
        self.facility_energy = self.it_energy * 1.5
        self.it_energy_true = 0.0
        self.facility_energy_true = 0.0
        self.day_offset_c = 0.0
        self._sun = lighting.SunCache()
        self._night: date | None = None
        self._schedules: dict[LightingProgram, NightSchedule] = {}

    # --- lighting -------------------------------------------------------------------------------
    def _night_schedules(self, t: float) -> list[NightSchedule]:
        """The schedule of each program over the night that covers ``t``: the sun once per
        night, each distinct program's schedule once per night (:mod:`core.lighting`)."""
        day = lighting.night_of(t, self.tz)
        if day != self._night:
            self._night = day
            self._schedules.clear()
        sun = self._sun.get(self.town.spec.lat, self.town.spec.lon, day, self.tz)
        found = []
        for program in self.programs:
            schedule = self._schedules.get(program)
            if schedule is None:
                schedule = lighting.night_schedule(program, day, self.tz, sun)
                self._schedules[program] = schedule
            found.append(schedule)
        return found

    def program_level(self, program: LightingProgram, t: float) -> float:
        """Commanded level (0-1) of a program at ``t`` [s since the epoch], before presence
        boost and overrides: :func:`core.lighting.program_level` at the site."""
        spec = self.town.spec
        return lighting.program_level(program, t, self.tz, spec.lat, spec.lon, self._sun) / 100.0

    def step(self, t: float, dt: float) -> None:
        """Advance every device of the site from ``t - dt`` to ``t`` [s]."""
        self._step_lighting(t, dt)
        self._step_water(t, dt)
        self._step_server_room(t, dt)

    def _step_lighting(self, t: float, dt: float) -> None:
        if not len(self.lum_nominal):
            return
        level = lighting.levels_at(self._night_schedules(t), self.program_of, t) / 100.0
        lit = level > 0
        light = self.town.spec.lighting
        if self.lum_presence.any():
            rate = light.presence_rate_per_hour * dt / 3600.0
            events = self.rng.poisson(rate, len(level)) * (self.lum_presence & lit)
            self.presence_count += events
            hold = self.programs[0].presence_hold_s
            self.boost_until = np.where(events > 0, t + hold, self.boost_until)
            boost = np.array([p.presence_boost / 100.0 for p in self.programs])[self.program_of]
            level = np.where(lit & (t < self.boost_until), np.maximum(level, boost), level)
        level = np.where(t < self.override_until, self.override_level, level)
        self.lum_dim = level * 100.0
        power = luminaire_power_w(level, self.lum_nominal, self.lum_standby)
        stuck_on = self.day_burner & (level == 0)
        power = np.where(
            stuck_on,
            luminaire_power_w(np.ones_like(level), self.lum_nominal, self.lum_standby),
            power,
        )
        power = power * (1.0 + self.drift * (t - self.t0) / 86400.0)
        power = np.where(t >= self.failed_at, self.lum_standby, power)
        self.lum_power = power
        wh = power * dt / 3600.0
        self.lum_energy += wh
        self.lum_energy_true += wh
        cab = np.bincount(self.cab_index, weights=power, minlength=len(self.cab_power))
        # The cabinet's meter sees its luminaires plus the line losses and its own electronics.
        self.cab_power = np.asarray(
            cab * (1.0 + light.line_loss_fraction) + light.cabinet_overhead_w, dtype=float
        )
        cab_wh = self.cab_power * dt / 3600.0
        self.cab_energy += cab_wh
        self.cab_energy_true += cab_wh
        night = lighting.night_of(t - dt / 2.0, self.tz)  # the step's middle
        if night not in self.lum_night_wh:
            self.lum_night_wh[night] = np.zeros(len(wh))
            self.lum_night_lit_s[night] = np.zeros(len(wh))
            self.cab_night_wh[night] = np.zeros(len(cab_wh))
        self.lum_night_wh[night] += wh
        self.lum_night_lit_s[night] += np.where(level > 0, dt, 0.0)
        self.cab_night_wh[night] += cab_wh

    # --- water ----------------------------------------------------------------------------------
    def _step_water(self, t: float, dt: float) -> None:
        nd = len(self.town.dmas)
        if not nd:
            return
        local = datetime.fromtimestamp(t, self.tz)
        hour = local.hour + local.minute / 60.0
        weekend = local.weekday() >= 5
        stamp = int(t // 3600)
        if stamp != self.noise_hour:  # household behaviour varies hour by hour
            self.noise_hour = stamp
            self.cust_noise = physics.household_use(
                self.rng, len(self.cust_base), physics.demand_pattern(local.hour + 0.5, weekend)
            )
        pattern = physics.demand_pattern(hour, weekend)
        cust_flow = self.cust_base * pattern * self.cust_noise + self.cust_leak
        self.cust_flow = cust_flow
        vol = cust_flow * dt / 3600.0
        self.cust_volume += vol
        self.cust_volume_true += vol
        consumption = np.bincount(self.cust_dma, weights=cust_flow, minlength=nd)
        hours = (t - self.t0) / 3600.0
        leaks = np.zeros(nd)
        for k, leak in enumerate(self.leaks):
            flow = physics.leak_flow_m3h(
                hours, leak.kind, leak.flow_m3h, leak.ramp_h, leak.end_h, leak.start_h
            )
            self.leak_flow[k] = flow
            if leak.dma < nd:
                leaks[leak.dma] += flow
            if flow or self.leak_series[k]:
                self.leak_series[k].append((t, flow))
        w = self.water
        background = np.full(nd, w.background_leakage_m3h_per_km * w.mains_km_per_dma)
        outlet = np.array(self.town.dma_has_outlet, dtype=float)
        outflow = outlet * 0.5 * consumption  # water passing on to a downstream area
        inflow = consumption + background + leaks + outflow
        self.dma_inflow, self.dma_outflow = inflow, outflow
        # What the meters read: the flow with their measurement noise (a real meter's reading
        # never repeats to the fourth decimal for an hour; a frozen one does).
        noise = 1.0 + w.flow_noise * self.rng.standard_normal((2, nd))
        self.dma_inflow_read = inflow * noise[0]
        self.dma_outflow_read = outflow * noise[1]
        self.dma_pressure = np.array(
            [
                physics.dma_pressure_bar(inflow[d], w.avg_pressure_m * 1.1, self.dma_peak[d])
                for d in range(nd)
            ]
        )
        h = dt / 3600.0
        self.dma_in_volume += inflow * h
        self.dma_out_volume += outflow * h
        self.dma_totals["inflow_m3"] += inflow * h
        self.dma_totals["outflow_m3"] += outflow * h
        self.dma_totals["consumption_m3"] += consumption * h
        self.dma_totals["background_m3"] += background * h
        self.dma_totals["leak_m3"] += leaks * h
        if w.pumping_station:
            self.pump_flow = float(inflow.sum())
            self.pump_power = self.pump_flow * w.pump_kwh_per_m3 * 1000.0 + 150.0
            self.pump_energy += self.pump_power * h
            self.pump_energy_true += self.pump_power * h
            self.pump_volume += self.pump_flow * h
            self.pump_volume_true += self.pump_flow * h

    # --- server room ----------------------------------------------------------------------------
    def _step_server_room(self, t: float, dt: float) -> None:
        room = self.room
        if not room.enabled:
            return
        local = datetime.fromtimestamp(t, self.tz)
        hour = local.hour + local.minute / 60.0
        if local.hour == 0 and local.minute < dt / 60.0:
            self.day_offset_c = float(self.rng.normal(0.0, 2.0))
        self.outdoor_c = physics.outdoor_temperature_c(
            hour, room.outdoor_mean_c + self.day_offset_c, room.outdoor_swing_c
        )
        it_kw = room.it_load_kw * (1.0 + 0.08 * float(np.sin(2 * np.pi * (hour - 8.0) / 24.0)))
        total_kw = (
            it_kw
            + physics.cooling_power_kw(it_kw, self.outdoor_c)
            + physics.facility_overhead_kw(it_kw)
        )
        self.it_power, self.facility_power = it_kw * 1000.0, total_kw * 1000.0
        h = dt / 3600.0
        self.it_energy += self.it_power * h
        self.it_energy_true += self.it_power * h
        self.facility_energy += self.facility_power * h
        self.facility_energy_true += self.facility_power * h

    # --- what devices read ---------------------------------------------------------------------
    def lum_values(self) -> dict[str, FloatArray]:
        return {
            "power": self.lum_power,
            "energy": self.lum_energy,
            "dim": self.lum_dim,
            "presence": self.presence_count,
        }

    def cab_values(self) -> dict[str, FloatArray]:
        return {"power": self.cab_power, "energy": self.cab_energy}

    def flow_values(self, rows: list[tuple[int, bool]]) -> Callable[[], dict[str, FloatArray]]:
        def read() -> dict[str, FloatArray]:
            flow = np.array(
                [self.dma_outflow_read[d] if out else self.dma_inflow_read[d] for d, out in rows]
            )
            vol = np.array(
                [self.dma_out_volume[d] if out else self.dma_in_volume[d] for d, out in rows]
            )
            return {"flow": flow, "volume": vol}

        return read

    def pressure_values(self) -> dict[str, FloatArray]:
        return {"pressure": self.dma_pressure}

    def meter_values(self) -> dict[str, FloatArray]:
        return {"volume": self.cust_volume}

    def meter_truth(self, kind: str) -> tuple[float, float]:
        """A site meter's true energy [Wh] and volume [m³] since the start (``pump_meter``,
        ``facility_meter``, ``it_meter``)."""
        if kind == "pump_meter":
            return self.pump_energy_true, self.pump_volume_true
        if kind == "facility_meter":
            return self.facility_energy_true, 0.0
        return self.it_energy_true, 0.0

    def pump_values(self) -> dict[str, FloatArray]:
        return {
            k: np.array([v])
            for k, v in (
                ("power", self.pump_power),
                ("energy", self.pump_energy),
                ("flow", self.pump_flow),
                ("volume", self.pump_volume),
            )
        }

    def facility_values(self) -> dict[str, FloatArray]:
        return {
            "power": np.array([self.facility_power]),
            "energy": np.array([self.facility_energy]),
            "temperature": np.array([self.outdoor_c]),
        }

    def it_values(self) -> dict[str, FloatArray]:
        return {"power": np.array([self.it_power]), "energy": np.array([self.it_energy])}
