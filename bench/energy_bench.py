"""Energy benchmark (issue 12): kWh per luminaire-night over a year, and the incremental pass.

    .venv/bin/python bench/energy_bench.py [--luminaires 10000] [--nights 7] [--runs 3]

A fresh database on $SOBRIETY_TEST_DB_URL (default local PostgreSQL), migrated by
``core.db.upgrade`` and dropped at the end. One site in Paris (Europe/Paris), ``--luminaires``
luminaires in 100 lighting groups (30/50/70/100 W, a ``street_km`` per group), each reporting
every 15 minutes at its own second of the quarter: its ``energy`` counter [whole Wh: 0.5 W of
standby plus its power while lit], its ``dim`` level, and (for part 2's day) its ``power``.
The program: on at sunset (``core.lighting.sun_times``), 100 %, 50 % from 23:00 to 05:00, off
at sunrise. Rows are written by binary ``COPY`` (a backfill), prepared with numpy.

1. **kWh per luminaire-night over a year.** Raw readings are generated for ``--nights`` sample
   nights from 2025-03-24 (the spring-forward night included; a year of raw 15-minute readings
   is 350 M rows per metric, too big here), the rollup refreshed (its log rewritten in
   (hour, device) order first, as the ingest writes it) and the real stage run over
   them (``energy.service.recompute``): those nights of ``luminaire_nights`` are the stage's.
   Every other night of 2025 is bulk-inserted with plausible figures (night length of Paris,
   the same program and powers), so the table holds 365 nights × every luminaire. Then, each
   run, in alternating order:
   - the stage's figures: ``api.lighting_nights`` (per site, lighting group and night) over
     the sample nights, and over the whole year (target <= 1 s);
   - the baseline: the same kWh per luminaire-night from the raw ``energy`` readings in one
     SQL statement (each pair of readings' energy, split at the local noons in proportion to
     time, summed per group and night) over the sample nights — a like-for-like ratio — and
     extrapolated linearly to the year (x 365 / nights; labelled as such).
   Checked before timing: the raw SQL and the stage agree on every group-night's luminaires
   and kWh per luminaire, and on every luminaire-night, within the counter's resolution
   (1 Wh); the bench fails otherwise. The raw SQL applies no counter rule (no glitch, reset
   or rollover here): it does less than the stage. Then EXPLAIN ANALYZE of the year's query
   (the view reads ``lighting_group_nights``, one row per group and night, kept by triggers
   on ``luminaire_nights``), and what keeping that table costs a pass: rewriting the 4
   nights a 3-day pass touches with its triggers and with them disabled.
2. **The incremental pass of a 10,000-luminaire town, per day.** One more local day of raw
   readings (energy, power, dim: 3 x 96 per luminaire) is written, then timed, each run: the
   service's path — ``core.rollup.refresh`` of that day, then ``energy.service.recompute``
   with a rescan of 1 day and of the default ``energy.rescan_days`` (3) — against the naive
   baseline: a per-device Python loop over the raw readings (one query per device and metric,
   the stage's own counter and lit-hours math, the stage's writers), i.e. the same figures
   without the rollup; timed on a sample of devices and scaled linearly. The sample's figures
   are checked equal to the stage's. Before each run the day's rollup rows are deleted and
   its (device, hour) pairs logged again in (hour, device) order, the ingest's order: each run
   refreshes the whole day. Also printed: the steady state, 96 passes a day (``interval_s``
   900) each recomputing 3 days.

Prints each run, medians and the ratios with their spread (min-max over the runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import psycopg
from bench_support import ROOT_DIR
from rollup_bench import _HEADER, _TRAILER, copy_buffer

from core.db import upgrade, with_database
from core.lighting import sun_times
from core.rollup import refresh
from energy import store
from energy.config import EnergyConfig
from energy.daily import CounterSettings, counter_days
from energy.lighting import lit_hours
from energy.service import recompute

assert ROOT_DIR  # the repository is on the import path

SERVER = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SITE = "bench"
TZ_NAME = "Europe/Paris"
TZ = ZoneInfo(TZ_NAME)
LAT, LON = 48.85, 2.35
YEAR = 2025
FIRST_NIGHT = date(2025, 3, 24)  # the sample: the spring-forward night (03-29) inside
GROUPS = 100
POWERS_W = (30.0, 50.0, 70.0, 100.0)
STANDBY_W = 0.5
STEP_S = 900
ENERGY, POWER, DIM = 6, 5, 7  # metric ids (migration 0001)
TARGET_S = 1.0
RESOLUTION_KWH = 0.001  # the counters count whole Wh
NAIVE_SAMPLE = 500
PASSES_PER_DAY = 86400 // 900  # energy.interval_s = 900 (the default)
Floats = npt.NDArray[np.float64]


def local(day: date, hour: int = 0) -> int:
    """Local ``hour`` o'clock of ``day`` at the site [s since the epoch]."""
    return int(datetime.combine(day, dtime(hour), TZ).timestamp())


