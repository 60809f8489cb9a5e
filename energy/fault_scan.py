"""The luminaire faults of a site over a period, from its hourly rollup to the ``alerts``
table: the telemetry (:mod:`energy.fault_store`), the sun of the site and the programs in
force (:mod:`core.lighting`), the rules (:mod:`energy.faults`), the alert lifecycle
(:mod:`core.alerts_lifecycle`). Called by :func:`energy.service.recompute` for each site and
the days it recomputes.

A luminaire without ``nominal_power_w`` has no expected power: it is skipped and logged. A
site without coordinates has no daytime: its day burners are not looked for (logged); the
other rules still hold. Times in seconds since the epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from pydantic import ValidationError

from core import alerts_lifecycle as lifecycle
from core.arrays import FloatArray
from core.lighting import NightSchedule, SunCache, night_of, night_schedule
from core.messages import LightingProgram
from energy import fault_store, faults
from energy.config import EnergyConfig

__all__ = ["FaultReport", "scan_site"]

log = logging.getLogger(__name__)

_POINTS = np.arange(0.0, 3600.0, 300.0)
"""Instants of an hour at which a program's level is read [s from the hour's start]."""


@dataclass
class FaultReport:
    """What a scan did: alerts opened, updated, closed; luminaires looked at and skipped."""

    outcome: lifecycle.Outcome = field(default_factory=lifecycle.Outcome)
    luminaires: int = 0
    skipped: list[str] = field(default_factory=list)  # "site/device" without nominal_power_w

    def add(self, other: FaultReport) -> None:
        """Count ``other``'s work too."""
        self.outcome.add(other.outcome)
        self.luminaires += other.luminaires
        self.skipped += other.skipped


