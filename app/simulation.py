"""``sobriety simulate`` and ``sobriety demo``: the simulated town against a broker, and the
whole chain on it. Each returns the exit code."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from app.config import load_config
from app.progress import progress_bar
from app.services import install_signals
from core.config import Config
from core.errors import ConfigError


def cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    from core.db import connect
    from core.inventory import import_inventory
    from simulators import (
        Fleet,
        build_town,
        load_scenario,
        packaged_scenario,
        write_inventory,
        write_sites,
    )
    from simulators.fleet import resolve_start

    scenario = load_scenario(args.scenario or packaged_scenario("demo"))
    if args.speed < 0:
        raise ConfigError(f"--speed {args.speed}: expected 0 (full speed) or more")
    town = build_town(scenario, args.seed)
    out = args.out or Path("var") / "sim" / f"{scenario.name}-{args.seed}"
    days = args.days if args.days is not None else scenario.days
    start = resolve_start(scenario, days)
    sites_csv = write_sites(town, out / "inventory")
    dmas_csv, devices_csv = write_inventory(town, out / "inventory", start=start, days=days)
    print(f"inventory: {sites_csv}, {dmas_csv} and {devices_csv} ({len(town.devices)} devices)")
    if args.import_inventory:
        with connect(config.db_conninfo()) as conn:
            import_inventory(conn, sites_csv)
            import_inventory(conn, dmas_csv)
            import_inventory(conn, devices_csv)
    fleet = Fleet(
        town,
        config.mqtt.url,
        speed=args.speed,
        days=days,
        start=start,
        protocol=config.mqtt.protocol,
    )
    fleet.connect(username=config.mqtt.username, password=config.mqtt_password())
    stop = threading.Event()
    install_signals(stop.set)
    try:
        with progress_bar("simulating") as progress:
            truth = fleet.run(progress=progress, stop=stop)
        fleet.wait_published()
    finally:
        fleet.close()
    truth.write(out / "truth.json")
    rejections = ", ".join(f"{k}: {v}" for k, v in sorted(truth.expected_rejections.items()))
    print(
        f"sent {truth.messages:,} messages, {truth.readings:,} valid readings; "
        f"faults that the ingest must reject: {rejections or 'none'}; truth: {out / 'truth.json'}"
    )
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from app.demo import run_demo

    default = load_config(None, env={})
    configured_db = (
        args.db_url
        or os.environ.get("SOBRIETY_DB_URL")
        or (config.database.url if config.database.url != default.database.url else None)
    )
    configured_mqtt = (
        args.mqtt_url
        or os.environ.get("SOBRIETY_MQTT_URL")
        or (config.mqtt.url if config.mqtt.url != default.mqtt.url else None)
    )
    if configured_db:
        configured_db = config.db_conninfo()
    stop = threading.Event()
    install_signals(stop.set)
    report = run_demo(
        config,
        days=args.days,
        seed=args.seed,
        embedded=args.embedded,
        configured_db=configured_db,
        configured_mqtt=configured_mqtt,
        workdir=args.workdir,
        serve=args.serve,
        stop=stop,
        out=sys.stdout,
    )
    return 1 if report.problems else 0
