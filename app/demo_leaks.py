"""The demo summary's leak section ("Fuites / Leaks"): every leak of the ground truth — of the
history written before the live run and of the live run — against the leak alerts of the scan,
matched as ``sobriety anomaly evaluate`` matches them (:func:`app.evaluate_score.score`: the
first alert on the leak's DMA opened after its start and at most a day after its repair), and
every leak alert that matches no leak, a false alarm.

A leak the detector had every chance to see — at least ``min_baseline_nights`` nights of data
before it to learn from, and ``confirm_nights`` + 1 nights after its start — and did not find is
a problem (the demo fails); one that started too late in the run, or before the detector had
anything to learn from, is listed as not yet detectable, with why."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from anomaly.config import AnomalyConfig
from anomaly.nights import EPOCH, window_bounds
from app.evaluate_score import Alert as ScoredAlert
from app.evaluate_score import score
from simulators import Town, Truth
from simulators.history import HistoryTruth, leak_flow


@dataclass
class LeakAlert:
    """A leak alert of the scan, times [s since epoch]."""

    site: str
    dma: str
    opened: float
    closed: float | None
    flow_m3h: float | None
    state: str


@dataclass
class LeakRow:
    """A leak of the truth and what the detector made of it; flows [m³/h], times [s]."""

    site: str
    dma: str
    kind: str
    phase: str  # "history" (before the live run) or "live"
    start: float
    end: float | None
    flow_m3h: float  # its nominal (final) flow
    size_fraction: float | None  # of the DMA's expected minimum night flow
    nights_before: int  # night windows with data before it started
    nights_since: int  # night windows between its start and its repair or the end of the run
    alert: LeakAlert | None = None
    delay_h: float | None = None
    true_m3h: float | None = None  # true flow over the nights the estimate is made of
    nights_used: int = 0  # how many of those nights
    error_pct: float | None = None
    true_at_detection_m3h: float | None = None

    @property
    def detected(self) -> bool:
        """A leak alert matched it."""
        return self.alert is not None


@dataclass
class LeakFindings:
    """The leak section of the summary."""

    leaks: list[LeakRow] = field(default_factory=list)
    false_alarms: list[LeakAlert] = field(default_factory=list)
    end: float = 0.0  # end of the run
    min_baseline_nights: int = 7
    confirm_nights: int = 2

    def assessable(self, row: LeakRow) -> bool:
        """Whether the detector had every chance to see ``row`` (else: not yet detectable)."""
        return (
            row.nights_before >= self.min_baseline_nights
            and row.nights_since >= self.confirm_nights + 1
        )


def _windows(tz: ZoneInfo, since: float, until: float, cfg: AnomalyConfig) -> list[float]:
    """Middles of the night windows (local ``night_start_h``-``night_end_h``) wholly within
    [since, until] [s since epoch]."""
    if until <= since:
        return []
    first = (datetime.fromtimestamp(since, tz).date() - EPOCH).days
    last = (datetime.fromtimestamp(until, tz).date() - EPOCH).days
    bounds = [window_bounds(day, tz, cfg.night_start_h, cfg.night_end_h)[:2]
              for day in range(first, last + 1)]  # fmt: skip
    return [(a + b) / 2.0 for a, b in bounds if since <= a and b <= until]


def find_leaks(
    conn: psycopg.Connection, truth: Truth, town: Town, data_since: float, cfg: AnomalyConfig
) -> LeakFindings:
    """The truth's leaks against the leak alerts stored for the town's sites; ``data_since``:
    where the data the detector learns from starts (the history's start)."""
    sites = [s.spec.site for s in town.sites]
    alerts = [
        LeakAlert(str(s), str(d), float(o), None if c is None else float(c),
                  None if f is None else float(f), str(state))
        for s, d, o, c, f, state in conn.execute(
            """SELECT site, subject, extract(epoch FROM opened_at)::float8,
                      extract(epoch FROM closed_at)::float8, estimated_flow_m3h, state
               FROM api.alerts WHERE kind = 'leak' AND site = ANY(%s) ORDER BY opened_at, id""",
            (sites,),
        )
    ]  # fmt: skip
    found = LeakFindings(
        end=truth.end, min_baseline_nights=cfg.min_baseline_nights,
        confirm_nights=cfg.confirm_nights,
    )  # fmt: skip
    for site in town.sites:
        name, tz = site.spec.site, ZoneInfo(site.spec.timezone)
        # The leaks that flowed during the run (a scenario may place one after a short run).
        leaks = sorted(
            (e for e in truth.leaks
             if e["site"] == name and e["dma"] is not None and float(e["start"]) < truth.end),
            key=lambda e: float(e["start"]),
        )  # fmt: skip
        mine = [a for a in alerts if a.site == name]
        result = _score_site(truth, name, site.dmas, leaks, mine, data_since, cfg)
        for leak, scored in zip(leaks, result["leaks"], strict=True):
            start, end = float(leak["start"]), leak["end"]
            row = LeakRow(
                site=name, dma=str(leak["dma"]), kind=str(leak["kind"]),
                phase=str(leak.get("phase", "live")), start=start, end=end,
                flow_m3h=float(leak["flow_m3h"]), size_fraction=leak.get("size_fraction"),
                nights_before=len(_windows(tz, data_since, start, cfg)),
                nights_since=len(_windows(tz, start, truth.end if end is None else end, cfg)),
            )  # fmt: skip
            if scored["detected"]:
                opened = start + float(scored["delay_h"]) * 3600.0
                alert = next(a for a in mine if a.dma == row.dma and abs(a.opened - opened) < 1)
                row.alert, row.delay_h = alert, float(scored["delay_h"])
                _true_flow(row, _scored_leak(leak), truth.end, tz, cfg)
            found.leaks.append(row)
        false = {(f["dma"], f["opened"]) for f in result["false_alarms"]}
        found.false_alarms.extend(
            a for a in mine if (a.dma, datetime.fromtimestamp(a.opened, UTC).isoformat()) in false
        )
    return found


def _score_site(
    truth: Truth, site: str, dmas: list[str], leaks: list[dict[str, Any]],
    alerts: list[LeakAlert], data_since: float, cfg: AnomalyConfig,
) -> dict[str, Any]:  # fmt: skip
    """:func:`app.evaluate_score.score` on one site (it matches alerts by DMA name alone)."""
    scored = HistoryTruth(
        scenario=truth.scenario, seed=truth.seed, site=site, start=data_since, end=truth.end,
        dmas={d: {} for d in dmas},
        leaks=[_scored_leak(e) for e in leaks],
    )  # fmt: skip
    return score(
        scored, [ScoredAlert("leak", a.dma, a.opened, a.closed, a.flow_m3h) for a in alerts], cfg
    )


def _true_flow(
    row: LeakRow, leak: dict[str, Any], run_end: float, tz: ZoneInfo, cfg: AnomalyConfig
) -> None:
    """The true flow [m³/h] to set the alert's estimate against: the leak's over the nights the
    detector estimates from — the last three of the leak before the alert closed, the leak was
    repaired or the run ended (``score`` samples fixed hours before that end, which fall in the
    night only for a run that ends near midnight) — and its flow when detected."""
    assert row.alert is not None
    ends = [t for t in (row.alert.closed, row.end, run_end) if t is not None]
    nights = _windows(tz, row.start, min(ends), cfg)[-3:]
    if nights:
        row.true_m3h = float(np.mean(leak_flow(leak, np.array(nights))))
        row.nights_used = len(nights)
        if row.alert.flow_m3h is not None and row.true_m3h > 0:
            row.error_pct = 100.0 * abs(row.alert.flow_m3h - row.true_m3h) / row.true_m3h
    row.true_at_detection_m3h = float(leak_flow(leak, np.array([row.alert.opened]))[0])


def _scored_leak(entry: dict[str, Any]) -> dict[str, Any]:
    """A leak of the demo's truth as the evaluation's truth describes leaks."""
    return {
        "dma": entry["dma"], "kind": entry["kind"], "start": float(entry["start"]),
        "end": entry["end"], "flow_m3h": float(entry["flow_m3h"]),
        "ramp_h": float(entry.get("ramp_h", 24.0)), "size_fraction": entry.get("size_fraction"),
    }  # fmt: skip


def leak_problems(found: LeakFindings) -> list[str]:
    """The leaks the detector should have found and did not."""
    return [
        f"MISSED: the leak {'of the history ' if row.phase == 'history' else ''}in "
        f"{row.site}/{row.dma} ({row.kind} from {_when(row.start)}, {row.flow_m3h:.3f} m3/h, "
        f"{row.nights_since} nights since, {row.nights_before} nights to learn from before) "
        "opened no leak alert"
        for row in found.leaks
        if not row.detected and found.assessable(row)
    ]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


_PHASE = {"history": "historique / history", "live": "jour simulé / live run"}


def render_leaks(found: LeakFindings) -> list[str]:
    """The "Fuites / Leaks" section, French first, English beside."""
    lines = ["Fuites / Leaks (vérité du simulateur et alertes de fuite / the simulator's truth "
             "and the leak alerts):"]  # fmt: skip
    if not found.leaks:
        lines.append("  aucune fuite simulée / no leak simulated")
    for row in found.leaks:
        size = (f" ({100 * row.size_fraction:.0f} % du débit minimum de nuit / of the minimum "
                "night flow)" if row.size_fraction is not None else "")  # fmt: skip
        repaired = f", réparée / repaired {_when(row.end)}" if row.end is not None else ""
        lines.append(
            f"  {row.site}/{row.dma}, {_PHASE.get(row.phase, row.phase)}: {row.kind}, "
            f"début / start {_when(row.start)}{repaired}, débit vrai / true flow "
            f"{row.flow_m3h:.3f} m3/h{size}"
        )
        lines.append("    " + _outcome(found, row))
    if found.false_alarms:
        for a in found.false_alarms:
            flow = f", ~{a.flow_m3h:.3f} m3/h" if a.flow_m3h is not None else ""
            lines.append(
                f"  fausse alerte / false alarm: {a.site}/{a.dma} opened {_when(a.opened)}"
                f"{flow} ({a.state}): no leak of the truth matches it"
            )
    else:
        lines.append("  fausses alertes / false alarms: aucune / none")
    return lines


def _outcome(found: LeakFindings, row: LeakRow) -> str:
    alert = row.alert
    if alert is not None:
        text = (f"détectée / detected {_when(alert.opened)} (délai / delay {row.delay_h:.1f} h, "
                f"alert {alert.state})")  # fmt: skip
        if alert.flow_m3h is not None:
            text += f"; débit estimé / estimated flow {alert.flow_m3h:.3f} m3/h"
        if alert.flow_m3h is not None and row.true_m3h is not None and row.error_pct is not None:
            text += (f", vrai / true {row.true_m3h:.3f} m3/h over its last {row.nights_used} "
                     f"night{'' if row.nights_used == 1 else 's'} "
                     f"(écart / error {row.error_pct:.0f} %)")  # fmt: skip
        elif row.true_at_detection_m3h is not None:
            text += (f", vrai / true {row.true_at_detection_m3h:.3f} m3/h when detected (no "
                     "whole night of it yet to compare with)")  # fmt: skip
        return text
    if found.assessable(row):
        return "NON DÉTECTÉE / NOT DETECTED (see below)"
    if row.nights_before < found.min_baseline_nights:
        why = (f"{row.nights_before} night{'' if row.nights_before == 1 else 's'} of data "
               "before it, the detector learns from "
               f"{found.min_baseline_nights} first")  # fmt: skip
    else:
        repaired = row.end is not None and row.end < found.end
        hours = ((row.end if row.end is not None and repaired else found.end) - row.start) / 3600
        span = f"flowed {hours:.1f} h until its repair" if repaired else (
            f"started {hours:.1f} h before the end of the run")  # fmt: skip
        why = (f"{span}, {row.nights_since} night{'' if row.nights_since == 1 else 's'} of it "
               f"(a leak that stays is confirmed over {found.confirm_nights} nights; bursts are "
               "read in the quiet hours after midnight)")  # fmt: skip
    return f"pas encore détectable / not yet detectable: {why}"