def _daylight(
    hours: FloatArray, zone: ZoneInfo, lat: float, lon: float, margin_s: float, sun: SunCache
) -> np.ndarray:
    first = datetime.fromtimestamp(float(hours[0]), zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(float(hours[-1]), zone).date() + timedelta(days=1)
    rises, sets = [], []
    day = first
    while day <= last:  # the day of D: the sunrise of night D-1 to the sunset of night D
        morning = sun.get(lat, lon, day - timedelta(days=1), zone).sunrise
        evening = sun.get(lat, lon, day, zone).sunset
        if morning is not None and evening is not None:
            rises.append(morning)
            sets.append(evening)
        day += timedelta(days=1)
    return faults.daylight_hours(hours, rises, sets, margin_s)


def _program_range(
    payload: dict[str, Any] | None,
    hours: FloatArray,
    zone: ZoneInfo,
    place: tuple[float, float] | None,
    sun: SunCache,
) -> tuple[FloatArray, FloatArray] | None:
    """The lowest and highest level [%] a program commands in each hour (read every 5 min)."""
    if not payload or place is None:
        return None
    try:
        program = LightingProgram.model_validate(payload)
    except ValidationError:
        return None
    schedules: dict[Any, NightSchedule] = {}
    t = hours[:, None] + _POINTS[None, :]
    levels = np.empty(t.shape)
    for idx, instant in np.ndenumerate(t):
        night = night_of(float(instant), zone)
        if night not in schedules:
            schedules[night] = night_schedule(
                program, night, zone, sun.get(place[0], place[1], night, zone)
            )
        levels[idx] = schedules[night].level_at(float(instant))
    return levels.min(axis=1), levels.max(axis=1)


def _details(
    kind: str, lamp: faults.HourlyLamp, ep: faults.Episode, expected: FloatArray,
    level: FloatArray, ratio: FloatArray | None,
) -> dict[str, Any]:  # fmt: skip
    k = ep.hours
    out: dict[str, Any] = {
        "fault_hours": len(k),
        "started_after": ep.after,
        "normal_since": ep.normal_since,
    }
    if len(k):
        out["measured_w"] = round(float(np.nanmean(lamp.p_mean[k])), 3)
        out["expected_w"] = round(float(np.nanmean(expected[k])), 3)
        if not np.isnan(level[k]).all():
            out["dim"] = round(float(np.nanmean(level[k])), 2)
        if ratio is not None:
            out["ratio"] = round(float(np.nanmean(ratio[k])), 4)
    return out


def scan_site(
    conn: psycopg.Connection,
    config: EnergyConfig,
    site: str,
    zone: ZoneInfo,
    since: float,
    until: float,
    only: Collection[int] | None = None,
) -> FaultReport:
    """Look for the faults of the luminaires of ``site`` (ids ``only`` when given) in the
    hours of [since, until) and reconcile their alerts."""
    report = FaultReport()
    lamps = fault_store.luminaires(conn, site, only)
    report.skipped = [f"{site}/{lamp.device}" for lamp in lamps if lamp.nominal_w is None]
    if report.skipped:
        log.info("energy faults: %s: %d luminaires without nominal_power_w skipped: %s",
                 site, len(report.skipped), ", ".join(report.skipped[:10]))  # fmt: skip
    lamps = [lamp for lamp in lamps if lamp.nominal_w is not None]
    if not lamps:
        return report
    hours, data = fault_store.luminaire_hours(conn, [d.device_id for d in lamps], since, until)
    if not len(hours):
        return report
    lat, lon = fault_store.site_place(conn, site)
    place = None if lat is None or lon is None else (float(lat), float(lon))
    sun = SunCache()
    margin = config.faults_daylight_margin_min * 60.0
    daylight = None if place is None else _daylight(hours, zone, *place, margin, sun)
    if daylight is None:
        log.info("energy faults: %s has no coordinates: day burners not looked for", site)
    active = lifecycle.active_alerts(conn, site, "device", fault_store.FAULT_KINDS)
    manual = lifecycle.manual_resolutions(conn, site, "device", fault_store.FAULT_KINDS)
    programs: dict[str, tuple[FloatArray, FloatArray] | None] = {}
    frac = config.faults_standby_fraction
    for dev in lamps:
        lamp = data.get(dev.device_id)
        if lamp is None:
            continue
        report.luminaires += 1
        nominal = float(dev.nominal_w or 0.0)
        standby = config.faults_standby_w if dev.standby_w is None else dev.standby_w
        key = repr(sorted(dev.program.items())) if dev.program else ""
        if key not in programs:
            programs[key] = _program_range(dev.program, hours, zone, place, sun)
        prog = programs[key]
        lo, hi, told = faults.command_range(lamp, *(prog if prog else (None, None)))
        expected = faults.expected_power_w(lo, nominal, standby)
        curve, ratio = faults.off_curve_hours(
            lamp, lo, hi, told, nominal, standby, config.faults_curve_tolerance, frac
        )
        states: dict[str, tuple[Any, FloatArray, FloatArray | None]] = {
            "lamp_failure": (faults.lamp_failure_hours(lamp, lo, nominal, standby, frac),
                             expected, None),
            "power_off_curve": (curve, expected, ratio),
        }  # fmt: skip
        if daylight is not None:
            off = np.full(len(hours), standby)
            burner = faults.day_burner_hours(lamp, daylight, nominal, standby, frac)
            states["day_burner"] = (burner, off, None)
        for kind, (state, exp, rat) in states.items():
            alert = active.get((dev.device, kind))
            carried = alert is not None and alert.started_at <= float(hours[0])
            for ep in faults.episodes(
                hours, state, config.faults_min_hours, config.faults_resolve_hours,
                active=carried, resets=manual.get((dev.device, kind), ()),
            ):  # fmt: skip
                details = _details(kind, lamp, ep, exp, lo, rat)
                details.update(nominal_w=nominal, standby_w=standby)
                found = lifecycle.Found(
                    kind, site, "device", dev.device, ep.opened_at, ep.started_at,
                    ep.seen_until, ep.ended_at, details,
                )  # fmt: skip
                report.outcome.add(lifecycle.reconcile(conn, found))
    return report
