"""The simulated town: physics, scenario files, determinism, and runs through the real chain."""

from __future__ import annotations

import csv
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from numpy.testing import assert_allclose
from paho.mqtt.enums import CallbackAPIVersion

from app.embedded import Mosquitto
from core.errors import ConfigError
from core.inventory import DEVICE_FILE_COLUMNS, import_inventory
from core.messages import LightingProgram
from core.payloads import decode
from ingest.service import IngestService
from simulators import Fleet, build_town, load_scenario, packaged_scenario, physics, write_inventory
from simulators.gateways import Gateway, Inbound
from simulators.scenario import Scenario
from simulators.site_model import SiteModel
from tests.fix_ingest import make_config
from tests.fix_mqtt import wait_until

PARIS = ZoneInfo("Europe/Paris")


def small_scenario(root: str, **faults: int) -> Scenario:
    """A town small enough for a test run of a few seconds."""
    return Scenario.model_validate(
        {
            "name": "small",
            "days": 0.5,
            "root": root,
            "sites": [
                {
                    "site": root.split("/")[0][-10:] + "s",
                    "lighting": {"streets": 2, "luminaires_per_street": 5},
                    "water": {
                        "dmas": 2,
                        "customers_per_dma": 10,
                        "outlet_every": 2,
                        "leaks": [{"dma": 0, "kind": "burst", "start_h": 2, "flow_m3h": 1.0}],
                    },
                }
            ],
            "faults": {
                "malformed": 2,
                "duplicates": 2,
                "out_of_order": 1,
                "late": 1,
                "dropouts": 1,
                "clock_skew": 1,
                "unknown_devices": 2,
                **faults,
            },
        }
    )


# --- physics -------------------------------------------------------------------------------------
def test_luminaire_power_follows_the_driver_curve() -> None:
    power = physics.luminaire_power_w(np.array([1.0, 0.5, 0.0]), np.array([40.0] * 3), 0.4)
    assert_allclose(power, [40.4, 40 * 0.5 * 0.90 / 0.85 + 0.4, 0.4])


def test_demand_pattern_has_mean_one_and_a_night_minimum() -> None:
    for weekend in (False, True):
        day = [physics.demand_pattern(h / 60, weekend) for h in range(0, 24 * 60)]
        assert_allclose(np.mean(day), 1.0, rtol=1e-3)
        assert min(day) == pytest.approx(min(day[0 : 6 * 60]))  # the minimum is at night
        assert max(day) > 1.5 * np.mean(day)


def test_leaks_burst_and_grow() -> None:
    assert physics.leak_flow_m3h(1.0, "burst", 2.0, 24, None, start_h=2.0) == 0.0
    assert physics.leak_flow_m3h(2.0, "burst", 2.0, 24, None, start_h=2.0) == 2.0
    assert physics.leak_flow_m3h(14.0, "incipient", 2.0, 24, None, start_h=2.0) == 1.0
    assert physics.leak_flow_m3h(40.0, "incipient", 2.0, 24, None, start_h=2.0) == 2.0
    assert physics.leak_flow_m3h(5.0, "burst", 2.0, 24, end_h=5.0, start_h=2.0) == 0.0


def test_pressure_falls_when_flow_rises() -> None:
    still = physics.dma_pressure_bar(0.0, 44.0, 10.0)
    assert still == pytest.approx(44.0 * physics.M_WATER_TO_BAR)
    assert physics.dma_pressure_bar(10.0, 44.0, 10.0) == pytest.approx(0.85 * still)


def test_pue_rises_with_outdoor_temperature() -> None:
    def pue(outdoor: float) -> float:
        it = 6.0
        return (it + physics.cooling_power_kw(it, outdoor) + physics.facility_overhead_kw(it)) / it

    assert 1.2 < pue(5.0) < pue(25.0) < 2.0


