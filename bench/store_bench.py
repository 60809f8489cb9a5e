"""Store benchmark: ``Store.write`` by the direct ``COPY`` against the staging merge, same run.

    .venv/bin/python bench/store_bench.py            # about 90 s on a 2-core machine

A fresh database on the PostgreSQL at $SOBRIETY_TEST_DB_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), the project's migrations, 1,000 devices, dropped
at the end. Two stores on it: the fast path (``Store(url)``) and the baseline
(``Store(url, direct_copy=False)``, today's staging merge). Each round writes, alternating the
two batch by batch (the first of each pair alternates too), batches of new readings with their
messages counted (``Uplinks``, as the ingest passes them):

- ``pack10``: 1,000 10-record messages (10,000 readings, one per device and second, 5 metrics);
- ``single``: 1,000 1-record messages;
- ``fallback``: a ``pack10`` batch whose last row is already stored (a redelivery): the fast
  store tries the direct ``COPY``, meets the unique violation at its very end (the worst case)
  and merges; the baseline merges the same kind of batch.

Per batch: wall time of ``write`` (median per round), the PostgreSQL backend's CPU (from
``/proc/{backend_pid}/schedstat``, ns on CPU; the database runs on this machine) and this
process's CPU. Per round the ratio baseline / fast of the medians; at the end the median and
the min-max of those ratios. A shared machine drifts: read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from bench_support import ROOT_DIR  # noqa: F401  (puts the repository on the path)

from core.contract import METRICS
from core.db import upgrade, with_database
from ingest.pipeline import Row, Uplinks
from ingest.store import Store

KINDS = ("pack10", "single", "fallback")
_METRICS = [METRICS[n].id for n in ("power", "dim", "energy", "temperature", "illuminance")]


def backend_cpu_ns(pid: int) -> int | None:
    """CPU time of process ``pid`` [ns], or None when /proc cannot tell (another machine)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Batches:
    """New readings each call: time moves on 10 s a batch from a day ago."""

    def __init__(self, device_ids: list[int]) -> None:
        self.ids = device_ids
        self.t_us = (int(time.time()) - 86400) * 1_000_000
        self.last: Row | None = None

    def make(self, records: int, duplicate: bool = False) -> tuple[list[Row], Uplinks]:
        t0 = self.t_us
        self.t_us += 10_000_000
        rows: list[Row] = []
        uplinks = Uplinks()
        for device_id in self.ids:
            msg = [
                (t0 + j * 1_000_000, device_id, _METRICS[j % len(_METRICS)], float(j))
                for j in range(records)
            ]
            rows += msg
            uplinks.add(msg)
        if duplicate:
            assert self.last is not None
            rows[-1] = self.last  # already stored: the direct COPY fails on the last row
        self.last = rows[0]
        return rows, uplinks


def timed(
    store: Store, pid: int, rows: list[Row], uplinks: Uplinks, direct: bool, stored: int
) -> tuple[float, float, float]:
    """(wall, backend CPU, client CPU) of one write [ms]; checks the path it took."""
    cpu0, client0, t0 = backend_cpu_ns(pid), time.process_time(), time.perf_counter()
    result = store.write(rows, [], uplinks=uplinks)
    wall = (time.perf_counter() - t0) * 1e3
    client = (time.process_time() - client0) * 1e3
    cpu1 = backend_cpu_ns(pid)
    backend = (cpu1 - cpu0) / 1e6 if cpu0 is not None and cpu1 is not None else float("nan")
    if (result.direct, result.stored) != (direct, stored):
        raise SystemExit(f"unexpected {result} for {len(rows)} rows (direct expected: {direct})")
    return wall, backend, client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=8, help="per store, kind and round")
    args = parser.parse_args()

    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    stores = {"fast": Store(url), "base": Store(url, direct_copy=False)}
    try:
        with psycopg.connect(url) as conn:
            upgrade(conn)
            conn.execute("INSERT INTO sites (site) VALUES ('bench')")
            conn.execute(
                "INSERT INTO devices (site, device, kind) "
                "SELECT 'bench', 'd' || i, 'luminaire' FROM generate_series(1, %s) AS i",
                (args.devices,),
            )
            ids = [r[0] for r in conn.execute("SELECT id FROM devices ORDER BY id")]
        batches = Batches(ids)
        makers: dict[str, Callable[[], tuple[list[Row], Uplinks]]] = {
            "pack10": lambda: batches.make(10),
            "single": lambda: batches.make(1),
            "fallback": lambda: batches.make(10, duplicate=True),
        }
        # Connections, the staging table and the server's caches first.
        for store in stores.values():
            for _ in range(3):
                rows, uplinks = batches.make(10)
                store.write(rows, [], uplinks=uplinks)
        pids = {
            k: s._connection().info.backend_pid for k, s in stores.items()
        }  # private: the bench's own look
        # kind -> store -> per round: lists of (wall, backend, client) per batch
        got: dict[str, dict[str, list[list[tuple[float, float, float]]]]] = {
            k: {"fast": [], "base": []} for k in KINDS
        }
        started = time.perf_counter()
        for r in range(args.rounds):
            for kind in KINDS:
                runs: dict[str, list[tuple[float, float, float]]] = {"fast": [], "base": []}
                gc.collect()
                for i in range(args.batches):
                    order = ("fast", "base") if (i + r) % 2 == 0 else ("base", "fast")
                    for side in order:
                        rows, uplinks = makers[kind]()
                        direct = side == "fast" and kind != "fallback"
                        new = len(rows) - (kind == "fallback")
                        runs[side].append(
                            timed(stores[side], pids[side], rows, uplinks, direct, new)
                        )
                for side in runs:
                    got[kind][side].append(runs[side])
        elapsed = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM readings").fetchone()
        print(
            f"{args.devices} devices, {args.rounds} rounds x {args.batches} batches per store and "
            f"kind, {elapsed:.0f} s; {stored[0] if stored else 0:,} readings stored at the end\n"
        )
        summary = []
        for kind in KINDS:
            print(f"{kind}: per-batch medians [ms]  fast (wall/pg cpu/py cpu)  base (same)  ratio")
            ratios = []
            for r in range(args.rounds):
                med = {
                    side: [statistics.median(x[j] for x in got[kind][side][r]) for j in range(3)]
                    for side in ("fast", "base")
                }
                ratio = med["base"][0] / med["fast"][0]
                ratios.append(ratio)
                f, b = med["fast"], med["base"]
                print(
                    f"  round {r + 1}: {f[0]:6.1f} {f[1]:6.1f} {f[2]:6.1f}   "
                    f"{b[0]:6.1f} {b[1]:6.1f} {b[2]:6.1f}   {ratio:.2f}x"
                )
            allv = {
                side: [
                    statistics.median(x[j] for rnd in got[kind][side] for x in rnd)
                    for j in range(3)
                ]
                for side in ("fast", "base")
            }
            summary.append((kind, allv, ratios))
        print(
            "\nkind      wall fast/base [ms]   pg cpu fast/base [ms]  py cpu fast/base [ms]  "
            "ratio base/fast: median (min-max)"
        )
        for kind, allv, ratios in summary:
            f, b = allv["fast"], allv["base"]
            print(
                f"{kind:<9} {f[0]:7.1f} / {b[0]:7.1f}     {f[1]:7.1f} / {b[1]:7.1f}       "
                f"{f[2]:6.1f} / {b[2]:6.1f}       {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
    finally:
        for store in stores.values():
            store.close()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
