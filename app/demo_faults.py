"""The demo summary's luminaire faults ("Défauts de luminaires / Luminaire faults"): each fault
the simulator injected (lamp failure, day burner, power drift) beside the alert the energy
stage opened for it (``api.luminaire_faults``: same site, device and kind), and every fault
alert that matches no injected fault.

A fault is *due* once the stage had a whole day to see it: a day after it began (a failed lamp
shows at night, a day burner by day) — for a drifting luminaire, a day after its drift crossed
``energy.faults_curve_tolerance``. A due fault without its alert is a problem (the demo fails);
one not yet due is listed with why. A fault alert on a luminaire that has no injected fault is
listed as a false alarm (it does not fail the demo, as the leaks' false alarms do not).

Times in seconds since the epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from energy.config import EnergyConfig
from simulators import Truth

__all__ = ["FaultFindings", "find_faults", "render_faults"]

ALERT_KIND = {"lamp_failure": "lamp_failure", "day_burner": "day_burner",
              "power_drift": "power_off_curve"}  # fmt: skip
"""The alert kind the stage opens for each kind of fault the simulator injects."""

DUE_AFTER_S = 86400.0
"""How long after a fault became visible the stage must have found it [s]."""


@dataclass
class Fault:
    """An injected fault and what the stage found of it."""

    kind: str
    site: str
    device: str
    visible_at: float  # when the telemetry starts to show it [s]
    due: bool
    opened_at: float | None = None  # the matching alert's (data time) [s]


@dataclass
class FaultFindings:
    """The section's content; ``problems`` the due faults the stage did not find."""

    faults: list[Fault] = field(default_factory=list)
    false_alarms: list[tuple[str, str, str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _visible_at(event: dict[str, object], tolerance: float) -> float:
    at = float(event["at"])  # type: ignore[arg-type]
    if event["kind"] == "power_drift":
        per_day = float(event.get("per_day") or 0.0)  # type: ignore[arg-type]
        return at + tolerance / per_day * 86400.0 if per_day > 0 else float("inf")
    return at


def find_faults(conn: psycopg.Connection, truth: Truth, config: EnergyConfig) -> FaultFindings:
    """The injected luminaire faults of ``truth`` against the stage's fault alerts."""
    findings = FaultFindings()
    rows = conn.execute(
        """SELECT kind, site, device, extract(epoch FROM opened_at)::float8
           FROM api.luminaire_faults ORDER BY opened_at"""
    ).fetchall()
    alerts = {(r[0], r[1], r[2]): float(r[3]) for r in reversed(rows)}  # the first of each
    injected: set[tuple[str, str, str]] = set()
    for event in truth.events:
        kind = str(event["kind"])
        if kind not in ALERT_KIND:
            continue
        key = (ALERT_KIND[kind], str(event["site"]), str(event["device"]))
        injected.add(key)
        visible = _visible_at(event, config.faults_curve_tolerance)
        fault = Fault(kind, key[1], key[2], visible, visible + DUE_AFTER_S <= truth.end,
                      alerts.get(key))  # fmt: skip
        findings.faults.append(fault)
        if fault.due and fault.opened_at is None:
            findings.problems.append(
                f"MISSED: {kind} of {key[1]}/{key[2]} (visible from {_hm(visible)}, more than a "
                f"day before the end) has no {key[0]} alert"
            )
    for key, opened in alerts.items():
        if key not in injected:
            findings.false_alarms.append((key[0], key[1], key[2], opened))
    return findings


def _hm(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_faults(findings: FaultFindings) -> list[str]:
    """The section's lines, French first."""
    out = ["Défauts de luminaires / Luminaire faults (vérité du simulateur et api.luminaire_faults"
           " / the simulator's truth and the energy stage's alerts):"]  # fmt: skip
    if not findings.faults and not findings.false_alarms:
        out.append("  aucun défaut injecté, aucune alerte / no fault injected, no alert")
    for f in findings.faults:
        head = f"  {f.site}/{f.device}, {f.kind}"
        if f.opened_at is not None:
            delay = max(f.opened_at - f.visible_at, 0.0) / 3600.0
            out.append(f"{head}: détecté / detected {_hm(f.opened_at)} (délai / delay "
                       f"{delay:.1f} h après qu'il est visible / after it shows)")  # fmt: skip
        elif f.due:
            out.append(f"{head}: NON DÉTECTÉ / NOT DETECTED (visible from {_hm(f.visible_at)})")
        elif f.visible_at == float("inf"):
            out.append(f"{head}: pas encore détectable / not yet detectable (no drift rate)")
        else:
            out.append(
                f"{head}: pas encore détectable / not yet detectable (visible from "
                f"{_hm(f.visible_at)}; due a day later, after the end of the run)"
            )
    for kind, site, device, opened in findings.false_alarms:
        out.append(f"  fausse alerte / false alarm: {kind} {site}/{device} opened {_hm(opened)}: "
                   "no injected fault matches it")  # fmt: skip
    return out
