"""The policies service against the real broker and database: configs published once, retained
and versioned; nothing republished when unchanged (also after a restart); escalation on a real
alert row and back; states followed into api.config_drift; invalid states stored with their
reason."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from anomaly.alerts import resolve
from core.config import Config
from core.db import upgrade
from core.inventory import import_inventory, write_inventory_csv
from core.messages import DeviceConfig, decode_config
from policies.config import PoliciesConfig, parse_policies
from policies.mqtt import Link
from policies.service import PoliciesService, publish_pass
from tests.fix_ingest import make_config
from tests.fix_mqtt import wait_until

pytestmark = pytest.mark.services

POLICIES: dict[str, Any] = {
    "programs": {"residential": {"steps": [["22:00", 60], ["23:30", 20]]}},
    "calendars": {"default": "residential"},
    "floors": {"M4": 30},
    "exceptions": [{"devices": ["lum-3"], "floor": 50, "reason": "crossing"}],
    "reporting": {
        "flow_meter": {"day_interval_s": 300, "night_interval_s": 300, "escalated_interval_s": 60},
        "pressure_sensor": {"escalated_interval_s": 60},
        "water_meter": {"escalated_interval_s": 900},
    },
}
DEVICES = [
    {"device": "lum-1", "kind": "luminaire", "group": "rue-a", "lighting_class": "M4"},
    {"device": "lum-2", "kind": "luminaire", "group": "rue-a", "lighting_class": "M4"},
    {"device": "lum-3", "kind": "luminaire", "group": "rue-a", "lighting_class": "M4"},
    {"device": "fm-1", "kind": "flow_meter", "dma": "d1", "role": "inlet"},
    {"device": "ps-1", "kind": "pressure_sensor", "dma": "d1"},
    {"device": "wm-1", "kind": "water_meter", "dma": "d1"},
    {"device": "wm-9", "kind": "water_meter", "dma": "d2"},
]


class Watcher:
    """A subscriber to a root's ``config`` and ``cmd`` topics, with a barrier: a marker
    published by the same connection as the configs arrives after them (one publisher's
    messages reach a subscriber in order)."""

    def __init__(self, mqtt_url: str, root: str) -> None:
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        url = urlsplit(mqtt_url)
        self.client.connect(url.hostname or "127.0.0.1", url.port or 1883)
        self.client.loop_start()
        self.client.subscribe([(f"{root}/+/+/config", 1), (f"{root}/+/+/cmd", 1)])
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def configs(self) -> dict[str, DeviceConfig]:
        """The last config received per device."""
        with self.lock:
            items = [(t, p) for t, p, _ in self.received if t.endswith("/config") and p]
        return {t.split("/")[-2]: decode_config(p) for t, p in items}

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(1 for t, p, _ in self.received if t.endswith(suffix) and p)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def db_url(fresh_db_url: str) -> str:
    """A database of the test's own: the service configures every device of its database."""
    with psycopg.connect(fresh_db_url) as work:
        upgrade(work)
    return fresh_db_url


@pytest.fixture
def town(conn: psycopg.Connection, site: str, tmp_path: Path) -> str:
    """A site in Paris with three luminaires, a DMA with a flow meter, a pressure sensor and a
    customer meter, and a customer meter of another DMA."""
    write_inventory_csv(
        tmp_path / "sites.csv",
        [{"site": site, "timezone": "Europe/Paris", "lat": 48.85, "lon": 2.35}],
        ("site", "timezone", "lat", "lon"),
    )
    write_inventory_csv(
        tmp_path / "dmas.csv", [{"site": site, "dma": "d1"}, {"site": site, "dma": "d2"}],
        ("site", "dma"),
    )  # fmt: skip
    write_inventory_csv(
        tmp_path / "devices.csv",
        [{"site": site, **d} for d in DEVICES],
        ("site", "device", "kind", "dma", "role", "group", "lighting_class"),
    )
    for name in ("sites.csv", "dmas.csv", "devices.csv"):
        import_inventory(conn, tmp_path / name)
    conn.commit()
    return site


@pytest.fixture
def config(db_url: str, mqtt_url: str, tmp_path: Path, root: str) -> Config:
    return make_config(db_url, mqtt_url, tmp_path, root, policies=POLICIES)


