"""The anomaly service: runs the detectors over stored data and keeps the ``alerts`` table.

``scan`` is one pass over a period (``sobriety anomaly scan``); ``AnomalyService`` repeats it
every ``anomaly.interval_s`` over the last ``anomaly.rescan_days`` (``sobriety anomaly``), so
late data is taken into account and a run after a restart catches up. Scans are idempotent:
scanning a period twice leaves the same alerts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from anomaly import reconcile as alerts_store
from anomaly import store
from anomaly.alerts import ALERT_KINDS
from anomaly.balance_store import late_balance_days, refresh_balance_days
from anomaly.bursts import BurstParams, detect_bursts
from anomaly.config import AnomalyConfig
from anomaly.customers import continuous_flow_state, flag_runs, high_consumption_state
from anomaly.detect import Episode, StepParams, detect_steps
from anomaly.nights import EPOCH, Nights, metered_use, nan_to_none, night_series
from anomaly.params import burst_params, step_params
from anomaly.pressure import PressureEvidence, head_loss_slope, pressure_evidence
from core import rollup, rollup_changes
from core.arrays import FloatArray
from core.clock import Clock, SystemClock, utc
from core.db import connect
from core.errors import SobrietyError
from core.site_config import PerSite

log = logging.getLogger(__name__)


class AnomalyMetrics:
    """``sobriety_anomaly_*`` metrics. The registry is passed in, so tests use their own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns, sub = "sobriety", "anomaly"
        self.active = Gauge(
            "alerts_active",
            "Alerts not resolved (open or acknowledged), by kind.",
            ["kind"],
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.opened = Counter(
            "alerts_opened",
            "Alerts opened by this process, by kind.",
            ["kind"],
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.scan_seconds = Histogram(
            "scan_seconds",
            "Duration of one scan.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.scan_failures = Counter(
            "scan_failures",
            "Periodic scans that failed (database unreachable, ...) and were retried.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        for kind in ALERT_KINDS:
            self.active.labels(kind=kind)
            self.opened.labels(kind=kind)


@dataclass(slots=True)
class ScanReport:
    """What a scan did: alerts opened/updated/closed by kind, nights assessed and gaps."""

    opened: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)
    nights: int = 0
    gaps: int = 0
    dmas: int = 0
    balance_days: int = 0  # DMA-days of water_balance_days recomputed
    meters_backwards: list[str] = field(default_factory=list)
    rollup: rollup.RefreshReport | None = None

    def add(self, kind: str, result: alerts_store.Reconciled) -> None:
        """Count a reconciliation."""
        for name, value in (
            ("opened", result.opened),
            ("updated", result.updated),
            ("closed", result.closed),
        ):
            target: dict[str, int] = getattr(self, name)
            target[kind] = target.get(kind, 0) + value


def merge_episodes(steps: list[Episode], bursts: list[Episode]) -> list[list[Episode]]:
    """Group the episodes of both detectors that overlap in time (one leak seen twice): an
    episode detected while an earlier one still runs joins it."""
    spans = sorted(steps + bursts, key=lambda e: e.detected_at)
    groups: list[list[Episode]] = []
    end = -math.inf
    for ep in spans:
        ep_end = math.inf if ep.ended_at is None else ep.ended_at
        if groups and ep.detected_at <= end:
            groups[-1].append(ep)
            end = max(end, ep_end)
        else:
            groups.append([ep])
            end = ep_end
    return groups


def leak_found(site: str, dma: str, group: list[Episode], until: float) -> alerts_store.Found:
    """The alert of a group of overlapping episodes: opened at the first detection, started
    at the best-bounded start, flow from the night detector when it saw the leak (it compares
    like with like: night against night), ended when every episode ended."""
    first = min(group, key=lambda e: e.detected_at)
    # The start is bounded by the episodes that could have begun before the alert opened: a
    # later one whose bounds lie after it saw water on top of an open alert, not its start.
    could = [e for e in group if e.start_after < first.detected_at] or [first]
    tight = min(could, key=lambda e: e.start_before - e.start_after)
    nightly = [e for e in group if e.detector == "night_flow"]
    best = max(nightly or group, key=lambda e: e.detected_at)
    # The night detector decides when a leak is over when it saw it (like against like);
    # otherwise the burst detector's own quiet hours do.
    ended = [e.ended_at for e in (nightly or group)]
    ended_at = None if any(t is None for t in ended) else max(t for t in ended if t is not None)
    details: dict[str, Any] = {
        "detectors": sorted({e.detector for e in group}),
        "detected_by": first.detector,
        "start_after": utc(tight.start_after).isoformat(),
        "start_before": utc(tight.start_before).isoformat(),
        "baseline_m3h": round(best.baseline_m3h, 4),
        "noise_m3h": round(best.sigma_m3h, 4),
        "excess_m3h": [round(x, 4) for x in best.excess[-7:]],
        **best.evidence,
    }
    if ended_at is not None:
        reasons = [e.end_reason for e in (nightly or group) if e.end_reason]
        details["closed"] = reasons[-1] if reasons else "returned to baseline"
    return alerts_store.Found(
        kind="leak",
        site=site,
        subject_type="dma",
        subject=dma,
        opened_at=first.detected_at,
        started_at=tight.started_at,
        ended_at=ended_at,
        seen_until=until if ended_at is None else ended_at,
        flow_m3h=round(best.flow_m3h, 4),
        details=details,
        end_reason=str(details.get("closed", "returned to baseline")),
    )


def _in_range(opened: float, ended: float | None, since: float, until: float) -> bool:
    return opened < until and (ended is None or ended >= since)


def _gap_found(site: str, dma: str, nights: Nights, until: float) -> list[alerts_store.Found]:
    """Runs of nights that could not be assessed, as ``data_gap`` alerts."""
    state = np.where([g != "" for g in nights.gap], 1.0, 0.0)
    out = []
    for first, after in flag_runs(state):
        out.append(
            alerts_store.Found(
                kind="data_gap",
                site=site,
                subject_type="dma",
                subject=dma,
                opened_at=float(nights.window_end[first]),
                started_at=float(nights.window_start[first]),
                ended_at=None if after is None else float(nights.window_end[after]),
                seen_until=until if after is None else float(nights.window_end[after]),
                flow_m3h=None,
                details={"reason": nights.gap[first], "nights": (after or len(state)) - first},
            )
        )
    return out


def _mean_square_by_hour(h: store.DmaHours) -> FloatArray:
    """Mean squared net inflow [(m³/h)²] of a DMA per local hour of the day (NaN: none)."""
    ok = np.isfinite(h.inflow_m3h)
    total = np.bincount(h.hour[ok], weights=h.inflow_m3h[ok] ** 2, minlength=24)
    count = np.bincount(h.hour[ok], minlength=24)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _local_midnight(day: int, tz: ZoneInfo) -> float:
    return datetime.combine(EPOCH + timedelta(days=day), datetime.min.time(), tz).timestamp()


class Scanner:
    """Runs the detectors of one configuration over a database connection."""

    def __init__(
        self,
        cfg: AnomalyConfig | PerSite[AnomalyConfig],
        metrics: AnomalyMetrics | None = None,
    ) -> None:
        self.per_site = PerSite.of(cfg)
        self.cfg = self.per_site.default
        self.metrics = metrics
        self._params: dict[int, tuple[StepParams, BurstParams]] = {}

    def _site_params(self, cfg: AnomalyConfig) -> tuple[StepParams, BurstParams]:
        """The detectors' parameters of a site's configuration (computed once per config)."""
        found = self._params.get(id(cfg))
        if found is None:
            found = self._params[id(cfg)] = (step_params(cfg), burst_params(cfg))
        return found

    def scan(
        self, conn: psycopg.Connection, since: float, until: float, site: str | None = None
    ) -> ScanReport:
        """Detect over ``[since, until)`` [s since epoch] and reconcile the alerts; history
        before ``since`` (``lookback_days``, and back to the start of active alerts) feeds the
        baselines."""
        started = time.perf_counter()
        report = ScanReport()
        report.rollup = rollup.refresh(conn)  # late and backfilled readings first
        if report.rollup.written > 100_000 and not report.rollup.continuous_aggregate:
            conn.execute("ANALYZE readings_hourly")
            conn.commit()
        for name, tz in store.sites(conn, site):
            with conn.transaction():
                self._scan_site(conn, name, tz, since, until, report)
        if self.metrics is not None:
            self.metrics.scan_seconds.observe(time.perf_counter() - started)
            for kind, count in report.opened.items():
                self.metrics.opened.labels(kind=kind).inc(count)
            self.update_gauges(conn)
        return report

    @staticmethod
    def _holiday_days(cfg: AnomalyConfig) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Local day numbers (days since 1970-01-01) of the configured holidays."""
        days = [
            np.arange((first - EPOCH).days, (after - EPOCH).days, dtype=np.int64)
            for first, after in cfg.holidays
        ]
        return np.concatenate(days) if days else np.zeros(0, dtype=np.int64)

    def update_gauges(self, conn: psycopg.Connection) -> None:
        """Set the active-alert gauges from the table."""
        if self.metrics is None:
            return
        counts = dict.fromkeys(ALERT_KINDS, 0)
        for kind, count in conn.execute(
            "SELECT kind, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY kind"
        ):
            counts[kind] = int(count)
        for kind, count in counts.items():
            self.metrics.active.labels(kind=kind).set(count)

    def _scan_site(
        self, conn: psycopg.Connection, site: str, tz_name: str, since: float, until: float,
        report: ScanReport,
    ) -> None:  # fmt: skip
        cfg = self.per_site.get(site)
        step_cfg, burst_cfg = self._site_params(cfg)
        tz = ZoneInfo(tz_name)
        report.balance_days += refresh_balance_days(conn, site, tz_name, since, until)
        active = alerts_store.active_since(conn, site)
        fetch_from = min(since, active if active is not None else since)
        fetch_from -= cfg.lookback_days * 86400.0
        dma_list = store.dmas(conn, site)
        quiet = burst_cfg.quiet_hours
        read_hours = tuple(range(cfg.night_start_h, cfg.night_end_h)) + tuple(range(*quiet))
        hours = store.dma_hours(
            conn, site, tz_name, utc(fetch_from), utc(until), dma_list, read_hours
        )
        pressures = store.pressure_nights(
            conn, site, tz_name, utc(fetch_from), utc(until), cfg.night_start_h, cfg.night_end_h
        )
        resets = alerts_store.manual_resolutions(conn, site, "leak")
        holiday_days = self._holiday_days(cfg)
        night_rows: list[tuple[Any, ...]] = []
        for info in dma_list:
            report.dmas += 1
            h = hours.get(info.dma)
            if h is None or not (info.inlets or info.outlets):
                continue
            nights = night_series(
                h.hour_start, h.day, h.hour, h.inflow_m3h, h.frozen, h.metered_m3h, h.meters,
                info.customer_meters, tz, cfg.night_start_h, cfg.night_end_h,
                cfg.min_meter_coverage,
            )  # fmt: skip
            baseline = np.full(len(nights.day), np.nan)
            pn = pressures.get(info.dma)
            evidence: PressureEvidence | None = None
            if pn is not None:
                slope = head_loss_slope(pn.by_hour, _mean_square_by_hour(h))
                evidence = pressure_evidence(nights.day, pn.days, pn.bar, slope)
            dma_resets = tuple(resets.get(info.dma, ()))
            steps = detect_steps(
                nights.window_start, nights.window_end, nights.net_m3h, nights.weekend,
                step_cfg, dma_resets, mnf=nights.mnf_m3h, baseline_out=baseline,
                holiday=np.isin(nights.day, holiday_days), pressure=evidence,
            )  # fmt: skip
            use, _usual, _ok = metered_use(h.metered_m3h, h.meters, cfg.min_meter_coverage)
            hourly = np.where(h.frozen, np.nan, h.inflow_m3h - use)
            bursts = detect_bursts(
                h.hour_start, h.day, h.hour, hourly, h.weekend,
                burst_cfg, dma_resets, holiday=np.isin(h.day, holiday_days),
            )  # fmt: skip
            leaks = [
                leak_found(site, info.dma, group, until) for group in merge_episodes(steps, bursts)
            ]
            leaks = [f for f in leaks if _in_range(f.opened_at, f.ended_at, since, until)]
            report.add("leak", alerts_store.reconcile(
                conn, site, "dma", info.dma, "leak", leaks, since, until))  # fmt: skip
            gaps = [
                f for f in _gap_found(site, info.dma, nights, until)
                if _in_range(f.opened_at, f.ended_at, since, until)
            ]  # fmt: skip
            report.add("data_gap", alerts_store.reconcile(
                conn, site, "dma", info.dma, "data_gap", gaps, since, until))  # fmt: skip
            for j in range(len(nights.day)):
                if not since <= nights.window_end[j] <= until:
                    continue
                report.nights += 1
                report.gaps += nights.gap[j] != ""
                drop = math.nan
                if evidence is not None:
                    drop = float(evidence.drop_z[j])
                night_rows.append(
                    (
                        site, info.dma, EPOCH + timedelta(days=int(nights.day[j])),
                        utc(nights.window_start[j]), utc(nights.window_end[j]),
                        nan_to_none(nights.mnf_m3h[j]), nan_to_none(nights.metered_m3h[j]),
                        nan_to_none(nights.net_m3h[j]), nan_to_none(baseline[j]),
                        nan_to_none(nights.coverage[j]), nights.gap[j] or None,
                        int(nights.meters[j]) if info.customer_meters else None,
                        nan_to_none(drop), nights.note[j] or None,
                    )
                )  # fmt: skip
        alerts_store.write_nights(conn, night_rows)
        self._scan_customers(conn, site, tz, since, until, report)

    def _scan_customers(
        self, conn: psycopg.Connection, site: str, tz: ZoneInfo, since: float, until: float,
        report: ScanReport,
    ) -> None:  # fmt: skip
        cfg = self.per_site.get(site)
        history = cfg.high_consumption_window_days + cfg.high_consumption_history_days
        # Continuity needs every hour, consumption one index per day: hours are read only as
        # far back as a continuous flow that is still being reconciled can reach.
        hourly_since = since - (cfg.continuous_min_days + 7) * 86400.0
        days = store.customer_days(conn, site, tz.key, utc(since - history * 86400.0), utc(until),
                                   utc(hourly_since))  # fmt: skip
        report.meters_backwards.extend(days.backwards)
        if not days.devices:
            return
        continuous = np.stack(
            [
                continuous_flow_state(
                    days.covered_h[i], days.max_interval_h[i], days.zero_intervals[i],
                    days.min_rate_m3h[i], cfg.continuous_min_m3h, 2.0, cfg.continuous_min_days,
                )
                for i in range(len(days.devices))
            ]
        )  # fmt: skip
        high, ratios = high_consumption_state(
            days.consumption_m3,
            cfg.high_consumption_window_days,
            cfg.high_consumption_history_days,
            cfg.high_consumption_ratio,
        )
        for kind, state in (("continuous_flow", continuous), ("high_consumption", high)):
            # A continuous flow is flagged on its min_days-th day: it started that much before.
            lead = cfg.continuous_min_days - 1 if kind == "continuous_flow" else 0
            found: dict[str, list[alerts_store.Found]] = {}
            for i, device in enumerate(days.devices):
                for first, after in flag_runs(state[i]):
                    end_day = days.first_day + first + 1
                    opened = _local_midnight(end_day, tz)  # known at the end of the day
                    ended = (
                        None if after is None
                        else _local_midnight(days.first_day + after + 1, tz)
                    )  # fmt: skip
                    if not _in_range(opened, ended, since, until):
                        continue
                    last = (after if after is not None else state.shape[1]) - 1
                    if kind == "continuous_flow":
                        flow = float(np.nanmin(days.min_rate_m3h[i, first : last + 1]))
                        details: dict[str, Any] = {"dma": days.dmas[i]}
                    else:
                        flow = None
                        details = {
                            "dma": days.dmas[i],
                            "ratio": round(float(np.nanmax(ratios[i, first : last + 1])), 2),
                            "window_days": cfg.high_consumption_window_days,
                        }
                    found.setdefault(device, []).append(
                        alerts_store.Found(
                            kind=kind, site=site, subject_type="device", subject=device,
                            opened_at=opened,
                            started_at=_local_midnight(days.first_day + first - lead, tz),
                            ended_at=ended, seen_until=until if ended is None else ended,
                            flow_m3h=flow, details=details,
                        )
                    )  # fmt: skip
            subjects = set(found) | alerts_store.active_subjects(conn, site, "device", kind)
            for device in sorted(subjects):
                done = alerts_store.reconcile(
                    conn, site, "device", device, kind, found.get(device, []), since, until
                )
                report.add(kind, done)


BALANCE_FOLLOWER = "anomaly-balance"
"""The anomaly service's name in the rollup's log of changes (core/rollup_changes.py)."""


class AnomalyService:
    """``sobriety anomaly``: a scan of the last ``rescan_days`` every ``interval_s``."""

    def __init__(
        self,
        conninfo: str,
        cfg: AnomalyConfig | PerSite[AnomalyConfig],
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.cfg = PerSite.of(cfg).default  # when and over what it scans: the install's
        self.clock = clock or SystemClock()
        self.metrics = AnomalyMetrics(registry) if registry is not None else None
        self.scanner = Scanner(cfg, self.metrics)
        self._stop = threading.Event()
        self.scans = 0
        self.failures = 0

    def run_once(self) -> ScanReport:
        """One scan of the recent period; then the water balance of the older days whose
        rollup changed since the last pass (late data), in the transaction that moves this
        service's position in the rollup's log."""
        now = self.clock.now()
        since = now - self.cfg.rescan_days * 86400.0
        with connect(self.conninfo) as conn:
            report = self.scanner.scan(conn, since, now)
            changes = rollup_changes.follow(conn, BALANCE_FOLLOWER)
            if changes.whole and changes.hours:
                report.balance_days += late_balance_days(conn, changes.hours, since)
            rollup_changes.advance(conn, BALANCE_FOLLOWER, changes.upto)
            conn.commit()
        self.scans += 1
        if any(report.opened.values()):
            log.info("anomaly scan: opened %s", report.opened)
        return report

    def run(self) -> None:
        """Scan until :meth:`stop`; a failed scan is logged, counted and retried next interval
        (the service must outlive a database outage: under ``sobriety run`` it is a thread)."""
        while not self._stop.is_set():
            try:
                self.run_once()
            except (SobrietyError, psycopg.Error, OSError) as exc:
                self.failures += 1
                if self.metrics is not None:
                    self.metrics.scan_failures.inc()
                log.warning("anomaly scan failed (%s); next try in %.0f s", exc,
                            self.cfg.interval_s)  # fmt: skip
            except Exception:
                self.failures += 1
                if self.metrics is not None:
                    self.metrics.scan_failures.inc()
                log.exception("anomaly scan failed; next try in %.0f s", self.cfg.interval_s)
            self._stop.wait(self.cfg.interval_s)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()
