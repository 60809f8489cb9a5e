"""The energy service: keeps ``energy_daily`` (``api.energy_daily``) current.

:func:`recompute` computes the local days of a period at every site (``sobriety energy
recompute --since --until``); :class:`EnergyService` refreshes the hourly rollup, then recomputes
the last ``energy.rescan_days`` days every ``energy.interval_s`` (``sobriety energy``, also inside
``sobriety run``), so late data is taken into account. Idempotent: a day computed twice from the
same data is the same row.

A device with an ``energy`` counter is accounted from it, else from its ``power`` samples. Its
limits come from the inventory's properties (``counter_max_wh``, ``max_power_w`` — else a
luminaire's ``nominal_power_w`` —, ``replaced_at``); the hold of its power samples from the
reporting it was told (``device_configs``: its maximum silence when it reports power by
exception, its interval otherwise), else ``energy.default_hold_s``. A day is computed from a day
of readings on either side, so a day's first and last intervals are whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core import rollup, rollup_changes
from core.db import connect
from core.site_config import PerSite
from energy import cabinets, store
from energy.config import EnergyConfig
from energy.daily import (
    CounterSettings,
    DayFigures,
    anomalous_hours,
    counter_days,
    counter_series,
    power_days,
)
from energy.factors import pin_factors
from energy.fault_scan import FaultReport, scan_site
from energy.fault_store import FAULT_KINDS
from energy.integrate import day_edges, hold_seconds
from energy.lighting import dim_series, lit_hours, mixed_hours
from energy.own_store import refresh_service_energy

__all__ = ["EnergyService", "RecomputeReport", "recompute"]

log = logging.getLogger(__name__)

NIGHTLY = ("luminaire", "cabinet_meter")
"""The kinds whose energy is also accounted per night (local noon to noon)."""

FOLLOWER = "energy"
"""This stage's name among the rollup's followers (:mod:`core.rollup_changes`)."""

MARGIN_S = 86400.0
"""Readings read beyond each end of the period [s]: the intervals that cross its midnights."""


@dataclass
class RecomputeReport:
    """What a recompute did."""

    sites: int = 0
    devices: int = 0
    days_written: int = 0
    nights_written: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    late_devices: int = 0  # recomputed for changes older than the rescan (service passes)
    faults: FaultReport = field(default_factory=FaultReport)  # luminaire fault alerts

    def add(self, other: RecomputeReport) -> None:
        """Count ``other``'s work in this report too."""
        self.sites += other.sites
        self.devices += other.devices
        self.days_written += other.days_written
        self.nights_written += other.nights_written
        for source, n in other.by_source.items():
            self.by_source[source] = self.by_source.get(source, 0) + n
        self.faults.add(other.faults)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _settings(dev: store.MeteredDevice, config: EnergyConfig) -> CounterSettings:
    props = dev.properties or {}
    max_power = _float(props.get("max_power_w"))
    if max_power is None and dev.kind == "luminaire":
        max_power = dev.nominal_power_w
    return CounterSettings(
        counter_max_wh=_float(props.get("counter_max_wh")),
        max_power_w=max_power,
        replaced_at=store.replaced_instants(props),
        reset_tolerance_wh=config.reset_tolerance_wh,
        resolution_wh=config.resolution_wh,
        glitch_readings=config.glitch_readings,
    )


def _hold(dev: store.MeteredDevice, config: EnergyConfig, metric: str = "power") -> float:
    reporting = dev.reporting
    if not reporting:
        return config.default_hold_s
    interval = float(reporting.get("interval_s", 600))
    by_exception = metric in (reporting.get("deadband") or {})
    silence = float(reporting.get("max_silence_s", 3600)) if by_exception else None
    return hold_seconds(interval, silence)


def _days(first: date, count: int) -> list[date]:
    return [first + timedelta(days=n) for n in range(count)]


