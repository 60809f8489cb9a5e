"""Leak-detection benchmark (issues 4 and 10): one year of 15-minute data for 100 DMAs, scanned.

    .venv/bin/python bench/anomaly_bench.py [--dmas 100] [--days 365] [--naive]

A fresh database on $SOBRIETY_TEST_DB_URL (default local PostgreSQL) receives a simulated year
(simulators/history.py: an inlet flow meter with flow and volume index, and a pressure sensor per
DMA, every 15 minutes; leaks at random). Then, in the same run:

1. the hourly rollup is brought up to date (``core.rollup.refresh``: every hour of the year is
   pending, as after a backfill): its cost per million readings;
2. sobriety: ``Scanner.scan`` over the whole year (reads the rollup only: hourly values per DMA,
   night pressure, night series, both detectors, alerts written);
3. baselines: one SQL pass that reads every raw row once (``sum(value)`` over ``readings``),
   and the hourly aggregation of every raw row (per device, metric and hour: what a scan
   without the rollup must compute each time, the issue-4 scan's main cost); with ``--naive``,
   also the naive scan: every raw flow reading fetched into Python and aggregated there,
   then the same detectors.

Prints the wall times, the ratios, the rows moved into Python, the peak memory
(tracemalloc) and the target of issue 10 (the scan in <= 10 s, under the raw aggregation).
Customer meters are left out: they add a per-meter cost of their own that the note reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from anomaly.bursts import detect_bursts  # noqa: E402
from anomaly.config import AnomalyConfig  # noqa: E402
from anomaly.detect import detect_steps  # noqa: E402
from anomaly.nights import night_series  # noqa: E402
from anomaly.service import Scanner  # noqa: E402
from core import rollup  # noqa: E402
from core.db import upgrade  # noqa: E402
from simulators.history import write_history  # noqa: E402
from simulators.history_scenario import HistoryScenario  # noqa: E402

SERVER = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


RAW_HOURLY = """SELECT count(*) FROM (
    SELECT device_id, metric_id, date_bin('1 hour', time, 'epoch'), count(*), avg(value),
           min(value), max(value)
    FROM readings GROUP BY 1, 2, 3) AS hours"""


def naive(url: str, site: str, tz_name: str) -> tuple[int, int]:
    """The baseline: raw readings into Python, hourly means by numpy, same detectors.
    Returns (rows fetched, episodes found)."""
    tz = ZoneInfo(tz_name)
    rows = 0
    found = 0
    with psycopg.connect(url) as conn, conn.cursor(binary=True) as cur:
        meters = conn.execute(
            "SELECT id, dma FROM devices WHERE site = %s AND kind = 'flow_meter' ORDER BY dma",
            (site,),
        ).fetchall()
        for device_id, _dma in meters:
            cur.execute(
                "SELECT extract(epoch FROM time)::float8, value FROM readings "
                "WHERE device_id = %s AND metric_id = 1 ORDER BY time",
                (device_id,),
            )
            data = np.array(cur.fetchall(), dtype=np.float64)
            rows += len(data)
            hour_start = np.floor(data[:, 0] / 3600.0) * 3600.0
            hours, inverse = np.unique(hour_start, return_inverse=True)
            means = np.bincount(inverse, weights=data[:, 1]) / np.bincount(inverse)
            local = [_local(h, tz) for h in hours]
            day = np.array([d for d, _, _ in local], dtype=np.int64)
            hour = np.array([h for _, h, _ in local], dtype=np.int64)
            weekend = np.array([w for _, _, w in local])
            none = np.zeros(len(hours))
            nights = night_series(
                hours, day, hour, means, none.astype(bool), none, none.astype(np.int64), 0, tz
            )
            found += len(
                detect_steps(
                    nights.window_start,
                    nights.window_end,
                    nights.net_m3h,
                    nights.weekend,
                    mnf=nights.mnf_m3h,
                )
            )
            found += len(detect_bursts(hours, day, hour, means, weekend))
    return rows, found


def _local(ts: float, tz: ZoneInfo) -> tuple[int, int, bool]:
    from datetime import datetime

    d = datetime.fromtimestamp(ts, tz)
    return (d.date().toordinal() - 719163, d.hour, d.weekday() >= 5)


def timed(fn: Any) -> tuple[float, Any]:
    """Wall time [s] and result of ``fn()``."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def peak_memory(fn: Any) -> int:
    """Peak Python memory [bytes] of ``fn()``, traced in a run of its own (tracing slows it)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dmas", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--naive", action="store_true", help="also the naive Python scan")
    args = parser.parse_args()
    scenario = HistoryScenario(
        name="bench", site="bench", start=date(2026, 1, 5),
        days=args.days, dmas=args.dmas, customers=(20, 40), smart_meter_share=0.0,
        outlet_share=0.0, customer_leaks=0, high_consumers=0, large_consumers=0,
    )  # fmt: skip
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = SERVER.rsplit("/", 1)[0] + f"/{name}"
    try:
        with psycopg.connect(url) as conn, tempfile.TemporaryDirectory() as tmp:
            upgrade(conn)
            conn.commit()
            started = time.perf_counter()
            truth = write_history(conn, scenario, 1, Path(tmp))
            elapsed = time.perf_counter() - started
            print(
                f"wrote {truth.readings:,} readings ({args.dmas} DMAs x {args.days} days, "
                f"15 min) in {elapsed:.0f} s; {len(truth.leaks)} leaks"
            )
            conn.execute("ANALYZE readings")
            conn.commit()
            refresh_s, refreshed = timed(lambda: rollup.refresh(conn))
            conn.execute("ANALYZE readings_hourly")
            conn.commit()
        with psycopg.connect(url) as conn:
            raw_s, _ = timed(
                lambda: conn.execute("SELECT count(*), sum(value) FROM readings").fetchone()
            )
            agg_s, _ = timed(lambda: conn.execute(RAW_HOURLY).fetchone())
            conn.commit()  # the scan refreshes the rollup first, outside a transaction
            scan_s, report = timed(
                lambda: Scanner(AnomalyConfig()).scan(conn, truth.start, truth.end)
            )
            conn.commit()
            alerts = conn.execute("SELECT count(*) FROM alerts WHERE kind = 'leak'").fetchone()
            conn.commit()
            scan_mem = peak_memory(
                lambda: Scanner(AnomalyConfig()).scan(conn, truth.start, truth.end)
            )
            conn.rollback()
        if args.naive:
            naive_s, (rows, found) = timed(lambda: naive(url, "bench", "Europe/Paris"))
            naive_mem = peak_memory(lambda: naive(url, "bench", "Europe/Paris"))
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    hours = args.dmas * args.days * 24
    leak_alerts = alerts[0] if alerts else 0
    print(
        f"sobriety scan: {scan_s:.1f} s, {hours:,} hourly rows into Python, peak "
        f"{scan_mem / 1e6:.0f} MB traced; {report.nights:,} nights, {leak_alerts} leak alerts"
    )
    per_million = refresh_s / (truth.readings / 1e6)
    print(
        f"rollup refresh: {refresh_s:.1f} s for {truth.readings:,} readings "
        f"({per_million:.2f} s per million), {refreshed.written:,} hourly rows written"
    )
    print(f"raw pass (every reading once, in SQL, summed): {raw_s:.1f} s")
    print(
        f"raw hourly aggregation (every reading once, grouped per device, metric and hour, as "
        f"a scan without the rollup must): {agg_s:.1f} s; ratio to the scan {agg_s / scan_s:.2f}x"
    )
    if args.naive:
        print(
            f"naive (raw rows into Python): {naive_s:.1f} s, {rows:,} raw rows, peak "
            f"{naive_mem / 1e6:.0f} MB traced; {found} episodes"
        )
        print(
            f"ratio naive / sobriety: time {naive_s / scan_s:.2f}x, "
            f"memory {naive_mem / max(scan_mem, 1):.2f}x"
        )
    target = 10.0 * (args.dmas * args.days) / (100 * 365)
    verdict = "met" if scan_s <= target and scan_s < agg_s else "NOT MET"
    print(f"target: scan <= {target:.1f} s and under the raw aggregation -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