def test_program_levels_across_the_spring_dst_night() -> None:
    scenario = small_scenario("dst/v1")
    town = build_town(scenario, 1)
    model = SiteModel(town.sites[0], scenario, 0.0, np.random.default_rng(0))
    program = LightingProgram(steps=[("22:00", 70.0), ("23:30", 40.0), ("05:30", 70.0)])

    def level(y: int, mo: int, d: int, h: int, mi: int) -> float:
        return model.program_level(program, datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp())

    assert level(2026, 3, 28, 14, 0) == 0.0  # daytime
    assert level(2026, 3, 28, 21, 0) == 1.0  # after sunset, before the first step
    assert level(2026, 3, 28, 23, 45) == 0.4
    assert level(2026, 3, 29, 3, 30) == 0.4  # 02:00 did not exist that night
    assert level(2026, 3, 29, 5, 45) == 0.7


# --- scenarios and towns ------------------------------------------------------------------------
def test_scenario_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[sites]]\nsite = "x"\n[sites.lighting]\nstreetz = 3\n')
    with pytest.raises(
        ConfigError, match=r"bad\.toml: sites\.0\.lighting\.streetz = 3: expected no such key"
    ):
        load_scenario(path)
    path.write_text('days = -1\n[[sites]]\nsite = "x"\n')
    with pytest.raises(ConfigError, match=r"days = -1: expected greater than 0"):
        load_scenario(path)
    path.write_text('[[sites]]\nsite = "x"\n[reporting.lamp]\ninterval_s = 600\n')
    with pytest.raises(ConfigError, match=r"reporting = .*expected device kinds \(luminaire"):
        load_scenario(path)
    path.write_text('step_s = 120\n[[sites]]\nsite = "x"\n[reporting.luminaire]\ninterval_s = 60\n')
    with pytest.raises(ConfigError, match=r"interval_s = 60 below step_s = 120"):
        load_scenario(path)
    # A scenario that sets the reporting of one kind keeps the defaults of the others.
    path.write_text('[[sites]]\nsite = "x"\n[reporting.water_meter]\ninterval_s = 900\n')
    reporting = load_scenario(path).reporting
    assert reporting["water_meter"].interval_s == 900
    assert reporting["luminaire"].batch == 6


def test_the_packaged_demo_scenario_loads() -> None:
    scenario = load_scenario(packaged_scenario("demo"))
    assert len(scenario.sites) == 2
    assert scenario.sites[0].water.leaks


def test_same_seed_same_town_other_seed_other_town(tmp_path: Path) -> None:
    scenario = small_scenario("det/v1")
    a = write_inventory(build_town(scenario, 5), tmp_path / "a")
    b = write_inventory(build_town(scenario, 5), tmp_path / "b")
    c = write_inventory(build_town(scenario, 6), tmp_path / "c")
    assert a[1].read_bytes() == b[1].read_bytes()
    assert a[1].read_bytes() != c[1].read_bytes()


def test_same_seed_same_messages() -> None:
    scenario = small_scenario("det/v1")
    logs = []
    for _ in range(2):
        fleet = Fleet(build_town(scenario, 3), "mqtt://127.0.0.1:1", days=0.2, start=1.767e9)
        fleet.log = []
        truth = fleet.run()
        logs.append((fleet.log, truth.readings, truth.expected_rejections))
    assert logs[0] == logs[1]
    assert logs[0][1] > 0


# --- through the real chain ---------------------------------------------------------------------
@pytest.mark.services
def test_generated_inventory_imports(conn: psycopg.Connection, tmp_path: Path) -> None:
    town = build_town(small_scenario("inv1/v1"), 2)
    dmas, devices = write_inventory(town, tmp_path)
    assert import_inventory(conn, dmas).inserted == 2
    assert import_inventory(conn, devices).inserted == len(town.devices)
    assert import_inventory(conn, tmp_path / "devices.geojson").unchanged == len(town.devices)


def _run_town(
    scenario: Scenario,
    seed: int,
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    run_ingest: object,
    **fleet_args: float,
) -> tuple[Fleet, IngestService]:
    town = build_town(scenario, seed)
    dmas, devices = write_inventory(town, tmp_path / "inventory")
    import_inventory(conn, dmas)
    import_inventory(conn, devices)
    assert callable(run_ingest)
    service = run_ingest(make_config(db_url, mqtt_url, tmp_path, scenario.root))
    fleet = Fleet(town, mqtt_url, client_prefix=f"t{time.monotonic_ns()}", **fleet_args)
    return fleet, service


