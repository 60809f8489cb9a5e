"""Scale-out benchmark: N ingest processes on one shared subscription, and the database alone.

    .venv/bin/python bench/scale_bench.py [--max-workers 4] [--scale 1] [--runs 3]

A private Mosquitto (the limits of deploy/mosquitto/mosquitto.conf) and a fresh database
(dropped at the end). For N = 1..max-workers, ``sobriety ingest`` with ``ingest.workers = N``
(the supervisor and its processes ``{client_id}-{i}`` on ``$share/ingest/{root}/+/+/up``; N = 1
is one process on the same shared subscription), on a topic root of its own (the sessions of
the other N stay idle), measured as ``bench/ingest_bench.py`` does (its ``Sobriety`` and
``publish``; the publisher is bench/publisher.py):

- live 10-record SenML packs at full speed: readings/s, first publish to last commit;
- live 1-record messages at full speed: messages/s;
- drain: a backlog queued at the broker for the stopped workers' sessions, then drained:
  readings/s from the first commit seen to the last.

After each N the readings table is counted against what was published (lost), the ingest's
duplicate counter read (a redelivered reading is stored once and counted there), and the
tables emptied, so every N writes into an empty table. During each workload, the CPU seconds of
each process class from /proc (``bench/ingest_profile.py``'s readers): the broker, PostgreSQL
(the postmaster and its children but client backends of other databases), the ingest
(supervisor and workers), the publisher; the whole machine's utilisation (/proc/stat), and the
cores kept busy outside these classes (this bench's polling, other work on a shared machine).
The drain's ingest CPU leaves out the workers' start-up (as measured at the first start of the
same N): at small ``--scale`` that figure is unreliable. Readings on disk per row (table and
indexes) are read after each ``Store.write`` step.

Then the database ceiling: N writer processes, no MQTT, each calling ``ingest.store.Store.write``
on pre-built batches of 10,000 readings — 1,000 10-record packs decoded by ``ingest.pipeline``
and gathered by ``ingest.batcher`` with their ``Uplinks``, as the ingest builds them — a fixed
total of batches split among the N writers; readings/s from the first write to the last.

Runs alternate the order of N (1..max, then max..1); ratios are to N = 1 of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from bench_support import bench_services  # the repository on the import path
from ingest_bench import Sobriety, publish, wait_committed
from ingest_profile import children, cpu_of, postmaster

from app.config import load_config
from app.embedded import Mosquitto
from app.embedded.service_process import ServiceProcess
from ingest.batcher import Batch, Batcher
from ingest.config import IngestConfig
from ingest.pipeline import Pipeline
from ingest.store import Store

SITE = "bench"
CORES = os.cpu_count() or 1
SATURATED = 0.9  # machine utilisation above which the run is CPU-bound
_EMPTY = "TRUNCATE readings, readings_hourly_pending, device_reporting_daily, device_status"


class Workers(Sobriety):
    """``sobriety ingest`` with ``ingest.workers = N`` on the shared group ``ingest``: one
    supervisor process, worker ``i`` serving its metrics on the supervisor's port + i."""

    def __init__(self, db_url: str, broker: Mosquitto, work: Path, root: str, n: int) -> None:
        super().__init__(db_url, broker, work, root, 1)  # the bench's ingest settings
        config = load_config(self.procs[0].config_path, env={})
        config = config.replace(
            config.mqtt.model_copy(update={"shared_group": "ingest"}),
            config.section(IngestConfig).model_copy(update={"workers": n}),
        )
        self.n = n
        self.procs = [ServiceProcess(config, work, name=f"{config.mqtt.client_id}-x{n}")]
        self.db_url = db_url

    @property
    def proc(self) -> ServiceProcess:
        return self.procs[0]

    def _sum(self, name: str) -> int:
        port = self.proc.metrics_port
        return int(sum(max(self.proc.metric(name, port + i), 0.0) for i in range(self.n)))

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until every worker is subscribed (at its SUBACK, which a broker
        draining a backlog into the session may send late: the drain gives more time)."""
        self.proc.start(timeout_s=timeout_s)  # worker 0 (or the only process) is subscribed
        deadline = time.monotonic() + timeout_s
        while self._sum("sobriety_ingest_subscribed") < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all {self.n} workers subscribed:\n{self.proc.log()}")
            time.sleep(0.05)

    def committed(self) -> int:
        return self._sum("sobriety_ingest_readings_stored_total")

    def duplicates(self) -> int:
        return self._sum("sobriety_ingest_readings_duplicate_total")

    def ensure_stopped(self) -> None:
        """After an error: SIGTERM (the supervisor passes it on), then SIGKILL to all."""
        proc = self.proc.proc
        if proc is None or proc.poll() is not None:
            return
        pids = self.pids()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def pids(self) -> list[int]:
        """The supervisor (or the only process) and its workers."""
        assert self.proc.proc is not None
        return [self.proc.proc.pid, *children(self.proc.proc.pid)]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat; idle and iowait not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


@dataclass
class Meter:
    """CPU seconds of process classes and the machine's utilisation over one window. A class is
    a function giving its pids now; a pid first seen at the end counts from 0 (it started
    during the window); one that ended during the window is lost."""

    classes: dict[str, Callable[[], list[int]]]
    before: dict[str, dict[int, float]] = field(default_factory=dict)
    jiffies: tuple[int, int] = (0, 0)
    own: float = 0.0
    began: float = 0.0

    def start(self) -> None:
        self.before = {name: cpu_of(pids()) for name, pids in self.classes.items()}
        self.jiffies = machine_jiffies()
        times = os.times()
        self.own = times.children_user + times.children_system
        self.began = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """``cpu``: CPU seconds per class, with ``publisher`` (this process's reaped children:
        the publisher runs and ends inside a live window) when it ran; ``machine``: the
        utilisation of all cores (0-1); ``wall``: the window [s]."""
        used = {
            name: sum(t - self.before[name].get(pid, 0.0) for pid, t in cpu_of(pids()).items())
            for name, pids in self.classes.items()
        }
        times = os.times()
        publisher = times.children_user + times.children_system - self.own
        if publisher > 0:
            used["publisher"] = publisher
        busy, total = machine_jiffies()
        machine = (busy - self.jiffies[0]) / max(total - self.jiffies[1], 1)
        return {"cpu": used, "machine": machine, "wall": time.monotonic() - self.began}


def postgres_pids(db_url: str) -> Callable[[], list[int]]:
    """The cluster's processes (postmaster, auxiliary processes, client backends of this
    database), not the client backends of other databases: the server is shared."""
    with psycopg.connect(db_url) as conn:
        master = postmaster(conn)

    def pids() -> list[int]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            others = {
                int(row[0])
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname <> current_database()"
                )
            }
        return [pid for pid in [master, *children(master)] if pid not in others]

    return pids


def run_workers(
    n: int, db_url: str, broker: Mosquitto, work: Path, root: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The three workloads with N workers; rates, CPU per class, lost and duplicated."""
    ingest = Workers(db_url, broker, work, root, n)
    try:
        return _workloads(ingest, n, db_url, broker, root, args)
    finally:
        ingest.ensure_stopped()


