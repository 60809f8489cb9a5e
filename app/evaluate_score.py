"""Scores of leak detection against a history's truth (``sobriety anomaly evaluate``), as LeakDB
and BattLeDIM score: per leak (detected, delay, flow error, by size and by customer-meter
coverage), false alarms per DMA and period, per-night confusion matrix, customer-meter
findings, meter faults reported as data gaps; and the targets. Pure functions over the truth
and the alerts (no database)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from anomaly.config import AnomalyConfig
from core.arrays import FloatArray
from simulators.history import HistoryTruth, leak_flow

SIZE_BINS = ((0.0, 0.05), (0.05, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, math.inf))
COVERAGE_BINS = (("0", 0.0, 1e-9), ("<50%", 1e-9, 0.5), (">=50%", 0.5, math.inf))
"""Share of a DMA's customers with a smart meter: none, some, most."""
TARGETS = {
    "detected_share_above_5pct": 0.90,
    "false_alarms_per_dma_90d": 1.0,
    "median_delay_h": 24.0,
    "median_flow_error_pct": 30.0,
}


@dataclass(slots=True)
class Alert:
    """A stored alert, times [s since epoch]."""

    kind: str
    subject: str
    opened: float
    closed: float | None
    flow: float | None


def _night_times(truth: HistoryTruth, cfg: AnomalyConfig) -> FloatArray:
    """Middle of each night window [s since epoch] over the period (UTC-hour approximation of
    the local window: the offset of Europe/Paris is taken at each night)."""
    from zoneinfo import ZoneInfo

    from anomaly.nights import window_bounds

    tz = ZoneInfo("Europe/Paris")
    first = int(truth.start // 86400)
    out = []
    for day in range(first, int(truth.end // 86400) + 1):
        start, end, _ = window_bounds(day, tz, cfg.night_start_h, cfg.night_end_h)
        if truth.start <= start and end <= truth.end:
            out.append((start + end) / 2.0)
    return np.asarray(out, dtype=np.float64)


def score(truth: HistoryTruth, alerts: list[Alert], cfg: AnomalyConfig) -> dict[str, Any]:
    """Scores of one run (see the module docstring)."""
    leaks_by_dma: dict[str, list[dict[str, Any]]] = {}
    for leak in truth.leaks:
        leaks_by_dma.setdefault(leak["dma"], []).append(leak)
    leak_alerts = [a for a in alerts if a.kind == "leak"]
    used: set[int] = set()
    rows = []
    for leak in truth.leaks:
        end = truth.end if leak["end"] is None else leak["end"]
        hit = next(
            (
                (i, a) for i, a in enumerate(leak_alerts)
                if i not in used and a.subject == leak["dma"]
                and leak["start"] <= a.opened <= end + 86400.0
            ),
            None,
        )  # fmt: skip
        network = truth.dmas.get(leak["dma"], {})
        row: dict[str, Any] = {
            "dma": leak["dma"], "kind": leak["kind"], "size_fraction": leak["size_fraction"],
            "flow_m3h": leak["flow_m3h"], "detected": hit is not None,
            "coverage": network.get("coverage"), "meter_mode": network.get("meter_mode"),
            "pattern": network.get("pattern"),
        }  # fmt: skip
        if hit is not None:
            i, alert = hit
            used.add(i)
            row["delay_h"] = (alert.opened - leak["start"]) / 3600.0
            # The estimate averages the last nights before the alert closed (or the run ended).
            ref_end = min(alert.closed or truth.end, end, truth.end)
            nights = ref_end - 86400.0 * np.arange(1.0, 4.0) - 3 * 3600.0
            true_flow = float(np.mean(leak_flow(leak, nights)))
            if alert.flow is not None and true_flow > 0:
                row["flow_error_pct"] = 100.0 * abs(alert.flow - true_flow) / true_flow
                row["estimated_m3h"] = alert.flow
                row["true_m3h"] = true_flow
        rows.append(row)
    false_alarms = [
        {"dma": a.subject, "opened": datetime.fromtimestamp(a.opened, UTC).isoformat()}
        for i, a in enumerate(leak_alerts) if i not in used
    ]  # fmt: skip
    ndmas = len(truth.dmas)
    days = (truth.end - truth.start) / 86400.0
    # Per-night confusion matrix.
    nights = _night_times(truth, cfg)
    tp = fp = tn = fn = 0
    for dma in truth.dmas:
        flowing = np.zeros(len(nights), dtype=bool)
        for leak in leaks_by_dma.get(dma, []):
            flowing |= leak_flow(leak, nights) > 0
        active = np.zeros(len(nights), dtype=bool)
        for a in leak_alerts:
            if a.subject == dma:
                active |= (nights >= a.opened) & (nights < (a.closed or math.inf))
        tp += int((flowing & active).sum())
        fp += int((~flowing & active).sum())
        tn += int((~flowing & ~active).sum())
        fn += int((flowing & ~active).sum())
    customer = _score_customers(truth, alerts)
    gaps = [a for a in alerts if a.kind == "data_gap"]
    faults_reported = sum(
        any(a.subject == f["dma"] and f["start"] - 86400 <= a.opened <= f["end"] + 86400
            for a in gaps)
        for f in truth.meter_faults
    )  # fmt: skip
    return {
        "dmas": ndmas,
        "days": days,
        "leaks": rows,
        "false_alarms": false_alarms,
        "nights": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "customers": customer,
        "meter_faults": len(truth.meter_faults),
        "meter_faults_reported": int(faults_reported),
    }


def _score_customers(truth: HistoryTruth, alerts: list[Alert]) -> dict[str, Any]:
    cont = [a for a in alerts if a.kind == "continuous_flow"]
    high = [a for a in alerts if a.kind == "high_consumption"]
    large = {c["device"] for c in truth.changes if c["kind"] == "new_large_consumer"}
    leaks = {c["device"]: c for c in truth.customer_leaks}
    heavy = {c["device"]: c for c in truth.high_consumers}
    cont_found = {a.subject for a in cont if a.subject in leaks
                  and a.opened >= leaks[a.subject]["start"]}  # fmt: skip
    delays = [
        (min(a.opened for a in cont if a.subject == d) - leaks[d]["start"]) / 3600.0
        for d in cont_found
    ]
    return {
        "continuous_flow": {
            "leaks": len(leaks),
            "found": len(cont_found),
            "median_delay_h": float(np.median(delays)) if delays else None,
            "false": len({a.subject for a in cont} - set(leaks) - large),
            "new_large_consumer_flagged": bool(large & {a.subject for a in cont}),
        },
        "high_consumption": {
            "heavy_users": len(heavy),
            "found": len({a.subject for a in high if a.subject in heavy}),
            "others_flagged": len({a.subject for a in high} - set(heavy) - large - set(leaks)),
        },
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores over all seeds (of one scenario, or of several), by leak size, by the
    customer-meter coverage of the leak's DMA (leaks of 5 % of the MNF and more), and the
    targets."""
    leaks = [row for r in results for row in r["leaks"]]
    dma_days = sum(r["dmas"] * r["days"] for r in results)
    fa = sum(len(r["false_alarms"]) for r in results)
    conf = {k: sum(r["nights"][k] for r in results) for k in ("tp", "fp", "tn", "fn")}
    tpr = conf["tp"] / max(conf["tp"] + conf["fn"], 1)
    tnr = conf["tn"] / max(conf["tn"] + conf["fp"], 1)
    precision = conf["tp"] / max(conf["tp"] + conf["fp"], 1)
    f1 = 2 * precision * tpr / max(precision + tpr, 1e-12)
    by_size = []
    for lo, hi in SIZE_BINS:
        sel = [row for row in leaks if lo <= row["size_fraction"] < hi]
        by_size.append(_size_row(f"{lo:.0%}-{hi:.0%}" if math.isfinite(hi) else f">={lo:.0%}",
                                 sel))  # fmt: skip
    big = [row for row in leaks if row["size_fraction"] >= 0.05]
    overall = _size_row("all >=5%", big)
    by_coverage = [
        _size_row(label, [row for row in big if row.get("coverage") is not None
                          and lo <= row["coverage"] < hi])
        for label, lo, hi in COVERAGE_BINS
    ]  # fmt: skip
    checks = {
        "detected_share_above_5pct": overall["detected_share"],
        "false_alarms_per_dma_90d": fa * 90.0 / max(dma_days, 1e-9),
        "median_delay_h": overall["median_delay_h"],
        "median_flow_error_pct": overall["median_flow_error_pct"],
    }
    verdict = {
        key: (value is not None and (value >= TARGETS[key] if key.startswith("detected")
                                      else value <= TARGETS[key]))
        for key, value in checks.items()
    }  # fmt: skip
    return {
        "seeds": [r["seed"] for r in results],
        "dma_days": dma_days,
        "leaks": len(leaks),
        "false_alarms": fa,
        "false_alarms_per_dma_30d": fa * 30.0 / max(dma_days, 1e-9),
        "nights": {"tpr": tpr, "tnr": tnr, "f1": f1, **conf},
        "by_size": by_size,
        "by_coverage": by_coverage,
        "targets": {
            key: {"value": checks[key], "target": TARGETS[key], "met": verdict[key]}
            for key in checks
        },
        "flow_within_30pct_share": overall["flow_within_30pct_share"],
        "customers": [r["customers"] for r in results],
        "meter_faults": sum(r["meter_faults"] for r in results),
        "meter_faults_reported": sum(r["meter_faults_reported"] for r in results),
        "runs": [
            {k: r[k] for k in ("scenario", "seed", "readings", "write_s", "scan_s") if k in r}
            for r in results
        ],
        "details": [{k: r[k] for k in ("seed", "leaks", "false_alarms", "truth")} for r in results],
    }


def _size_row(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in rows if r["detected"]]
    delays = [r["delay_h"] for r in found]
    errors = [r["flow_error_pct"] for r in found if "flow_error_pct" in r]
    return {
        "size": label,
        "leaks": len(rows),
        "detected": len(found),
        "detected_share": len(found) / len(rows) if rows else None,
        "median_delay_h": float(np.median(delays)) if delays else None,
        "median_flow_error_pct": float(np.median(errors)) if errors else None,
        "flow_within_30pct_share": (sum(e <= 30.0 for e in errors) / len(errors))
        if errors else None,
    }  # fmt: skip