class Town:
    """The luminaires' physics over ``days`` local days from ``first``: a 1-second grid of the
    program's level and of its integral, so that any device's counter at any second is exact."""

    def __init__(self, luminaires: int, first: date, days: int) -> None:
        self.t0 = local(first)
        self.t_end = local(first + timedelta(days=days))
        span = self.t_end - self.t0
        level = np.zeros(span + 1, dtype=np.float64)
        for n in range(-1, days):
            night = first + timedelta(days=n)
            sun = sun_times(LAT, LON, night, TZ)
            if sun.sunset is None or sun.sunrise is None:
                raise SystemExit(f"no sunset or sunrise in Paris on {night}?")
            on, off = int(sun.sunset), int(sun.sunrise)
            dim_from, dim_to = local(night, 23), local(night + timedelta(days=1), 5)
            for a, b, pct in (
                (on, dim_from, 100.0),
                (dim_from, dim_to, 50.0),
                (dim_to, off, 100.0),
            ):
                lo, hi = max(a, on, self.t0) - self.t0, min(b, off, self.t_end) - self.t0
                if hi > lo:
                    level[lo:hi] = pct
        self.level = level  # [%] during second s of the grid
        self.full_h = np.concatenate(([0.0], np.cumsum(level[:-1] / 100.0) / 3600.0))
        index = np.arange(luminaires)
        self.nominal_w = np.asarray(POWERS_W)[index % len(POWERS_W)]
        self.phase_s = (index * 7) % STEP_S
        self.base_wh = np.random.default_rng(12).uniform(1e5, 5e6, luminaires).round()

    def columns(
        self, ids: list[int], lo: int, hi: int, index: range, metrics: tuple[int, ...]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int16], Floats]:
        """The readings in [lo, hi) [s] of the luminaires ``index`` (device ids ``ids``), per
        device then metric then time (the primary key's order), as COPY columns."""
        idx = np.asarray(index)
        steps = np.arange((lo - self.t0) // STEP_S - 1, (hi - self.t0) // STEP_S + 1)
        t = self.t0 + steps[None, :] * STEP_S + self.phase_s[idx][:, None]  # (devices, steps)
        keep = (t >= lo) & (t < hi)
        g = np.clip(t - self.t0, 0, len(self.level) - 1)
        level = self.level[g]
        values = {
            ENERGY: np.floor(
                self.base_wh[idx][:, None]
                + STANDBY_W * g / 3600.0
                + self.nominal_w[idx][:, None] * self.full_h[g]
            ),
            POWER: STANDBY_W + self.nominal_w[idx][:, None] * level / 100.0,
            DIM: level,
        }
        n_m = len(metrics)
        shape = (len(idx), n_m, t.shape[1])
        t_all = np.broadcast_to(t[:, None, :], shape)
        mask = np.broadcast_to(keep[:, None, :], shape)
        dev = np.broadcast_to(np.asarray(ids, dtype=np.int32)[idx][:, None, None], shape)
        met = np.broadcast_to(np.asarray(metrics, dtype=np.int16)[None, :, None], shape)
        val = np.stack([values[m] for m in metrics], axis=1)
        return (
            (t_all[mask] * 1_000_000).astype(np.int64),
            dev[mask].astype(np.int32),
            met[mask].astype(np.int16),
            val[mask].astype(np.float64),
        )


def write(
    conn: psycopg.Connection, town: Town, ids: list[int], lo: int, hi: int, metrics: tuple[int, ...]
) -> int:
    """COPY the readings of every luminaire in [lo, hi) [s]; rows written."""
    rows = 0
    with conn.cursor() as cur, cur.copy("COPY readings FROM STDIN (FORMAT BINARY)") as copy:
        for start in range(0, len(ids), 500):
            cols = town.columns(ids, lo, hi, range(start, min(start + 500, len(ids))), metrics)
            buffer = copy_buffer(cols)  # one stream: the header first, the trailer last
            first, last = start == 0, start + 500 >= len(ids)
            copy.write(buffer[: None if last else -len(_TRAILER)][0 if first else len(_HEADER) :])
            rows += len(cols[0])
    conn.commit()
    return rows


def setup(conn: psycopg.Connection, luminaires: int) -> list[int]:
    """The site and its luminaires; their device ids in order."""
    conn.execute(
        "INSERT INTO sites (site, timezone, lat, lon) VALUES (%s, %s, %s, %s)",
        (SITE, TZ_NAME, LAT, LON),
    )
    rows = conn.execute(
        """INSERT INTO devices (site, device, kind, lighting_group, lighting_class,
                                nominal_power_w, properties)
           SELECT %(site)s, 'lum-' || lpad(i::text, 5, '0'), 'luminaire',
                  'street-' || lpad((i %% %(groups)s)::text, 3, '0'), 'M3',
                  (%(powers)s::float8[])[i %% 4 + 1],
                  jsonb_build_object('street_km', (1.5 + (i %% %(groups)s) * 0.05)::text)
           FROM generate_series(0, %(n)s - 1) AS i ORDER BY i RETURNING id""",
        {"site": SITE, "groups": GROUPS, "powers": list(POWERS_W), "n": luminaires},
    ).fetchall()
    conn.commit()
    return [int(r[0]) for r in rows]


def _fill_year(conn: psycopg.Connection, sample: tuple[date, date]) -> int:
    """Every night of the year outside the sample: plausible figures (the night length of
    Paris with the standard depression, 6 h at 50 %, standby); rows inserted."""
    cur = conn.execute(
        """INSERT INTO luminaire_nights (device_id, night, kwh, lit_hours, baseline_kwh, complete)
           SELECT d.id, n.night,
                  (d.nominal_power_w * (l.lit - 3.0) + %(standby)s * 24) / 1000.0, l.lit,
                  d.nominal_power_w * l.lit / 1000.0, true
           FROM devices d
           CROSS JOIN (SELECT g::date AS night FROM generate_series(
                  make_date(%(year)s, 1, 1), make_date(%(year)s, 12, 31), '1 day') AS g) AS n
           CROSS JOIN LATERAL (SELECT 12.2 + 4.0 * cos(2 * pi() *
                  (extract(doy FROM n.night) + 10) / 365.25) AS lit) AS l
           WHERE d.kind = 'luminaire' AND n.night NOT BETWEEN %(a)s AND %(b)s""",
        {"standby": STANDBY_W, "year": YEAR, "a": sample[0], "b": sample[1]},
    )
    conn.commit()
    return cur.rowcount


# Each pair of consecutive raw energy readings of a luminaire: its energy, assigned to the
# night (local noon to noon) of its start, the part after the next local noon to the next
# night (in proportion to time, as energy.counters.bin_energy splits an interval).
_RAW = """WITH r AS (
    SELECT device_id, time AS t0, value AS v0,
           lead(time) OVER w AS t1, lead(value) OVER w AS v1
    FROM readings
    WHERE metric_id = 6 AND time >= %(lo)s AND time < %(hi)s
    WINDOW w AS (PARTITION BY device_id ORDER BY time)),
iv AS (
    SELECT device_id, t0, t1, v1 - v0 AS wh,
           ((t0 AT TIME ZONE %(tz)s) - interval '12 hours')::date AS night
    FROM r WHERE t1 IS NOT NULL),
split AS (
    SELECT device_id, night, t0, t1, wh,
           ((night + 1) + time '12:00') AT TIME ZONE %(tz)s AS noon,
           extract(epoch FROM t1 - t0) AS span
    FROM iv),
parts AS (
    SELECT device_id, night, wh * extract(epoch FROM least(t1, noon) - t0) / span AS wh
    FROM split
    UNION ALL
    SELECT device_id, night + 1, wh * extract(epoch FROM t1 - noon) / span
    FROM split WHERE t1 > noon),
per_luminaire AS (
    SELECT device_id, night, sum(wh) / 1000.0 AS kwh
    FROM parts WHERE night BETWEEN %(a)s AND %(b)s
    GROUP BY device_id, night)
"""
RAW_GROUPS = (
    _RAW
    + """SELECT d.site, d.lighting_group, p.night, count(*) AS luminaires,
       sum(p.kwh) AS kwh, sum(p.kwh) / count(*) AS kwh_per_luminaire
FROM per_luminaire p JOIN devices d ON d.id = p.device_id
GROUP BY d.site, d.lighting_group, p.night"""
)
RAW_CHECK = (
    _RAW
    + """SELECT count(*), count(n.kwh), max(abs(p.kwh - n.kwh))
FROM per_luminaire p LEFT JOIN luminaire_nights n
  ON n.device_id = p.device_id AND n.night = p.night"""
)
VIEW = """SELECT site, lighting_group, night, luminaires, kwh, kwh_per_luminaire, lit_hours,
       saved_kwh, kwh_per_km, complete
FROM api.lighting_nights WHERE night BETWEEN %(a)s AND %(b)s"""
REWRITE = """UPDATE luminaire_nights SET kwh = kwh + 0.0, computed_at = now()
WHERE night BETWEEN %(a)s AND %(b)s"""
"""What a pass writes for the nights it touches: every luminaire's row of them again."""


def remark(conn: psycopg.Connection, lo: int, hi: int) -> None:
    """The rollup's log for the readings in [lo, hi) [s] in (hour, device) order, as the ingest
    writes it (a batch holds every device over a few minutes), instead of the device-major order
    of the backfill's COPY (whose chunks, spread over every hour, are refreshed by key probes);
    the rollup's rows of those hours deleted, so a refresh recomputes them all."""
    span = {"lo": datetime.fromtimestamp(lo, TZ), "hi": datetime.fromtimestamp(hi, TZ)}
    conn.execute("TRUNCATE readings_hourly_pending")
    conn.execute("DELETE FROM readings_hourly WHERE hour >= %(lo)s AND hour < %(hi)s", span)
    conn.execute(
        """INSERT INTO readings_hourly_pending (device_id, hour)
           SELECT device_id, hour FROM (
               SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch') AS hour
               FROM readings WHERE time >= %(lo)s AND time < %(hi)s) AS t
           ORDER BY hour, device_id""",
        span,
    )
    conn.commit()


def timed(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> tuple[float, list[Any]]:
    """Wall time [s] of the query, rows fetched into Python included, and the rows."""
    started = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    seconds = time.perf_counter() - started
    conn.commit()
    return seconds, rows


def spread(values: list[float], digits: int = 2, unit: str = "") -> str:
    return (
        f"{statistics.median(values):.{digits}f}{unit} "
        f"(runs {min(values):.{digits}f}-{max(values):.{digits}f}{unit})"
    )


def raw_params(a: date, b: date) -> dict[str, Any]:
    return {
        "lo": datetime.fromtimestamp(local(a, 12) - 3600, TZ),
        "hi": datetime.fromtimestamp(local(b + timedelta(days=1), 12) + 3600, TZ),
        "a": a,
        "b": b,
        "tz": TZ_NAME,
    }


def check(conn: psycopg.Connection, a: date, b: date, luminaires: int) -> str | None:
    """The raw SQL against the stage over the sample nights; a mismatch, or None."""
    conn.execute("SET work_mem = '256MB'")  # the baseline's sorts and hashes in memory
    _, raw = timed(conn, RAW_GROUPS, raw_params(a, b))
    _, view = timed(conn, VIEW, {"a": a, "b": b})
    nights = (b - a).days + 1
    ours = {(r[1], r[2]): (int(r[3]), float(r[5])) for r in view}
    theirs = {(r[1], r[2]): (int(r[3]), float(r[4] / r[3])) for r in raw}
    if len(ours) != GROUPS * nights or ours.keys() != theirs.keys():
        return f"group-nights: {len(ours)} from the view, {len(theirs)} raw"
    worst = max(abs(ours[k][1] - theirs[k][1]) for k in ours)
    counts = sum(ours[k][0] != theirs[k][0] for k in ours)
    row = conn.execute(RAW_CHECK, raw_params(a, b)).fetchone()
    conn.execute("RESET work_mem")
    conn.commit()
    assert row is not None
    per, matched, worst_one = int(row[0]), int(row[1]), float(row[2] or 0.0)
    print(
        f"  check, raw SQL against the stage over {nights} nights: {len(ours):,} group-nights, "
        f"{counts} luminaire counts differ, kWh per luminaire max |diff| {worst * 1000:.4f} Wh; "
        f"{per:,} luminaire-nights ({matched:,} in luminaire_nights), max |diff| "
        f"{worst_one * 1000:.4f} Wh (resolution {RESOLUTION_KWH * 1000:g} Wh)",
        flush=True,
    )
    if counts or worst > RESOLUTION_KWH or worst_one > RESOLUTION_KWH:
        return "kWh differ by more than the counter's resolution"
    if per != luminaires * nights or matched != per:
        return (
            f"{per:,} luminaire-nights raw, {matched:,} matched, {luminaires * nights:,} expected"
        )
    return None


def explain(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of ``sql``: its nodes, indented."""
    query = "EXPLAIN (ANALYZE, BUFFERS) " + sql
    for (line,) in conn.execute(query, params).fetchall():
        print(f"    {line}")
    conn.commit()


def part1(conn: psycopg.Connection, town: Town, ids: list[int], nights: int, runs: int) -> None:
    a, b = FIRST_NIGHT, FIRST_NIGHT + timedelta(days=nights - 1)
    print(f"1. kWh per luminaire-night: sample {a} .. {b} ({nights} nights), year {YEAR}")
    started = time.perf_counter()
    rows = write(conn, town, ids, local(a), local(b + timedelta(days=2)), (ENERGY, DIM))
    print(
        f"  raw readings (energy, dim): {rows:,} rows COPY in {time.perf_counter() - started:.1f} s"
    )
    remark(conn, local(a), local(b + timedelta(days=2)))
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE readings")
    report = refresh(conn)
    conn.autocommit = False
    print(f"  {report.summary()}")
    started = time.perf_counter()
    done = recompute(conn, EnergyConfig(), local(a, 12), local(b + timedelta(days=1), 12))
    print(
        f"  the stage (energy.service.recompute, {done.devices:,} devices): "
        f"{done.days_written:,} days, {done.nights_written:,} nights in "
        f"{time.perf_counter() - started:.1f} s"
    )
    conn.execute("DELETE FROM luminaire_nights WHERE night NOT BETWEEN %s AND %s", (a, b))
    conn.commit()
    started = time.perf_counter()
    filled = _fill_year(conn, (a, b))
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE luminaire_nights")
    conn.execute("VACUUM ANALYZE devices")
    conn.autocommit = False
    total = conn.execute("SELECT count(*) FROM luminaire_nights").fetchone()
    print(
        f"  the other nights of {YEAR}: {filled:,} rows bulk-inserted in "
        f"{time.perf_counter() - started:.1f} s; luminaire_nights holds "
        f"{total[0] if total else 0:,} rows"
    )
    mismatch = check(conn, a, b, len(ids))
    if mismatch:
        raise SystemExit(f"MISMATCH between the raw readings and the stage: {mismatch}")
    year = {"a": date(YEAR, 1, 1), "b": date(YEAR, 12, 31)}
    sample = {"a": a, "b": b}
    measures: dict[str, list[float]] = {"raw": [], "view": [], "year": []}
    for run in range(runs):
        order = ["raw", "view", "year"] if run % 2 == 0 else ["year", "view", "raw"]
        got = {}
        for what in order:
            if what == "raw":
                conn.execute("SET work_mem = '256MB'")
                got[what] = timed(conn, RAW_GROUPS, raw_params(a, b))[0]
                conn.execute("RESET work_mem")
            else:
                got[what] = timed(conn, VIEW, year if what == "year" else sample)[0]
            measures[what].append(got[what])
        print(
            f"  run {run + 1}: raw SQL {got['raw']:.2f} s, view {got['view']:.2f} s over the "
            f"sample; view {got['year']:.2f} s over the year",
            flush=True,
        )
    ratio = [r / v for r, v in zip(measures["raw"], measures["view"], strict=True)]
    extrapolated = [r * 365 / nights for r in measures["raw"]]
    year_ratio = [e / y for e, y in zip(extrapolated, measures["year"], strict=True)]
    median_year = statistics.median(measures["year"])
    print(f"  view over the sample: {spread(measures['view'], 3, ' s')}")
    print(f"  raw SQL over the sample: {spread(measures['raw'], 2, ' s')}")
    print(f"  ratio raw / view over the same {nights} nights: {spread(ratio, 1, 'x')}")
    print(
        f"  view over the year ({GROUPS * 365:,} group-nights from {len(ids) * 365:,} "
        f"luminaire-nights): {spread(measures['year'], 3, ' s')} — target <= {TARGET_S:g} s "
        f"{'met' if median_year <= TARGET_S else 'NOT met'}"
    )
    print(
        f"  raw SQL extrapolated to the year (x 365/{nights} from the sample's time; "
        f"not measured): {spread(extrapolated, 0, ' s')}; ratio to the view over the year "
        f"{spread(year_ratio, 0, 'x')}"
    )
    print("  EXPLAIN ANALYZE of the view over the year:")
    explain(conn, VIEW, year)
    upkeep(conn, runs, sample)


def upkeep(conn: psycopg.Connection, runs: int, sample: dict[str, Any]) -> None:
    """What keeping lighting_group_nights costs a pass: rewriting the 4 nights a 3-day pass
    touches, with the triggers and with them disabled, in alternating order."""
    nights = {"a": sample["b"] - timedelta(days=3), "b": sample["b"]}
    measures: dict[bool, list[float]] = {True: [], False: []}
    for run in range(runs):
        for on in (True, False) if run % 2 == 0 else (False, True):
            action = "ENABLE" if on else "DISABLE"
            conn.execute(
                f"ALTER TABLE luminaire_nights {action} TRIGGER lighting_group_nights_update"
            )
            conn.commit()
            started = time.perf_counter()
            conn.execute(REWRITE, nights)
            conn.commit()
            measures[on].append(time.perf_counter() - started)
    conn.execute("ALTER TABLE luminaire_nights ENABLE TRIGGER lighting_group_nights_update")
    conn.commit()
    ratio = [w / o for w, o in zip(measures[True], measures[False], strict=True)]
    print(
        f"  rewriting the 4 nights of a 3-day pass ({nights['a']} .. {nights['b']}): "
        f"{spread(measures[True], 3, ' s')} with the group nights kept, "
        f"{spread(measures[False], 3, ' s')} without; ratio {spread(ratio, 2, 'x')}"
    )


def naive(
    conn: psycopg.Connection, devices: list[store.MeteredDevice], day: date
) -> tuple[float, dict[int, tuple[float, float, float]]]:
    """The naive pass over ``day``: per device, its raw readings fetched, the stage's math,
    the stage's writers. (seconds, device id → (day kWh, night-before kWh, night kWh))."""
    edges = np.array([local(day), local(day + timedelta(days=1))], dtype=float)
    night_edges = np.array([local(day - timedelta(days=1), 12), local(day, 12),
                            local(day + timedelta(days=1), 12)], dtype=float)  # fmt: skip
    lo = datetime.fromtimestamp(edges[0] - 86400, TZ)
    hi = datetime.fromtimestamp(edges[-1] + 86400, TZ)
    config = EnergyConfig()
    out: dict[int, tuple[float, float, float]] = {}
    started = time.perf_counter()
    for dev in devices:
        series = {}
        for metric in (ENERGY, DIM):
            rows = conn.execute(
                "SELECT extract(epoch FROM time)::float8, value FROM readings WHERE device_id "
                "= %s AND metric_id = %s AND time >= %s AND time < %s ORDER BY time",
                (dev.device_id, metric, lo, hi),
            ).fetchall()
            a = np.array(rows, dtype=float).reshape(-1, 2)
            series[metric] = (a[:, 0], a[:, 1])
        settings = CounterSettings(max_power_w=dev.nominal_power_w)
        figures = counter_days(*series[ENERGY], edges, settings)
        nightly = counter_days(*series[ENERGY], night_edges, settings)
        lit = lit_hours(*series[DIM], config.default_hold_s, night_edges)
        nominal = dev.nominal_power_w or 0.0
        store.save_days(conn, dev.device_id, [day], "counter", figures)
        store.save_nights(
            conn, dev.device_id, [day - timedelta(days=1), day], nightly.kwh.tolist(),
            lit.wh.tolist(), [nominal * h / 1000.0 for h in lit.wh.tolist()],
            (nightly.complete & lit.complete).tolist(),
        )  # fmt: skip
        conn.commit()
        out[dev.device_id] = (float(figures.kwh[0]), float(nightly.kwh[0]), float(nightly.kwh[1]))
    return time.perf_counter() - started, out


def stage_figures(conn: psycopg.Connection, ids: list[int], day: date) -> dict[int, list[float]]:
    rows = conn.execute(
        """SELECT e.device_id, e.kwh, p.kwh, n.kwh FROM energy_daily e
           JOIN luminaire_nights p ON p.device_id = e.device_id AND p.night = %(b)s
           JOIN luminaire_nights n ON n.device_id = e.device_id AND n.night = %(d)s
           WHERE e.device_id = ANY(%(ids)s) AND e.day = %(d)s""",
        {"ids": ids, "d": day, "b": day - timedelta(days=1)},
    ).fetchall()
    conn.commit()
    return {int(r[0]): [float(v) for v in r[1:]] for r in rows}


def part2(conn: psycopg.Connection, town: Town, ids: list[int], day: date, runs: int) -> None:
    print(f"2. the incremental pass, per day: {day}, {len(ids):,} luminaires")
    lo, hi = local(day), local(day + timedelta(days=1))
    started = time.perf_counter()
    rows = write(conn, town, ids, lo, hi, (ENERGY, POWER, DIM))
    print(
        f"  one day of raw readings (energy, power, dim): {rows:,} rows COPY in "
        f"{time.perf_counter() - started:.1f} s"
    )
    now = float(hi - 1)
    config = EnergyConfig()
    devices = store.metered_devices(conn, SITE, lo - 86400, hi + 86400)
    conn.commit()
    sample = devices[:: max(1, len(devices) // NAIVE_SAMPLE)][:NAIVE_SAMPLE]
    results: dict[str, list[float]] = {"refresh": [], "one": [], "three": [], "naive": []}
    for run in range(runs):
        remark(conn, lo, hi)
        conn.autocommit = True
        conn.execute("CHECKPOINT")
        report = refresh(conn)
        conn.autocommit = False
        got = {"refresh": report.seconds}
        steps: list[tuple[str, Callable[[], float]]] = [
            ("one", lambda: _recompute(conn, config, now, 1)),
            ("three", lambda: _recompute(conn, config, now, config.rescan_days)),
        ]
        for name, step in steps if run % 2 == 0 else steps[::-1]:
            got[name] = step()
        stage = stage_figures(conn, [d.device_id for d in sample], day)
        seconds, theirs = naive(conn, sample, day)
        got["naive"] = seconds * len(devices) / len(sample)
        worst = max(
            abs(v - w) for k, vs in theirs.items() for v, w in zip(vs, stage[k], strict=True)
        )
        if len(stage) != len(sample) or worst > RESOLUTION_KWH:
            raise SystemExit(f"MISMATCH: naive and stage differ by {worst * 1000:.3f} Wh")
        for name, value in got.items():
            results[name].append(value)
        print(
            f"  run {run + 1}: refresh {got['refresh']:.1f} s ({report.device_hours:,} "
            f"device-hours, {report.written:,} rows); recompute 1 day {got['one']:.1f} s, "
            f"{config.rescan_days} days {got['three']:.1f} s; naive {seconds:.1f} s for "
            f"{len(sample)} devices -> {got['naive']:.1f} s for {len(devices):,} "
            f"(same kWh as the stage: max |diff| {worst * 1000:.4f} Wh)",
            flush=True,
        )
    one = [r + o for r, o in zip(results["refresh"], results["one"], strict=True)]
    three = [r + t for r, t in zip(results["refresh"], results["three"], strict=True)]
    print(f"  refresh of the day's readings: {spread(results['refresh'], 1, ' s')}")
    print(f"  refresh + recompute, rescan 1 day: {spread(one, 1, ' s')} per day")
    print(
        f"  refresh + recompute, rescan {config.rescan_days} days (the default): "
        f"{spread(three, 1, ' s')} per day"
    )
    print(f"  naive per-device loop over the raw readings: {spread(results['naive'], 1, ' s')}")
    print(
        f"  ratio naive / (refresh + rescan 1 day): "
        f"{spread([n / o for n, o in zip(results['naive'], one, strict=True)], 1, 'x')}; "
        f"naive / (refresh + rescan {config.rescan_days} days): "
        f"{spread([n / t for n, t in zip(results['naive'], three, strict=True)], 1, 'x')}"
    )
    steady = [
        r + PASSES_PER_DAY * t for r, t in zip(results["refresh"], results["three"], strict=True)
    ]
    print(
        f"  steady state, {PASSES_PER_DAY} passes a day (interval_s 900), each recomputing "
        f"{config.rescan_days} days: {spread(steady, 0, ' s')} of work per day "
        f"({statistics.median(steady) / 864:.1f} % of a day)"
    )


def _recompute(conn: psycopg.Connection, config: EnergyConfig, now: float, days: int) -> float:
    started = time.perf_counter()
    recompute(conn, config, now - (days - 1) * 86400.0, now)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--luminaires", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=7, help="sample nights of raw readings")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(with_database(SERVER, name)) as conn:
            upgrade(conn)
            ids = setup(conn, args.luminaires)
            server = conn.execute("SHOW server_version").fetchone()
            print(
                f"PostgreSQL {server[0] if server else '?'}, {os.cpu_count()} CPUs; "
                f"{args.luminaires:,} luminaires in {GROUPS} groups, {args.runs} runs"
            )
            town = Town(args.luminaires, FIRST_NIGHT, args.nights + 2)
            part1(conn, town, ids, args.nights, args.runs)
            part2(conn, town, ids, FIRST_NIGHT + timedelta(days=args.nights + 1), args.runs)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