def recompute(
    conn: psycopg.Connection,
    config: EnergyConfig | PerSite[EnergyConfig],
    since: float,
    until: float,
    site: str | None = None,
    devices: Collection[int] | None = None,
) -> RecomputeReport:
    """Compute and store the local days from the one of ``since`` to the one of ``until`` [s]
    of every metered device (of ``site``; only those of ids ``devices`` when given), one
    transaction per chunk of devices. A site's own ``[sites.SITE.energy]`` keys (counter rules,
    fault thresholds) apply to its devices."""
    per_site = PerSite.of(config)
    config = per_site.default
    report = RecomputeReport()
    store.sync_settings(conn, config.pue_category)
    conn.commit()
    only = None if devices is None else set(devices)
    for name, timezone in store.sites(conn, site, only):
        own = per_site.get(name)
        zone = ZoneInfo(timezone)
        first = datetime.fromtimestamp(since, zone).date()
        last = datetime.fromtimestamp(until, zone).date()
        count = (last - first).days + 1
        edges = day_edges(first, count, zone)
        days = _days(first, count)
        nights = _days(first - timedelta(days=1), count + 1)  # those that touch the days
        night_edges = np.array(
            [datetime.combine(n, dtime(12), zone).timestamp() for n in nights]
            + [datetime.combine(last + timedelta(days=1), dtime(12), zone).timestamp()]
        )
        lo, hi = edges[0] - MARGIN_S, edges[-1] + MARGIN_S
        metered = store.metered_devices(conn, name, lo, hi)
        if only is not None:
            metered = [d for d in metered if d.device_id in only]
        conn.commit()
        report.sites += 1
        for start in range(0, len(metered), config.chunk_devices):
            chunk = metered[start : start + config.chunk_devices]
            _chunk(conn, own, chunk, (edges, days), (night_edges, nights), lo, hi, report)
            conn.commit()
        cabinets.complete_nights(conn, name, nights[0], nights[-1])  # once its lamps are done
        report.faults.add(scan_site(conn, own, name, zone, lo, hi, only))  # luminaire faults
        pin_factors(conn, name, sorted(set(days) | set(nights)))  # CO2e and tariff in force
        conn.commit()
    if site is None and devices is None:  # the service's own consumption is install-wide
        refresh_service_energy(conn, config, since, until)
    return report


