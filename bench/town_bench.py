"""Town benchmark (issue 3): one simulated day of bench/town-2000.toml through the real chain.

    .venv/bin/python bench/town_bench.py          # a few minutes at most

A private Mosquitto and a fresh database on $SOBRIETY_TEST_DB_URL (default local PostgreSQL).
Two runs of the same town and seed, in the same process layout:

1. baseline: the simulator alone, publishing to the broker with no subscriber (what generating
   and publishing the day costs);
2. the chain: the same day with the ingest subscribed (a `sobriety ingest` process), timed until
   every reading the ground truth counts is committed.

Prints wall times, the chain/baseline ratio, readings/s, and the speed-up over real time; checks
the target of issue 3 (the chain in <= 300 s) and that stored = sent.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from bench_support import ROOT_DIR, ingest_config

from app.embedded import Mosquitto
from app.embedded.service_process import ServiceProcess
from core.db import upgrade
from core.inventory import import_inventory
from simulators import Fleet, build_town, load_scenario, write_inventory


def simulate(
    town_path: Path, broker: Mosquitto, seed: int, prefix: str, root: str
) -> tuple[float, int, int]:
    scenario = load_scenario(town_path).model_copy(update={"root": root})
    town = build_town(scenario, seed)
    fleet = Fleet(town, broker.url, speed=0.0, client_prefix=prefix)
    started = time.monotonic()
    fleet.connect()
    truth = fleet.run()
    fleet.wait_published(timeout_s=600)
    fleet.close()
    return time.monotonic() - started, truth.readings, truth.messages


def main() -> int:
    town_path = ROOT_DIR / "bench" / "town-2000.toml"
    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sobriety_town_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = server.rsplit("/", 1)[0] + "/" + name
    seed = 1
    with tempfile.TemporaryDirectory(prefix="sobriety-town-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            scenario = load_scenario(town_path)
            town = build_town(scenario, seed)
            dmas, devices = write_inventory(town, work / "inventory")
            with psycopg.connect(db_url) as conn:
                upgrade(conn)
                import_inventory(conn, dmas)
                import_inventory(conn, devices)
            print(f"town: {len(town.devices)} devices", flush=True)
            base_s, readings, messages = simulate(town_path, broker, seed, "base", "nobody/v1")
            print(
                f"baseline (simulator alone): {base_s:.1f} s, {messages:,} messages, "
                f"{readings:,} readings",
                flush=True,
            )
            ingest = ServiceProcess(ingest_config(db_url, broker.url, work, scenario.root), work)
            ingest.start()
            started = time.monotonic()
            sim_s, readings, messages = simulate(town_path, broker, seed, "chain", scenario.root)
            deadline = time.monotonic() + 600
            stored = 0.0
            while time.monotonic() < deadline:
                stored = ingest.metric("sobriety_ingest_readings_stored_total")
                if stored >= readings:
                    break
                time.sleep(0.2)
            chain_s = time.monotonic() - started
            assert ingest.proc is not None
            status = Path(f"/proc/{ingest.proc.pid}/status").read_text().splitlines()
            rss = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024
            assert ingest.terminate() == 0
        finally:
            broker.stop()
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"chain (simulate + ingest + commit): {chain_s:.1f} s (simulator part {sim_s:.1f} s); "
        f"{int(stored):,} of {readings:,} readings stored"
    )
    print(
        f"ratio chain / baseline: {chain_s / base_s:.2f}x; "
        f"{readings / chain_s:,.0f} readings/s; {86400 * scenario.days / chain_s:,.0f}x "
        f"faster than real time; ingest peak RSS {rss:.0f} MB"
    )
    ok = chain_s <= 300 and int(stored) == readings
    print(
        f"target of issue 3 (one day in <= 300 s, every reading stored): {'ok' if ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
