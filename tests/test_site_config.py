"""Per-commune configuration (core/site_config.py): ``[sites.SITE.SECTION]`` over the operator's
keys, its errors naming the site, and each stage applying a commune's own keys to that commune
only — the policies publishing its programs, the energy stage its counter rules, the anomaly
scan its thresholds — on a real PostgreSQL and a real Mosquitto."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from anomaly.config import AnomalyConfig
from app.cli import main
from app.config import load_config
from core.config import Config
from core.errors import ConfigError
from core.inventory import import_inventory, write_inventory_csv
from core.site_config import PerSite, deep_merge
from energy.config import EnergyConfig
from policies.config import PoliciesConfig, parse_policies
from policies.desired import InventoryDevice, InventorySite, desired_configs
from policies.mqtt import Link
from policies.site_policies import load_site_policies
from simulators.history import write_history
from simulators.history_scenario import FixedLeak, HistoryScenario

PARIS = ZoneInfo("Europe/Paris")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the configuration file -------------------------------------------------------------------


def test_a_site_keeps_the_operator_keys_it_does_not_set(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "s.toml",
        """
[anomaly]
min_leak_fraction = 0.1
holidays = [["2026-02-14", "2026-03-02"]]

[energy]
faults_min_hours = 4

[policies.programs.late]
steps = [["23:00", 50]]

[policies.calendars]
default = "late"

[policies.floors]
M3 = 30

[sites.lyon-3e.anomaly]
holidays = []
min_burst_m3h = 0.5

[sites.lyon-3e.policies.programs.eco]
steps = [["22:00", 30]]

[sites.lyon-3e.policies.calendars]
default = "eco"

[sites.lyon-3e.energy]
default_hold_s = 3600
""",
    )
    config = load_config(path, env={})
    anomaly = config.per_site(AnomalyConfig)
    own = anomaly.get("lyon-3e")
    assert (own.min_leak_fraction, own.min_burst_m3h, own.holidays) == (0.1, 0.5, ())
    other = anomaly.get("villeurbanne")
    assert other is config.section(AnomalyConfig)
    assert other.min_burst_m3h == AnomalyConfig().min_burst_m3h
    assert len(other.holidays) == 1
    policies = config.per_site(PoliciesConfig).get("lyon-3e")
    assert sorted(policies.programs) == ["eco", "late"]  # tables merge: the operator's kept
    assert policies.calendars.default == "eco"
    assert policies.floors == {"M3": 30.0}
    energy = config.per_site(EnergyConfig).get("lyon-3e")
    assert (energy.default_hold_s, energy.faults_min_hours) == (3600.0, 4)
    assert config.for_site("lyon-3e").section(EnergyConfig) is energy
    assert config.for_site("villeurbanne") is config
    assert config.dump()["sites"]["lyon-3e"]["energy"]["default_hold_s"] == 3600.0


def test_arrays_replace_and_tables_merge() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}  # not changed in place


def test_errors_name_the_file_the_site_the_key_and_the_value(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.toml",
        """
[sites.lyon-3e.policies.floors]
M3 = 120

[sites.lyon-3e.anomaly]
interval_s = 60

[sites.lyon-3e.database]
url = "postgresql://x@y/z"

[sites."bad site".energy]
faults_min_hours = 3

[sites.villeurbanne.energy]
faults_min_hours = "often"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = str(caught.value)
    assert f"{path}: [sites.lyon-3e.policies]: floors.M3 = 120: expected" in text
    assert "[sites.lyon-3e.anomaly] interval_s = 60: not settable per site" in text
    assert "the keys a site can set: baseline_nights" in text
    assert "[sites.lyon-3e.database]: no section that can be set per site" in text
    assert "expected one of anomaly, energy, policies" in text
    assert "[sites.bad site]: not a site id" in text
    assert "[sites.villeurbanne.energy]: faults_min_hours = 'often': expected" in text


def test_a_broken_operator_section_is_reported_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.toml",
        "[energy]\nfaults_min_hours = 0\n\n[sites.lyon-3e.energy]\ndefault_hold_s = 600\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).count("faults_min_hours") == 1
    assert "[energy] faults_min_hours = 0" in str(caught.value)


