"""Hourly rollup benchmark: what its triggers cost the writers, what a refresh costs.

    .venv/bin/python bench/rollup_bench.py [--readings 2000000] [--devices 200] [--runs 3]

A fresh database on $SOBRIETY_TEST_DB_URL (default local PostgreSQL), dropped at the end;
``--devices`` devices × 3 metrics every 15 minutes, in time order, ``--readings`` in all
(2 M: about 35 days). Measured, each ``--runs`` times, the two variants of a run back to back
(their order alternating) so that drift on a shared machine hits both:

a. the write cost of the rollup's statement-level triggers, against the same writes with
   ``ALTER TABLE readings DISABLE TRIGGER USER``:
   - one binary ``COPY`` of every reading (a backfill, ``simulators/history.py``'s way);
   - the ingest's path (``ingest/store.py``'s SQL): binary ``COPY`` of 10,000 rows into the
     temporary staging table, ``INSERT … SELECT … ON CONFLICT DO NOTHING`` and the
     ``device_status`` upsert, one transaction per batch;
b. ``core.rollup.refresh`` of the whole backlog (seconds per million readings), against the
   baseline that recomputes the rollup with one full ``GROUP BY`` of the raw table; then the
   steady state: a refresh after one more hour of data, and after late data scattered over the
   whole period.

Rows are prepared as binary COPY buffers beforehand, so Python is not what is timed. Prints
the ratios with their spread (min-max over the runs): of wall times, and - when the server runs
on this machine (/proc readable) - of the CPU time its backend used, which waiting for a CPU on
a loaded machine does not inflate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psycopg

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from core.db import upgrade, with_database  # noqa: E402
from core.rollup import refresh  # noqa: E402
from ingest.store import _MERGE, _STAGE, _STATUS  # noqa: E402  (the ingest's own SQL)

SERVER = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START_S = 1_767_571_200  # 2026-01-05T00:00:00Z
STEP_S = 900
METRICS = (1, 2, 3)  # flow, volume, pressure
BATCH = 10_000  # rows per ingest transaction
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds
_ROW = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("t", ">i8"), ("l2", ">i4"), ("device", ">i4"),
     ("l3", ">i4"), ("metric", ">i2"), ("l4", ">i4"), ("value", ">f8")]
)  # fmt: skip
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_FULL = """INSERT INTO readings_hourly
    SELECT device_id, metric_id, date_bin('1 hour', time, 'epoch'), count(*)::integer,
           sum(value ORDER BY time), min(value), max(value),
           (array_agg(value ORDER BY time))[1], min(time),
           (array_agg(value ORDER BY time))[count(*)], max(time)
    FROM readings GROUP BY 1, 2, 3"""
_MARK_ALL = """INSERT INTO readings_hourly_pending (device_id, hour)
    SELECT device_id, hour FROM (SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch')
                                 AS hour FROM readings) AS t ORDER BY hour, device_id"""

Columns = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int16],
                npt.NDArray[np.float64]]  # fmt: skip


def readings(n: int, device_ids: list[int], seed: int = 1) -> Columns:
    """``n`` readings in time order: Unix time [µs], device id, metric id, value."""
    per_step = len(device_ids) * len(METRICS)
    steps = -(-n // per_step)
    step = np.repeat(np.arange(steps, dtype=np.int64), per_step)[:n]
    index = np.tile(np.repeat(np.arange(len(device_ids)), len(METRICS)), steps)[:n]
    phase_s = (index * 7) % STEP_S  # each device reports at its own second of the quarter
    t_us = (START_S + step * STEP_S + phase_s) * 1_000_000
    devices = np.asarray(device_ids, dtype=np.int32)[index]
    metrics = np.tile(np.asarray(METRICS, dtype=np.int16), len(device_ids) * steps)[:n]
    values = np.random.default_rng(seed).normal(10.0, 3.0, n)
    return t_us, devices, metrics, values


def copy_buffer(cols: Columns, lo: int = 0, hi: int | None = None, *, unix: bool = False) -> bytes:
    """Rows ``lo:hi`` as one binary COPY stream; time as timestamptz, or as Unix µs (int8)
    for the ingest's staging table."""
    t_us, devices, metrics, values = (c[lo:hi] for c in cols)
    rows = np.empty(len(t_us), _ROW)
    rows["n"], rows["l1"], rows["l2"], rows["l3"], rows["l4"] = 4, 8, 4, 2, 8
    rows["t"] = t_us if unix else t_us - PG_EPOCH_US
    rows["device"], rows["metric"], rows["value"] = devices, metrics, values
    return _HEADER + rows.tobytes() + _TRAILER