@pytest.fixture
def watcher(mqtt_url: str, root: str, config: Config) -> Iterator[Watcher]:
    found = Watcher(mqtt_url, root)
    yield found
    # Clear what the test left retained on the shared broker.
    link = Link(config, client_id=f"clean-{uuid.uuid4().hex[:8]}")
    link.connect()
    topics = {t for t, _, retained in found.received if t.endswith("/config")}
    link.publish_all(((t, b"", True) for t in topics), 10)
    link.close()
    found.close()


def _barrier(link: Link, watcher: Watcher, site: str) -> None:
    """Wait until everything ``link`` published so far reached ``watcher``."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    before = watcher.count("/cmd")
    link.publish_all([(link.topic(site, marker, "cmd"), b"{}", False)], 10)
    wait_until(lambda: watcher.count("/cmd") > before, 10, "the marker")


def _versions(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT d.device, c.version FROM device_configs c JOIN devices d ON d.id = c.device_id"
    ).fetchall()
    conn.commit()
    return dict(rows)


def test_configs_are_published_once_retained_and_versioned(
    conn: psycopg.Connection, town: str, config: Config, watcher: Watcher, db_url: str
) -> None:
    policies = config.section(PoliciesConfig)
    link = Link(config)
    link.connect()
    noon = time.time()
    with psycopg.connect(db_url) as work:
        first = publish_pass(work, link, policies, noon)
    assert (first.devices, first.published, first.unchanged) == (len(DEVICES), len(DEVICES), 0)
    assert first.programs == {"residential": 3}
    wait_until(lambda: len(watcher.configs()) == len(DEVICES), 10, "every config delivered")
    configs = watcher.configs()
    assert {c.version for c in configs.values()} == {1}
    lum = configs["lum-1"].lighting
    assert lum is not None
    assert [level for _, level in lum.steps] == [60.0, 30.0]  # 20 % raised to the M4 floor
    assert configs["fm-1"].lighting is None
    assert configs["fm-1"].reporting is not None
    assert configs["fm-1"].reporting.interval_s == 300
    assert _versions(conn) == {d["device"]: 1 for d in DEVICES}
    link.close()

    # A restart: a new connection, the versions from the database — nothing is sent.
    delivered = watcher.count("/config")
    link = Link(config)
    link.connect()
    with psycopg.connect(db_url) as work:
        again = publish_pass(work, link, policies, noon + 30)
    assert (again.published, again.unchanged) == (0, len(DEVICES))
    _barrier(link, watcher, town)
    assert watcher.count("/config") == delivered

    # The luminaires' program changes: only they get a new version, the sensors keep theirs.
    changed = parse_policies(
        {**POLICIES, "programs": {"residential": {"steps": [["23:00", 50]]}}}, source="test"
    )
    with psycopg.connect(db_url) as work:
        third = publish_pass(work, link, changed, noon + 60)
    assert third.published == 3
    _barrier(link, watcher, town)
    versions = _versions(conn)
    assert {d: v for d, v in versions.items() if d.startswith("lum-")} == {
        "lum-1": 2, "lum-2": 2, "lum-3": 2,
    }  # fmt: skip
    assert {v for d, v in versions.items() if not d.startswith("lum-")} == {1}
    assert watcher.configs()["lum-2"].version == 2
    link.close()

    # What a device connecting later gets: the retained configs, last version.
    late = Watcher(config.mqtt.url, config.mqtt.root)
    try:
        wait_until(lambda: len(late.configs()) == len(DEVICES), 10, "the retained configs")
        assert late.configs()["lum-3"].version == 2
        assert all(retained for _, _, retained in late.received)
    finally:
        late.close()


def _open_leak(conn: psycopg.Connection, site: str, dma: str) -> int:
    row = conn.execute(
        """INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at)
           VALUES ('leak', %s, 'dma', %s, now(), now()) RETURNING id""",
        (site, dma),
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def test_sensors_of_a_dma_with_a_leak_alert_escalate_and_return(
    conn: psycopg.Connection, town: str, config: Config, watcher: Watcher, db_url: str
) -> None:
    policies = config.section(PoliciesConfig)
    link = Link(config)
    link.connect()
    now = time.time()
    with psycopg.connect(db_url) as work:
        publish_pass(work, link, policies, now)
        alert = _open_leak(conn, town, "d1")
        escalated = publish_pass(work, link, policies, now + 60)
    assert (escalated.published, escalated.escalated) == (3, 3)  # fm-1, ps-1, wm-1
    _barrier(link, watcher, town)
    configs = watcher.configs()
    intervals = {d: c.reporting.interval_s for d, c in configs.items() if c.reporting}
    rates = policies.reporting
    assert intervals["fm-1"] == rates["flow_meter"].escalated_interval_s == 60
    assert intervals["ps-1"] == rates["pressure_sensor"].escalated_interval_s == 60
    assert intervals["wm-1"] == 900
    assert intervals["wm-9"] == rates["water_meter"].day_interval_s  # another DMA: unchanged
    assert configs["lum-1"].version == 1  # luminaires are not escalated
    flags = dict(
        conn.execute(
            "SELECT device, escalated FROM api.device_configs WHERE site = %s", (town,)
        ).fetchall()
    )
    assert {d for d, on in flags.items() if on} == {"fm-1", "ps-1", "wm-1"}

    resolve(conn, alert, "test", "repaired")
    conn.commit()
    with psycopg.connect(db_url) as work:
        back = publish_pass(work, link, policies, now + 120)
    assert (back.published, back.escalated) == (3, 0)
    _barrier(link, watcher, town)
    configs = watcher.configs()
    assert configs["fm-1"].version == 3
    assert configs["fm-1"].reporting is not None
    assert configs["fm-1"].reporting.interval_s == rates["flow_meter"].day_interval_s
    link.close()


def _state(link: Link, site: str, device: str, body: bytes) -> None:
    link.publish_all([(link.topic(site, device, "state"), body, True)], 10)


def test_drift_appears_and_clears_as_devices_apply(
    conn: psycopg.Connection, town: str, config: Config, watcher: Watcher
) -> None:
    service = PoliciesService(config, CollectorRegistry())
    runner = threading.Thread(target=service.run)
    runner.start()
    device = Link(config, client_id=f"dev-{uuid.uuid4().hex[:8]}")
    device.connect()
    try:

        def drift() -> dict[str, tuple[Any, ...]]:
            rows = conn.execute(
                """SELECT device, published_version, applied_version, online, config_error
                   FROM api.config_drift WHERE site = %s""",
                (town,),
            ).fetchall()
            conn.commit()
            return {r[0]: tuple(r[1:]) for r in rows}

        wait_until(lambda: service.passes >= 1, 20, "a first pass")
        assert drift() == {d["device"]: (1, None, None, None) for d in DEVICES}
        _state(device, town, "lum-1", b'{"online": true, "config_version": 0}')
        wait_until(lambda: drift()["lum-1"] == (1, 0, True, None), 10, "lum-1's old version")
        for d in DEVICES:
            version = 1 if d["device"] != "lum-2" else 0
            error = ', "config_error": "steps: too many"' if d["device"] == "lum-2" else ""
            body = f'{{"online": true, "config_version": {version}{error}}}'.encode()
            _state(device, town, d["device"], body)
        wait_until(lambda: set(drift()) == {"lum-2"}, 10, "every device but lum-2 applied")
        assert drift()["lum-2"] == (1, 0, True, "steps: too many")
        _state(device, town, "wm-9", b'{"online": "maybe"}')
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s "
                    "AND reason = 'invalid_payload' AND detail LIKE %s",
                    (f"%/{town}/wm-9/state", "%online%"),
                ).fetchone()[0]  # type: ignore[index]
                == 1
            ),
            10,
            "the invalid state stored with its reason",
        )
        conn.commit()
        wait_until(lambda: service.passes >= 1 and service.states.written >= 8, 10, "states")
    finally:
        service.stopping.set()
        runner.join(timeout=20)
        for d in DEVICES:
            _state(device, town, d["device"], b"")
        device.close()
    assert not runner.is_alive()


def test_overrides_are_sent_recorded_listed_and_expire(
    conn: psycopg.Connection,
    town: str,
    config: Config,
    watcher: Watcher,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import UTC, datetime, timedelta

    from app.cli import main
    from app.embedded.service_process import config_toml
    from policies.store import active_overrides

    path = tmp_path / "sobriety.toml"
    path.write_text(config_toml(config))
    until = datetime.now(UTC) + timedelta(hours=2)
    argv = [
        "--config",
        str(path),
        "policies",
        "override",
        "--site",
        town,
        "--group",
        "rue-a",
        "--level",
        "80",
        "--until",
        until.isoformat(),
        "--reason",
        "fête de quartier",
    ]
    assert main(argv) == 0
    assert "3 luminaire(s)" in capsys.readouterr().out
    wait_until(lambda: watcher.count("/cmd") == 3, 10, "a command per luminaire")
    with watcher.lock:
        commands = [orjson.loads(p) for t, p, _ in watcher.received if t.endswith("/cmd")]
    assert {c["dim"] for c in commands} == {80.0}
    assert all(abs(c["duration_s"] - 7200) < 60 for c in commands)
    items = active_overrides(conn, time.time(), town)
    assert [(o.lighting_group, o.level, o.luminaires, o.reason) for o in items] == [
        ("rue-a", 80.0, 3, "fête de quartier")
    ]
    assert active_overrides(conn, until.timestamp() + 1, town) == []  # ended by itself
    assert abs(items[0].until - until.timestamp()) < 1e-3
    # Errors: past, beyond seven days, an unknown group (the site's are listed).
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    far = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    base = argv[:6]
    for extra, code in (
        (["--group", "rue-a", "--until", past], 2),
        (["--group", "rue-a", "--until", far], 2),
        (["--group", "rue-z", "--until", until.isoformat()], 2),
    ):
        assert main([*base, *extra, "--level", "10", "--reason", "x"]) == code
    errors = capsys.readouterr().err
    assert "already past" in errors
    assert "more than 7 days" in errors
    assert "--group rue-z: no such lighting group" in errors
    assert "(one of rue-a)" in errors
    assert watcher.count("/cmd") == 3  # nothing more was sent
    assert len(active_overrides(conn, time.time(), town)) == 1
    # lum-1 comes back online after the override was sent (its state, as the state writer
    # records it): the next pass sends it again for the time that remains, once; the others
    # (no state since) get nothing.
    conn.execute(
        """INSERT INTO device_states (site, device, online, config_version, state_at)
           VALUES (%s, 'lum-1', true, 0, now())""",
        (town,),
    )
    conn.commit()
    link = Link(config)
    link.connect()
    with psycopg.connect(config.db_conninfo()) as work:
        first = publish_pass(work, link, config.section(PoliciesConfig), time.time())
        again = publish_pass(work, link, config.section(PoliciesConfig), time.time())
    assert (first.overrides_resent, again.overrides_resent) == (1, 0)
    wait_until(lambda: watcher.count("/lum-1/cmd") == 2, 10, "lum-1's command again")
    _barrier(link, watcher, town)
    link.close()
    with watcher.lock:
        resent = [orjson.loads(p) for t, p, _ in watcher.received if t.endswith("/lum-1/cmd")]
    assert resent[1]["dim"] == 80.0
    assert resent[1]["duration_s"] <= resent[0]["duration_s"]
    assert watcher.count("/cmd") == 3 + 1 + 1  # + lum-1 again, + the barrier's marker
    assert main(["--config", str(path), "policies", "overrides", "--format", "json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(o["site"], o["lighting_group"], o["level"]) for o in listed] == [(town, "rue-a", 80.0)]
    assert main(["--config", str(path), "policies", "overrides", "--site", town]) == 0
    assert "rue-a: 80 % until" in capsys.readouterr().out


def test_the_commands_publish_once_and_serve(
    conn: psycopg.Connection,
    town: str,
    config: Config,
    watcher: Watcher,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``sobriety policies publish`` (one pass) and ``sobriety policies`` (the service, its
    metrics on its endpoint, stopped by SIGTERM)."""
    from app.cli import main
    from app.embedded.service_process import ServiceProcess, config_toml

    path = tmp_path / "sobriety.toml"
    path.write_text(config_toml(config))
    assert main(["--config", str(path), "policies", "publish", "--format", "json"]) == 0
    first = orjson.loads(capsys.readouterr().out)
    assert (first["devices"], first["published"], first["unchanged"]) == (7, 7, 0)
    assert first["programs"] == {"residential": 3}
    assert main(["--config", str(path), "policies", "publish"]) == 0
    assert "7 devices: 0 configs published (new version), 7 unchanged" in capsys.readouterr().out
    wait_until(lambda: len(watcher.configs()) == len(DEVICES), 10, "the configs")
    service = ServiceProcess(
        config, tmp_path, command=("policies",), ready="sobriety_policies_pass_seconds_count",
        name="policies",
    )  # fmt: skip
    service.start()  # ready: a first pass done
    try:
        assert service.metric("sobriety_policies_devices") == len(DEVICES)
        assert service.metric("sobriety_policies_configs_published_total") == 0  # unchanged
        assert service.metric("sobriety_policies_devices_drifted") == len(DEVICES)  # no state
        assert service.metric("sobriety_policies_overrides_active") == 0
    finally:
        assert service.terminate() == 0
