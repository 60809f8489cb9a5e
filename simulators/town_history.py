"""Weeks of a town's water network before its live run, written straight to the database: the
history that leak detection learns from (``sobriety demo``; ``[sites.water] history_days``).

The MQTT fleet (:mod:`simulators.fleet`) plays a town from ``t0`` on; this module writes the
``history_days`` before ``t0`` of the same water devices (inlet and outlet flow meters, pressure
sensors, customer meters, same ids), with the same model as the live one
(:meth:`simulators.site_model.SiteModel._step_water`, vectorised here over a day): households of
the same sizes following :func:`~simulators.physics.demand_pattern` in local time (zoneinfo:
DST days are right), drawing water some hours only (:func:`~simulators.physics.household_use`,
drawn per UTC hour as the live model does), background leakage, half the consumption passing on
to an outlet, the leaks, pressure from the total inflow
(:func:`~simulators.physics.dma_pressure_bar`: a leak lowers it), meter noise. Devices read as
they do live: flow meters and pressure sensors every ``reporting.*.interval_s``, customer meters
hourly at a phase of their own, values rounded as the devices send them and converted as the
ingest stores them.

Continuity: the history is generated backwards from the state of the live models at ``t0`` (the
:class:`~simulators.site_model.SiteModel` of the fleet, before it runs): every cumulative index
(flow meter volume, customer meter index) is that starting value minus what flowed between a
reading and ``t0``, so the history ends exactly where the live devices start and their first
live readings continue it. Readings stop before ``t0``; the live run's start after it.

Leaks of the history (``history_leaks``) are sized against the DMA's expected minimum night
flow; one still flowing at ``t0`` is handed to the live run (:meth:`TownHistory.live_town`), so
the live flow and the water truth include it. Each day is generated, encoded for binary
``COPY`` and written in its own transaction (never the whole history in memory); random draws
come from generators of their own (the live run is the same with or without a history).
Units: m³/h, m³, bar, seconds since the epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from core.arrays import BoolArray, FloatArray, IntArray
from core.contract import METRICS, unit_conversion
from simulators import physics
from simulators.devices import KIND_METRICS, sent_value
from simulators.history_rows import COPY_SQL, Rows
from simulators.scenario import Leak
from simulators.site_model import SiteModel
from simulators.town import SiteTown, Town
from simulators.truth import Truth

__all__ = ["HistoryWritten", "PlannedLeak", "TownHistory", "expected_mnf_m3h"]

NIGHT_H = (2.0, 4.0)
"""Local hours of the night window the minimum night flow is taken over (the detector's
default)."""
_STREAM = 0x4157_0A1D
"""Mixed into the seeds of the history's generators: its draws are not the live run's."""
_FLOW, _VOLUME, _PRESSURE = (METRICS[m].id for m in ("flow", "volume", "pressure"))


@dataclass(frozen=True)
class PlannedLeak:
    """A leak of the history, resolved: times [s since epoch], flow [m³/h]."""

    site: str
    dma: int
    dma_name: str
    kind: Literal["burst", "incipient"]
    start: float
    end: float | None
    flow_m3h: float
    ramp_h: float
    size_fraction: float
    mnf_m3h: float

    def live_leak(self, t0: float) -> Leak:
        """The same leak as the live model knows leaks, hours from ``t0``: it began before the
        run (a negative ``start_h``, which a scenario file cannot say, hence no validation)."""
        return Leak.model_construct(
            dma=self.dma,
            kind=self.kind,
            start_h=(self.start - t0) / 3600.0,
            end_h=None if self.end is None else (self.end - t0) / 3600.0,
            flow_m3h=self.flow_m3h,
            ramp_h=self.ramp_h,
        )

    def flow_at(self, t: FloatArray, t0: float) -> FloatArray:
        """Its flow [m³/h] at times ``t``, by the live model's function."""
        live = self.live_leak(t0)
        hours = (np.asarray(t) - t0) / 3600.0
        return np.array(
            [physics.leak_flow_m3h(h, live.kind, live.flow_m3h, live.ramp_h, live.end_h,
                                   live.start_h) for h in hours.tolist()]
        )  # fmt: skip