def test_a_policies_file_with_sites_and_its_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(
        tmp_path / "p.toml",
        """
[programs.late]
steps = [["23:00", 50]]

[calendars]
default = "late"

[sites.lyon-3e.programs.eco]
steps = [["22:00", 30]]

[sites.lyon-3e.calendars]
default = "eco"
""",
    )
    per_site = load_site_policies(good)
    assert per_site.get("lyon-3e").calendars.default == "eco"
    assert per_site.get("other").calendars.default == "late"
    assert main(["policies", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "site lyon-3e (its own keys over the file's):" in out
    assert "eco" in out.split("site lyon-3e")[1]
    bad = _write(
        tmp_path / "bad.toml",
        '[programs.late]\nsteps = [["23:00", 50]]\n[calendars]\ndefault = "late"\n\n'
        "[sites.lyon-3e.calendars]\n"
        'default = "nowhere"\n\n[sites.lyon-3e.service]\ninterval_s = 5\n',
    )
    assert main(["policies", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: [sites.lyon-3e]: calendars.default = 'nowhere'" in err
    assert "the name of a program (one of late)" in err
    assert "[sites.lyon-3e] service = " in err
    assert "not settable per site" in err


# --- the policies -----------------------------------------------------------------------------


def test_each_site_gets_its_own_programs() -> None:
    operator = parse_policies({"programs": {"full": {}}, "calendars": {"default": "full"}}, "t")
    own = parse_policies(
        {
            "programs": {"full": {}, "eco": {"steps": [["22:00", 30]]}},
            "calendars": {"default": "eco"},
            "reporting": {"luminaire": {"day_interval_s": 7200, "night_interval_s": 1200}},
        },
        "t",
    )
    sites = {s: InventorySite(s, "Europe/Paris", 45.76, 4.84) for s in ("lyon-3e", "villeurbanne")}
    devices = [
        InventoryDevice(1, "lyon-3e", "lum-1", "luminaire", lighting_group="g"),
        InventoryDevice(2, "villeurbanne", "lum-1", "luminaire", lighting_group="g"),
    ]
    noon = datetime(2026, 12, 2, 12, tzinfo=PARIS).timestamp()
    found = {
        d.device.site: d
        for d in desired_configs(PerSite(operator, {"lyon-3e": own}), sites, devices, (), noon)
    }
    assert (found["lyon-3e"].program, found["villeurbanne"].program) == ("eco", "full")
    lyon, other = found["lyon-3e"], found["villeurbanne"]
    assert lyon.lighting is not None
    assert other.lighting is not None
    assert [level for _, level in lyon.lighting.steps] == [30.0]
    assert other.lighting.steps == ()
    assert lyon.reporting.interval_s == 7200  # its own reporting, by day
    assert other.reporting.interval_s != 7200
    assert lyon.digest != other.digest


def _inventory(conn: psycopg.Connection, tmp_path: Path, sites: list[str], devices: Any) -> None:
    write_inventory_csv(
        tmp_path / "sites.csv",
        [{"site": s, "timezone": "Europe/Paris", "lat": 45.76, "lon": 4.84} for s in sites],
        ("site", "timezone", "lat", "lon"),
    )
    write_inventory_csv(
        tmp_path / "devices.csv",
        devices,
        ("site", "device", "kind", "group", "lighting_class", "nominal_power_w"),
    )
    import_inventory(conn, tmp_path / "sites.csv")
    import_inventory(conn, tmp_path / "devices.csv")
    conn.commit()


@pytest.mark.services
def test_policies_publish_gives_each_commune_its_programs(
    fresh_db_url: str, mqtt_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = f"test{uuid.uuid4().hex[:8]}/v1"
    sites = ["lyon-3e", "villeurbanne"]
    main(["--db-url", fresh_db_url, "db", "upgrade"])
    with psycopg.connect(fresh_db_url) as conn:
        _inventory(
            conn, tmp_path, sites,
            [{"site": s, "device": f"lum-{n}", "kind": "luminaire", "group": "rue"}
             for s in sites for n in (1, 2)],
        )  # fmt: skip
    path = _write(
        tmp_path / "sobriety.toml",
        f"""
[database]
url = "{fresh_db_url}"

[mqtt]
url = "{mqtt_url}"
root = "{root}"
client_id = "c-{uuid.uuid4().hex[:8]}"

[policies.programs.full]
[policies.calendars]
default = "full"

[sites.lyon-3e.policies.programs.eco]
steps = [["22:00", 30]]
[sites.lyon-3e.policies.calendars]
default = "eco"
""",
    )
    capsys.readouterr()
    try:
        assert main(["--config", str(path), "policies", "publish", "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["programs"] == {"eco": 2, "full": 2}
        with psycopg.connect(fresh_db_url) as conn:
            rows = conn.execute(
                "SELECT site, device, program, payload FROM api.device_configs ORDER BY 1, 2"
            ).fetchall()
        assert [(r[0], r[2]) for r in rows] == [
            ("lyon-3e", "eco"), ("lyon-3e", "eco"), ("villeurbanne", "full"),
            ("villeurbanne", "full"),
        ]  # fmt: skip
        steps = {r[0]: r[3]["lighting"]["steps"] for r in rows}
        assert steps == {"lyon-3e": [["22:00", 30.0]], "villeurbanne": []}
    finally:  # the retained configs off the shared broker
        config = load_config(path, env={})
        link = Link(config, client_id=f"clean-{uuid.uuid4().hex[:8]}")
        link.connect()
        link.publish_all(
            ((link.topic(s, f"lum-{n}", "config"), b"", True) for s in sites for n in (1, 2)), 10
        )
        link.close()


# --- the energy stage -------------------------------------------------------------------------


@pytest.mark.services
def test_energy_applies_a_commune_s_counter_rules_to_it_only(
    fresh_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lamp's power every 10 min with a 3-hour silence at both communes; the one whose
    ``default_hold_s`` is 4 h bridges the silence, the other counts missing hours."""
    sites = ["lyon-3e", "villeurbanne"]
    day = datetime(2026, 11, 10, tzinfo=PARIS)
    main(["--db-url", fresh_db_url, "db", "upgrade"])
    with psycopg.connect(fresh_db_url) as conn:
        _inventory(
            conn, tmp_path, sites,
            [{"site": s, "device": "lamp", "kind": "luminaire", "nominal_power_w": 60}
             for s in sites],
        )  # fmt: skip
        ids = [r[0] for r in conn.execute("SELECT id FROM devices ORDER BY site")]
        power = conn.execute("SELECT id FROM metrics WHERE name = 'power'").fetchone()
        assert power is not None
        start = day - timedelta(days=1)
        with (
            conn.cursor() as cur,
            cur.copy("COPY readings (device_id, metric_id, time, value) FROM STDIN") as copy,
        ):
            for step in range(3 * 144):
                t = start + timedelta(minutes=10 * step)
                if day + timedelta(hours=2) <= t < day + timedelta(hours=5):
                    continue  # silent from 02:00 to 05:00 on the day
                for device_id in ids:
                    copy.write_row((device_id, power[0], t, 50.0))
    path = _write(
        tmp_path / "s.toml",
        f'[database]\nurl = "{fresh_db_url}"\n\n[sites.lyon-3e.energy]\ndefault_hold_s = 14400\n',
    )
    noon, one = (day + timedelta(hours=12)).isoformat(), (day + timedelta(hours=13)).isoformat()
    assert main(["--config", str(path), "energy", "recompute", "--since", noon,
                 "--until", one]) == 0  # fmt: skip
    with psycopg.connect(fresh_db_url) as conn:
        rows = {
            site: (float(kwh), hours)
            for site, kwh, hours in conn.execute(
                "SELECT site, kwh, missing_hours FROM api.energy_daily WHERE day = %s",
                (day.date(),),
            )
        }
    assert rows["lyon-3e"] == (pytest.approx(1.2), 0)  # 50 W all 24 hours, bridged
    kwh, missing = rows["villeurbanne"]
    assert missing >= 2
    assert kwh < 1.2 - 0.1


# --- the anomaly stage ------------------------------------------------------------------------


@pytest.mark.services
def test_anomaly_scan_applies_a_commune_s_thresholds_to_it_only(
    fresh_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same network with the same burst at two communes: the one that raised its
    smallest leak worth finding far above it gets no alert, the other does."""
    main(["--db-url", fresh_db_url, "db", "upgrade"])
    scenario = HistoryScenario(
        name="per-site", site="x", start=date(2026, 2, 2), days=30, dmas=1,
        customers=(30, 30), outlet_share=0.0, school_holidays=[], large_consumers=0,
        customer_leaks=0, high_consumers=0, silent_meter_days=0.0, frozen_meter_days=0.0,
        leaks={"per_dma": 0.0},
        fixed_leaks=[FixedLeak(dma=0, kind="burst", start_day=22.4, size_fraction=0.6)],
    )  # fmt: skip
    with psycopg.connect(fresh_db_url) as conn:
        for site in ("lyon-3e", "villeurbanne"):
            write_history(conn, scenario.model_copy(update={"site": site}), 7,
                          tmp_path / site)  # fmt: skip
            conn.commit()
    path = _write(
        tmp_path / "s.toml",
        f'[database]\nurl = "{fresh_db_url}"\n\n[sites.villeurbanne.anomaly]\n'
        "min_leak_m3h = 1000.0\nmin_burst_m3h = 1000.0\n",
    )
    since = datetime(2026, 2, 2, tzinfo=UTC).isoformat()
    until = datetime(2026, 3, 4, tzinfo=UTC).isoformat()
    assert main(["--config", str(path), "anomaly", "scan", "--since", since,
                 "--until", until]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["--config", str(path), "alerts", "list", "--kind", "leak", "--format",
                 "json"]) == 0  # fmt: skip
    leaks = json.loads(capsys.readouterr().out)
    assert {a["site"] for a in leaks} == {"lyon-3e"}


def test_stages_accept_a_plain_section_for_every_site() -> None:
    cfg = EnergyConfig()
    assert PerSite.of(cfg).get("anywhere") is cfg
    per = PerSite(cfg, {"a": cfg.model_copy(update={"default_hold_s": 60.0})})
    assert PerSite.of(per) is per
    assert isinstance(Config({}).site_sections, dict)
