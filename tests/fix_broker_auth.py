"""A private Mosquitto with authentication on (a password file and an ACL file), and an MQTT 5
client whose CONNACK, PUBACKs, SUBACKs and messages are events to wait on: the broker ACL
tests (tests/test_broker_acl.py) and the commune onboarding (tests/test_site_commands.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from app.embedded import free_port
from tests.fix_mqtt import wait_port, wait_until

TIMEOUT_S = 10.0
NOT_AUTHORIZED = 135
ACCEPTED = (0, 16)
"""PUBACK reason codes of an accepted publish: success, or "no matching subscribers"."""
ABSENT_S = 0.5
"""How long a message that must not come is waited for, on top of the in-order barrier."""


@dataclass
class Broker:
    """A running private broker: its port, the passwords of its users (what tests know), its
    process and log."""

    port: int
    passwords: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files (the operator's reload step);
        returns once the broker logged the reload."""
        assert self.proc is not None
        assert self.log is not None
        log = self.log

        def reloads() -> int:
            return log.read_text(errors="replace").count("Reloading config")

        before = reloads()
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads() > before, TIMEOUT_S, "the broker's reload in its log")


def mosquitto_tools() -> tuple[str, str]:
    """The broker binary and mosquitto_passwd (a failure, not a skip, when missing)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tool = shutil.which("mosquitto_passwd")
    if not Path(binary).exists() or tool is None:
        pytest.fail("mosquitto and mosquitto_passwd are needed: run scripts/services")
    return binary, tool


@contextmanager
def auth_broker(directory: Path, passwd: Path, acl: Path) -> Iterator[Broker]:
    """Mosquitto on a free port with ``passwd`` and ``acl``, anonymous clients refused."""
    binary, _tool = mosquitto_tools()
    port = free_port()
    conf = directory / "mosquitto.conf"
    log = directory / "mosquitto.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {acl}\n"
        "persistence false\n"
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"log_dest file {log}\n"
        "log_type all\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, TIMEOUT_S)
        yield Broker(port, {}, proc, log)
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
