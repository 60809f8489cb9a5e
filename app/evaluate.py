"""Evaluation of leak detection on simulated histories with known leaks
(``sobriety anomaly evaluate``), scored as LeakDB and BattLeDIM do.

For each scenario (the packaged family ``simulators/scenarios/evaluation*.toml`` unless told
otherwise) and each seed: a scratch database, a history written into it
(:mod:`simulators.history`), one ``anomaly scan`` over the whole period through the real SQL and
alert path, then the alerts against the truth (:mod:`app.evaluate_score`):

- leaks detected / missed (an alert on the leak's DMA opened between its start and one day after
  its repair), detection delay [h], error of the estimated flow [%] against the true leak flow
  of the nights the estimate used; by leak size relative to the DMA's MNF, and by the share of
  the DMA's customers with a smart meter (none, under half, half or more);
- false alarms (leak alerts matching no leak) per DMA per 30 and per 90 days;
- per-night scores: a night is positive when a leak flows, predicted positive when a leak alert
  is active; TPR, TNR, F1;
- customer meters: leaks behind the meter found by ``continuous_flow``, heavy users by
  ``high_consumption``; meter faults reported as ``data_gap`` and never as leaks.

The report has a section per scenario and one over all of them; the command succeeds only when
every scenario meets every target.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from psycopg import sql

from anomaly.config import AnomalyConfig
from anomaly.service import Scanner
from app.evaluate_score import TARGETS, Alert, score, summarise
from core.config import Config
from core.db import connect, upgrade, with_database
from core.errors import UsageError
from simulators.history import write_history
from simulators.history_scenario import (
    HistoryScenario,
    load_history_scenario,
    packaged_family,
    packaged_history,
)

__all__ = ["TARGETS", "recreate_database", "render", "run_evaluation", "run_seed", "scenarios"]


def recreate_database(conninfo: str, database: str) -> str:
    """Drop and create the scratch database on the server of ``conninfo``; its URL."""
    with connect(with_database(conninfo, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))  # fmt: skip
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return with_database(conninfo, database)


def run_seed(
    conninfo: str,
    database: str,
    scenario: HistoryScenario,
    seed: int,
    cfg: AnomalyConfig,
    keep: bool = False,
) -> dict[str, Any]:
    """Generate, scan and score one seed; the scratch database is dropped afterwards unless
    ``keep``."""
    url = recreate_database(conninfo, database)
    try:
        with connect(url) as conn, tempfile.TemporaryDirectory() as tmp:
            upgrade(conn)
            conn.commit()
            started = time.perf_counter()
            truth = write_history(conn, scenario, seed, Path(tmp))
            written = time.perf_counter() - started
            started = time.perf_counter()
            Scanner(cfg).scan(conn, truth.start, truth.end)
            conn.commit()
            scanned = time.perf_counter() - started
            alerts = [
                Alert(r[0], r[1], float(r[2]), None if r[3] is None else float(r[3]), r[4])
                for r in conn.execute(
                    """SELECT kind, subject, extract(epoch FROM opened_at),
                              extract(epoch FROM closed_at), estimated_flow_m3h
                       FROM alerts ORDER BY opened_at"""
                )
            ]
    finally:
        if not keep:
            with connect(with_database(conninfo, "postgres"), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(database)))  # fmt: skip
    result = score(truth, alerts, cfg)
    result["scenario"] = scenario.name
    result["seed"] = seed
    result["readings"] = truth.readings
    result["write_s"] = round(written, 1)
    result["scan_s"] = round(scanned, 1)
    if keep:
        result["database"] = database
    result["truth"] = truth.as_dict()
    return result


def scenarios(names: list[str] | None) -> list[tuple[str, HistoryScenario]]:
    """The scenarios named (a TOML path, or a packaged name such as ``evaluation-sparse``),
    or the packaged family; each with where it came from."""
    if not names:
        return [(str(path), load_history_scenario(path)) for path in packaged_family()]
    out = []
    for name in names:
        path = Path(name)
        if not path.exists() and path.suffix != ".toml" and packaged_history(name).exists():
            path = packaged_history(name)
        elif not path.exists():
            known = ", ".join(p.stem for p in packaged_family())
            raise UsageError(f"--scenario {name}: no such file, nor a packaged scenario "
                             f"({known})")  # fmt: skip
        out.append((str(path), load_history_scenario(path)))
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(title: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{title:<16}{'leaks':>6}{'found':>7}{'share':>7}{'delay h':>9}"
             f"{'flow err %':>12}{'<=30 %':>8}"]  # fmt: skip
    lines.extend(
        f"{row['size']:<16}{row['leaks']:>6}{row['detected']:>7}"
        f"{_fmt(row['detected_share'], 2):>7}{_fmt(row['median_delay_h']):>9}"
        f"{_fmt(row['median_flow_error_pct']):>12}{_fmt(row['flow_within_30pct_share'], 2):>8}"
        for row in rows
    )
    return lines


def render(summary: dict[str, Any]) -> str:
    """A text report of one summary (a scenario, or all of them)."""
    lines = [
        f"seeds {summary['seeds']}: {summary['leaks']} leaks over {summary['dma_days']:.0f} "
        f"DMA-days; {summary['false_alarms']} false alarms "
        f"({summary['false_alarms_per_dma_30d']:.2f} per DMA per 30 days)",
        "",
        *_table("leak size / MNF", summary["by_size"]),
        "",
        *_table("coverage (>=5%)", summary["by_coverage"]),
    ]
    n = summary["nights"]
    lines += [
        "",
        f"per night: TPR {n['tpr']:.3f}  TNR {n['tnr']:.4f}  F1 {n['f1']:.3f}  "
        f"(tp {n['tp']}, fp {n['fp']}, tn {n['tn']}, fn {n['fn']})",
        f"meter faults reported as data gaps: {summary['meter_faults_reported']} of "
        f"{summary['meter_faults']}",
        "",
        "targets:",
    ]
    for key, t in summary["targets"].items():
        lines.append(
            f"  {key:<28} {_fmt(t['value'], 2):>8}  target {t['target']:<6} "
            + ("met" if t["met"] else "NOT MET")
        )
    for c in summary.get("customers", []):
        lines.append(f"customers: {orjson.dumps(c).decode()}")
    lines.append(f"runs: {orjson.dumps(summary['runs']).decode()}")
    return "\n".join(lines)


_SHORT = {
    "detected_share_above_5pct": "found >=5%",
    "false_alarms_per_dma_90d": "FA/DMA/90d",
    "median_delay_h": "delay h",
    "median_flow_error_pct": "flow err %",
}


def render_all(report: dict[str, Any]) -> str:
    """Every scenario's section, the overall one, and the targets per scenario."""
    parts = []
    for s in report["scenarios"]:
        parts += [f"== scenario {s['scenario']} ({s['file']}) ==", render(s), ""]
    if len(report["scenarios"]) > 1:
        parts += [f"== overall: {len(report['scenarios'])} scenarios ==", render(report), ""]
    keys = list(TARGETS)
    head = f"{'targets per scenario':<22}" + "".join(f"{_SHORT[k]:>16}" for k in keys)
    parts.append(head + f"{'all met':>9}")
    for s in report["scenarios"]:
        marks = {k: " ok" if s["targets"][k]["met"] else " NO" for k in keys}
        cells = "".join(f"{_fmt(s['targets'][k]['value'], 2) + marks[k]:>16}" for k in keys)
        parts.append(f"{s['scenario']:<22}{cells}{'yes' if s['met'] else 'NO':>9}")
    parts.append(f"{'target':<22}" + "".join(
        f"{('>= ' if k.startswith('detected') else '<= ') + str(TARGETS[k]):>16}" for k in keys
    ))  # fmt: skip
    return "\n".join(parts)


