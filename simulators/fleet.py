"""The simulated fleet: device physics stepped in simulated time, reports over MQTT.

Time advances in steps of ``step_s`` simulated seconds. At each step the physics of every site
is advanced (vectorised over devices), then each device whose sampling time has come takes a
sample; when it holds ``batch`` samples it publishes them as one SenML pack on
``{root}/{site}/{device}/up`` (QoS 1). Devices obey the retained ``config`` (reporting interval,
batching, deadbands, lighting program) and ``cmd`` (dimming override) pushed to them, and report
the applied config version on ``state`` (retained).

Devices reach the broker through gateways, one MQTT connection per site and network
(``gw-lighting``, ``gw-water``, ``gw-facilities``), as concentrators do; a gateway's last will
marks it offline on its own ``state`` topic. ``speed`` is simulated seconds per wall-clock second
(0: as fast as the broker takes it). Everything random comes from one generator seeded by the
scenario seed, so a scenario, seed and start time give the same messages.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from astral import Observer
from astral.sun import sun
from paho.mqtt.enums import CallbackAPIVersion

from simulators import physics
from simulators.physics import FloatArray
from simulators.scenario import Program, Reporting, Scenario
from simulators.town import SiteTown, Town
from simulators.truth import Truth
from sobriety.payloads import encode_senml

log = logging.getLogger("sobriety.simulate")

# (metric, unit sent, factor from the canonical value to the unit sent)
Metric = tuple[str, str | None, float]
KIND_METRICS: dict[str, tuple[Metric, ...]] = {
    "luminaire": (("power", "W", 1.0), ("energy", "Wh", 1.0), ("dim", "%", 1.0)),
    "cabinet_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3)),
    "flow_meter": (("flow", "m3/h", 1.0), ("volume", "m3", 1.0)),
    "pressure_sensor": (("pressure", "bar", 1.0),),
    "water_meter": (("volume", "L", 1000.0),),
    "pump_meter": (
        ("power", "kW", 1e-3),
        ("energy", "kWh", 1e-3),
        ("flow", "m3/h", 1.0),
        ("volume", "m3", 1.0),
    ),
    "facility_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3), ("temperature", "Cel", 1.0)),
    "it_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3)),
}
Record = tuple[str, float, str | None, float, bool]
PRESENCE: Metric = ("presence", "count", 1.0)
_DIGITS = {
    "power": 2,
    "energy": 2,
    "dim": 1,
    "flow": 4,
    "volume": 4,
    "pressure": 4,
    "temperature": 2,
    "presence": 0,
}


class Group:
    """Devices of one kind at one site that report the same metrics through one gateway."""

    def __init__(
        self,
        site: str,
        kind: str,
        ids: list[str],
        gateway: Gateway,
        reporting: Reporting,
        root: str,
        metrics: tuple[Metric, ...],
        values: Callable[[], dict[str, FloatArray]],
        t0: float,
        rng: np.random.Generator,
    ) -> None:
        n = len(ids)
        self.site, self.kind, self.ids, self.gateway = site, kind, ids, gateway
        self.metrics = metrics
        self.values = values
        self.topics = [f"{root}/{site}/{d}/up" for d in ids]
        self.interval = np.full(n, float(reporting.interval_s))
        self.batch = [reporting.batch] * n
        self.deadband = [dict(reporting.deadband) for _ in range(n)]
        self.max_silence = [float(reporting.max_silence_s)] * n
        # Phases are spread over the first interval so that devices do not all report at once.
        self.next_sample = t0 + np.floor(rng.uniform(0, reporting.interval_s, n))
        # Samples waiting to be sent: (metric, value, unit, time, time is skewed).
        self.pending: list[list[Record]] = [[] for _ in range(n)]
        self.samples = [0] * n
        self.last_sent: list[dict[str, tuple[float, float]]] = [{} for _ in range(n)]
        self.config_version = [0] * n
        self.on_sampled: Callable[[int], None] | None = None


@dataclass
class Gateway:
    """One MQTT connection publishing for many devices."""

    site: str
    name: str
    client: mqtt.Client
    acked: list[int] = field(default_factory=lambda: [0])
    sent: int = 0


@dataclass
class FaultPlan:
    """Faults scheduled at simulated times: (time, kind, group index, device index)."""

    events: list[tuple[float, str, int, int]]
    duplicate_next: set[tuple[int, int]] = field(default_factory=set)
    late_next: set[tuple[int, int]] = field(default_factory=set)
    swap_next: dict[tuple[int, int], tuple[str, bytes, int, int] | None] = field(
        default_factory=dict
    )
    dropout_until: dict[tuple[int, int], float] = field(default_factory=dict)
    skew_until: dict[tuple[int, int], float] = field(default_factory=dict)


class SiteModel:
    """The physical state of one site, advanced step by step."""

    def __init__(
        self, town: SiteTown, scenario: Scenario, t0: float, rng: np.random.Generator
    ) -> None:
        self.town = town
        spec = town.spec
        self.tz = zoneinfo.ZoneInfo(spec.timezone)
        self.observer = Observer(spec.lat, spec.lon)
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
        self.programs: list[Program] = [light.program]
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
        self._sun_cache: dict[date, tuple[float, float]] = {}

    # --- lighting -------------------------------------------------------------------------------
    def _sun(self, day: date) -> tuple[float, float]:
        """(sunrise, sunset) of a local day, s since the epoch."""
        found = self._sun_cache.get(day)
        if found is None:
            s = sun(self.observer, day, tzinfo=self.tz)
            found = (s["sunrise"].timestamp(), s["sunset"].timestamp())
            self._sun_cache[day] = found
        return found

    def program_level(self, program: Program, t: float) -> float:
        """Commanded level (0-1) of a program at ``t``: 0 by day, else the active step."""
        local = datetime.fromtimestamp(t, self.tz)
        sunrise, sunset = self._sun(local.date())
        on = sunset + program.on_offset_min * 60
        off = sunrise + program.off_offset_min * 60
        if off <= t < on:
            return 0.0
        night_h = (local.hour + local.minute / 60.0 - 12.0) % 24.0
        level = 100.0
        for when, step_level in sorted(
            program.steps, key=lambda s: (int(s[0][:2]) + int(s[0][3:]) / 60 - 12) % 24
        ):
            step_h = (int(when[:2]) + int(when[3:]) / 60.0 - 12.0) % 24.0
            if step_h <= night_h:
                level = step_level
        return level / 100.0

    def step(self, t: float, dt: float) -> None:
        """Advance every device of the site from ``t - dt`` to ``t`` [s]."""
        self._step_lighting(t, dt)
        self._step_water(t, dt)
        self._step_server_room(t, dt)

    def _step_lighting(self, t: float, dt: float) -> None:
        if not len(self.lum_nominal):
            return
        levels = np.array([self.program_level(p, t) for p in self.programs])
        level = levels[self.program_of]
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
        power = physics.luminaire_power_w(level, self.lum_nominal, self.lum_standby)
        stuck_on = self.day_burner & (level == 0)
        power = np.where(
            stuck_on,
            physics.luminaire_power_w(np.ones_like(level), self.lum_nominal, self.lum_standby),
            power,
        )
        power = power * (1.0 + self.drift * (t - self.t0) / 86400.0)
        power = np.where(t >= self.failed_at, self.lum_standby, power)
        self.lum_power = power
        wh = power * dt / 3600.0
        self.lum_energy += wh
        self.lum_energy_true += wh
        cab = np.bincount(self.cab_index, weights=power, minlength=len(self.cab_power))
        self.cab_power = np.asarray(cab * 1.03 + 5.0, dtype=float)  # line losses, electronics
        cab_wh = self.cab_power * dt / 3600.0
        self.cab_energy += cab_wh
        self.cab_energy_true += cab_wh

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
            self.cust_noise = self.rng.lognormal(-0.06, 0.35, len(self.cust_base))
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
            flow = np.array([self.dma_outflow[d] if out else self.dma_inflow[d] for d, out in rows])
            vol = np.array(
                [self.dma_out_volume[d] if out else self.dma_in_volume[d] for d, out in rows]
            )
            return {"flow": flow, "volume": vol}

        return read

    def pressure_values(self) -> dict[str, FloatArray]:
        return {"pressure": self.dma_pressure}

    def meter_values(self) -> dict[str, FloatArray]:
        return {"volume": self.cust_volume}

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


def resolve_start(scenario: Scenario, days: float, now: float | None = None) -> float:
    """Start of the run [s since epoch]: the scenario's, or ``days`` before now (rounded down
    to the minute) so that the data ends about now, inside the ingest's time window."""
    if scenario.start != "auto":
        assert isinstance(scenario.start, datetime)
        return scenario.start.timestamp()
    now = time.time() if now is None else now
    return float(int((now - days * 86400.0) // 60 * 60))


class Fleet:
    """All simulated devices of a town, publishing to one broker."""

    def __init__(
        self,
        town: Town,
        mqtt_url: str,
        *,
        speed: float = 0.0,
        days: float | None = None,
        start: float | None = None,
        protocol: str = "5",
        client_prefix: str = "sim",
    ) -> None:
        self.town = town
        scenario = town.scenario
        self.scenario = scenario
        self.days = days if days is not None else scenario.days
        self.t0 = start if start is not None else resolve_start(scenario, self.days)
        self.speed = speed
        self.root = scenario.root
        self.rng = np.random.default_rng(town.seed + 1)
        self.inbox: queue.Queue[tuple[str, str, str, bytes]] = queue.Queue()
        self.url = urlsplit(mqtt_url)
        self.protocol = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client_prefix = client_prefix
        self.truth = Truth(scenario.name, town.seed, self.t0, self.t0 + self.days * 86400.0)
        self.models: list[SiteModel] = []
        self.groups: list[Group] = []
        self.gateways: list[Gateway] = []
        self.where: dict[tuple[str, str], tuple[int, int]] = {}
        self._build()
        self.faults = self._plan_faults()
        self.delayed: list[tuple[float, int, int, str, bytes, int]] = []
        self._t = self.t0
        self.log: list[tuple[str, bytes]] | None = None  # set to a list to record what is sent

    # --- set-up --------------------------------------------------------------------------------
    def _gateway(self, site: str, name: str) -> Gateway:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.client_prefix}-{site}-{name}",
            protocol=self.protocol,
        )
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        state = f"{self.root}/{site}/{name}/state"
        client.will_set(state, orjson.dumps({"online": False}), qos=1, retain=True)
        gw = Gateway(site, name, client)

        def on_publish(*_a: object) -> None:
            gw.acked[0] += 1

        def on_connect(c: mqtt.Client, *_a: object) -> None:
            c.subscribe([(f"{self.root}/{site}/+/config", 1), (f"{self.root}/{site}/+/cmd", 1)])

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            parts = msg.topic.split("/")
            self.inbox.put((parts[-3], parts[-2], parts[-1], bytes(msg.payload)))

        client.on_publish = on_publish
        client.on_connect = on_connect
        client.on_message = on_message
        self.gateways.append(gw)
        return gw

    def _add(
        self,
        model: SiteModel,
        kind: str,
        ids: list[str],
        gw: Gateway,
        values: Callable[[], dict[str, FloatArray]],
        presence: bool = False,
    ) -> None:
        if not ids:
            return
        metrics = KIND_METRICS[kind] + ((PRESENCE,) if presence else ())
        group = Group(
            model.town.spec.site,
            kind,
            ids,
            gw,
            self.scenario.reporting[kind],
            self.root,
            metrics,
            values,
            self.t0,
            self.rng,
        )
        gi = len(self.groups)
        self.groups.append(group)
        for i, dev in enumerate(ids):
            self.where[(group.site, dev)] = (gi, i)

    def _build(self) -> None:
        for site_town in self.town.sites:
            model = SiteModel(site_town, self.scenario, self.t0, self.rng)
            self.models.append(model)
            site = site_town.spec.site
            if site_town.luminaires:
                gw = self._gateway(site, "gw-lighting")
                pres = [i for i, p in enumerate(site_town.lum_presence) if p]
                plain = [i for i, p in enumerate(site_town.lum_presence) if not p]
                for subset, with_presence in ((plain, False), (pres, True)):
                    ids = [site_town.luminaires[i] for i in subset]
                    idx = np.array(subset, dtype=int)
                    self._add(
                        model,
                        "luminaire",
                        ids,
                        gw,
                        _subset(model.lum_values, idx),
                        presence=with_presence,
                    )
                    if with_presence and ids:
                        # The presence count is per reporting interval: reset once sampled.
                        self.groups[-1].on_sampled = _resetter(model.presence_count, idx)
                self._add(model, "cabinet_meter", site_town.cabinets, gw, model.cab_values)
            if site_town.dmas:
                gw = self._gateway(site, "gw-water")
                rows: list[tuple[int, bool]] = []
                ids = []
                for d in range(len(site_town.dmas)):
                    rows.append((d, False))
                    ids.append(f"fm-{d}-in")
                    if site_town.dma_has_outlet[d]:
                        rows.append((d, True))
                        ids.append(f"fm-{d}-out")
                self._add(model, "flow_meter", ids, gw, model.flow_values(rows))
                self._add(
                    model,
                    "pressure_sensor",
                    [f"ps-{d}" for d in range(len(site_town.dmas))],
                    gw,
                    model.pressure_values,
                )
                self._add(model, "water_meter", site_town.customers, gw, model.meter_values)
                if site_town.spec.water.pumping_station:
                    self._add(model, "pump_meter", ["pump-1"], gw, model.pump_values)
            if site_town.spec.server_room.enabled:
                gw = self._gateway(site, "gw-facilities")
                self._add(model, "facility_meter", ["facility-1"], gw, model.facility_values)
                self._add(model, "it_meter", ["it-1"], gw, model.it_values)

    def _plan_faults(self) -> FaultPlan:
        f = self.scenario.faults
        span = self.days * 86400.0
        events: list[tuple[float, str, int, int]] = []
        kinds = (
            ("malformed", f.malformed),
            ("duplicate", f.duplicates),
            ("out_of_order", f.out_of_order),
            ("late", f.late),
            ("dropout", f.dropouts),
            ("clock_skew", f.clock_skew),
            ("unknown_device", f.unknown_devices),
        )
        for kind, count in kinds:
            for _ in range(count):
                gi = int(self.rng.integers(len(self.groups)))
                i = int(self.rng.integers(len(self.groups[gi].ids)))
                at = self.t0 + float(self.rng.uniform(0.05, 0.85)) * span
                events.append((at, kind, gi, i))
        events.sort()
        return FaultPlan(events)

    # --- config and commands -------------------------------------------------------------------
    def _apply_inbox(self, t: float) -> None:
        while True:
            try:
                site, device, channel, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            found = self.where.get((site, device))
            if found is None:
                continue
            gi, i = found
            try:
                doc = orjson.loads(payload) if payload else None
            except orjson.JSONDecodeError:
                log.warning("%s/%s: %s is not JSON; ignored", site, device, channel)
                continue
            if not isinstance(doc, dict):
                continue
            if channel == "config":
                self._apply_config(gi, i, doc)
            elif channel == "cmd":
                self._apply_cmd(gi, i, doc, t)

    def _apply_config(self, gi: int, i: int, doc: dict[str, Any]) -> None:
        group = self.groups[gi]
        rep = doc.get("reporting", {})
        if isinstance(rep, dict):
            if isinstance(rep.get("interval_s"), int | float) and rep["interval_s"] >= 1:
                group.interval[i] = float(rep["interval_s"])
                group.next_sample[i] = min(group.next_sample[i], self._t + group.interval[i])
            if isinstance(rep.get("batch"), int) and rep["batch"] >= 1:
                group.batch[i] = rep["batch"]
            if isinstance(rep.get("deadband"), dict):
                group.deadband[i] = {k: float(v) for k, v in rep["deadband"].items()}
            if isinstance(rep.get("max_silence_s"), int | float):
                group.max_silence[i] = float(rep["max_silence_s"])
        lighting = doc.get("lighting")
        if group.kind == "luminaire" and isinstance(lighting, dict):
            model, idx = self._luminaire(gi, i)
            try:
                program = Program.model_validate(lighting)
            except ValueError as exc:
                log.warning("%s: lighting program refused: %s", group.ids[i], exc)
            else:
                if program not in model.programs:
                    model.programs.append(program)
                model.program_of[idx] = model.programs.index(program)
        version = doc.get("version", 0)
        group.config_version[i] = int(version) if isinstance(version, int) else 0
        self._publish_state(group, i)

    def _apply_cmd(self, gi: int, i: int, doc: dict[str, Any], t: float) -> None:
        group = self.groups[gi]
        if group.kind != "luminaire" or not isinstance(doc.get("dim"), int | float):
            return
        model, idx = self._luminaire(gi, i)
        model.override_level[idx] = min(max(float(doc["dim"]), 0.0), 100.0) / 100.0
        duration = doc.get("duration_s", 3600)
        model.override_until[idx] = t + float(
            duration if isinstance(duration, int | float) else 3600
        )

    def _luminaire(self, gi: int, i: int) -> tuple[SiteModel, int]:
        group = self.groups[gi]
        model = next(m for m in self.models if m.town.spec.site == group.site)
        return model, model.town.luminaires.index(group.ids[i])

    def _publish_state(self, group: Group, i: int) -> None:
        topic = f"{self.root}/{group.site}/{group.ids[i]}/state"
        body = orjson.dumps({"online": True, "config_version": group.config_version[i]})
        group.gateway.client.publish(topic, body, qos=1, retain=True)
        group.gateway.sent += 1

    # --- publishing ----------------------------------------------------------------------------
    def _send(self, gw: Gateway, topic: str, payload: bytes) -> None:
        while gw.sent - gw.acked[0] > 10000:  # paho numbers QoS 1 messages with 16 bits
            time.sleep(0.001)
        gw.client.publish(topic, payload, qos=1)
        gw.sent += 1
        if self.log is not None:
            self.log.append((topic, payload))

    def _flush(self, gi: int, i: int, t: float) -> None:
        group = self.groups[gi]
        records = group.pending[i]
        if not records:
            return
        group.pending[i] = []
        group.samples[i] = 0
        key = (gi, i)
        skewed = sum(1 for r in records if r[4])
        clean = [(m, v, u, ts) for m, v, u, ts, _s in records]
        payload = encode_senml(group.ids[i], clean)
        topic = group.topics[i]
        truth = self.truth
        truth.messages += 1
        truth.readings += len(clean) - skewed
        if skewed:
            truth.expect_rejection("timestamp_out_of_window")
        if key in self.faults.duplicate_next:
            self.faults.duplicate_next.discard(key)
            self._send(group.gateway, topic, payload)
            truth.count_fault("duplicate")
        if key in self.faults.late_next:
            self.faults.late_next.discard(key)
            self.delayed.append((t + self.scenario.faults.late_s, gi, i, topic, payload, 0))
            truth.count_fault("late")
            return
        if key in self.faults.swap_next:
            held = self.faults.swap_next[key]
            if held is None:  # hold this one, send it after the next one
                self.faults.swap_next[key] = (topic, payload, 0, 0)
                return
            del self.faults.swap_next[key]
            self._send(group.gateway, topic, payload)
            self._send(group.gateway, held[0], held[1])
            truth.count_fault("out_of_order")
            return
        self._send(group.gateway, topic, payload)

    def _inject(self, t: float) -> None:
        plan = self.faults
        while plan.events and plan.events[0][0] <= t:
            _at, kind, gi, i = plan.events.pop(0)
            group = self.groups[gi]
            key = (gi, i)
            if kind == "malformed":
                self._send(group.gateway, group.topics[i], b'{"power": 12.5, "energy": ')
                self.truth.count_fault(kind)
                self.truth.expect_rejection("invalid_json")
            elif kind == "unknown_device":
                ghost = f"ghost-{int(self.rng.integers(10**6)):06d}"
                topic = f"{self.root}/{group.site}/{ghost}/up"
                self._send(group.gateway, topic, encode_senml(ghost, [("power", 1.0, "W", t)]))
                self.truth.count_fault(kind)
                self.truth.expect_rejection("unknown_device")
            elif kind == "duplicate":
                plan.duplicate_next.add(key)
            elif kind == "late":
                plan.late_next.add(key)
            elif kind == "out_of_order":
                plan.swap_next[key] = None
            elif kind == "dropout":
                plan.dropout_until[key] = t + self.scenario.faults.dropout_s
                self.truth.count_fault(kind)
                self._event(kind, group, i, t, end=t + self.scenario.faults.dropout_s)
            elif kind == "clock_skew":
                plan.skew_until[key] = t + self.scenario.faults.clock_skew_duration_s
                self.truth.count_fault(kind)
                self._event(kind, group, i, t, skew_s=self.scenario.faults.clock_skew_s)

    def _event(self, kind: str, group: Group, i: int, t: float, **extra: float) -> None:
        self.truth.events.append(
            {"kind": kind, "device": group.ids[i], "site": group.site, "start": t, **extra}
        )

    def _sample(self, t: float) -> None:
        plan = self.faults
        for gi, group in enumerate(self.groups):
            due = np.nonzero(group.next_sample <= t)[0]
            if not len(due):
                continue
            values = group.values()
            for i in due.tolist():
                group.next_sample[i] += group.interval[i]
                key = (gi, i)
                if plan.dropout_until.get(key, -1.0) > t:
                    continue
                stamp = t + (
                    self.scenario.faults.clock_skew_s if plan.skew_until.get(key, -1.0) > t else 0.0
                )
                skewed = stamp != t
                last = group.last_sent[i]
                band = group.deadband[i]
                for metric, unit, factor in group.metrics:
                    value = float(values[metric][i])
                    if band and metric in band and metric in last:
                        prev, when = last[metric]
                        if abs(value - prev) < band[metric] and t - when < group.max_silence[i]:
                            continue
                    last[metric] = (value, t)
                    sent = round(value * factor, _DIGITS[metric] + (3 if factor < 1 else 0))
                    group.pending[i].append((metric, sent, unit, stamp, skewed))
                if group.on_sampled is not None:
                    group.on_sampled(i)
                group.samples[i] += 1
                if group.samples[i] >= group.batch[i]:
                    self._flush(gi, i, t)

    def _release_delayed(self, t: float, everything: bool = False) -> None:
        keep = []
        for item in self.delayed:
            release, gi, _i, topic, payload, _ = item
            if everything or release <= t:
                self._send(self.groups[gi].gateway, topic, payload)
            else:
                keep.append(item)
        self.delayed = keep

    # --- run -----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect every gateway and announce every device (retained ``state``)."""
        for gw in self.gateways:
            gw.client.connect(self.url.hostname or "127.0.0.1", self.url.port or 1883, keepalive=30)
            gw.client.loop_start()
            gw.client.publish(
                f"{self.root}/{gw.site}/{gw.name}/state",
                orjson.dumps({"online": True}),
                qos=1,
                retain=True,
            )
            gw.sent += 1
        for group in self.groups:
            for i in range(len(group.ids)):
                self._publish_state(group, i)

    def run(self, progress: bool = False, stop: threading.Event | None = None) -> Truth:
        """Simulate from the start for ``days``; return the ground truth."""
        steps = round(self.days * 86400.0 / self.scenario.step_s)
        dt = float(self.scenario.step_s)
        wall0 = time.monotonic()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, unit="step", desc="simulating", leave=False)
        self._t = self.t0
        time.sleep(0.2)  # retained configs arrive right after the subscriptions
        for step in range(1, steps + 1):
            if stop is not None and stop.is_set():
                steps = step - 1
                break
            t = self.t0 + step * dt
            self._t = t
            self._apply_inbox(t)
            for model in self.models:
                model.step(t, dt)
            self._inject(t)
            self._sample(t)
            self._release_delayed(t)
            if self.speed > 0:
                ahead = wall0 + (t - self.t0) / self.speed - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if bar is not None:
                bar.update(1)
        end = self.t0 + steps * dt
        for gi, group in enumerate(self.groups):
            for i in range(len(group.ids)):
                self._flush(gi, i, end)
            for (kgi, ki), held in list(self.faults.swap_next.items()):
                if kgi == gi and held is not None:
                    self._send(group.gateway, held[0], held[1])
                    del self.faults.swap_next[(kgi, ki)]
        self._release_delayed(end, everything=True)
        if bar is not None:
            bar.close()
        self._record_truth(end)
        return self.truth

    def wait_published(self, timeout_s: float = 300.0) -> None:
        """Wait until the broker acknowledged everything sent."""
        deadline = time.monotonic() + timeout_s
        for gw in self.gateways:
            while gw.acked[0] < gw.sent:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gw.name}: {gw.acked[0]}/{gw.sent} acknowledged")
                time.sleep(0.01)

    def close(self) -> None:
        """Disconnect the gateways cleanly (their state stays as last published)."""
        for gw in self.gateways:
            gw.client.disconnect()
            gw.client.loop_stop()

    def _record_truth(self, end: float) -> None:
        truth = self.truth
        truth.end = end
        for model in self.models:
            town = model.town
            site = town.spec.site
            for dev, wh in zip(town.luminaires, model.lum_energy_true.tolist(), strict=True):
                truth.energy_wh[f"{site}/{dev}"] = wh
            for dev, wh in zip(town.cabinets, model.cab_energy_true.tolist(), strict=True):
                truth.energy_wh[f"{site}/{dev}"] = wh
            if town.spec.water.pumping_station and town.dmas:
                truth.energy_wh[f"{site}/pump-1"] = model.pump_energy_true
            if town.spec.server_room.enabled:
                truth.energy_wh[f"{site}/facility-1"] = model.facility_energy_true
                truth.energy_wh[f"{site}/it-1"] = model.it_energy_true
            for dev, m3 in zip(town.customers, model.cust_volume_true.tolist(), strict=True):
                truth.volume_m3[f"{site}/{dev}"] = m3
            for d, dma in enumerate(town.dmas):
                truth.water[f"{site}/{dma}"] = {k: float(v[d]) for k, v in model.dma_totals.items()}
            for k, leak in enumerate(model.leaks):
                series = model.leak_series[k]
                truth.leaks.append(
                    {
                        "site": site,
                        "dma": town.dmas[leak.dma] if leak.dma < len(town.dmas) else None,
                        "kind": leak.kind,
                        "start": model.t0 + leak.start_h * 3600.0,
                        "end": None if leak.end_h is None else model.t0 + leak.end_h * 3600.0,
                        "final_flow_m3h": leak.flow_m3h,
                        "flow_m3h_hourly": [(ts, f) for ts, f in series if int(ts) % 3600 == 0],
                    }
                )
            for event in model.events:
                truth.events.append({"site": site, **event})


def _resetter(counts: FloatArray, idx: Any) -> Callable[[int], None]:
    def reset(i: int) -> None:
        counts[idx[i]] = 0.0

    return reset


def _subset(
    read: Callable[[], dict[str, FloatArray]], idx: FloatArray | Any
) -> Callable[[], dict[str, FloatArray]]:
    def values() -> dict[str, FloatArray]:
        return {k: v[idx] for k, v in read().items()}

    return values


def utc_iso(ts: float) -> str:
    """ISO 8601 UTC of seconds since the epoch."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)).isoformat()