def late_changes(
    changes: rollup_changes.Changes, window_since: float
) -> list[tuple[float, float, list[int]]]:
    """The periods [s] and devices to recompute for the changes ``changes`` holds before a
    rescan starting at ``window_since`` [s] (its first local day's hours are the rescan's):
    for each device, from a day before its earliest changed hour (an interval that ends in it
    starts there) to a day after its latest, cut where the rescan begins; devices whose periods
    cover the same UTC days recomputed together (a backfill of many devices is one period, a
    device late by a year does not drag the others along)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for device_id, (lo, hi) in changes.hours.items():
        first = lo - MARGIN_S
        if first >= window_since:
            continue
        last = min(hi + 3600.0 + MARGIN_S, window_since - 1.0)
        groups.setdefault((int(first // 86400), int(last // 86400)), []).append(device_id)
    return [
        (a * 86400.0, min((b + 1) * 86400.0 - 1.0, window_since - 1.0), sorted(ids))
        for (a, b), ids in sorted(groups.items())
    ]


Bins = tuple[np.ndarray, list[date]]
"""Edges [s] and the date of each bin: local days (midnights), or nights (local noons)."""


def _chunk(
    conn: psycopg.Connection,
    config: EnergyConfig,
    chunk: list[store.MeteredDevice],
    by_day: Bins,
    by_night: Bins,
    lo: float,
    hi: float,
    report: RecomputeReport,
) -> None:
    edges, days = by_day
    counters = [d for d in chunk if d.has_energy]
    powered = [d for d in chunk if not d.has_energy]
    hours = store.counter_hours(conn, [d.device_id for d in counters], lo, hi)
    settings = {d.device_id: _settings(d, config) for d in counters}
    wanted = [
        (device_id, float(hour))
        for device_id, rows in hours.items()
        for hour in rows.hour[anomalous_hours(rows, settings[device_id])].tolist()
    ]
    raw = store.raw_counter(conn, wanted)
    kwh_by_night: dict[int, DayFigures] = {}
    for dev in counters:
        rows = hours.get(dev.device_id)
        if rows is None:
            continue
        t, wh = counter_series(rows, raw.get(dev.device_id, {}), settings[dev.device_id])
        figures = counter_days(t, wh, edges, settings[dev.device_id])
        if dev.kind in NIGHTLY:
            kwh_by_night[dev.device_id] = counter_days(t, wh, by_night[0], settings[dev.device_id])
        report.days_written += store.save_days(conn, dev.device_id, days, "counter", figures)
        report.devices += 1
        report.by_source["counter"] = report.by_source.get("counter", 0) + 1
    _pumped(conn, config, [d for d in chunk if d.kind == "pump_meter"], edges, days, lo, hi)
    if powered:
        ids = [d.device_id for d in powered]
        samples = store.power_hours(conn, ids, lo, hi)
        try:
            figures_of = power_days(samples, len(ids), [_hold(d, config) for d in powered], edges)
        except ValueError as exc:  # a zone whose midnights are not on UTC hours
            log.warning("energy: power of %d devices not computed: %s", len(ids), exc)
            return
        for dev, figures in zip(powered, figures_of, strict=True):
            report.days_written += store.save_days(conn, dev.device_id, days, "power", figures)
            report.devices += 1
            report.by_source["power"] = report.by_source.get("power", 0) + 1
        lamps = [k for k, d in enumerate(powered) if d.kind in NIGHTLY]
        if lamps:
            nightly = power_days(
                samples, len(ids), [_hold(d, config) for d in powered], by_night[0]
            )
            for k in lamps:
                kwh_by_night[powered[k].device_id] = nightly[k]
    _nights(conn, config, [d for d in chunk if d.kind == "luminaire"], kwh_by_night, by_night,
            lo, hi, report)  # fmt: skip
    for dev in chunk:
        if dev.kind == "cabinet_meter" and dev.device_id in kwh_by_night:
            cabinets.save_energy(conn, dev.device_id, by_night[1], kwh_by_night[dev.device_id])


def _nights(
    conn: psycopg.Connection,
    config: EnergyConfig,
    lamps: list[store.MeteredDevice],
    kwh_by_night: dict[int, DayFigures],
    by_night: Bins,
    lo: float,
    hi: float,
    report: RecomputeReport,
) -> None:
    """Each luminaire's nights: its energy, the hours its ``dim`` telemetry says it was lit,
    the baseline (nominal power × those hours)."""
    lamps = [d for d in lamps if d.device_id in kwh_by_night]
    if not lamps:
        return
    edges, nights = by_night
    hours = store.counter_hours(conn, [d.device_id for d in lamps], lo, hi, metric="dim")
    wanted = [
        (device_id, float(hour))
        for device_id, rows in hours.items()
        for hour in rows.hour[mixed_hours(rows)].tolist()
    ]
    raw = store.raw_counter(conn, wanted, metric="dim")
    for dev in lamps:
        energy = kwh_by_night[dev.device_id]
        rows = hours.get(dev.device_id)
        if rows is None:  # no dim telemetry: lit hours unknown
            lit = np.zeros(len(nights))
            lit_ok = np.zeros(len(nights), dtype=bool)
        else:
            t, level = dim_series(rows, raw.get(dev.device_id, {}))
            found = lit_hours(t, level, _hold(dev, config, "dim"), edges)
            lit, lit_ok = found.wh, found.complete
        nominal = dev.nominal_power_w
        baseline = [None if nominal is None else nominal * h / 1000.0 for h in lit.tolist()]
        report.nights_written += store.save_nights(
            conn, dev.device_id, nights, energy.kwh.tolist(), lit.tolist(), baseline,
            (energy.complete & lit_ok).tolist(),
        )  # fmt: skip


VOLUME = CounterSettings(reset_tolerance_wh=0.01, resolution_wh=0.001)
"""The counter rules for a pump's volume index [m³]: a fall to 10 L or less is a reset, a fall
of 1 L or less is noise (the rules are unit-free: here their ``_wh`` are m³)."""


def _pumped(
    conn: psycopg.Connection,
    config: EnergyConfig,
    pumps: list[store.MeteredDevice],
    edges: np.ndarray,
    days: list[date],
    lo: float,
    hi: float,
) -> None:
    """The volume each pump moved per day, from its ``volume`` index (the counter rules)."""
    if not pumps:
        return
    settings = CounterSettings(
        reset_tolerance_wh=VOLUME.reset_tolerance_wh,
        resolution_wh=VOLUME.resolution_wh,
        glitch_readings=config.glitch_readings,
    )
    hours = store.counter_hours(conn, [p.device_id for p in pumps], lo, hi, metric="volume")
    wanted = [
        (device_id, float(hour))
        for device_id, rows in hours.items()
        for hour in rows.hour[anomalous_hours(rows, settings)].tolist()
    ]
    raw = store.raw_counter(conn, wanted, metric="volume")
    for pump in pumps:
        rows = hours.get(pump.device_id)
        if rows is not None:
            t, m3 = counter_series(rows, raw.get(pump.device_id, {}), settings)
            store.save_volumes(conn, pump.device_id, days, counter_days(t, m3, edges, settings))


class EnergyService:
    """``sobriety energy``: the rollup refreshed, then the last ``rescan_days`` recomputed,
    every ``interval_s``, until :meth:`stop`."""

    def __init__(
        self,
        conninfo: str,
        config: EnergyConfig | PerSite[EnergyConfig],
        registry: CollectorRegistry,
    ) -> None:
        self._conninfo = conninfo
        self.per_site = PerSite.of(config)
        self.config = self.per_site.default  # when and what it recomputes: the install's
        self.stopping = threading.Event()
        self.passes = 0
        ns, sub = "sobriety", "energy"
        self.pass_seconds = Histogram(
            "pass_seconds", "Duration of one recompute pass.", namespace=ns, subsystem=sub,
            registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "pass_failures", "Passes that failed (database unreachable, ...) and were retried.",
            namespace=ns, subsystem=sub, registry=registry,
        )  # fmt: skip
        self.days = Counter(
            "days_written", "Device-days written to energy_daily.", namespace=ns,
            subsystem=sub, registry=registry,
        )  # fmt: skip
        self.faults_active = Gauge(
            "luminaire_faults_active", "Luminaire fault alerts not resolved, by kind.",
            ["kind"], namespace=ns, subsystem=sub, registry=registry,
        )  # fmt: skip
        for kind in FAULT_KINDS:
            self.faults_active.labels(kind=kind)

    def run_pass(self, now: float | None = None) -> RecomputeReport | None:
        """One pass; a failure is logged, counted and retried at the next."""
        started = time.monotonic()
        now = time.time() if now is None else now
        try:
            with connect(self._conninfo, autocommit=True) as conn:
                rollup.refresh(conn)
            with connect(self._conninfo) as conn:
                changes = rollup_changes.follow(conn, FOLLOWER)
                since = now - (self.config.rescan_days - 1) * 86400.0
                report = recompute(conn, self.per_site, since, now)
                late = late_changes(changes, since) if changes.whole else []
                for first, last, ids in late:  # late data older than the rescan: its days again
                    report.add(recompute(conn, self.per_site, first, last, devices=ids))
                    report.late_devices += len(ids)
                if late:
                    log.info("energy: late data of %d devices recomputed", report.late_devices)
                rollup_changes.advance(conn, FOLLOWER, changes.upto)
                conn.commit()
                active: dict[str, int] = dict(
                    conn.execute(
                        """SELECT kind, count(*) FROM alerts
                           WHERE kind = ANY(%s) AND state <> 'resolved' GROUP BY kind""",
                        (list(FAULT_KINDS),),
                    ).fetchall()
                )
                conn.commit()
        except Exception as exc:  # noqa: BLE001 - the service keeps going
            log.warning("energy: pass failed (%s); retrying", exc)
            self.failures.inc()
            return None
        self.passes += 1
        self.days.inc(report.days_written)
        for kind in FAULT_KINDS:
            self.faults_active.labels(kind=kind).set(active.get(kind, 0))
        self.pass_seconds.observe(time.monotonic() - started)
        return report

    def run(self) -> None:
        """Pass until stopped."""
        while not self.stopping.is_set():
            self.run_pass()
            self.stopping.wait(self.config.interval_s)

    def stop(self) -> None:
        """Stop after the pass in progress."""
        self.stopping.set()