@pytest.mark.services
def test_stored_readings_match_what_the_town_sent(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    root: str,
    run_ingest: object,
) -> None:
    scenario = small_scenario(root)
    fleet, service = _run_town(scenario, 11, conn, db_url, mqtt_url, tmp_path, run_ingest)
    fleet.connect()
    truth = fleet.run()
    fleet.wait_published()
    fleet.close()
    site = scenario.sites[0].site

    def stored() -> int:
        row = conn.execute("SELECT count(*) FROM api.readings WHERE site = %s", (site,)).fetchone()
        return int(row[0]) if row else 0

    wait_until(lambda: stored() == truth.readings, 30, f"{truth.readings} readings stored")
    rejected = dict(
        conn.execute(
            "SELECT reason, count(*) FROM rejected_messages WHERE site = %s GROUP BY reason",
            (site,),
        ).fetchall()
    )
    assert rejected == truth.expected_rejections
    assert set(truth.expected_rejections) == {
        "invalid_json",
        "unknown_device",
        "timestamp_out_of_window",
    }
    assert truth.faults["duplicate"] == 2
    assert service.metrics.value("readings_duplicate_total") > 0  # the duplicates came, stored once
    assert truth.leaks[0]["final_flow_m3h"] == 1.0
    assert truth.energy_wh[f"{site}/cab-00"] > 0
    truth.write(tmp_path / "truth.json")
    assert (tmp_path / "truth.json").stat().st_size > 0


@pytest.mark.services
def test_devices_apply_a_pushed_config(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    root: str,
    run_ingest: object,
) -> None:
    scenario = small_scenario(
        root,
        malformed=0,
        duplicates=0,
        out_of_order=0,
        late=0,
        dropouts=0,
        clock_skew=0,
        unknown_devices=0,
    )
    site = scenario.sites[0].site
    # Start at local noon so that the lights come on during the run.
    noon = datetime(2026, 1, 15, 12, 0, tzinfo=PARIS).timestamp()
    latest = time.time() - 0.5 * 86400
    start = latest - (latest - noon) % 86400
    fleet, _ = _run_town(
        scenario,
        4,
        conn,
        db_url,
        mqtt_url,
        tmp_path,
        run_ingest,
        days=0.5,
        start=start,
        speed=7200.0,
    )
    town = fleet.town.sites[0]
    plain = [d for d, p in zip(town.luminaires, town.lum_presence, strict=True) if not p]
    target, refused, early = plain[:3]
    pusher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cfg-{time.monotonic_ns()}")
    broker = urlsplit(mqtt_url)
    pusher.connect(broker.hostname or "127.0.0.1", broker.port or 1883)
    pusher.loop_start()

    def push(device: str, config: object) -> None:
        body = config if isinstance(config, bytes) else orjson.dumps(config)
        topic = f"{root}/{site}/{device}/config"
        pusher.publish(topic, body, qos=1, retain=True).wait_for_publish(5)

    # Retained before the devices connect: applied from the first step on.
    push(early, {"version": 3, "reporting": {"interval_s": 180, "batch": 1}})
    fleet.connect()
    runner = threading.Thread(target=fleet.run)
    runner.start()
    # Push four simulated hours in (16:00 local: the run starts at noon), before sunset.
    wait_until(lambda: fleet.now >= start + 4 * 3600, 30, "the fleet at 16:00 local")
    config = {
        "version": 7,
        "reporting": {"interval_s": 120, "batch": 1},
        "lighting": {"steps": [["12:00", 25.0]], "on_offset_min": -600},
    }
    pushed_at = fleet.now
    push(target, config)
    push(refused, {"version": 8, "reporting": {"interval_s": 120, "batch": 0}})
    runner.join(timeout=60)
    fleet.wait_published()
    fleet.close()
    states: dict[str, dict[str, object]] = {}
    pusher.on_message = lambda _c, _u, m: states.update({m.topic: orjson.loads(m.payload)})
    pusher.subscribe(f"{root}/{site}/+/state", qos=1)

    def state(device: str) -> dict[str, object] | None:
        return states.get(f"{root}/{site}/{device}/state")

    wait_until(lambda: all(state(d) for d in (target, refused, early)), 10, "retained states")
    assert state(target) == {"online": True, "config_version": 7}
    assert state(early) == {"online": True, "config_version": 3}
    refusal = state(refused)
    assert refusal is not None
    assert refusal["config_version"] == 0  # still the built-in program
    assert "batch" in str(refusal["config_error"])
    for device in (target, refused, early):
        push(device, b"")
    pusher.disconnect()
    pusher.loop_stop()

    def series(metric: str, device: str = target) -> list[tuple[float, float]]:
        return [
            (t.timestamp(), v)
            for t, v in conn.execute(
                "SELECT time, value FROM api.readings WHERE site = %s AND device = %s AND "
                "metric = %s ORDER BY time",
                (site, device, metric),
            )
        ]

    wait_until(lambda: len(series("dim")) > 10, 30, "the device's readings")
    dims = series("dim")
    assert set(np.diff([t for t, _ in series("dim", early)])) == {180.0}  # from the start
    assert set(np.diff([t for t, _ in series("dim", refused)])) == {600.0}  # config refused
    before = [t for t, _ in dims if t < pushed_at]
    after = [(t, v) for t, v in dims if t > pushed_at + 600]
    assert np.diff(before).min() >= 600  # the scenario's 10-minute interval
    assert np.diff([t for t, _ in after]).max() == 120  # the pushed 2-minute interval
    assert {v for _, v in after} == {25.0}  # the pushed program, lit all day at 25 %


