"""Gateways of the simulated town: one MQTT connection per site and network (``gw-lighting``,
``gw-water``, ``gw-facilities``) publishing for many devices, as concentrators do.

A gateway's last will marks it offline on its own ``state``. It subscribes to its devices'
``config`` (retained) and ``cmd`` and hands what arrives to an inbox that the fleet reads at each
simulation step. :meth:`Gateway.wait_ready` returns once the broker acknowledged the
subscriptions and delivered the retained configs: the gateway subscribes to its own ``state``
too, publishes it once more (not retained) after the SUBACK, and waits for that message to come
back — the broker queues a client's messages in order, so the retained ones came before it.
Publishing applies back-pressure: at most :data:`MAX_OUTSTANDING` messages await their PUBACK
(paho numbers QoS 1 messages with 16 bits).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from urllib.parse import SplitResult

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from core.contract import build_topic
from core.messages import DeviceState, encode

log = logging.getLogger("sobriety.simulate")

MAX_OUTSTANDING = 10000
"""Messages a gateway may have awaiting PUBACK before it waits."""

Inbound = tuple[str, str, str, bytes]
"""What a gateway received: (site, device, channel, payload)."""


class Gateway:
    """One MQTT connection publishing for the devices of one site and network."""

    def __init__(
        self,
        site: str,
        name: str,
        root: str,
        client_id: str,
        protocol: MQTTProtocolVersion,
        inbox: queue.Queue[Inbound],
    ) -> None:
        self.site = site
        self.name = name
        self.root = root
        self.inbox = inbox
        self.state_topic = build_topic(site, name, "state", root)
        self.sent = 0
        self._acked = 0
        self._acks = threading.Condition()
        self._waiting = 0  # threads waiting for PUBACKs: only then is the condition notified
        self._subscribed = threading.Event()
        self._synced = threading.Event()
        self._disconnected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.will_set(self.state_topic, encode(DeviceState(online=False)), qos=1, retain=True)
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = lambda *_args: self._disconnected.set()
        self.client = client

    @property
    def acked(self) -> int:
        """Messages the broker acknowledged."""
        return self._acked

    def _on_publish(self, *_args: object) -> None:
        self._acked += 1  # only the network thread counts
        if self._waiting:
            with self._acks:
                self._acks.notify_all()

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        prefix = f"{self.root.rstrip('/')}/{self.site}/+"
        client.subscribe([(f"{prefix}/config", 1), (f"{prefix}/cmd", 1), (self.state_topic, 1)])

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.state_topic:
            if not msg.retain:  # our own publish after the SUBACK: the barrier
                self._synced.set()
            return
        parts = msg.topic.split("/")
        self.inbox.put((parts[-3], parts[-2], parts[-1], bytes(msg.payload)))

    def connect(
        self, url: SplitResult, username: str | None = None, password: str | None = None
    ) -> None:
        """Connect (as ``username`` when the broker authenticates: a gateway's user name is its
        site id), start the network loop and announce the gateway online (retained)."""
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
        self.client.loop_start()
        self.send(self.state_topic, encode(DeviceState(online=True)), retain=True)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait for the SUBACK, then for the retained configs (see the module docstring).
        False, with a warning, when the broker did not confirm within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        if not self._subscribed.wait(timeout_s):
            log.warning("%s/%s: no SUBACK within %.0f s", self.site, self.name, timeout_s)
            return False
        self.send(self.state_topic, encode(DeviceState(online=True)))
        if not self._synced.wait(max(0.0, deadline - time.monotonic())):
            log.warning(
                "%s/%s: retained configs not confirmed within %.0f s", self.site, self.name,
                timeout_s,
            )  # fmt: skip
            return False
        return True

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1, waiting while :data:`MAX_OUTSTANDING` messages await their PUBACK."""
        if self.sent - self._acked > MAX_OUTSTANDING:  # back-pressure
            self._wait_acked(lambda: self.sent - self._acked <= MAX_OUTSTANDING, math.inf)
        self.client.publish(topic, payload, qos=1, retain=retain)
        self.sent += 1

    def wait_published(self, deadline: float) -> None:
        """Wait until the broker acknowledged everything sent (``deadline``: monotonic s)."""
        if not self._wait_acked(lambda: self._acked >= self.sent, deadline):
            raise TimeoutError(f"{self.name}: {self._acked}/{self.sent} acknowledged")

    def _wait_acked(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``done()`` (told by the PUBACKs) or the monotonic ``deadline``."""
        with self._acks:
            self._waiting += 1
            try:
                while not done():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    # A PUBACK counted just before we began waiting is caught at the next turn.
                    self._acks.wait(min(left, 0.01))
                return True
            finally:
                self._waiting -= 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly: the retained state stays as last published (a connection closed
        without DISCONNECT would publish the last will, offline)."""
        self._disconnected.clear()
        self.client.disconnect()
        self._disconnected.wait(timeout_s)  # loop_stop() would end the thread before it is sent
        self.client.loop_stop()