def _workloads(
    ingest: Workers, n: int, db_url: str, broker: Mosquitto, root: str, args: argparse.Namespace
) -> dict[str, Any]:
    assert broker.proc is not None
    broker_pid = broker.proc.pid
    pg = postgres_pids(db_url)
    meter = Meter({"broker": lambda: [broker_pid], "postgresql": pg, "ingest": ingest.pids})
    res: dict[str, Any] = {"n": n}
    offset = sent = 0
    ingest.start()
    startup = sum(cpu_of(ingest.pids()).values())  # the workers' start-up, left out of the drain
    for key, messages, records in (
        ("live10", int(args.live10 * args.scale), 10),
        ("live1", int(args.live1 * args.scale), 1),
    ):
        before = ingest.committed()
        meter.start()
        pub = publish(broker.url, root, SITE, args.devices, messages, records, 0.0, offset)
        done = wait_committed(ingest.committed, before + messages * records, timeout_s=900)
        cpu = meter.stop()
        offset += messages
        sent += messages * records
        count = messages * records if records > 1 else messages  # readings/s, or messages/s
        res[key] = {
            "rate": count / (done - pub["start"]),
            "readings": messages * records,
            **cpu,
        }
    ingest.stop()
    messages = int(args.drain * args.scale)
    before = 0  # the restarted workers' counters start from 0
    publish(broker.url, root, SITE, args.devices, messages, 10, 0.0, offset)
    sent += messages * 10
    meter.start()
    started = time.time()
    # started in a thread: the first commit is seen even when the workers drain part of the
    # backlog before all of them are subscribed
    failed: list[BaseException] = []
    starter = threading.Thread(target=_start, args=(ingest, failed))
    starter.start()
    first: list[tuple[float, int]] = []
    done = wait_committed(ingest.committed, before + messages * 10, timeout_s=900, first=first)
    cpu = meter.stop()
    starter.join()
    if failed:
        raise failed[0]
    t_first, c_first = first[0] if first else (started, before)
    cpu["cpu"]["ingest"] = max(cpu["cpu"]["ingest"] - startup, 0.0)
    total = messages * 10
    res["drain"] = {  # a backlog mostly stored before the first poll (a small --scale): no figure
        "rate": (total - c_first) / max(done - t_first, 1e-3) if c_first < total / 2 else math.nan,
        "readings": total,
        **cpu,
    }
    res["duplicates"] = ingest.duplicates()
    ingest.stop()
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        stored = int(row[0]) if row else 0
        conn.execute(_EMPTY)
    res["sent"], res["lost"] = sent, sent - stored
    return res


