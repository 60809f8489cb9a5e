"""Peer benchmark: sobriety's ingest against Node-RED, same broker, same database, same run.

    .venv/bin/python bench/peer_bench.py [--scale S] [--runs N]     # ~10 minutes at scale 1
    .venv/bin/python bench/peer_bench.py --sweep [--scale S]         # Node-RED batch/pool sweep

Node-RED (pinned below) and node-postgres are installed once with npm into a cache outside the
repository (``~/.cache/sobriety-bench/node-red``, or ``$XDG_CACHE_HOME``); later runs reuse it.
Nothing of Node-RED is committed: the flow is written here at run time —
``mqtt in`` (QoS 1, fixed client id, clean session off, MQTT 5 session expiry 1 h, no
unsubscribe on stop) → a function node parsing the SenML pack into rows → a function node
batching rows (N rows or T ms) → one multi-row ``INSERT`` through a ``pg.Pool`` of P
connections (node-red-contrib-postgresql's own driver and pool settings: that package is not on
the npm registry this machine reaches, see bench/README.md) into ``nodered_readings``, a table
like the naive baseline's (no key).

One private Mosquitto (the limits of deploy/mosquitto) and one fresh database
(``sobriety_h3_*``, dropped at the end); each run, in alternating order, runs the workloads of
bench/ingest_bench.py against ``sobriety ingest`` (its :class:`ingest_bench.Sobriety`, same
settings) and against Node-RED: live 10-record packs at full speed (readings/s), live 1-record
messages (messages/s), and a backlog queued for the stopped subscriber's persistent session, drained
(readings/s from its first commit, and from the process start); then a kill -9 of each in the
middle of a live stream, a restart, the backlog drained. After each workload the table is
compared with what the publisher sent (every (device, metric, time) is unique by construction):
lost = sent - distinct keys stored, duplicated = rows - distinct keys. Prints medians, min-max
over the runs, the per-run ratio sobriety / Node-RED, and each process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from ingest_bench import Sobriety, publish
from peer_nodered import (
    BATCH_MS,
    BATCH_ROWS,
    NODE_RED_VERSION,
    PG_VERSION,
    POLL_S,
    POOL,
    STALL_S,
    NodeRed,
    Subscriber,
    install_node_red,
)
from peer_report import KILL_MODES, KILL_PACED_RATE, report

from app.embedded import Mosquitto
from core.db import upgrade

SWEEP = [(100, 2), (500, 1), (500, 2), (500, 4), (500, 8), (2000, 2), (2000, 4), (5000, 2)]
"""(batch rows, pool size) tried by ``--sweep``, batches also flushed after BATCH_MS."""


class SobrietySub(Subscriber):
    """``sobriety ingest`` as bench/ingest_bench.py runs it (one worker, same settings); with
    ``mqtt_client="paho"`` the same ingest on paho's MQTT session (``--peer paho``)."""

    def __init__(
        self,
        db_url: str,
        broker: Mosquitto,
        work: Path,
        root: str,
        mqtt_client: str = "lean",
        name: str = "sobriety",
    ) -> None:
        self.db_url = db_url
        self.name = name
        self.ingest = Sobriety(db_url, broker, work, root, workers=1, mqtt_client=mqtt_client)
        self.proc = self.ingest.procs[0]

    def start(self, wait_subscribed: bool) -> None:
        self.proc.start()  # waits for the SUBACK (sobriety_ingest_subscribed = 1) in any case

    def _note_rss(self) -> None:
        if self.proc.proc is not None and self.proc.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, self.ingest.rss_mb())

    def stop(self) -> None:
        self._note_rss()
        self.ingest.stop()

    def kill9(self) -> None:
        self._note_rss()
        self.proc.kill9()

    def close(self) -> None:
        self.proc.kill()

    def committed(self) -> int:
        return self.ingest.committed()

    def redelivered(self) -> int:
        return self.ingest.duplicates()

    def table_counts(self) -> tuple[int, int]:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
        assert row is not None
        return int(row[0]), int(row[0])  # (device_id, metric_id, time) is its primary key

    def truncate(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE readings")


# --- Workloads -----------------------------------------------------------------------------


def wait_settled(
    progress: Callable[[], int],
    expected: int,
    timeout_s: float,
    first: list[tuple[float, int]] | None = None,
    poll_s: float = POLL_S,
) -> tuple[float, int]:
    """Poll until ``progress() >= expected``, or until it has not moved for STALL_S (the rest is
    lost); (time of the last progress, count). ``first`` receives (time, count) of the first
    poll that saw progress. TimeoutError past ``timeout_s`` while it still moves."""
    deadline = time.time() + timeout_s
    last = start = progress()
    last_change = time.time()
    while time.time() < deadline:
        count = progress()
        now = time.time()
        if first is not None and not first and count > start:
            first.append((now, count))
        if count >= expected:
            return now, count
        if count != last:
            last, last_change = count, now
        elif now - last_change > STALL_S:
            return last_change, count
        time.sleep(poll_s)
    raise TimeoutError(f"only {progress()} of {expected} readings committed in {timeout_s} s")


class Ledger:
    """What was sent against what the table holds, workload by workload."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.sent = 0
        self.lost = 0
        self.dup = 0
        rows, distinct = sub.table_counts()
        self.base_rows, self.base_distinct = rows, distinct

    def add(self, readings: int) -> None:
        self.sent += readings

    def check(self) -> tuple[int, int]:
        """(lost, duplicated) since the last check."""
        rows, distinct = self.sub.table_counts()
        lost = self.sent - (distinct - self.base_distinct)
        dup = (rows - self.base_rows) - (distinct - self.base_distinct)
        new = (lost - self.lost, dup - self.dup)
        self.lost, self.dup = lost, dup
        return new


def run_suite(
    sub: Subscriber,
    broker: Mosquitto,
    root: str,
    site: str,
    devices: int,
    scale: float,
    offset: int,
) -> tuple[dict[str, float], int]:
    """ingest_bench.py's workloads (without its half-load latency step); (results, offset)."""
    res: dict[str, float] = {}
    ledger = Ledger(sub)
    sub.start(wait_subscribed=True)

    def live(key: str, messages: int, records: int) -> float:
        """Readings committed per second, from the first publish to the last commit."""
        nonlocal offset
        before = sub.committed()
        pub = publish(broker.url, root, site, devices, messages, records, 0.0, offset)
        offset += messages
        ledger.add(messages * records)
        done, count = wait_settled(sub.committed, before + messages * records, timeout_s=600)
        res[f"{key}_lost"], res[f"{key}_dup"] = ledger.check()
        return (count - before) / (done - pub["start"])

    res["live10_readings_per_s"] = live("live10", int(60000 * scale), 10)
    res["live1_messages_per_s"] = live("live1", int(100000 * scale), 1)
    sub.stop()
    nd = int(100000 * scale)
    publish(broker.url, root, site, devices, nd, 10, 0.0, offset)
    offset += nd
    ledger.add(nd * 10)
    started = time.time()
    sub.start(wait_subscribed=False)  # the backlog is queued before any probe could be
    first: list[tuple[float, int]] = []
    done, count = wait_settled(sub.committed, nd * 10, timeout_s=900, first=first)
    t_first, c_first = first[0] if first else (started, 0)
    # From the first commit seen (start-up excluded, as ingest_bench.py does); a backlog mostly
    # drained before the first poll (a small --scale) gives no figure.
    res["drain_readings_per_s"] = (
        (count - c_first) / max(done - t_first, 1e-3) if c_first < count / 2 else math.nan
    )
    res["drain_wall_readings_per_s"] = count / (done - started)
    res["drain_redelivered"] = sub.redelivered()
    sub.stop()
    res["drain_lost"], res["drain_dup"] = ledger.check()
    res["rss_peak_mb"] = sub.rss_peak
    res["insert_errors"] = sub.insert_errors
    return res, offset


def kill_test(
    sub: Subscriber,
    broker: Mosquitto,
    root: str,
    site: str,
    devices: int,
    messages: int,
    offset: int,
    rate: float,
) -> tuple[dict[str, float], int]:
    """A live stream of 10-record packs (``rate`` messages/s, 0: full speed); kill -9 once a
    third is committed; restart; drain what the broker queued meanwhile; count."""
    ledger = Ledger(sub)
    sub.insert_errors = 0
    sub.start(wait_subscribed=True)
    readings = messages * 10
    ledger.add(readings)
    result: list[dict[str, float]] = []
    pub = threading.Thread(
        target=lambda: result.append(
            publish(broker.url, root, site, devices, messages, 10, rate, offset)
        )
    )
    pub.start()
    try:
        deadline = time.monotonic() + 120
        while sub.committed() < readings // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        at_kill = sub.committed()
        sub.kill9()
        sub.start(wait_subscribed=False)
    finally:
        pub.join(timeout=600)
    if pub.is_alive() or not result:
        raise RuntimeError("the publisher did not finish")

    def stored() -> int:
        return sub.table_counts()[1] - ledger.base_distinct

    wait_settled(stored, readings, timeout_s=600, poll_s=0.5)
    redelivered = sub.redelivered()
    sub.stop()
    lost, dup = ledger.check()
    res: dict[str, float] = {
        "insert_errors": sub.insert_errors,
        "killed_at": at_kill,
        "lost": lost,
        "dup": dup,
        "redelivered": redelivered,
        "sent": readings,
    }
    return res, offset + messages


# --- Report --------------------------------------------------------------------------------


# --- Main ----------------------------------------------------------------------------------


def sweep(
    red_js: Path, db_url: str, broker: Mosquitto, site: str, devices: int, scale: float, work: Path
) -> None:
    """Node-RED alone: live 10-record packs and a drain, for each (batch rows, pool size)."""
    offset = 0
    print("batch_rows pool  live10 r/s  live1 msg/s  drain r/s  lost  dup  rss MB", flush=True)
    for batch_rows, pool in SWEEP:
        nr = NodeRed(
            red_js,
            db_url,
            broker,
            f"bench/sweep{batch_rows}x{pool}",
            site,
            work,
            batch_rows=batch_rows,
            pool=pool,
        )
        try:
            res, offset = run_suite(nr, broker, nr.root, site, devices, scale, offset)
        finally:
            nr.close()
        lost = sum(v for k, v in res.items() if k.endswith("_lost"))
        dup = sum(v for k, v in res.items() if k.endswith("_dup"))
        print(
            f"{batch_rows:>10} {pool:>4} {res['live10_readings_per_s']:>11,.0f} "
            f"{res['live1_messages_per_s']:>12,.0f} {res['drain_readings_per_s']:>10,.0f} "
            f"{lost:>5,.0f} {dup:>4,.0f} {res['rss_peak_mb']:>7,.0f}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies message counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kill-messages", type=int, default=40000, help="x scale, 10 records")
    parser.add_argument("--sweep", action="store_true", help="Node-RED batch/pool sweep only")
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--batch-ms", type=int, default=BATCH_MS)
    parser.add_argument("--pool", type=int, default=POOL)
    parser.add_argument(
        "--peer",
        choices=("node-red", "paho"),
        default="node-red",
        help="the other subscriber: Node-RED, or sobriety's ingest on paho's MQTT session",
    )
    args = parser.parse_args()

    t0 = time.monotonic()
    red_js = install_node_red() if args.peer == "node-red" or args.sweep else ""
    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sobriety_h3_{uuid.uuid4().hex[:8]}"
    db_url = server.rsplit("/", 1)[0] + "/" + name
    site = "bench"
    subs: list[Subscriber] = []
    broker: Mosquitto | None = None
    with tempfile.TemporaryDirectory(prefix="sobriety-peer-") as tmp:
        work = Path(tmp)
        try:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            broker = Mosquitto(work / "broker")
            broker.start()
            with psycopg.connect(db_url) as conn:
                upgrade(conn)
                conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
                with conn.cursor().copy("COPY devices (site, device, kind) FROM STDIN") as copy:
                    for i in range(args.devices):
                        copy.write_row((site, f"d{i}", "luminaire"))
                conn.commit()
            if args.sweep:
                sweep(red_js, db_url, broker, site, args.devices, args.scale, work)
                return 0
            ours = SobrietySub(db_url, broker, work, "bench/sob")
            theirs: Subscriber
            if args.peer == "paho":
                theirs = SobrietySub(db_url, broker, work, "bench/nr", "paho", "paho")
            else:
                theirs = NodeRed(
                    red_js,
                    db_url,
                    broker,
                    "bench/nr",
                    site,
                    work,
                    batch_rows=args.batch_rows,
                    batch_ms=args.batch_ms,
                    pool=args.pool,
                )
            subs = [ours, theirs]
            if args.peer == "paho":
                print("peer: sobriety's ingest on paho's MQTT session", end="; ")
            else:
                print(
                    f"node-red {NODE_RED_VERSION}, pg {PG_VERSION}: batches of {args.batch_rows}"
                    f" rows or {args.batch_ms} ms, pool {args.pool}",
                    end="; ",
                )
            print(f"scale {args.scale}, {args.runs} runs", flush=True)
            offset = 0
            runs: list[dict[str, dict[str, float]]] = []
            kills: list[dict[str, dict[str, float]]] = []
            kill_messages = max(1000, int(args.kill_messages * args.scale))
            for run in range(args.runs):
                order = subs if run % 2 == 0 else subs[::-1]
                results: dict[str, dict[str, float]] = {}
                for sub in order:
                    sub.rss_peak = 0.0
                    sub.insert_errors = 0
                    root = f"bench/{'sob' if sub is ours else 'nr'}"
                    res, offset = run_suite(
                        sub, broker, root, site, args.devices, args.scale, offset
                    )
                    results[sub.name] = res
                    print(
                        f"run {run + 1} {sub.name}: "
                        + ", ".join(f"{k}={v:,.1f}" for k, v in res.items()),
                        flush=True,
                    )
                    sub.truncate()
                runs.append(results)
                killed: dict[str, dict[str, float]] = {}
                for mode, _ in KILL_MODES:
                    rate = 0.0 if mode == "full" else KILL_PACED_RATE
                    messages = kill_messages if mode == "full" else kill_messages // 2
                    for sub in order:
                        root = f"bench/{'sob' if sub is ours else 'nr'}"
                        key = f"{mode}:{sub.name}"
                        killed[key], offset = kill_test(
                            sub, broker, root, site, args.devices, messages, offset, rate
                        )
                        print(f"run {run + 1} {key} kill -9: {killed[key]}", flush=True)
                        sub.truncate()
                kills.append(killed)
            report(runs, kills, theirs.name)
            print(f"\ntook {time.monotonic() - t0:,.0f} s")
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    sub.close()
            if broker is not None:
                broker.stop()
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
