"""The policies stage's MQTT connection: publishes retained ``config`` and momentary ``cmd`` at
QoS 1 and waits for the broker's acknowledgements; follows the devices' retained ``state``.

Publishing applies back-pressure (at most :data:`MAX_OUTSTANDING` messages await their PUBACK:
paho numbers QoS 1 messages with 16 bits) and :meth:`Link.publish_all` returns only when the
broker acknowledged every message — a config is recorded as published only then. ``state`` is
followed at QoS 0: the broker writes a QoS 0 message straight to a connected client instead of
queueing it behind ``max_queued_messages`` (1000 by default in Mosquitto, beyond which QoS 1
messages are dropped), and the retained states are delivered again at every (re)connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.config import Config
from core.errors import SobrietyError

__all__ = ["MAX_OUTSTANDING", "Link", "PublishError"]

log = logging.getLogger(__name__)

MAX_OUTSTANDING = 10_000
"""Messages published and not yet acknowledged by the broker, at most."""

StateHandler = Callable[[str, bytes, float], None]
"""Called with (topic, payload, received at [s since the epoch]) for every ``state``."""


class PublishError(SobrietyError):
    """The broker did not acknowledge what was published in time (or could not be reached)."""


class Link:
    """One connection to the broker for the policies stage (client id ``{mqtt.client_id}-policies``
    unless ``client_id`` says otherwise; clean session: nothing is queued for it offline)."""

    def __init__(
        self, config: Config, on_state: StateHandler | None = None, client_id: str | None = None
    ) -> None:
        mcfg = config.mqtt
        self._url = urlsplit(mcfg.url)
        self._root = mcfg.root.rstrip("/")
        self._on_state = on_state
        self._sent = 0
        self._acked = 0
        self._acks = threading.Condition()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._closing = False
        protocol = mqtt.MQTTv5 if mcfg.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{mcfg.client_id}-policies",
            protocol=protocol,
        )
        if mcfg.username:
            client.username_pw_set(mcfg.username, config.mqtt_password())
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, max(1, int(mcfg.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    # --- callbacks (paho's network thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("broker refused the connection: %s", reason)
            return
        if self._on_state is not None:
            client.subscribe(f"{self._root}/+/+/state", qos=0)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("policies: disconnected from the broker (%s); reconnecting", reason)

    def _on_publish(self, *_args: object) -> None:
        with self._acks:
            self._acked += 1
            self._acks.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_state is not None:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                return  # brokers refuse such topics
            self._on_state(topic, bytes(msg.payload), time.time())

    # --- API ----------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; :class:`PublishError` when the broker cannot be
        reached or refuses within ``timeout_s``."""
        host, port = self._url.hostname or "127.0.0.1", self._url.port or 1883
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise PublishError(f"cannot reach the broker at {host}:{port}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout_s) or self._refused:
            self.close()
            why = self._refused or f"no CONNACK within {timeout_s:g} s"
            raise PublishError(f"broker at {host}:{port}: {why}")

    def topic(self, site: str, device: str, channel: str) -> str:
        """``{root}/{site}/{device}/{channel}``."""
        return f"{self._root}/{site}/{device}/{channel}"

    def publish_all(self, messages: Iterable[tuple[str, bytes, bool]], timeout_s: float) -> int:
        """Publish (topic, payload, retain) at QoS 1 and wait until the broker acknowledged all
        of them; how many. :class:`PublishError` when that takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        count = 0
        for topic, payload, retain in messages:
            if self._sent - self._acked >= MAX_OUTSTANDING:
                self._wait(lambda: self._sent - self._acked < MAX_OUTSTANDING, deadline)
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise PublishError(f"cannot publish on {topic}: {mqtt.error_string(info.rc)}")
            with self._acks:
                self._sent += 1
            count += 1
        self._wait(lambda: self._acked >= self._sent, deadline)
        return count

    def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        with self._acks:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishError(
                        f"the broker acknowledged {self._acked} of {self._sent} messages in time"
                    )
                self._acks.wait(left)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
