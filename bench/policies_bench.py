"""Policies benchmark: the configs of 10,000 devices published through a real broker.

    .venv/bin/python bench/policies_bench.py [--devices 10000] [--runs 3]

A private Mosquitto (app.embedded, the limits of deploy/mosquitto/mosquitto.conf) and a fresh
database on $SOBRIETY_TEST_DB_URL (default local PostgreSQL), dropped at the end. The inventory:
one site in Paris with coordinates, 60 % luminaires (100 lighting groups, classes M3/M4/P3,
some named by an exception), the rest flow meters, pressure sensors and customer meters of 50
DMAs, one of them under an open leak alert. The policies: examples/policies.toml. Each run, on
a fresh root (so nothing is retained from the run before) and with device_configs emptied:

1. sobriety: ``policies.service.publish_pass`` — the desired config of every device, published
   retained at QoS 1 with back-pressure, recorded once acknowledged; then a second pass (nothing
   changed: nothing must be published);
2. naive baseline: a loop over the devices that computes each config on its own
   (``reporting_for``, ``device_program``), publishes it and waits for its PUBACK, and records it
   with one INSERT and COMMIT per device. Timed on a sample of 1,000 devices and scaled linearly
   (it does the same work per device).

After the first pass a subscriber checks that the broker holds one retained config per device
with version 1. Prints each run, the median, the ratio naive/sobriety with its spread (min-max
over the runs) and the target (sobriety <= 5 s for 10,000 devices).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg
from bench_support import ROOT_DIR, ingest_config
from paho.mqtt.enums import CallbackAPIVersion

from app.embedded import Mosquitto
from core.db import upgrade
from core.inventory import import_inventory, write_inventory_csv
from core.lighting import SunCache, night_of
from core.messages import DeviceConfig, encode
from policies.config import PoliciesConfig, load_policies
from policies.desired import is_night
from policies.mqtt import Link
from policies.programs import device_program, program_for, reporting_for
from policies.service import publish_pass
from policies.store import devices as load_devices
from policies.store import escalated_dmas
from policies.store import sites as load_sites

TARGET_S = 5.0
SAMPLE = 1000
SITE = "bench"


def inventory(work: Path, count: int) -> list[Path]:
    """Sites, DMAs and devices files of ``count`` devices."""
    lums = int(count * 0.6)
    classes = ("M3", "M4", "P3")
    rows: list[dict[str, object]] = [
        {
            "site": SITE,
            "device": f"lum-{n:05d}",
            "kind": "luminaire",
            "group": f"street-{n % 100:03d}",
            "lighting_class": classes[n % 3],
        }
        for n in range(lums)
    ]
    kinds = ("flow_meter", "pressure_sensor", "water_meter", "water_meter", "water_meter")
    for n in range(count - lums):
        kind = kinds[n % len(kinds)]
        rows.append(
            {
                "site": SITE,
                "device": f"{kind[:2]}-{n:05d}",
                "kind": kind,
                "dma": f"dma-{n % 50:02d}",
                "role": "inlet" if kind == "flow_meter" else None,
            }
        )
    return [
        write_inventory_csv(
            work / "sites.csv",
            [{"site": SITE, "timezone": "Europe/Paris", "lat": 48.85, "lon": 2.35}],
            ("site", "timezone", "lat", "lon"),
        ),
        write_inventory_csv(
            work / "dmas.csv",
            [{"site": SITE, "dma": f"dma-{n:02d}"} for n in range(50)],
            ("site", "dma"),
        ),
        write_inventory_csv(
            work / "devices.csv",
            rows,
            ("site", "device", "kind", "dma", "role", "group", "lighting_class"),
        ),
    ]


def naive(
    conn: psycopg.Connection, url: str, root: str, policies: PoliciesConfig, now: float
) -> tuple[float, int]:
    """The per-device loop over a sample; (seconds, devices)."""
    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:6]}")
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    started = time.perf_counter()
    sites = load_sites(conn)
    escalated = escalated_dmas(conn)
    sample = load_devices(conn)[:SAMPLE]
    for dev in sample:
        zone = ZoneInfo(sites[dev.site].timezone)
        night = is_night(sites[dev.site], now, SunCache(), zone)
        esc = (dev.site, dev.dma or "") in escalated and dev.kind != "luminaire"
        reporting = reporting_for(policies, dev.kind, bool(night), esc)
        lighting = None
        if dev.kind == "luminaire":
            name = program_for(policies, dev.lighting_group, night_of(now, zone))
            lighting = device_program(
                policies, name, dev.lighting_class, dev.lighting_group, dev.device
            )[0]
        payload = encode(DeviceConfig(version=1, reporting=reporting, lighting=lighting))
        info = client.publish(f"{root}/{dev.site}/{dev.device}/config", payload, qos=1, retain=True)
        info.wait_for_publish(10)
        conn.execute(
            """INSERT INTO device_configs (device_id, version, digest, payload, published_at)
               VALUES (%s, 1, %s, %s::jsonb, now())""",
            (dev.device_id, b"", payload.decode()),
        )
        conn.commit()
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return seconds, len(sample)


def retained(url: str, root: str, expected: int, timeout_s: float = 60.0) -> int:
    """Retained configs under ``root`` with version 1, as a new subscriber receives them."""
    parts = urlsplit(url)
    got: set[str] = set()
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and b'"version":1' in msg.payload:
            got.add(msg.topic)
            if len(got) >= expected:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    client.subscribe(f"{root}/+/+/config", qos=0)
    done.wait(timeout_s)
    client.disconnect()
    client.loop_stop()
    return len(got)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sobriety_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db_url = server.rsplit("/", 1)[0] + "/" + name
    policies = load_policies(ROOT_DIR / "examples" / "policies.toml")
    ours: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sobriety-policies-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            with psycopg.connect(db_url) as conn:
                upgrade(conn)
                for path in inventory(work, args.devices):
                    import_inventory(conn, path)
                conn.execute(
                    """INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at)
                       VALUES ('leak', %s, 'dma', 'dma-00', now(), now())""",
                    (SITE,),
                )
                conn.commit()
                for run in range(1, args.runs + 1):
                    root = f"bench{run}-{uuid.uuid4().hex[:6]}/v1"
                    config = ingest_config(db_url, broker.url, work, root)
                    conn.execute("DELETE FROM device_configs")
                    conn.commit()
                    link = Link(config)
                    link.connect()
                    now = time.time()
                    started = time.perf_counter()
                    first = publish_pass(conn, link, policies, now)
                    seconds = time.perf_counter() - started
                    started = time.perf_counter()
                    second = publish_pass(conn, link, policies, now)
                    unchanged_s = time.perf_counter() - started
                    link.close()
                    held = retained(broker.url, root, first.published)
                    conn.execute("DELETE FROM device_configs")
                    conn.commit()
                    sample_s, sampled = naive(conn, broker.url, f"naive{run}/v1", policies, now)
                    naive_s = sample_s * args.devices / sampled
                    ours.append(seconds)
                    ratios.append(naive_s / seconds)
                    print(
                        f"run {run}: sobriety {seconds:.2f} s for {first.published:,} configs "
                        f"({held:,} retained at the broker, version 1), second pass "
                        f"{unchanged_s:.2f} s publishing {second.published}; naive "
                        f"{sample_s:.2f} s for {sampled:,} -> {naive_s:.1f} s for "
                        f"{args.devices:,}; ratio {naive_s / seconds:.1f}x",
                        flush=True,
                    )
                    if held != args.devices or second.published:
                        print("MISMATCH: not every config retained, or a republish", flush=True)
                        return 1
        finally:
            broker.stop()
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    median = statistics.median(ours)
    print(
        f"sobriety: median {median:.2f} s for {args.devices:,} devices (target <= {TARGET_S:g} s: "
        f"{'met' if median <= TARGET_S else 'NOT met'}); naive/sobriety "
        f"{statistics.median(ratios):.1f}x (spread {min(ratios):.1f}-{max(ratios):.1f}x over "
        f"{len(ratios)} runs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