@dataclass
class HistoryWritten:
    """What :meth:`TownHistory.write` wrote."""

    start: float  # earliest site's history start [s since epoch]
    end: float  # the live start
    days: dict[str, int] = field(default_factory=dict)  # per site
    devices: int = 0
    readings: int = 0
    seconds: float = 0.0
    leaks: list[PlannedLeak] = field(default_factory=list)


def expected_mnf_m3h(site: SiteTown, d: int) -> float:
    """Expected minimum night flow of DMA ``d`` [m³/h]: its households' mean night use over the
    night window (:data:`NIGHT_H`, weekday pattern) plus its background leakage — what a leak
    sized by ``size_fraction`` is a fraction of."""
    w = site.spec.water
    hours = np.arange(NIGHT_H[0], NIGHT_H[1], 1.0 / 60.0)
    pattern = float(np.mean([physics.demand_pattern(float(h), False) for h in hours]))
    mask = np.asarray(site.customer_dma) == d
    demand = float(site.customer_base_m3h[mask].sum())
    return demand * pattern + w.background_leakage_m3h_per_km * w.mains_km_per_dma


def plan_leaks(town: Town, t0: float) -> list[PlannedLeak]:
    """The ``history_leaks`` of every site, resolved against ``t0`` (the live start)."""
    out = []
    for site in town.sites:
        for leak in site.spec.water.history_leaks:
            mnf = expected_mnf_m3h(site, leak.dma)
            flow = leak.flow_m3h if leak.flow_m3h is not None else (leak.size_fraction or 0) * mnf
            out.append(
                PlannedLeak(
                    site=site.spec.site, dma=leak.dma, dma_name=site.dmas[leak.dma],
                    kind=leak.kind, start=t0 + leak.start_day * 86400.0,
                    end=None if leak.end_day is None else t0 + leak.end_day * 86400.0,
                    flow_m3h=float(flow), ramp_h=leak.ramp_h,
                    size_fraction=float(flow / mnf) if mnf > 0 else math.inf, mnf_m3h=mnf,
                )
            )  # fmt: skip
    return out


def _as_stored(values: FloatArray, kind: str, metric: str) -> FloatArray:
    """``values`` rounded as a live device of ``kind`` sends them, in the unit it sends, and
    converted as the ingest stores them — bit for bit, so that a history index and the first
    live reading of an index that did not move are equal."""
    unit, factor = next((u, f) for m, u, f in KIND_METRICS[kind] if m == metric)
    conv = unit_conversion(metric, unit)
    scale, offset = conv if conv is not None else (1.0, 0.0)
    return np.array([sent_value(metric, v, factor) * scale + offset for v in values.tolist()])


class _Batch(Rows):
    """Readings of one day, as arrays; values are stored as given: they are already rounded
    as the live devices send them (rounding again would move a quarter of the litre-to-m³
    values by a unit in the last place, and an index could seem to go back)."""

    def put(self, times: FloatArray, devices: IntArray, metric: int, values: FloatArray) -> None:
        """Readings of several devices at once (arrays of the same shape)."""
        self.add_many(times, devices, metric, values, None)


def _utc_offsets(t: FloatArray, tz: ZoneInfo) -> FloatArray:
    """UTC offset [s] of ``tz`` at each time ``t`` (looked up once per UTC hour, per time in an
    hour when the offset changes within it)."""
    out = np.empty(len(t))
    hours = np.floor(t / 3600.0)
    for h in np.unique(hours).tolist():
        sel = hours == h
        first, last = (_offset(h * 3600.0 + s, tz) for s in (0.0, 3599.0))
        out[sel] = first if first == last else [_offset(x, tz) for x in t[sel].tolist()]
    return out


def _offset(t: float, tz: ZoneInfo) -> float:
    delta = datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset()
    return delta.total_seconds() if delta is not None else 0.0


