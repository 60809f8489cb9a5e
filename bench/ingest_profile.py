"""Where the ingest's path spends its CPU: the broker, PostgreSQL, the ingest, the publisher.

    .venv/bin/python bench/ingest_profile.py [--records 10] [--messages 60000] [--py-spy PATH]

A private Mosquitto (deploy/mosquitto's limits) and a fresh database, one ``sobriety ingest``
process; the publisher (bench/publisher.py) sends ``--messages`` SenML packs of ``--records``
readings at full speed, then, once every reading is committed, the CPU seconds each process
used during the run are read from /proc (user + system; PostgreSQL: every backend and worker
of the cluster's postmaster; the publisher: its own). With ``--py-spy``, py-spy samples the
ingest meanwhile (``record --format raw``, 200 Hz, active samples: idle waits are not counted) and
the functions it was seen running are printed by their own (self) and total share of its
samples, and its threads by their share.

Shares, not seconds, are what to compare: the machine is shared.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from bench_support import bench_services  # the repository on the import path
from ingest_bench import Sobriety, publish, wait_committed

from app.config import load_config
from app.embedded.service_process import ServiceProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process [s] (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def postmaster(conn: psycopg.Connection) -> int:
    """The pid of the cluster's postmaster."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process."""
    return {pid: cpu_seconds(pid) for pid in pids}


def summarise(raw: Path, top: int) -> list[str]:
    """Self and total shares of the functions in py-spy's raw (collapsed) stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        threads[frames[0]] += count
        names = [re.sub(r":\d+\)$", ")", frame) for frame in frames[1:]]  # the function, not line
        own[names[-1] if names else "(no Python frame)"] += count
        for frame in set(names):
            total[frame] += count
    lines = [f"py-spy: {samples} active samples of the ingest"]
    lines += [f"  thread {name}: {100 * n / samples:.1f} %" for name, n in threads.most_common(6)]
    lines.append("  self  total  function (file:line)")
    for name, n in own.most_common(top):
        lines.append(f"  {100 * n / samples:4.1f} {100 * total[name] / samples:6.1f}  {name}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=60000)
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy to sample with")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--protocol", choices=("5", "3.1.1"), default="5", help="the ingest's MQTT version"
    )
    parser.add_argument(
        "--client", choices=("lean", "paho"), default="lean", help="the ingest's MQTT session"
    )
    args = parser.parse_args()
    site, root = "bench", "bench/prof"
    spy: subprocess.Popen[bytes] | None = None
    with bench_services(site, args.devices, "sobriety-prof-") as (db_url, broker, work):
        ingest = Sobriety(db_url, broker, work, root, 1, mqtt_client=args.client)
        if args.protocol != "5":  # the same settings but the protocol
            config = load_config(ingest.procs[0].config_path, env={})
            config = config.replace(config.mqtt.model_copy(update={"protocol": args.protocol}))
            ingest.procs[0] = ServiceProcess(config, work, name="ingest-311")
        try:
            ingest.start()
            proc = ingest.procs[0].proc
            assert proc is not None
            assert broker.proc is not None
            with psycopg.connect(db_url) as conn:
                master = postmaster(conn)
            fixed = {"ingest": proc.pid, "mosquitto": broker.proc.pid}
            before = {k: cpu_seconds(pid) for k, pid in fixed.items()}
            pg_before = cpu_of([master, *children(master)])
            raw = work / "ingest.raw"
            if args.py_spy:
                spy = subprocess.Popen(
                    [args.py_spy, "record", "--format", "raw", "--rate", "200", "--threads",
                     "-o", str(raw), "-p", str(proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            started = time.time()
            t0 = os.times()
            result = publish(broker.url, root, site, args.devices, args.messages, args.records)
            t1 = os.times()
            done = wait_committed(ingest.committed, args.messages * args.records, 900)
            used = {k: cpu_seconds(pid) - before[k] for k, pid in fixed.items()}
            # backends started during the run count from 0; those that ended are lost (the
            # ingest's connection lives through the run)
            pg_after = cpu_of([master, *children(master)])
            used["postgresql"] = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items())
            used["publisher"] = (t1.children_user + t1.children_system) - (
                t0.children_user + t0.children_system
            )
            elapsed = done - started
            readings = args.messages * args.records
            print(f"{readings:,} readings in {args.messages:,} messages of {args.records}: "
                  f"{elapsed:.1f} s, {readings / elapsed:,.0f} readings/s "
                  f"({args.messages / elapsed:,.0f} msg/s); publisher {result}")  # fmt: skip
            whole = sum(used.values())
            print(f"CPU over the run: {whole:.1f} s of {2 * elapsed:.1f} s available (2 cores)")
            for key, value in sorted(used.items(), key=lambda kv: -kv[1]):
                print(f"  {key:<11} {value:6.1f} s  {100 * value / whole:5.1f} %  "
                      f"{1e6 * value / readings:6.1f} µs/reading")  # fmt: skip
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file
                spy.wait(timeout=60)
            ingest.stop()
        if spy is not None and raw.exists():
            for line in summarise(raw, args.top):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
