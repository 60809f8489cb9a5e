"""The broker identities of deploy/mosquitto/acl, on a real Mosquitto: a private broker on a
free port with authentication on, a password file made by mosquitto_passwd and the repository's
own ACL file. A gateway logs in with its site id and may publish only its site's telemetry and
read only its site's config and commands; the platform's user reads every site's telemetry and
writes config and commands; anonymous clients and wrong passwords are refused at CONNECT.

Every wait is on an event with a timeout; "not delivered" is proven with a barrier: a message
the same publisher sends next, which the broker delivers in order, arrives first."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from app.embedded import free_port
from core.contract import uplink_filter
from tests.fix_mqtt import wait_port

pytestmark = pytest.mark.services

ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl"
ROOT = "sobriety/v1"
PLATFORM = "sobriety-ingest"
TIMEOUT_S = 10.0
NOT_AUTHORIZED = 135
ACCEPTED = (0, 16)
"""PUBACK reason codes of an accepted publish: success, or "no matching subscribers"."""
ABSENT_S = 0.5
"""How long a message that must not come is waited for, on top of the in-order barrier."""


@dataclass(frozen=True)
class Broker:
    port: int
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto with authentication on and deploy/mosquitto/acl, on a free port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tool = shutil.which("mosquitto_passwd")
    if not Path(binary).exists() or tool is None:
        pytest.fail("mosquitto and mosquitto_passwd are needed: run scripts/services")
    directory = tmp_path_factory.mktemp("acl-broker")
    passwords = {PLATFORM: uuid.uuid4().hex, "lyon": uuid.uuid4().hex, "villeurbanne": "v-pw"}
    passwd = directory / "passwd"
    for n, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run([tool, *create, "-b", str(passwd), user, password], check=True)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {ACL}\n"
        "persistence false\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"log_dest file {directory / 'mosquitto.log'}\n"
        "log_type all\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, TIMEOUT_S)
        yield Broker(port, passwords)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """An MQTT 5 client whose CONNACK, PUBACKs, SUBACKs and messages are events to wait on."""

    def __init__(self, broker: Broker, user: str | None, password: str | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"acl-{user}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self._cond = threading.Condition()
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(60, 60)  # a refused client must not retry under test
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.connack = rc.value
            self._cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._cond:
            self.pubacks[mid] = rc.value
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        with self._cond:
            self.subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def _wait(self, predicate: object, what: str, timeout_s: float = TIMEOUT_S) -> None:
        assert callable(predicate)
        with self._cond:
            if not self._cond.wait_for(predicate, timeout_s):
                raise AssertionError(f"no {what} within {timeout_s} s")

    def connected(self) -> int:
        """The CONNACK reason code (0: accepted)."""
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK's reason code (:data:`ACCEPTED`, 135 not authorised)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self.pubacks, f"PUBACK of {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK's reason codes (1 granted QoS 1, 135 refused)."""
        _, mid = self.client.subscribe([(f, 1) for f in filters], properties=Properties(8))
        self._wait(lambda: mid in self.subacks, "SUBACK")
        return self.subacks[mid]

    def received(self, topic: str, payload: bytes) -> None:
        """Wait until ``(topic, payload)`` has arrived."""
        self._wait(lambda: (topic, payload) in self.messages, f"message on {topic}")

    def never_received(self, topic: str) -> bool:
        """True when nothing arrives on ``topic`` within :data:`ABSENT_S` (a timed wait on the
        message event, after the caller's barrier)."""
        with self._cond:
            return not self._cond.wait_for(
                lambda: any(t == topic for t, _ in self.messages), ABSENT_S
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    """The platform's user (subscribed to every site's telemetry) and the gateway of lyon."""
    platform = Client(broker, PLATFORM, broker.passwords[PLATFORM])
    lyon = Client(broker, "lyon", broker.passwords["lyon"])
    try:
        assert platform.connected() == 0
        assert lyon.connected() == 0
        # The ingest's own filter, as a plain and as a shared subscription: both granted.
        assert platform.subscribe(uplink_filter(ROOT), f"$share/ingest/{uplink_filter(ROOT)}") == [
            1,
            1,
        ]
        yield {"platform": platform, "lyon": lyon}
    finally:
        platform.close()
        lyon.close()


def test_a_gateway_publishes_its_own_sites_telemetry_and_no_other(
    clients: dict[str, Client],
) -> None:
    platform, lyon = clients["platform"], clients["lyon"]
    own, other = f"{ROOT}/lyon/lum-1/up", f"{ROOT}/villeurbanne/lum-1/up"
    assert lyon.publish(own, b'{"power": 21.4}') in ACCEPTED
    platform.received(own, b'{"power": 21.4}')
    assert lyon.publish(other, b'{"power": 99}') == NOT_AUTHORIZED
    assert lyon.publish(own, b"barrier") in ACCEPTED  # same publisher, delivered in order
    platform.received(own, b"barrier")
    assert platform.never_received(other)
    # Nor the platform's topics: a gateway cannot pose as the service.
    assert lyon.publish(f"{ROOT}/villeurbanne/lum-1/config", b"{}") == NOT_AUTHORIZED
    assert lyon.publish(f"{ROOT}/lyon/lum-1/config", b"{}") == NOT_AUTHORIZED


def test_a_gateway_reads_its_own_sites_config_and_commands_only(
    clients: dict[str, Client],
) -> None:
    platform, lyon = clients["platform"], clients["lyon"]
    sites = ("lyon", "villeurbanne")
    for site in sites:  # the platform may write config (retained) and cmd for every site
        assert (
            platform.publish(f"{ROOT}/{site}/lum-1/config", site.encode(), retain=True) in ACCEPTED
        )
    codes = lyon.subscribe(*(f"{ROOT}/{s}/+/{ch}" for ch in ("config", "cmd") for s in sites))
    # Its own site's filters are granted. Mosquitto 2.0 grants the others too and checks read
    # access on every delivery (another broker may refuse them in the SUBACK: either is fine,
    # what matters is that nothing of villeurbanne's arrives).
    assert codes[0] == codes[2] == 1
    assert codes[1] in (1, NOT_AUTHORIZED)
    assert codes[3] in (1, NOT_AUTHORIZED)
    lyon.received(f"{ROOT}/lyon/lum-1/config", b"lyon")  # the retained config
    for site in sites:
        assert platform.publish(f"{ROOT}/{site}/lum-1/cmd", b"boost") in ACCEPTED
    assert platform.publish(f"{ROOT}/lyon/lum-1/cmd", b"barrier") in ACCEPTED
    lyon.received(f"{ROOT}/lyon/lum-1/cmd", b"boost")
    lyon.received(f"{ROOT}/lyon/lum-1/cmd", b"barrier")
    assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/config")
    assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/cmd")
    for site in sites:  # clear the retained configs
        assert platform.publish(f"{ROOT}/{site}/lum-1/config", b"", retain=True) in ACCEPTED


def test_a_gateway_reads_no_other_sites_telemetry(
    broker: Broker, clients: dict[str, Client]
) -> None:
    lyon = clients["lyon"]
    villeurbanne = Client(broker, "villeurbanne", broker.passwords["villeurbanne"])
    try:
        assert villeurbanne.connected() == 0
        assert lyon.subscribe(f"{ROOT}/+/+/up")[0] in (1, NOT_AUTHORIZED)
        assert villeurbanne.publish(f"{ROOT}/villeurbanne/lum-1/up", b"theirs") in ACCEPTED
        assert lyon.publish(f"{ROOT}/lyon/lum-1/up", b"ours") in ACCEPTED
        clients["platform"].received(f"{ROOT}/villeurbanne/lum-1/up", b"theirs")
        assert lyon.never_received(f"{ROOT}/villeurbanne/lum-1/up")
    finally:
        villeurbanne.close()


def test_anonymous_clients_and_wrong_passwords_are_refused_at_connect(broker: Broker) -> None:
    """Mosquitto 2.0 answers every refused CONNECT with 135 Not authorized (not 134)."""
    for user, password in (
        (None, None),
        ("lyon", "not-the-password"),
        ("nobody", "x"),
        (PLATFORM, broker.passwords["lyon"]),
    ):
        client = Client(broker, user, password)
        try:
            assert client.connected() == NOT_AUTHORIZED, (user, password)
        finally:
            client.close()