def _start(ingest: Workers, failed: list[BaseException]) -> None:
    try:
        ingest.start(timeout_s=900.0)
    except BaseException as exc:  # raised again by the caller
        failed.append(exc)


def _packs(first: int, count: int, devices: int, t0: float) -> list[tuple[str, bytes]]:
    """``count`` 10-record SenML packs (topic, payload) like bench/publisher.py's, message
    numbers from ``first``: every (device, metric, time) unique across writers and batches."""
    out = []
    for n in range(first, first + count):
        dev, bt = n % devices, t0 + n * 0.011
        records = [{"bn": f"d{dev}:", "bt": bt, "n": "power", "v": n % 1000}]
        records += [{"n": "energy", "t": r * 0.001, "v": n + r} for r in range(1, 10)]
        out.append((f"bench/w/{SITE}/d{dev}/up", orjson.dumps(records)))
    return out


def _writer(
    db_url: str, first: int, batches: int, devices: int, t0: float, barrier: Any, out: Any
) -> None:
    """One writer process: build its batches as the ingest does, then write them."""
    with psycopg.connect(db_url) as conn:
        ids: dict[str, int] = dict(
            conn.execute("SELECT device, id FROM devices WHERE site = %s", (SITE,))
        )
    pipeline = Pipeline(lambda site, device: ids.get(device), "bench/w")
    built: list[Batch] = []
    now = time.time()
    for b in range(batches):
        batcher = Batcher(max_rows=10000, max_ms=60000)
        for topic, payload in _packs(first + b * 1000, 1000, devices, t0):
            batcher.add_many([(pipeline.process(topic, payload, now), None)])
        batch = batcher.take(0)
        if batch is None or len(batch.rows) != 10000:
            raise RuntimeError(f"batch {b}: {batch.rejections[:1] if batch else 'not due'}")
        built.append(batch)
    store = Store(db_url)
    store.write([], [])  # connected, staging table made
    barrier.wait()
    cpu0, start = time.process_time(), time.time()
    stored = sum(store.write(b.rows, b.rejections, uplinks=b.uplinks).stored for b in built)
    out.put((start, time.time(), stored, time.process_time() - cpu0))
    barrier.wait()  # the connection stays open until its backend's CPU time has been read
    store.close()


def run_writers(n: int, db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """N writer processes sharing ``args.batches`` batches of 10,000 readings."""
    ctx = multiprocessing.get_context("fork")
    total = max(n, round(args.batches * args.scale / n) * n)
    per = total // n
    barrier, out = ctx.Barrier(n + 1), ctx.Queue()
    t0 = time.time() - 3600.0
    procs = [
        ctx.Process(
            target=_writer, args=(db_url, w * per * 1000, per, args.devices, t0, barrier, out)
        )
        for w in range(n)
    ]
    for proc in procs:
        proc.start()
    meter = Meter({"postgresql": postgres_pids(db_url)})
    barrier.wait()
    meter.start()
    results = [out.get(timeout=900) for _ in procs]
    cpu = meter.stop()
    barrier.wait()
    for proc in procs:
        proc.join(timeout=60)
    cpu["cpu"]["writers"] = sum(r[3] for r in results)
    readings = total * 10000
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), pg_table_size('readings'), pg_indexes_size('readings') FROM readings"
        ).fetchone()
        stored, table_bytes, index_bytes = (int(v) for v in row) if row else (0, 0, 0)
        conn.execute(_EMPTY)
    return {
        "n": n,
        "writers": {"rate": readings / elapsed, "readings": readings, **cpu},
        "writers_lost": readings - stored,
        "writers_duplicates": readings - sum(r[2] for r in results),
        "bytes": (table_bytes / max(stored, 1), index_bytes / max(stored, 1)),
    }


def ratio(value: float, base: float) -> float:
    """``value / base``, NaN where either is no figure."""
    return value / base if base > 0 and math.isfinite(value) else math.nan


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """``median (min-max)`` of the figures that exist (``-`` when none does)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


def cpu_line(workload: dict[str, Any]) -> str:
    """µs of CPU per reading of each class and its share of what the classes used; the
    machine's utilisation."""
    cpu, readings = workload["cpu"], workload["readings"]
    whole = sum(cpu.values()) or 1.0
    parts = [
        f"{k} {1e6 * v / readings:.1f} µs ({100 * v / whole:.0f} %)"
        for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
    ]
    return (
        f"machine {100 * workload['machine']:.0f} % busy, others {other_cores(workload):.2f}"
        " cores; " + ", ".join(parts)
    )


def other_cores(workload: dict[str, Any]) -> float:
    """Cores kept busy by what no class holds: this bench's own polling, other work on the
    machine."""
    used = float(sum(workload["cpu"].values()))
    return max(float(workload["machine"]) * CORES - used / float(workload["wall"]), 0.0)


