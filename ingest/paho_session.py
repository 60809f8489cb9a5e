"""The ingest's MQTT session on paho-mqtt (``ingest.mqtt_client = "paho"``): the library's
network loop, manual acknowledgements, and a batch's PUBACKs in one write (:mod:`ingest.acks`).
The default is the ingest's own receive path (:mod:`ingest.lean_session`); this one stays for
brokers or networks where that path would misbehave."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.acks import send_pubacks
from ingest.mqtt_wire import NOT_UTF8_TOPIC, AckToken
from ingest.session import Session, SessionEvents, SessionSettings


class PahoSession(Session):
    """A paho ``Client`` behind the :class:`~ingest.session.Session` interface."""

    def __init__(self, settings: SessionSettings, events: SessionEvents) -> None:
        self.settings = settings
        self.events = events
        self.v5 = settings.protocol == "5"
        self._generation = 0
        if self.v5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:  # MQTT 3.1.1: the persistent session is clean_session=False
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        client.reconnect_delay_set(1, max(1, int(settings.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = lambda *_args: events.on_unsubscribe()
        client.on_connect_fail = lambda *_args: events.on_connect_fail()
        self.client = client

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.events.on_refused(str(reason))
            return
        self._generation += 1
        self.events.on_connect(bool(flags.session_present))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.events.on_disconnect(str(reason))

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        self.events.on_subscribe([str(r) for r in reasons if getattr(r, "is_failure", False)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = NOT_UTF8_TOPIC
        token = (self._generation, msg.mid, msg.qos) if msg.qos else None
        self.events.on_messages([(topic, bytes(msg.payload), token)])

    def start(self) -> None:
        cfg = self.settings
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
            self.client.connect_async(
                cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def subscribe(self, topic_filter: str) -> None:
        if self.v5:
            self.client.subscribe(topic_filter, options=SubscribeOptions(qos=1))
        else:
            self.client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filters: Sequence[str]) -> None:
        self.client.unsubscribe(list(topic_filters))

    def ack(self, tokens: Sequence[AckToken]) -> int:
        generation = self._generation
        acks = [(mid, qos) for gen, mid, qos in tokens if gen == generation]
        send_pubacks(self.client, acks)
        return len(acks)

    def disconnect(self, end_session: bool) -> None:
        props = None
        if end_session and self.v5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)

    def stop(self) -> None:
        self.client.loop_stop()
