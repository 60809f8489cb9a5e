"""The ingest against the real Mosquitto and PostgreSQL: stored, deduplicated, rejected."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cli import main
from app.embedded.service_process import ServiceProcess
from core.config import Config
from core.errors import RejectReason
from ingest.service import IngestService
from tests.fix_db import count_readings, register
from tests.fix_ingest import make_config
from tests.fix_mqtt import Publisher, free_port, wait_until

pytestmark = pytest.mark.services

RunIngest = Callable[[Config], IngestService]


def rejected(conn: psycopg.Connection, site: str) -> list[tuple[str, str, bytes, int]]:
    return [
        (r[0], r[1], bytes(r[2]), r[3])
        for r in conn.execute(
            "SELECT reason, topic, payload, times_seen FROM rejected_messages "
            "WHERE topic LIKE %s ORDER BY id",
            (f"%/{site}/%",),
        )
    ]


def test_published_readings_are_stored_in_canonical_units(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
) -> None:
    register(conn, site, ("lum-1", "luminaire"), ("fm-1", "flow_meter"))
    service = run_ingest(make_config(db_url, mqtt_url, tmp_path, root))
    now = time.time()
    pub = Publisher(mqtt_url)
    pub.publish(
        [
            (
                f"{root}/{site}/lum-1/up",
                orjson.dumps(
                    [
                        {"bn": "lum-1:", "bt": now, "n": "power", "u": "kW", "v": 0.0214},
                        {"n": "dim", "v": 50, "t": 1},
                    ]
                ),
            ),
            (
                f"{root}/{site}/fm-1/up",
                orjson.dumps({"ts": now, "flow": 2.0, "units": {"flow": "l/s"}}),
            ),
        ]
    )
    wait_until(lambda: count_readings(conn, site) == 3, 10, "3 readings stored")
    rows = conn.execute(
        "SELECT device, metric, value, unit FROM api.readings WHERE site = %s "
        "ORDER BY device, metric",
        (site,),
    ).fetchall()
    assert rows == [
        ("fm-1", "flow", pytest.approx(7.2), "m3/h"),
        ("lum-1", "dim", 50.0, "%"),
        ("lum-1", "power", pytest.approx(21.4), "W"),
    ]
    seen = conn.execute(
        "SELECT device, last_reading_at IS NOT NULL FROM api.devices WHERE site = %s ORDER BY 1",
        (site,),
    ).fetchall()
    assert seen == [("fm-1", True), ("lum-1", True)]
    assert service.metrics.value("messages_received_total") == 2
    assert service.metrics.value("readings_stored_total") == 3
    pub.close()


def test_duplicate_deliveries_are_stored_once(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
) -> None:
    register(conn, site, ("wm-1", "water_meter"))
    service = run_ingest(make_config(db_url, mqtt_url, tmp_path, root))
    payload = orjson.dumps([{"bn": "wm-1:", "bt": time.time(), "n": "volume", "v": 12.5}])
    pub = Publisher(mqtt_url)
    pub.publish([(f"{root}/{site}/wm-1/up", payload)] * 5)
    wait_until(
        lambda: service.metrics.value("messages_received_total") == 5, 10, "5 messages received"
    )
    wait_until(lambda: service.metrics.value("readings_duplicate_total") == 4, 10, "4 duplicates")
    assert count_readings(conn, site) == 1
    # the first copy may go by the direct COPY; a batch holding a repeat goes by the merge
    assert service.metrics.value("batches_merged_total") >= 1
    pub.close()


def test_every_rejection_is_stored_counted_and_listed(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(conn, site, ("lum-1", "luminaire"))
    config = make_config(db_url, mqtt_url, tmp_path, root, ingest={"max_payload_bytes": 4096})
    service = run_ingest(config)
    now = time.time()
    up = f"{root}/{site}/lum-1/up"
    cases = {
        "invalid_json": (up, b"{not json"),
        "invalid_payload": (up, b'"just a string"'),
        "unknown_device": (f"{root}/{site}/ghost/up", b'{"power": 1}'),
        "device_mismatch": (up, orjson.dumps([{"bn": "lum-2:", "n": "power", "v": 1}])),
        "unknown_metric": (up, b'{"colour": 3}'),
        "unknown_unit": (up, orjson.dumps([{"n": "power", "u": "hp", "v": 1}])),
        "invalid_value": (up, orjson.dumps([{"n": "power", "vs": "on"}])),
        "out_of_range": (up, b'{"dim": 140}'),
        "too_large": (up, b'{"power": 1, "pad": "' + b"x" * 5000 + b'"}'),
        "timestamp_out_of_window": (up, orjson.dumps({"ts": now + 86400, "power": 3})),
        "invalid_topic": (f"{root}/{site}/lum-1/extra/up", b'{"power": 1}'),
    }
    good = (up, orjson.dumps({"ts": now, "power": 12.0}))
    pub = Publisher(mqtt_url)
    pub.publish([*cases.values(), good])
    # "invalid_topic" cannot match the subscription filter {root}/+/+/up: the broker never
    # delivers it, so it is not expected among the rejections.
    expected = {k: v for k, v in cases.items() if k != "invalid_topic"}
    wait_until(lambda: len(rejected(conn, site)) == len(expected), 10, "rejections stored")
    stored = {reason: (topic, payload) for reason, topic, payload, _ in rejected(conn, site)}
    assert set(stored) == set(expected)
    for reason, (topic, payload) in expected.items():
        assert stored[reason][0] == topic
        assert stored[reason][1] == payload[:4096]
    wait_until(lambda: count_readings(conn, site) == 1, 10, "the good message stored")
    for reason in expected:
        assert service.metrics.value("messages_rejected_total", reason=reason) == 1
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    assert main(["rejected", "--site", site, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {item["reason"] for item in listed} == set(expected)
    item = next(i for i in listed if i["reason"] == "too_large")
    assert item["payload_bytes"] > 4096
    assert {"id", "received_at", "topic", "reason", "detail", "payload"} <= set(item)
    pub.close()


def test_repeated_bad_message_counts_in_times_seen(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
) -> None:
    register(conn, site, ("lum-1", "luminaire"))
    run_ingest(make_config(db_url, mqtt_url, tmp_path, root, ingest={"batch_ms": 20}))
    pub = Publisher(mqtt_url)
    for seen in (1, 2, 3):  # one after the other, each stored before the next is sent
        pub.publish([(f"{root}/{site}/lum-1/up", b"garbage")])
        wait_until(
            lambda n=seen: [r[3] for r in rejected(conn, site)] == [n], 10, f"times_seen {seen}"
        )
    pub.close()


def test_unknown_device_registered_then_replayed(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(conn, site, ("lum-1", "luminaire"))
    run_ingest(make_config(db_url, mqtt_url, tmp_path, root))
    now = time.time()
    pub = Publisher(mqtt_url)
    pub.publish(
        [
            (
                f"{root}/{site}/new-1/up",
                orjson.dumps(
                    [
                        {"bn": "new-1:", "bt": now, "n": "power", "v": 30},
                        {"n": "dim", "v": 70},
                    ]
                ),
            ),
        ]
    )
    wait_until(
        lambda: [r[0] for r in rejected(conn, site)] == ["unknown_device"],
        10,
        "unknown_device rejection",
    )
    register(conn, site, ("new-1", "luminaire"))
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    monkeypatch.setenv("SOBRIETY_MQTT_ROOT", root)
    assert main(["rejected", "--replay", "--site", site]) == 0
    assert "replayed 1 messages, 2 readings stored" in capsys.readouterr().out
    assert count_readings(conn, site) == 2
    replayed = conn.execute(
        "SELECT replayed_at IS NOT NULL FROM rejected_messages WHERE site = %s", (site,)
    ).fetchall()
    assert replayed == [(True,)]
    assert main(["rejected", "--replay", "--site", site]) == 0
    assert "replayed 0 messages" in capsys.readouterr().out
    pub.close()


def test_import_then_export_round_trips(
    conn: psycopg.Connection,
    db_url: str,
    site: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(conn, site, ("fm-1", "flow_meter"), ("lum-1", "luminaire"))
    source = tmp_path / "history.csv"
    source.write_text(
        "time,site,device,metric,value,unit\n"
        f"2019-03-31T01:30:00+01:00,{site},fm-1,flow,1.5,l/s\n"
        f"2019-03-31T03:30:00+02:00,{site},fm-1,flow,2.5,\n"
        f"2019-03-31T04:00:00Z,{site},lum-1,power,0.04,kW\n"
        f"2019-03-31T04:00:00Z,{site},lum-1,power,x,W\n"
        f"2019-03-31T04:00:00,{site},lum-1,power,5,W\n"
        f"2019-03-31T04:00:00Z,{site},ghost,power,5,W\n"
        f"2019-03-31T04:00:00Z,{site},lum-1,dim,300,%\n"
    )
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    assert main(["import", "readings", str(source)]) == 0
    out = capsys.readouterr().out
    assert "7 lines, 3 readings stored, 0 already present, 4 rejected" in out
    assert main(["import", "readings", str(source)]) == 0
    assert "0 readings stored, 3 already present" in capsys.readouterr().out
    reasons = dict(
        conn.execute(
            "SELECT reason, detail FROM rejected_messages "
            "WHERE topic = 'import:history.csv' AND site = %s",
            (site,),
        ).fetchall()
    )
    assert sorted(reasons) == ["invalid_payload", "invalid_value", "out_of_range", "unknown_device"]
    assert reasons["invalid_value"].startswith("line 5:")
    assert reasons["invalid_payload"].startswith("line 6:")
    assert "no UTC offset" in reasons["invalid_payload"]
    assert (
        main(
            [
                "export",
                "readings",
                "--since",
                "2019-03-30T00:00:00Z",
                "--until",
                "2019-04-01T00:00:00Z",
                "--site",
                site,
            ]
        )
        == 0
    )
    exported = capsys.readouterr().out.splitlines()
    assert exported == [
        "time,site,device,metric,value,unit",
        f"2019-03-31T00:30:00.000000Z,{site},fm-1,flow,5.4,m3/h",
        f"2019-03-31T01:30:00.000000Z,{site},fm-1,flow,2.5,m3/h",
        f"2019-03-31T04:00:00.000000Z,{site},lum-1,power,40,W",
    ]
    copy = tmp_path / "exported.csv"
    copy.write_text("\n".join(exported) + "\n")
    assert main(["import", "readings", str(copy)]) == 0
    assert "3 lines, 0 readings stored, 3 already present, 0 rejected" in capsys.readouterr().out


def _documented_metrics() -> set[str]:
    """The ``sobriety_ingest_*`` names listed under "Metrics" in ingest/README.md."""
    text = (Path(__file__).resolve().parent.parent / "ingest" / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(sobriety_ingest_[a-z_]+)(?:\{[a-z]+\})?`", section))


def test_metrics_endpoint_serves_the_documented_metrics(
    db_url: str, mqtt_url: str, tmp_path: Path, root: str, run_ingest: RunIngest
) -> None:
    port = free_port()
    run_ingest(make_config(db_url, mqtt_url, tmp_path, root, metrics={"port": port}))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    served = {
        name
        for name in families
        if name.startswith("sobriety_ingest_") and not name.endswith("_created")
    }
    documented = {name.removesuffix("_total") for name in _documented_metrics()}
    assert len(documented) >= 12
    assert served == documented, "ingest/README.md and /metrics disagree"
    for name in _documented_metrics():  # counters are documented with their _total sample
        family = families[name.removesuffix("_total")]
        assert name.endswith("_total") == (family.type == "counter"), name
    rejected = families["sobriety_ingest_messages_rejected"]
    reasons = {s.labels["reason"] for s in rejected.samples if s.name.endswith("_total")}
    assert reasons == {r.value for r in RejectReason}  # every reason present from the start


def test_bad_configuration_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[ingest]\nbatch_ms = 'soon'\n")
    assert main(["--config", str(path), "ingest", "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: [ingest] batch_ms = 'soon': expected" in err


def test_the_inventory_snapshot_belongs_to_one_database(
    conn: psycopg.Connection, db_url: str, site: str, tmp_path: Path
) -> None:
    from ingest.inventory_cache import InventoryCache, snapshot_name

    register(conn, site, ("lum-1", "luminaire"))
    first = InventoryCache(db_url, 0, tmp_path / snapshot_name(db_url))
    assert first.load()
    assert first.lookup(site, "lum-1") is not None
    # The same spool directory, another database that is down: its ingest must wait for its
    # own inventory, not validate with this one.
    other = db_url.rsplit("/", 1)[0] + "/sobriety_test_absent_database"
    assert snapshot_name(other) != snapshot_name(db_url)
    second = InventoryCache(other, 0, tmp_path / snapshot_name(other))
    assert not second.load()
    assert second.size == 0
    # The database's own snapshot is used while it is down.
    again = InventoryCache(db_url.replace("127.0.0.1:5432", "127.0.0.1:1"), 0,
                           tmp_path / snapshot_name(db_url))  # fmt: skip
    assert not again.load()
    assert again.lookup(site, "lum-1") is not None


def test_an_unreachable_broker_is_said_at_once_and_retried(
    db_url: str, tmp_path: Path, root: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = free_port()  # nothing listens there
    config = make_config(db_url, f"mqtt://127.0.0.1:{closed}", tmp_path, root)
    service = IngestService(config)
    caplog.set_level("WARNING", logger="sobriety.ingest")
    service.start()
    try:
        wait_until(
            lambda: service.metrics.value("broker_connect_failures_total") >= 2,
            15,
            "two failed attempts",
        )
    finally:
        service.stop()
    said = [r.getMessage() for r in caplog.records if "cannot reach the broker" in r.getMessage()]
    assert said[:2] == [
        f"cannot reach the broker at mqtt://127.0.0.1:{closed} (attempt {n}); retrying, "
        "backoff up to 1 s"
        for n in (1, 2)
    ]


def test_run_and_anomaly_commands_serve_their_metrics(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
) -> None:
    """``sobriety run``: the ingest and leak detection in one process, one endpoint;
    ``sobriety anomaly``: the periodic service alone."""
    register(conn, site, ("lum-1", "luminaire"))
    conn.execute(  # a lamp failure found earlier, still open: the energy service counts it
        "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at) "
        "VALUES ('lamp_failure', %s, 'device', 'lum-1', now(), now())",
        (site,),
    )
    config = make_config(db_url, mqtt_url, tmp_path, root)
    run = ServiceProcess(config, tmp_path, command=("run",), name="run")
    run.start()  # ready: subscribed
    try:
        wait_until(
            lambda: run.metric("sobriety_anomaly_scan_seconds_count") >= 1, 30, "a first scan"
        )
        pub = Publisher(mqtt_url)
        pub.wait_acked(pub.publish([(f"{root}/{site}/lum-1/up", b'{"power": 12.0}')]))
        pub.close()
        wait_until(lambda: count_readings(conn, site) == 1, 30, "the reading stored")
        assert run.metric("sobriety_ingest_readings_stored_total") == 1
        assert run.metric('sobriety_anomaly_alerts_active{kind="leak"}') == 0
        # The policies service runs too: lum-1 was given a config, its metrics are exported.
        wait_until(
            lambda: run.metric("sobriety_policies_pass_seconds_count") >= 1, 30, "a first pass"
        )
        assert run.metric("sobriety_policies_devices") >= 1  # the database's other sites too
        published = conn.execute(
            "SELECT version FROM api.device_configs WHERE site = %s AND device = 'lum-1'",
            (site,),
        ).fetchone()
        assert published == (1,)
        # And the energy service: its first pass (rollup refreshed, days recomputed) done.
        wait_until(
            lambda: run.metric("sobriety_energy_pass_seconds_count") >= 1, 30, "an energy pass"
        )
        active = conn.execute(
            "SELECT count(*) FROM alerts WHERE kind = 'lamp_failure' AND state <> 'resolved'"
        ).fetchone()
        assert active is not None
        assert active[0] >= 1
        assert (
            run.metric('sobriety_energy_luminaire_faults_active{kind="lamp_failure"}')
            == (active[0])
        )
    finally:
        assert run.terminate() == 0
        clear = Publisher(mqtt_url)  # what the policies left retained on the shared broker
        configured = conn.execute(
            "SELECT site, device FROM api.device_configs WHERE published_at IS NOT NULL"
        ).fetchall()
        conn.commit()
        for s, d in configured:
            clear.client.publish(f"{root}/{s}/{d}/config", b"", qos=1, retain=True)
        clear.wait_acked(len(configured))
        clear.close()
    anomaly = ServiceProcess(
        config, tmp_path, command=("anomaly",), ready="sobriety_anomaly_scan_seconds_count",
        name="anomaly",
    )  # fmt: skip
    anomaly.start()  # ready: its first scan done
    try:
        assert anomaly.metric("sobriety_anomaly_scan_failures_total") == 0
    finally:
        assert anomaly.terminate() == 0