class _Site:
    """The history of one site's water network, generated a day at a time, latest day first."""

    def __init__(self, town: SiteTown, model: SiteModel, number: int, seed: int,
                 t0: float, step_s: float, leaks: list[PlannedLeak],
                 intervals: dict[str, float], ids: dict[str, int]) -> None:  # fmt: skip
        spec, w = town.spec, town.spec.water
        self.town, self.number, self.seed, self.t0, self.dt = town, number, seed, t0, step_s
        self.days = w.history_days
        self.tz = ZoneInfo(spec.timezone)
        self.cust_dma = np.asarray(town.customer_dma, dtype=np.int64)
        self.base = town.customer_base_m3h
        # The live devices' state at t0: where the history must end.
        self.cust_index = model.cust_volume.copy()
        self.in_index = model.dma_in_volume.copy()
        self.out_index = model.dma_out_volume.copy()
        self.peak = model.dma_peak.copy()
        self.head_m = w.avg_pressure_m * 1.1  # the live model's static head
        self.background = w.background_leakage_m3h_per_km * w.mains_km_per_dma
        self.outlet = np.asarray(town.dma_has_outlet, dtype=float)
        self.flow_noise = w.flow_noise
        self.leaks = [lk for lk in leaks if lk.site == spec.site]
        self.every = {k: max(round(intervals[k] / step_s), 1) for k in intervals}
        nd = len(town.dmas)
        self.fm_in = np.array([ids[f"fm-{d}-in"] for d in range(nd)], dtype=np.int64)
        self.fm_out = np.array([ids.get(f"fm-{d}-out", -1) for d in range(nd)], dtype=np.int64)
        self.ps = np.array([ids[f"ps-{d}"] for d in range(nd)], dtype=np.int64)
        self.wm = np.array([ids[c] for c in town.customers], dtype=np.int64)
        phase_rng = np.random.default_rng([seed, _STREAM, number, 0])
        self.wm_phase = phase_rng.integers(0, self.every["water_meter"], len(self.wm))
        self._patterns: dict[int, float] = {}

    @property
    def devices(self) -> int:
        """Devices the history writes readings of."""
        return 2 * len(self.fm_in) + int((self.fm_out >= 0).sum()) + len(self.wm)

    def _pattern(self, minute_of_day: IntArray, weekend: BoolArray) -> FloatArray:
        keys = minute_of_day + 1440 * weekend.astype(np.int64)
        for key in np.unique(keys).tolist():
            if key not in self._patterns:
                self._patterns[key] = physics.demand_pattern((key % 1440) / 60.0, key >= 1440)
        return np.array([self._patterns[k] for k in keys.tolist()])

    def _household_use(self, stamps: IntArray) -> FloatArray:
        """Each household's multiplier for every step (customers, steps): drawn once per UTC
        hour, as the live model does, from a generator of that hour."""
        out = np.empty((len(self.base), len(stamps)))
        for stamp in np.unique(stamps).tolist():
            local = datetime.fromtimestamp(stamp * 3600.0, self.tz)
            rng = np.random.default_rng([self.seed, _STREAM, self.number, 1, stamp])
            pattern = physics.demand_pattern(local.hour + 0.5, local.weekday() >= 5)
            out[:, stamps == stamp] = physics.household_use(rng, len(self.base), pattern)[:, None]
        return out

    def day(self, block: int, batch: _Batch) -> None:
        """Day ``block`` before ``t0`` (0: the last day) into ``batch``: steps ``t0 - m·dt``,
        ``m`` in ``[block·B, (block+1)·B)``; advances the indexes backwards past it."""
        per_day = round(86400.0 / self.dt)
        m = np.arange(min((block + 1) * per_day, round(self.days * 86400.0 / self.dt)) - 1,
                      block * per_day - 1, -1)  # fmt: skip
        t = np.asarray(self.t0 - m * self.dt, dtype=np.float64)  # ascending
        local = t + _utc_offsets(t, self.tz)
        minute = ((local % 86400.0) // 60.0).astype(np.int64)
        weekend = ((np.floor(local / 86400.0).astype(np.int64) + 3) % 7) >= 5
        stamps = (t // 3600.0).astype(np.int64)
        cust_flow = self.base[:, None] * self._pattern(minute, weekend)[None, :]
        cust_flow = cust_flow * self._household_use(stamps)
        nd = len(self.town.dmas)
        consumption = np.stack(
            [cust_flow[self.cust_dma == d].sum(axis=0) for d in range(nd)]
        ) if nd else np.zeros((0, len(t)))  # fmt: skip
        leaks = np.zeros_like(consumption)
        for lk in self.leaks:
            leaks[lk.dma] += lk.flow_at(t, self.t0)
        outflow = self.outlet[:, None] * 0.5 * consumption
        inflow = consumption + self.background + leaks + outflow
        h = self.dt / 3600.0
        # Indexes after each step, ending at the state the next (later) day started from.
        cust = _backwards(self.cust_index, cust_flow * h)
        vol_in = _backwards(self.in_index, inflow * h)
        vol_out = _backwards(self.out_index, outflow * h)
        rng = np.random.default_rng([self.seed, _STREAM, self.number, 2, block])
        self._meters(m, t, inflow, outflow, vol_in, vol_out, rng, batch)
        read = ((m[None, :] - self.wm_phase[:, None]) % self.every["water_meter"] == 0) & (m > 0)
        rows, cols = np.nonzero(read)
        batch.put(t[cols], self.wm[rows], _VOLUME,
                  _as_stored(cust[rows, cols], "water_meter", "volume"))  # fmt: skip

    def _meters(self, m: IntArray, t: FloatArray, inflow: FloatArray, outflow: FloatArray,
                vol_in: FloatArray, vol_out: FloatArray, rng: np.random.Generator,
                batch: _Batch) -> None:  # fmt: skip
        """Flow meters (flow with noise, volume index) and pressure sensors at their reads."""
        for d in range(len(self.town.dmas)):
            meters = [(self.fm_in[d], inflow[d], vol_in[d])]
            if self.fm_out[d] >= 0:
                meters.append((self.fm_out[d], outflow[d], vol_out[d]))
            sel = (m % self.every["flow_meter"] == 0) & (m > 0)
            for dev, flow, index in meters:
                noisy = flow[sel] * (1.0 + self.flow_noise * rng.standard_normal(int(sel.sum())))
                ids = np.full(int(sel.sum()), dev, dtype=np.int64)
                batch.put(t[sel], ids, _FLOW, _as_stored(noisy, "flow_meter", "flow"))
                batch.put(t[sel], ids, _VOLUME, _as_stored(index[sel], "flow_meter", "volume"))
            sel = (m % self.every["pressure_sensor"] == 0) & (m > 0)
            bar = np.array([physics.dma_pressure_bar(q, self.head_m, float(self.peak[d]))
                            for q in inflow[d, sel].tolist()])  # fmt: skip
            batch.put(t[sel], np.full(int(sel.sum()), self.ps[d], dtype=np.int64), _PRESSURE,
                      _as_stored(bar, "pressure_sensor", "pressure"))  # fmt: skip


def _backwards(end: FloatArray, volumes: FloatArray) -> FloatArray:
    """Index after each step (``volumes`` per step, last axis) of counters that read ``end``
    after the last step; ``end`` becomes their reading before the first (in place)."""
    cum = np.cumsum(volumes, axis=-1)
    total = cum[..., -1] if cum.shape[-1] else np.zeros(end.shape)
    index = (end - total)[..., None] + cum
    end -= total
    return np.asarray(index)


class TownHistory:
    """The history of a town's water network before its live start ``t0``."""

    def __init__(self, town: Town, t0: float) -> None:
        self.town, self.t0 = town, t0
        self.leaks = plan_leaks(town, t0)

    @property
    def days(self) -> int:
        """The longest history of the town's sites [days] (0: none)."""
        return max((s.spec.water.history_days for s in self.town.sites if s.dmas), default=0)

    @property
    def start(self) -> float:
        """Where the history starts [s since epoch] (``t0`` without one)."""
        return self.t0 - self.days * 86400.0

    def live_town(self) -> Town:
        """The town the live run plays: each site's leaks, plus those of the history still
        flowing at ``t0`` (the live flow, pressure and water truth then include them)."""
        sites = []
        for site in self.town.sites:
            carried = [
                lk.live_leak(self.t0)
                for lk in self.leaks
                if lk.site == site.spec.site and (lk.end is None or lk.end > self.t0)
            ]
            water = site.spec.water.model_copy(update={"leaks": [*site.spec.water.leaks, *carried]})
            sites.append(replace(site, spec=site.spec.model_copy(update={"water": water})))
        scenario = self.town.scenario.model_copy(update={"sites": [s.spec for s in sites]})
        return Town(scenario, self.town.seed, sites)

    def write(self, conn: psycopg.Connection, models: list[SiteModel]) -> HistoryWritten:
        """Write the history into the database behind ``conn`` (the inventory imported), a day
        per ``COPY`` and transaction. ``models``: the live run's site models before it runs,
        whose indexes the history ends at."""
        started = time.perf_counter()
        written = HistoryWritten(self.start, self.t0, leaks=list(self.leaks))
        scenario = self.town.scenario
        intervals = {k: float(scenario.reporting[k].interval_s)
                     for k in ("flow_meter", "pressure_sensor", "water_meter")}  # fmt: skip
        by_site = {m.town.spec.site: m for m in models}
        sites = []
        for number, site in enumerate(self.town.sites):
            if not site.dmas or not site.spec.water.history_days:
                continue
            ids = {str(d): int(i) for d, i in conn.execute(
                "SELECT device, id FROM devices WHERE site = %s", (site.spec.site,))}  # fmt: skip
            sites.append(_Site(site, by_site[site.spec.site], number, self.town.seed, self.t0,
                               float(scenario.step_s), self.leaks, intervals, ids))  # fmt: skip
            written.days[site.spec.site] = site.spec.water.history_days
        written.devices = sum(s.devices for s in sites)
        for block in range(self.days):
            batch = _Batch()
            for s in sites:
                if block < s.days:
                    s.day(block, batch)
            with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(batch.encode())
            conn.commit()
            written.readings += batch.count
        written.seconds = time.perf_counter() - started
        return written

    def describe_leaks(self, truth: Truth, live: Town) -> None:
        """Complete ``truth.leaks`` (the live run recorded the leaks it played, in the order of
        each site's leaks): the true flow, ramp and size of each, whether it began in the
        history or the live run; the history's leaks repaired before ``t0`` are added."""
        entries: dict[str, list[dict[str, Any]]] = {}
        for entry in truth.leaks:
            entries.setdefault(entry["site"], []).append(entry)
        out: list[dict[str, Any]] = []
        for site in live.sites:
            mine = entries.get(site.spec.site, [])
            for entry, leak in zip(mine, site.spec.water.leaks, strict=True):
                mnf = expected_mnf_m3h(site, leak.dma) if leak.dma < len(site.dmas) else math.nan
                entry.update(flow_m3h=leak.flow_m3h, ramp_h=leak.ramp_h, mnf_m3h=mnf,
                             size_fraction=leak.flow_m3h / mnf if mnf > 0 else None)  # fmt: skip
                out.append(entry)
        out.extend(
            {"site": lk.site, "dma": lk.dma_name, "kind": lk.kind, "start": lk.start,
             "end": lk.end, "final_flow_m3h": lk.flow_m3h, "flow_m3h": lk.flow_m3h,
             "ramp_h": lk.ramp_h, "mnf_m3h": lk.mnf_m3h, "size_fraction": lk.size_fraction,
             "flow_m3h_hourly": []}
            for lk in self.leaks if lk.end is not None and lk.end <= self.t0
        )  # fmt: skip
        for entry in out:
            entry["phase"] = "history" if entry["start"] < truth.start else "live"
        truth.leaks[:] = sorted(out, key=lambda e: (e["site"], e["start"]))
