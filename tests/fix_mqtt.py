"""Mosquitto fixtures: the machine's broker, a private broker a test may restart (the same
:class:`app.embedded.Mosquitto` the demo and the benchmarks start), a publisher.

``SOBRIETY_TEST_MQTT_URL`` (default ``mqtt://127.0.0.1:1883``) names the shared broker; an
unreachable broker stops the run at once with a clear message (never a skip).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from app.embedded import Mosquitto, free_port, mosquitto_binary

__all__ = ["PrivateBroker", "Publisher", "free_port", "wait_port", "wait_until"]

DEFAULT_URL = "mqtt://127.0.0.1:1883"


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polls: a port that starts listening sends no event
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """The machine's Mosquitto (checked once)."""
    url = os.environ.get("SOBRIETY_TEST_MQTT_URL", DEFAULT_URL)
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 1883), timeout=5).close()
    except OSError as exc:
        pytest.exit(
            f"MQTT broker unreachable at {url} ({exc}). Start it with scripts/services, or point "
            "SOBRIETY_TEST_MQTT_URL at a broker.",
            returncode=3,
        )
    return url


PrivateBroker = Mosquitto
"""A Mosquitto of the test's own (:class:`app.embedded.Mosquitto`, the demo's own): persistence,
the limits of ``deploy/mosquitto`` (no silent drops), restartable on the same port."""


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started private broker, stopped after the test."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto not installed: run scripts/services")
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK (and retries across broker restarts)."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        parts = urlsplit(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-pub-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self.acked += 1

    def publish(
        self, messages: Iterable[tuple[str, bytes]], pause_every: int = 0, pause_s: float = 0.0
    ) -> int:
        """Publish all messages at QoS 1; return how many were sent."""
        sent = 0
        for topic, payload in messages:
            self.client.publish(topic, payload, qos=1)
            sent += 1
            if pause_every and sent % pause_every == 0:
                time.sleep(pause_s)
            while sent - self.acked > 2000:
                time.sleep(0.001)
        return sent

    def wait_acked(self, total: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acked < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.acked}/{total} PUBACKs after {timeout_s} s")
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: object, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after ``timeout_s`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