@pytest.mark.services
def test_simulate_command_writes_inventory_and_truth(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    root: str,
    run_ingest: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli import main
    from simulators.truth import Truth

    site = root.split("/")[0][-10:] + "c"
    scenario = tmp_path / "town.toml"
    scenario.write_text(
        f'name = "cli"\nroot = "{root}"\ndays = 0.1\n[[sites]]\nsite = "{site}"\n'
        "[sites.lighting]\nstreets = 1\n[sites.water]\ncustomers_per_dma = 5\n"
    )
    assert callable(run_ingest)
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    monkeypatch.setenv("SOBRIETY_MQTT_URL", mqtt_url)
    out = tmp_path / "run"
    # The ingest needs the inventory: import it first, then start the ingest, then simulate.
    assert (
        main(
            [
                "simulate",
                "--scenario",
                str(scenario),
                "--days",
                "0.001",
                "--speed",
                "0",
                "--out",
                str(out),
                "--import-inventory",
            ]
        )
        == 0
    )
    run_ingest(make_config(db_url, mqtt_url, tmp_path, root))
    assert (
        main(
            [
                "simulate",
                "--scenario",
                str(scenario),
                "--seed",
                "3",
                "--speed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "valid readings" in printed
    truth = Truth.read(out / "truth.json")
    assert truth.readings > 0
    assert (out / "inventory" / "devices.csv").exists()

    def stored() -> int:
        row = conn.execute(
            "SELECT count(*) FROM api.readings WHERE site = %s AND time >= to_timestamp(%s)",
            (site, truth.start),
        ).fetchone()
        return int(row[0]) if row else 0

    wait_until(lambda: stored() == truth.readings, 30, f"{truth.readings} readings stored")


def _records(log: list[tuple[str, bytes]], device: str) -> list[list[dict[str, object]]]:
    return [orjson.loads(p) for t, p in log if t.endswith(f"/{device}/up")]


def test_batching_deadband_and_dim_override_are_obeyed() -> None:
    scenario = small_scenario(
        "cfg/v1",
        malformed=0,
        duplicates=0,
        out_of_order=0,
        late=0,
        dropouts=0,
        clock_skew=0,
        unknown_devices=0,
    )
    noon = datetime(2026, 1, 15, 12, 0, tzinfo=PARIS).timestamp()
    fleet = Fleet(build_town(scenario, 8), "mqtt://127.0.0.1:1", days=0.5, start=noon)
    fleet.log = []
    site = scenario.sites[0].site
    town = fleet.town.sites[0]
    lamp = next(d for d, p in zip(town.luminaires, town.lum_presence, strict=True) if not p)
    batched, quiet = town.customers[0], town.customers[1]
    # Configs and commands as a broker would deliver them (retained config, then a command).
    fleet.inbox.put(
        (
            site,
            batched,
            "config",
            orjson.dumps({"version": 2, "reporting": {"interval_s": 600, "batch": 3}}),
        )
    )
    fleet.inbox.put(
        (
            site,
            quiet,
            "config",
            orjson.dumps(
                {
                    "version": 3,
                    "reporting": {
                        "interval_s": 600,
                        "batch": 1,
                        "deadband": {"volume": 1e9},
                        "max_silence_s": 3600,
                    },
                }
            ),
        )
    )
    fleet.inbox.put((site, lamp, "cmd", orjson.dumps({"dim": 100, "duration_s": 3600})))
    fleet.run()

    def times(device: str) -> list[list[float]]:
        return [
            [float(p[0]["bt"]) + float(r.get("t", 0)) for r in p]
            for p in _records(fleet.log, device)
        ]

    packs = times(batched)
    assert len(packs) > 10
    assert all(len(p) == 3 for p in packs[:-1])  # three samples per message
    assert set(np.diff([t for p in packs for t in p])) == {600.0}
    silent = [t for p in times(quiet) for t in p]  # unchanged volume: only every max_silence
    assert len(silent) > 5
    assert set(np.diff(silent)) == {3600.0}
    dims = [r["v"] for p in _records(fleet.log, lamp) for r in p if r.get("n") == "dim"]
    first_hour = dims[:6]  # 10-minute samples during the 1-hour override, at noon
    assert first_hour == [100.0] * len(first_hour)
    assert 0.0 in dims[6:]  # daytime again once the override expired


def test_simulated_energy_is_consistent() -> None:
    scenario = small_scenario("nrg/v1")
    fleet = Fleet(build_town(scenario, 9), "mqtt://127.0.0.1:1", days=0.25, start=1.767e9)
    fleet.log = []
    truth = fleet.run()
    site = scenario.sites[0].site
    town = fleet.town.sites[0]
    hours = 0.25 * 24
    for c, cab in enumerate(town.cabinets):
        lamps = sum(
            truth.energy_wh[f"{site}/{d}"]
            for d, k in zip(town.luminaires, town.lum_cabinet, strict=True)
            if k == c
        )
        light = scenario.sites[0].lighting
        assert truth.energy_wh[f"{site}/{cab}"] == pytest.approx(
            lamps * (1.0 + light.line_loss_fraction) + light.cabinet_overhead_w * hours
        )
    balance = truth.water[f"{site}/dma-0"]
    assert balance["inflow_m3"] == pytest.approx(
        balance["consumption_m3"]
        + balance["background_m3"]
        + balance["leak_m3"]
        + balance["outflow_m3"]
    )
    consumption = sum(v for k, v in truth.volume_m3.items() if "/wm-0-" in k)
    assert consumption == pytest.approx(balance["consumption_m3"])


def test_the_truth_of_a_site_meter_between_two_of_its_readings() -> None:
    """What the pump's counters moved between any two of its published readings is what the
    truth says it really measured in that window (the demo's check of the stored window)."""
    scenario = small_scenario("mark/v1", clock_skew=0)
    fleet = Fleet(build_town(scenario, 9), "mqtt://127.0.0.1:1", days=0.25, start=1.767e9)
    fleet.log = []
    truth = fleet.run()
    site = scenario.sites[0].site
    seen: dict[str, list[tuple[float, float]]] = {"energy": [], "volume": []}
    for pack in _records(fleet.log, "pump-1"):
        base = float(pack[0]["bt"])  # type: ignore[arg-type]
        for r in pack:
            if r["n"] in seen:
                seen[str(r["n"])].append((base + float(r.get("t", 0.0)), float(r["v"])))  # type: ignore[arg-type]
    energy, volume = sorted(seen["energy"]), sorted(seen["volume"])
    assert len(energy) > 10
    for a, b in ((0, -1), (2, len(energy) // 2)):
        found = truth.between(f"{site}/pump-1", energy[a][0], energy[b][0])
        assert found is not None
        assert found[0] / 1000.0 == pytest.approx(energy[b][1] - energy[a][1], abs=1e-4)
        assert found[1] == pytest.approx(volume[b][1] - volume[a][1], abs=1e-3)
        assert found[0] < truth.energy_wh[f"{site}/pump-1"]
    assert truth.between(f"{site}/pump-1", truth.start, truth.end) is None  # before any sample


@pytest.mark.services
def test_gateway_is_ready_once_the_retained_configs_arrived(private_broker: Mosquitto) -> None:
    """A device that reconnects must follow its retained config from its first sample: the
    gateway returns from ``wait_ready`` only when the broker delivered every retained one."""
    root, site, count = "ready/v1", "town", 400
    pusher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cfg-pusher")
    pusher.connect("127.0.0.1", private_broker.port)
    pusher.loop_start()
    infos = [
        pusher.publish(
            f"{root}/{site}/lum-{n}/config", orjson.dumps({"version": n + 1}), qos=1, retain=True
        )
        for n in range(count)
    ]
    for info in infos:
        info.wait_for_publish(10)
    pusher.disconnect()
    pusher.loop_stop()
    inbox: queue.Queue[Inbound] = queue.Queue()
    gateway = Gateway(site, "gw-lighting", root, "gw-test", mqtt.MQTTv5, inbox)
    gateway.connect(urlsplit(private_broker.url))
    try:
        assert gateway.wait_ready(timeout_s=10)
        assert inbox.qsize() == count  # every retained config already there
        got = {inbox.get_nowait()[1] for _ in range(count)}
        assert got == {f"lum-{n}" for n in range(count)}
    finally:
        gateway.close()


def test_households_draw_water_some_hours_only() -> None:
    rng = np.random.default_rng(5)
    night = np.concatenate([physics.household_use(rng, 1000, 0.25) for _ in range(200)])
    day = np.concatenate([physics.household_use(rng, 1000, 1.5) for _ in range(200)])
    # Mean 1: the hourly volume stays what the demand pattern says...
    assert_allclose([night.mean(), day.mean()], [1.0, 1.0], rtol=0.02)
    # ...but at night most households draw nothing in an hour (0.6 x 0.25 = 15 % do).
    assert_allclose((night > 0).mean(), 0.15, atol=0.01)
    assert_allclose((day > 0).mean(), 0.9, atol=0.01)
    # So over a day a household's index stands still for hours: only a leak keeps it moving.
    hours = [physics.household_use(rng, 1000, p) for p in [0.25] * 6 + [1.0] * 18]
    assert (np.stack(hours) == 0).any(axis=0).mean() > 0.99


# --- meter faults: what counters report, not what is consumed ----------------------------------
_QUIET = dict.fromkeys(
    (
        "malformed",
        "duplicates",
        "out_of_order",
        "late",
        "dropouts",
        "clock_skew",
        "unknown_devices",
    ),
    0,
)
_METER_FAULTS = {
    "counter_resets": 1,
    "counter_rollovers": 1,
    "meter_replacements": 1,
    "spurious_zeros": 1,
    "power_gaps": 1,
}


def _series(log: list[tuple[str, bytes]], device: str, metric: str) -> list[tuple[float, float]]:
    """(time, value in the canonical unit: Wh, W) of ``metric`` as ``device`` sent it."""
    scale = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0}
    out = []
    for topic, payload in log:
        if topic.endswith(f"/{device}/up"):
            records, problems = decode(payload, device, 0.0)
            assert not problems
            out += [(r.time, r.value * scale[r.unit or ""]) for r in records if r.metric == metric]
    return sorted(out)


@pytest.fixture(scope="module")
def meter_fault_runs() -> tuple[Fleet, Fleet]:
    """Two days of the small town, with and without the meter faults (same seed)."""
    fleets = []
    for faults in ({}, _METER_FAULTS):
        scenario = small_scenario("mtr/v1", **_QUIET, **faults)
        fleet = Fleet(build_town(scenario, 4), "mqtt://127.0.0.1:1", days=2.0, start=1.767e9)
        fleet.log = []
        fleet.run()
        fleets.append(fleet)
    return fleets[0], fleets[1]


def _device_rows(path: Path) -> dict[str, dict[str, str]]:
    return {r["device"]: r for r in csv.DictReader(path.read_text().splitlines())}


def _fault_event(fleet: Fleet, kind: str) -> dict[str, Any]:
    events = [e for e in fleet.truth.events if e["kind"] == kind]
    assert len(events) == 1
    assert fleet.truth.faults[kind] == 1
    return events[0]


def _around(series: list[tuple[float, float]], at: float) -> tuple[int, int]:
    """Index of the last reading before ``at`` and of the first at or after it."""
    after = next(k for k, (t, _v) in enumerate(series) if t >= at)
    assert after > 0
    return after - 1, after


def test_meter_faults_change_no_physics(meter_fault_runs: tuple[Fleet, Fleet]) -> None:
    clean, faulty = meter_fault_runs
    assert faulty.truth.energy_wh == clean.truth.energy_wh  # faults of the reporting only
    assert faulty.truth.volume_m3 == clean.truth.volume_m3
    touched = {e["device"] for e in faulty.truth.events if e["kind"] in _METER_EVENT_KINDS}
    assert len(touched) == 5  # one device per fault
    assert [m for m in faulty.log if m[0].split("/")[-2] not in touched] == [
        m for m in clean.log if m[0].split("/")[-2] not in touched
    ]
    assert not any(e["kind"] in _METER_EVENT_KINDS for e in clean.truth.events)


_METER_EVENT_KINDS = {
    "counter_reset",
    "counter_rollover",
    "meter_replaced",
    "spurious_zero",
    "power_gap",
}


def test_meter_faults_are_deterministic() -> None:
    scenario = small_scenario("mdet/v1", **_METER_FAULTS)
    runs = []
    for _ in range(2):
        fleet = Fleet(build_town(scenario, 3), "mqtt://127.0.0.1:1", days=1.0, start=1.767e9)
        fleet.log = []
        truth = fleet.run()
        runs.append((fleet.log, truth.events, truth.faults))
    assert runs[0] == runs[1]
    assert all(runs[0][2].get(k) == 1 for k in _METER_EVENT_KINDS)


def test_a_counter_reset_restarts_the_index_from_zero(
    meter_fault_runs: tuple[Fleet, Fleet],
) -> None:
    clean, faulty = meter_fault_runs
    event = _fault_event(faulty, "counter_reset")
    got = _series(faulty.log, event["device"], "energy")
    ref = _series(clean.log, event["device"], "energy")
    assert [t for t, _ in got] == [t for t, _ in ref]
    before, after = _around(got, event["at"])
    assert got[:after] == ref[:after]
    assert 0.0 <= got[after][1] <= ref[after][1] - ref[before][1] + 0.01  # since the reset
    assert_allclose(
        np.diff([v for _, v in got[after:]]), np.diff([v for _, v in ref[after:]]), atol=0.02
    )


def test_a_register_rolls_over_at_its_maximum(
    meter_fault_runs: tuple[Fleet, Fleet], tmp_path: Path
) -> None:
    clean, faulty = meter_fault_runs
    event = _fault_event(faulty, "counter_rollover")
    top = event["counter_max_wh"]
    assert top == faulty.scenario.faults.counter_max_wh
    got = _series(faulty.log, event["device"], "energy")
    ref = _series(clean.log, event["device"], "energy")
    before, after = _around(got, event["at"])
    steps = np.diff([v for _, v in got])
    assert [k for k, s in enumerate(steps) if s < 0] == [before]  # one wrap, at the event
    assert got[before][1] > top - 1000.0
    assert got[after][1] < 1000.0
    assert got[0][1] > top * 0.5  # started near the maximum
    assert_allclose(np.mod(steps, top), np.diff([v for _, v in ref]), atol=0.05)
    _dmas, devices = write_inventory(faulty.town, tmp_path, start=faulty.t0, days=faulty.days)
    rows = _device_rows(devices)
    assert float(rows[event["device"]]["counter_max_wh"]) == top
    assert sum(1 for r in rows.values() if r["counter_max_wh"]) == 1


def test_a_replaced_meter_reports_a_new_index(
    meter_fault_runs: tuple[Fleet, Fleet], tmp_path: Path
) -> None:
    clean, faulty = meter_fault_runs
    event = _fault_event(faulty, "meter_replaced")
    got = _series(faulty.log, event["device"], "energy")
    ref = _series(clean.log, event["device"], "energy")
    before, after = _around(got, event["at"])
    assert got[:after] == ref[:after]
    new = event["new_index_wh"]
    assert 0.05 * got[before][1] < new < 0.6 * got[before][1]  # a drop, far from zero
    assert new <= got[after][1] <= new + ref[after][1] - ref[before][1] + 0.01
    assert_allclose(
        np.diff([v for _, v in got[after:]]), np.diff([v for _, v in ref[after:]]), atol=0.02
    )
    _dmas, devices = write_inventory(faulty.town, tmp_path, start=faulty.t0, days=faulty.days)
    rows = _device_rows(devices)
    assert datetime.fromisoformat(rows[event["device"]]["replaced_at"]).timestamp() == event["at"]
    assert sum(1 for r in rows.values() if r["replaced_at"]) == 1
    # Without the run's start the instant is unknown: no replaced_at, the maximum stays.
    _dmas, bare = write_inventory(faulty.town, tmp_path / "bare")
    header = bare.read_text().splitlines()[0].split(",")
    assert header == [*DEVICE_FILE_COLUMNS, "cabinet", "counter_max_wh"]
    _dmas, plain = write_inventory(clean.town, tmp_path / "plain", start=clean.t0)
    assert plain.read_text().splitlines()[0].split(",") == [*DEVICE_FILE_COLUMNS, "cabinet"]


def test_a_spurious_zero_is_one_reading(meter_fault_runs: tuple[Fleet, Fleet]) -> None:
    clean, faulty = meter_fault_runs
    event = _fault_event(faulty, "spurious_zero")
    got = _series(faulty.log, event["device"], "energy")
    ref = _series(clean.log, event["device"], "energy")
    zeros = [k for k, (_t, v) in enumerate(got) if v == 0.0]
    assert len(zeros) == 1
    assert got[zeros[0]][0] == event["at"]
    assert ref[zeros[0]][1] > 0
    assert got[: zeros[0]] + got[zeros[0] + 1 :] == ref[: zeros[0]] + ref[zeros[0] + 1 :]


def test_a_power_gap_silences_power_only(meter_fault_runs: tuple[Fleet, Fleet]) -> None:
    clean, faulty = meter_fault_runs
    event = _fault_event(faulty, "power_gap")
    start, end = event["start"], event["end"]
    assert end - start == faulty.scenario.faults.power_gap_s
    device = event["device"]
    power = _series(faulty.log, device, "power")
    ref = _series(clean.log, device, "power")
    assert not [t for t, _ in power if start <= t < end]
    assert any(t < start for t, _ in power)
    assert any(t >= end for t, _ in power)
    assert power == [(t, v) for t, v in ref if not start <= t < end]
    energy = _series(faulty.log, device, "energy")
    assert energy == _series(clean.log, device, "energy")  # the counter goes on
    assert any(start <= t < end for t, _ in energy)
