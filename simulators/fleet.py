"""The simulated fleet: every device of a town, stepped in simulated time, reporting over MQTT.

Time advances in steps of ``step_s`` simulated seconds. At each step the devices apply the
``config`` and ``cmd`` their gateways received (:mod:`core.messages`), the physics of every site
is advanced (:mod:`simulators.site_model`), the faults due are injected
(:mod:`simulators.faults`), and each device whose sampling time has come takes a sample
(:mod:`simulators.devices`); when it holds ``batch`` samples it publishes them as one SenML pack
on ``{root}/{site}/{device}/up`` (QoS 1) through its gateway (:mod:`simulators.gateways`), and it
reports the applied config version on ``state`` (retained). Messages of the part of the run
before ``backfill_until`` go to a ``backfill`` callable instead of the broker (history older
than a subscriber's time window); a ``pace`` callable may hold the fleet back after each
message published (back-pressure). ``speed`` is simulated seconds per
wall-clock second (0: as fast as the broker takes it). Everything random comes from one
generator seeded by the scenario seed, so a scenario, seed and start time give the same messages.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt

from core.arrays import FloatArray
from core.luminaire import luminaire_power_w
from core.messages import DeviceState, MessageError, decode_command, decode_config, encode
from core.payloads import encode_senml
from simulators import physics
from simulators.devices import KIND_METRICS, PRESENCE, Group
from simulators.faults import Faults
from simulators.gateways import Gateway, Inbound
from simulators.meter_faults import MeterFaults, plan_meter_faults
from simulators.scenario import Scenario
from simulators.site_model import SiteModel
from simulators.town import Town
from simulators.truth import Truth

log = logging.getLogger("sobriety.simulate")

SITE_METERS = frozenset({"pump_meter", "facility_meter", "it_meter"})
"""The kinds whose true totals the truth marks at every sample (:meth:`Truth.between`)."""

Progress = Callable[[int, int], None]
"""Told (steps done, steps in all) after every simulation step."""
Backfilled = Callable[[str, bytes, float], None]
"""Takes (topic, payload, simulated reception time [s]) of a message older than the live part."""
Pace = Callable[[int], None]
"""Told the count of ``up`` messages published so far; returns when the fleet may go on (how a
caller keeps the fleet a bounded number of messages ahead of what its subscriber wrote)."""


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
        backfill: Backfilled | None = None,
        backfill_until: float = -math.inf,
        pace: Pace | None = None,
    ) -> None:
        self.town = town
        scenario = town.scenario
        self.scenario = scenario
        self.days = days if days is not None else scenario.days
        self.t0 = start if start is not None else resolve_start(scenario, self.days)
        self.speed = speed
        self.root = scenario.root
        self.rng = np.random.default_rng(town.seed + 1)
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.url = urlsplit(mqtt_url)
        self.protocol = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client_prefix = client_prefix
        self.truth = Truth(scenario.name, town.seed, self.t0, self.t0 + self.days * 86400.0)
        self.models: list[SiteModel] = []
        self.model_of: dict[str, SiteModel] = {}
        self.groups: list[Group] = []
        self.gateways: list[Gateway] = []
        self.where: dict[tuple[str, str], tuple[int, int]] = {}
        self._build()
        self.faults = Faults(
            scenario.faults, self.groups, self.t0, self.days, self.rng, self.truth, self._send,
            self.root,
        )  # fmt: skip
        self.meter_plan = plan_meter_faults(town, self.t0, self.days)
        self.meters = MeterFaults(
            self.meter_plan, self.groups, self.where, self.truth, self._expected_wh,
            scenario.faults.power_gap_s,
        )  # fmt: skip
        self._t = self.t0
        self.log: list[tuple[str, bytes]] | None = None  # set to a list to record what is sent
        self.backfill = backfill
        self.backfill_until = backfill_until if backfill is not None else -math.inf
        self.pace = pace
        self.sent_live = 0  # up messages published
        self.sent_backfilled = 0  # up messages handed to the backfill

    @property
    def now(self) -> float:
        """The simulated time [s since the epoch]: the step being played."""
        return self._t

    # --- set-up --------------------------------------------------------------------------------
    def _gateway(self, site: str, name: str) -> Gateway:
        gateway = Gateway(
            site, name, self.root, f"{self.client_prefix}-{site}-{name}", self.protocol, self.inbox
        )
        self.gateways.append(gateway)
        return gateway

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
            self.model_of[site_town.spec.site] = model
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

    # --- config and commands -------------------------------------------------------------------
    def _apply_inbox(self, t: float) -> None:
        while True:
            try:
                site, device, channel, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            found = self.where.get((site, device))
            if found is None or not payload:  # not ours, or a retained message cleared
                continue
            if channel == "config":
                self._apply_config(*found, payload)
            elif channel == "cmd":
                self._apply_cmd(*found, payload, t)

    def _apply_config(self, gi: int, i: int, payload: bytes) -> None:
        group = self.groups[gi]
        try:
            config = decode_config(payload)
        except MessageError as exc:
            log.warning("%s/%s: config refused: %s", group.site, group.ids[i], exc)
            self._publish_state(group, i, error=str(exc))
            return
        if config.reporting is not None:
            group.apply_reporting(i, config.reporting, self._t)
        if config.lighting is not None and group.kind == "luminaire":
            model, idx = self._luminaire(gi, i)
            if config.lighting not in model.programs:
                model.programs.append(config.lighting)
            model.program_of[idx] = model.programs.index(config.lighting)
        group.config_version[i] = config.version
        self._publish_state(group, i)

    def _apply_cmd(self, gi: int, i: int, payload: bytes, t: float) -> None:
        group = self.groups[gi]
        if group.kind != "luminaire":
            return
        try:
            command = decode_command(payload)
        except MessageError as exc:
            log.warning("%s/%s: cmd refused: %s", group.site, group.ids[i], exc)
            return
        model, idx = self._luminaire(gi, i)
        model.override_level[idx] = command.dim / 100.0
        model.override_until[idx] = t + command.duration_s

    def _luminaire(self, gi: int, i: int) -> tuple[SiteModel, int]:
        group = self.groups[gi]
        model = self.model_of[group.site]
        return model, model.town.luminaires.index(group.ids[i])

    def _expected_wh(self, key: tuple[int, int], until: float) -> float:
        """The energy [Wh] device ``key`` should count from the start to ``until`` [s] by the
        site's built-in lighting program and mean loads: what a rolling register is set below
        its maximum, so that it wraps about then (configs, presence and weather move it)."""
        group = self.groups[key[0]]
        device = group.ids[key[1]]
        model = next(m for m in self.models if m.town.spec.site == group.site)
        town = model.town
        n = max(1, math.ceil((until - self.t0) / 600.0))
        hours = (until - self.t0) / 3600.0
        if group.kind in ("luminaire", "cabinet_meter"):
            mid = self.t0 + (np.arange(n) + 0.5) * (until - self.t0) / n
            level = np.array([model.program_level(model.programs[0], float(t)) for t in mid])
            if group.kind == "luminaire":
                lamps = np.array([town.luminaires.index(device)])
            else:
                lamps = np.flatnonzero(model.cab_index == town.cabinets.index(device))
            # As the physics: day burners stuck on, drift, failed lamps at standby.
            on = np.where(
                model.day_burner[lamps][None, :] & (level[:, None] == 0), 1.0, level[:, None]
            )
            power = luminaire_power_w(on, model.lum_nominal[lamps][None, :], model.lum_standby)
            power = power * (1.0 + model.drift[lamps][None, :] * (mid[:, None] - self.t0) / 86400.0)
            failed = mid[:, None] >= model.failed_at[lamps][None, :]
            power = np.where(failed, model.lum_standby, power).sum(axis=1)
            if group.kind == "cabinet_meter":
                light = town.spec.lighting
                power = power * (1.0 + light.line_loss_fraction) + light.cabinet_overhead_w
            return float(power.mean()) * hours
        if group.kind == "pump_meter":
            water = town.spec.water
            nd = len(town.dmas)
            demand = np.bincount(model.cust_dma, weights=model.cust_base, minlength=nd)
            outlet = np.array(town.dma_has_outlet, dtype=float)
            background = water.background_leakage_m3h_per_km * water.mains_km_per_dma
            inflow = float((demand * (1.0 + 0.5 * outlet) + background).sum())
            return (inflow * water.pump_kwh_per_m3 * 1000.0 + 150.0) * hours
        room = town.spec.server_room
        it_kw = room.it_load_kw
        if group.kind == "facility_meter":
            it_kw += physics.cooling_power_kw(it_kw, room.outdoor_mean_c)
            it_kw += physics.facility_overhead_kw(room.it_load_kw)
        return it_kw * 1000.0 * hours

    def _publish_state(self, group: Group, i: int, error: str | None = None) -> None:
        state = DeviceState(online=True, config_version=group.config_version[i], config_error=error)
        group.gateway.send(group.state_topics[i], encode(state), retain=True)

    # --- publishing ----------------------------------------------------------------------------
    def _send(self, gw: Gateway, topic: str, payload: bytes) -> None:
        if self.log is not None:
            self.log.append((topic, payload))
        if self._t < self.backfill_until and self.backfill is not None:
            self.backfill(topic, payload, self._t)  # as if received now, in simulated time
            self.sent_backfilled += 1
            return
        gw.send(topic, payload)
        self.sent_live += 1
        if self.pace is not None:
            self.pace(self.sent_live)

    def _flush(self, gi: int, i: int, t: float) -> None:
        group = self.groups[gi]
        records = group.take(i)
        if not records:
            return
        skewed = sum(1 for r in records if r[4])
        clean = [(m, v, u, ts) for m, v, u, ts, _s in records]
        payload = encode_senml(group.ids[i], clean)
        truth = self.truth
        truth.messages += 1
        truth.readings += len(clean) - skewed
        by_site = truth.readings_by_site
        by_site[group.site] = by_site.get(group.site, 0) + len(clean) - skewed
        if skewed:
            truth.expect_rejection("timestamp_out_of_window")
        copies = self.faults.deliver((gi, i), group.topics[i], payload, t)
        if skewed < len(clean):
            truth.deliveries_stored += copies

    def _sample(self, t: float) -> None:
        faults, meters = self.faults, self.meters
        for gi, group in enumerate(self.groups):
            due = np.nonzero(group.next_sample <= t)[0]
            if not len(due):
                continue
            values = group.values()
            for i in due.tolist():
                group.next_sample[i] += group.interval[i]
                key = (gi, i)
                if faults.silent(key, t):
                    continue
                if group.kind in SITE_METERS:
                    wh, m3 = self.model_of[group.site].meter_truth(group.kind)
                    self.truth.mark(f"{group.site}/{group.ids[i]}", t, wh, m3)
                shown = meters.reported(key, t, values)
                if group.sample(i, t, faults.stamp(key, t), shown, meters.skip(key, t)):
                    self._flush(gi, i, t)

    # --- run -----------------------------------------------------------------------------------
    def connect(
        self, timeout_s: float = 10.0, username: str | None = None, password: str | None = None
    ) -> None:
        """Connect every gateway (as ``username`` with ``password`` when given), announce every
        device (retained ``state``), and wait until the broker delivered the retained configs
        (each gateway at most ``timeout_s``)."""
        for gw in self.gateways:
            gw.connect(self.url, username, password)
        for group in self.groups:
            for i in range(len(group.ids)):
                self._publish_state(group, i)
        for gw in self.gateways:
            gw.wait_ready(timeout_s)

    def run(self, progress: Progress | None = None, stop: threading.Event | None = None) -> Truth:
        """Simulate from the start for ``days``; return the ground truth."""
        steps = round(self.days * 86400.0 / self.scenario.step_s)
        dt = float(self.scenario.step_s)
        wall0 = time.monotonic()
        self._t = self.t0
        for step in range(1, steps + 1):
            if stop is not None and stop.is_set():
                steps = step - 1
                break
            t = self.t0 + step * dt
            self._t = t
            self._apply_inbox(t)
            for model in self.models:
                model.step(t, dt)
            self.faults.inject(t)
            self.meters.inject(t)
            self._sample(t)
            self.faults.release(t)
            if self.speed > 0:
                ahead = wall0 + (t - self.t0) / self.speed - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing: simulated time follows the wall clock
            if progress is not None:
                progress(step, steps)
        end = self.t0 + steps * dt
        for gi, group in enumerate(self.groups):
            for i in range(len(group.ids)):
                self._flush(gi, i, end)
            self.faults.send_held(gi)
        self.faults.release(end, everything=True)
        self._record_truth(end)
        return self.truth

    def wait_published(self, timeout_s: float = 300.0) -> None:
        """Wait until the broker acknowledged everything sent."""
        deadline = time.monotonic() + timeout_s
        for gw in self.gateways:
            gw.wait_published(deadline)

    def close(self) -> None:
        """Disconnect the gateways cleanly (their state stays as last published)."""
        for gw in self.gateways:
            gw.close()

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
            _record_nights(truth, model)
            if town.spec.water.pumping_station and town.dmas:
                truth.energy_wh[f"{site}/pump-1"] = model.pump_energy_true
                truth.volume_m3[f"{site}/pump-1"] = model.pump_volume_true
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


def _record_nights(truth: Truth, model: SiteModel) -> None:
    """The truth of each night of a site's lighting, per lighting group and per cabinet."""
    town = model.town
    site = town.spec.site
    group_of = {d.device: d.group or "" for d in town.devices if d.kind == "luminaire"}
    groups: dict[str, list[int]] = {}
    for i, dev in enumerate(town.luminaires):
        groups.setdefault(group_of[dev], []).append(i)
    for night, wh in model.lum_night_wh.items():
        lit_s = model.lum_night_lit_s[night]
        for group, lamps in groups.items():
            truth.lighting_nights[f"{site}/{group}/{night.isoformat()}"] = {
                "luminaires": float(len(lamps)),
                "kwh": float(wh[lamps].sum()) / 1000.0,
                "lit_hours": float(lit_s[lamps].mean()) / 3600.0,
                "baseline_kwh": float((model.lum_nominal[lamps] * lit_s[lamps]).sum()) / 3.6e6,
            }
        for cab, cab_wh in zip(town.cabinets, model.cab_night_wh[night].tolist(), strict=True):
            truth.cabinet_nights[f"{site}/{cab}/{night.isoformat()}"] = cab_wh / 1000.0
