"""Ingest benchmark: sobriety's ingest against a naive subscriber, same broker, same database.

    .venv/bin/python bench/ingest_bench.py            # about 3 minutes on a 2-core machine

Runs a private Mosquitto (the limits of deploy/mosquitto/mosquitto.conf) and a fresh database
on the PostgreSQL at $SOBRIETY_TEST_DB_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
A separate publisher process (bench/publisher.py) publishes at QoS 1. Measured, for the project
and for the baseline:

- live, 10-record SenML packs at full speed: readings/s committed (first publish → last commit);
- the same at half that rate: publish→commit latency p50/p99;
- live, 1-record messages at full speed: messages/s committed;
- drain: a backlog queued at the broker for the stopped subscriber's persistent session,
  then drained: readings/s from the first commit to the last (``drain``), and from the
  process start to the last commit (``drain_wall``, start-up included);
- the ingest's peak RSS.

Absolute figures drift on a shared machine: compare the ratios printed at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from bench_support import ROOT_DIR, bench_services, ingest_config

from app.embedded import Mosquitto
from app.embedded.service_process import ServiceProcess

PY = sys.executable


@dataclass
class Target:
    """A subscriber under test: start/stop it and read how many readings it committed."""

    name: str
    start: object
    stop: object
    committed: object
    latencies: object


def publish(
    url: str,
    root: str,
    site: str,
    devices: int,
    messages: int,
    records: int,
    rate: float = 0.0,
    offset: int = 0,
) -> dict[str, float]:
    out = subprocess.run(
        [
            PY,
            str(ROOT_DIR / "bench" / "publisher.py"),
            "--url",
            url,
            "--root",
            root,
            "--site",
            site,
            "--devices",
            str(devices),
            "--messages",
            str(messages),
            "--records",
            str(records),
            "--rate",
            str(rate),
            "--offset",
            str(offset),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def wait_committed(
    committed: object, expected: int, timeout_s: float, first: list[tuple[float, int]] | None = None
) -> float:
    """Poll until ``committed() >= expected``; the time it was first seen (s since epoch).

    ``first`` receives (time, count) of the first poll that saw progress.
    """
    assert callable(committed)
    deadline = time.time() + timeout_s
    start = committed()
    while time.time() < deadline:
        count = committed()
        if first is not None and not first and count > start:
            first.append((time.time(), count))
        if count >= expected:
            return time.time()
        time.sleep(0.1)
    raise TimeoutError(f"only {committed()} of {expected} readings committed in {timeout_s} s")


def histogram(port: int, name: str) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def percentile_from_buckets(
    before: dict[float, float], after: dict[float, float], q: float
) -> float:
    """Linear interpolation inside the Prometheus bucket holding the q-quantile."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            frac = (rank - prev_count) / span if span else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return bounds[-1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sobriety:
    """The project's ingest, as ``sobriety ingest`` processes."""

    def __init__(
        self,
        db_url: str,
        broker: Mosquitto,
        work: Path,
        root: str,
        workers: int,
        mqtt_client: str = "lean",
    ) -> None:
        self.procs = []
        for _ in range(workers):
            config = ingest_config(
                db_url,
                broker.url,
                work,
                root,
                mqtt={"shared_group": "ingest" if workers > 1 else None, "session_expiry_s": 3600},
                ingest={
                    "batch_ms": 100,
                    "batch_rows": 10000,
                    "inventory_refresh_s": 5,
                    "mqtt_client": mqtt_client,
                },
            )
            self.procs.append(ServiceProcess(config, work))

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def stop(self) -> None:
        for proc in self.procs:
            assert proc.terminate() == 0, proc.log()[-2000:]

    def committed(self) -> int:
        return int(sum(p.metric("sobriety_ingest_readings_stored_total") for p in self.procs))

    def duplicates(self) -> int:
        return int(sum(p.metric("sobriety_ingest_readings_duplicate_total") for p in self.procs))

    def lag_buckets(self) -> dict[float, float]:
        merged: dict[float, float] = {}
        for proc in self.procs:
            for bound, count in histogram(
                proc.metrics_port, "sobriety_ingest_reading_lag_seconds"
            ).items():
                merged[bound] = merged.get(bound, 0.0) + count
        return merged

    def rss_mb(self) -> float:
        return max(rss_peak_mb(p.proc.pid) for p in self.procs if p.proc is not None)


class Naive:
    """The baseline subscriber (bench/naive_subscriber.py)."""

    def __init__(self, db_url: str, broker: Mosquitto, root: str) -> None:
        self.db_url = db_url
        self.broker = broker
        self.root = root
        self.client_id = f"naive-{uuid.uuid4().hex[:6]}"
        self.proc: subprocess.Popen[str] | None = None
        self.lags: list[float] = []
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS naive_readings")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                PY,
                str(ROOT_DIR / "bench" / "naive_subscriber.py"),
                "--url",
                self.broker.url,
                "--root",
                self.root,
                "--db",
                self.db_url,
                "--client-id",
                self.client_id,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.lags = json.loads(out.strip().splitlines()[-1])["lags"]

    def committed(self) -> int:
        with psycopg.connect(self.db_url) as conn:
            try:
                row = conn.execute("SELECT count(*) FROM naive_readings").fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
        return int(row[0]) if row else 0