def run_evaluation(args: argparse.Namespace, config: Config) -> int:
    """``sobriety anomaly evaluate``: exit 0 when every target is met on every scenario, 1
    otherwise."""
    chosen = scenarios(args.scenario)
    seeds = args.seed or [1]
    sections: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for file, scenario in chosen:
        if args.days is not None:
            scenario = scenario.model_copy(update={"days": int(args.days)})
        # The detector is told the school holidays, as a commune's configuration would.
        cfg = config.section(AnomalyConfig).model_copy(
            update={"holidays": [(first, after) for first, after, _ in scenario.school_holidays]}
        )
        runs: list[dict[str, Any]] = []
        for seed in seeds:
            database = args.database
            if args.keep and len(chosen) * len(seeds) > 1:
                database = f"{args.database}_{len(results) + len(runs) + 1}"
            runs.append(run_seed(config.db_conninfo(), database, scenario, seed, cfg, args.keep))
        summary = summarise(runs)
        summary["scenario"], summary["file"] = scenario.name, file
        summary["met"] = all(t["met"] for t in summary["targets"].values())
        sections.append(summary)
        results += runs
    report = summarise(results)
    report.pop("details")
    report["scenario"] = "+".join(s["scenario"] for s in sections)
    report["met"] = all(s["met"] for s in sections)
    report["scenarios"] = sections
    payload = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    if args.out:
        args.out.write_bytes(payload)
    print(payload.decode() if args.format == "json" else render_all(report))
    return 0 if report["met"] else 1