def _pieces(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def reset(conn: psycopg.Connection, triggers: bool) -> None:
    conn.execute("ALTER TABLE readings ENABLE TRIGGER USER")
    conn.execute("TRUNCATE readings, readings_hourly, readings_hourly_pending, device_status")
    if not triggers:
        conn.execute("ALTER TABLE readings DISABLE TRIGGER USER")
    conn.commit()
    conn.execute("CHECKPOINT")  # no checkpoint's writes inside the timed run
    conn.commit()


def backend_cpu_s(conn: psycopg.Connection) -> float | None:
    """CPU time [s] the connection's server process used so far (user + system), when the
    server runs on this machine and /proc can be read; steadier than wall time on a shared
    machine, since time spent waiting for a CPU is not counted."""
    try:
        stat = Path(f"/proc/{conn.info.backend_pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(conn: psycopg.Connection, fn: Callable[[], None]) -> tuple[float, float | None]:
    """Wall time [s] and backend CPU time [s] (or None) of ``fn()``."""
    cpu = backend_cpu_s(conn)
    started = time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    after = backend_cpu_s(conn)
    return wall, (after - cpu if cpu is not None and after is not None else None)


def write_copy(conn: psycopg.Connection, buffer: bytes) -> None:
    with conn.cursor() as cur, cur.copy("COPY readings FROM STDIN (FORMAT BINARY)") as copy:
        for piece in _pieces(buffer):
            copy.write(piece)
    conn.commit()


def write_ingest(conn: psycopg.Connection, batches: list[bytes]) -> None:
    for batch in batches:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(
                "COPY readings_stage (t_us, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(batch)
            cur.execute(_MERGE)
            cur.execute(_STATUS)


Times = list[tuple[float, float | None]]


def paired(conn: psycopg.Connection, runs: int, write: Callable[[], None]) -> tuple[Times, Times]:
    """(wall, backend CPU) [s] of ``write`` with the triggers, and without, ``runs`` times."""
    on: Times = []
    off: Times = []
    for run in range(runs):
        for triggers in (True, False) if run % 2 == 0 else (False, True):
            reset(conn, triggers)
            (on if triggers else off).append(measured(conn, write))
    conn.execute("ALTER TABLE readings ENABLE TRIGGER USER")
    conn.commit()
    return on, off


def _spread(values: list[float], digits: int = 3) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"(runs {min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def ratio_line(label: str, on: Times, off: Times) -> str:
    wall = [a[0] / b[0] for a, b in zip(on, off, strict=True)]
    line = (
        f"  {label}: {statistics.median([t for t, _ in on]):.1f} s with the triggers, "
        f"{statistics.median([t for t, _ in off]):.1f} s without; ratio {_spread(wall)}"
    )
    cpu = [a[1] / b[1] for a, b in zip(on, off, strict=True) if a[1] and b[1]]
    if len(cpu) == len(on):
        line += f"; server CPU ratio {_spread(cpu)}"
    return line


def _full(conn: psycopg.Connection) -> None:
    conn.execute(_FULL)
    conn.commit()


def _remark_all(conn: psycopg.Connection) -> None:
    """The whole backlog again, as migration 0004 logs it for readings stored before it."""
    conn.execute("TRUNCATE readings_hourly, readings_hourly_pending")
    conn.execute(_MARK_ALL)
    conn.commit()


def refresh_costs(conn: psycopg.Connection, cols: Columns, runs: int, devices: list[int]) -> None:
    """(b): refresh of the whole backlog against a full GROUP BY, then the steady state."""
    n = len(cols[0])
    reset(conn, True)
    write_copy(conn, copy_buffer(cols))
    marks = conn.execute("SELECT count(*) FROM readings_hourly_pending").fetchone()
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE readings")
    conn.autocommit = False
    backlog: Times = []
    full: Times = []
    reports = []
    for run in range(runs):
        if run:
            _remark_all(conn)
        backlog.append(measured(conn, lambda: reports.append(refresh(conn))))
        conn.execute("TRUNCATE readings_hourly")
        conn.commit()
        full.append(measured(conn, lambda: _full(conn)))
    _remark_all(conn)
    refresh(conn)  # the rollup complete again, for the steady state
    report = reports[-1]
    per_m = [t / n * 1e6 for t, _ in backlog]
    full_m = [t / n * 1e6 for t, _ in full]
    print(
        f"refresh ({n:,} readings, {report.device_hours:,} device-hours, "
        f"{marks[0] if marks else 0:,} marks from one COPY):"
    )
    print(
        f"  backlog: {_spread(per_m, 2)} s/M readings, {report.chunks} chunks, "
        f"{report.written:,} rows written"
    )
    print(f"  baseline, one full GROUP BY of readings: {_spread(full_m, 2)} s/M")
    wall = [a[0] / b[0] for a, b in zip(backlog, full, strict=True)]
    cpu = [a[1] / b[1] for a, b in zip(backlog, full, strict=True) if a[1] and b[1]]
    print(
        f"  refresh / full GROUP BY: wall {_spread(wall, 2)}"
        + (f", server CPU {_spread(cpu, 2)}" if len(cpu) == len(wall) else "")
    )
    steps = -(-n // (len(devices) * len(METRICS)))
    incremental = []
    for i in range(runs):
        h = readings(len(devices) * len(METRICS) * 4, devices, seed=9 + i)
        shifted: Columns = (h[0] + (steps + 4 * i) * STEP_S * 1_000_000, h[1], h[2], h[3])
        write_ingest(conn, [copy_buffer(shifted, unix=True)])
        incremental.append(refresh(conn).seconds)
    one = statistics.median(incremental)
    print(
        f"  one more hour ({len(devices) * len(METRICS) * 4:,} readings, {len(devices)} "
        f"device-hours, the ingest's path): {_spread([t * 1e3 for t in incremental], 0)} ms; "
        f"the full GROUP BY takes {statistics.median([t for t, _ in full]) / one:,.0f}x as long"
    )
    rng = np.random.default_rng(4)
    late_hours = rng.integers(0, steps * STEP_S // 3600, 1000)
    late_devices = np.asarray(devices, dtype=np.int32)[rng.integers(0, len(devices), 1000)]
    for second, label in ((1801, "pages not in shared_buffers"), (1802, "same hours again")):
        late: Columns = (
            (START_S + late_hours * 3600 + second) * 1_000_000 + 1,
            late_devices,
            np.full(1000, METRICS[0], dtype=np.int16),
            rng.normal(10.0, 3.0, 1000),
        )
        write_ingest(conn, [copy_buffer(late, unix=True)])
        late_report = refresh(conn)
        print(
            f"  1,000 late readings scattered over {steps * STEP_S / 86400:.0f} days "
            f"({late_report.device_hours:,} device-hours, {label}): "
            f"{late_report.seconds * 1e3:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=2_000_000, help="readings written")
    parser.add_argument("--devices", type=int, default=200, help="devices (3 metrics each)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement")
    args = parser.parse_args()
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(with_database(SERVER, name)) as conn:
            upgrade(conn)
            conn.execute("INSERT INTO sites (site) VALUES ('bench')")
            devices = [
                int(r[0])
                for r in conn.execute(
                    "INSERT INTO devices (site, device, kind) SELECT 'bench', "
                    "'fm-' || lpad(i::text, 5, '0'), 'flow_meter' "
                    "FROM generate_series(1, %s) AS i RETURNING id",
                    (args.devices,),
                )
            ]
            conn.execute(_STAGE)
            conn.commit()
            server = conn.execute("SHOW server_version").fetchone()
            print(
                f"PostgreSQL {server[0] if server else '?'}, {os.cpu_count()} CPUs; "
                f"{args.readings:,} readings, {args.devices} devices x {len(METRICS)} metrics "
                f"every 15 min, {args.runs} runs"
            )
            cols = readings(args.readings, devices)
            buffer = copy_buffer(cols)
            batches = [
                copy_buffer(cols, lo, lo + BATCH, unix=True)
                for lo in range(0, args.readings, BATCH)
            ]
            print("write cost of the rollup triggers:")
            on, off = paired(conn, args.runs, lambda: write_copy(conn, buffer))
            print(ratio_line("binary COPY, one statement", on, off))
            on, off = paired(conn, args.runs, lambda: write_ingest(conn, batches))
            print(ratio_line(f"ingest path, {BATCH:,}-row transactions", on, off))
            refresh_costs(conn, cols, args.runs, devices)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