def run_suite(
    kind: str,
    sub: Sobriety | Naive,
    broker: Mosquitto,
    root: str,
    site: str,
    devices: int,
    scale: float,
) -> dict[str, float]:
    res: dict[str, float] = {}
    offset = 0
    sub.start()

    def live(messages: int, records: int, rate: float = 0.0) -> tuple[float, dict[str, float]]:
        nonlocal offset
        before = sub.committed()
        expected = before + messages * records
        pub = publish(broker.url, root, site, devices, messages, records, rate, offset)
        offset += messages
        done = wait_committed(sub.committed, expected, timeout_s=600)
        return done - pub["start"], pub

    # (a) 10-record packs, full speed.
    n = int(60000 * scale)
    elapsed, _ = live(n, 10)
    res["live10_readings_per_s"] = n * 10 / elapsed
    # Latency at half that load, ~10 s.
    rate = res["live10_readings_per_s"] / 10 / 2
    before = sub.lag_buckets() if isinstance(sub, Sobriety) else None
    mark = len(sub.lags) if isinstance(sub, Naive) else 0
    live(int(rate * 10), 10, rate=rate)
    if isinstance(sub, Sobriety):
        after = sub.lag_buckets()
        res["half_load_p50_s"] = percentile_from_buckets(before or {}, after, 0.5)
        res["half_load_p99_s"] = percentile_from_buckets(before or {}, after, 0.99)
    # (b) 1-record messages, full speed.
    n1 = int(100000 * scale)
    elapsed, _ = live(n1, 1)
    res["live1_messages_per_s"] = n1 / elapsed
    # Drain: backlog queued at the broker while the subscriber is stopped.
    if isinstance(sub, Sobriety):
        res["rss_peak_mb_live"] = sub.rss_mb()
    sub.stop()
    if isinstance(sub, Naive):
        window = sub.lags[mark:]
        half = window[: int(rate * 10)]
        res["half_load_p50_s"] = percentile(half, 0.5)
        res["half_load_p99_s"] = percentile(half, 0.99)
    nd = int(100000 * scale)
    before_drain = sub.committed()
    publish(broker.url, root, site, devices, nd, 10, 0.0, offset)
    offset += nd
    started = time.time()
    sub.start()
    first: list[tuple[float, int]] = []
    done = wait_committed(sub.committed, before_drain + nd * 10, timeout_s=900, first=first)
    # Steady drain: from the first commit seen to the last (process start-up excluded, for both).
    t_first, c_first = first[0] if first else (started, before_drain)
    res["drain_readings_per_s"] = (before_drain + nd * 10 - c_first) / max(done - t_first, 1e-3)
    res["drain_wall_readings_per_s"] = nd * 10 / (done - started)
    if isinstance(sub, Sobriety):
        res["rss_peak_mb"] = sub.rss_mb()
        res["duplicate_readings"] = sub.duplicates()  # 0: every key sent was unique
    sub.stop()
    print(f"{kind}: " + ", ".join(f"{k}={v:,.3f}" for k, v in res.items()), flush=True)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies message counts")
    parser.add_argument("--baseline-scale", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1, help="ingest processes")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    site = "bench"
    with bench_services(site, args.devices, "sobriety-bench-") as (db_url, broker, work):
        ours = run_suite(
            "sobriety",
            Sobriety(db_url, broker, work, "bench/sob", args.workers),
            broker,
            "bench/sob",
            site,
            args.devices,
            args.scale,
        )
        if not args.skip_baseline:
            base = run_suite(
                "naive",
                Naive(db_url, broker, "bench/naive"),
                broker,
                "bench/naive",
                site,
                args.devices,
                args.baseline_scale,
            )
            print("\nratio sobriety / naive (higher is better for rates, lower for latency):")
            for key in (
                "live10_readings_per_s",
                "live1_messages_per_s",
                "drain_readings_per_s",
                "drain_wall_readings_per_s",
                "half_load_p99_s",
            ):
                print(
                    f"  {key:<24} {ours[key]:>12,.1f} / {base[key]:>12,.3f}"
                    f" = {ours[key] / base[key]:.2f}x"
                )
        targets = [
            ("live10_readings_per_s", ">=", 50000),
            ("drain_readings_per_s", ">=", 100000),
            ("live1_messages_per_s", ">=", 10000),
            ("half_load_p99_s", "<=", 1.0),
            ("rss_peak_mb", "<=", 250),
        ]
        print("\ntargets of issue 2:")
        for key, op, goal in targets:
            value = ours[key]
            ok = value >= goal if op == ">=" else value <= goal
            print(f"  {key:<24} {value:>12,.2f} {op} {goal:<8} {'ok' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