WORKLOADS = (
    ("live10", "live 10-record packs", "readings/s"),
    ("live1", "live 1-record messages", "messages/s"),
    ("drain", "drain of a backlog (ingest CPU: its start-up left out)", "readings/s"),
    ("writers", "Store.write alone, N writers, 10,000-reading batches", "readings/s"),
)


def report(runs: list[dict[int, dict[str, Any]]], max_workers: int) -> None:
    """Medians (min-max) over the runs, ratios to N = 1 of the same run, CPU and verdicts."""
    print(f"\n=== {len(runs)} run(s): median (min-max); ratios to N=1 of the same run ===")
    print("busy: the machine's utilisation; PG: PostgreSQL's share of the CPU the classes used,")
    print(f"and the cores it kept busy (of {CORES}); other: cores busy outside the classes (this")
    print("bench's polling, other work on the machine); CPU per reading (per message, 1-record)")
    for key, title, unit in WORKLOADS:
        print(f"\n{title}, {unit}:")
        print(
            f"  N  {'rate':<24} {'ratio':<18} {'busy':<13} {'PG share':<13} {'PG cores':<16}"
            " other cores"
        )
        for n in range(1, max_workers + 1):
            rows = [run[n][key] for run in runs]
            ratios = [ratio(run[n][key]["rate"], run[1][key]["rate"]) for run in runs]
            busy = [100 * r["machine"] for r in rows]
            share = [100 * r["cpu"]["postgresql"] / (sum(r["cpu"].values()) or 1) for r in rows]
            cores = [r["cpu"]["postgresql"] / r["wall"] for r in rows]
            others = [other_cores(r) for r in rows]
            print(
                f"  {n}  {spread([r['rate'] for r in rows]):<24} {spread(ratios, '{:.2f}x'):<18} "
                f"{spread(busy, '{:.0f} %'):<13} {spread(share, '{:.0f} %'):<13} "
                f"{spread(cores, '{:.2f}'):<16} {spread(others, '{:.2f}')}"
            )
            per = {
                c: [1e6 * r["cpu"].get(c, 0.0) / r["readings"] for r in rows]
                for c in rows[0]["cpu"]
            }
            print("     CPU µs: " + ", ".join(f"{c} {spread(v, '{:.1f}')}" for c, v in per.items()))
            if min(busy) >= 100 * SATURATED:
                print(
                    f"     -> the {CORES} cores are saturated (>= {SATURATED:.0%} busy, every run)"
                )

    def total(key: str) -> int:
        return sum(run[n][key] for run in runs for n in run)

    table = [run[n]["bytes"][0] for run in runs for n in run]
    index = [run[n]["bytes"][1] for run in runs for n in run]
    print(
        f"\nreadings on disk after Store.write (per row): table {spread(table, '{:.0f}')} B,"
        f" its indexes (primary key (device, metric, time) and time) {spread(index, '{:.0f}')} B"
    )

    print(
        f"\nall runs and N: {total('sent'):,} readings published, {total('lost')} lost (published"
        f" - rows in the table), {total('duplicates')} duplicated (redelivered, stored once);"
        f" Store.write: {total('writers_lost')} lost, {total('writers_duplicates')} not stored"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies message counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--live10", type=int, default=30000, help="10-record packs (live)")
    parser.add_argument("--live1", type=int, default=40000, help="1-record messages (live)")
    parser.add_argument("--drain", type=int, default=40000, help="10-record packs (backlog)")
    parser.add_argument("--batches", type=int, default=24, help="10,000-reading batches")
    args = parser.parse_args()
    began = time.time()
    runs: list[dict[int, dict[str, Any]]] = []
    with bench_services(SITE, args.devices, "sobriety-scale-") as (db_url, broker, work):
        for r in range(args.runs):
            order = list(range(1, args.max_workers + 1))
            if r % 2:
                order.reverse()
            run: dict[int, dict[str, Any]] = {}
            for n in order:
                res = run_workers(n, db_url, broker, work, f"bench/s{r}n{n}", args)
                res.update(run_writers(n, db_url, args))
                run[n] = res
                print(
                    f"run {r + 1} N={n}: "
                    + ", ".join(
                        f"{key} {res[key]['rate']:,.0f}/s [{cpu_line(res[key])}]"
                        for key, _, _ in WORKLOADS
                    )
                    + f"; lost {res['lost']}, duplicated {res['duplicates']}"
                    + f" (writers: lost {res['writers_lost']},"
                    + f" not stored {res['writers_duplicates']})",
                    flush=True,
                )
            runs.append(run)
    report(runs, args.max_workers)
    print(f"\n{time.time() - began:.0f} s, scale {args.scale}, {args.runs} run(s), {CORES} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
