"""The batched PUBACK (ingest/acks.py): the one use of a private paho method, checked to fail
loudly when paho changes it, and both ways of acknowledging checked against a real broker."""

from __future__ import annotations

import inspect
import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from app.embedded import Mosquitto
from ingest import acks


def test_paho_still_has_the_private_method_with_this_signature() -> None:
    """If this fails, paho changed ``Client._packet_queue``: the ingest has fallen back to one
    ``Client.ack`` per message (slower drains, nothing lost). Check the new paho and adapt
    ingest/acks.py."""
    method = getattr(mqtt.Client, "_packet_queue", None)
    assert method is not None, "paho.mqtt.client.Client._packet_queue is gone"
    assert tuple(inspect.signature(method).parameters) == acks.EXPECTED_PARAMETERS
    assert acks.BATCHED


def test_a_changed_or_missing_method_means_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def renamed(self: object, command: int, packet: bytes, message_id: int, qos: int) -> None:
        del self, command, packet, message_id, qos

    monkeypatch.setattr(mqtt.Client, "_packet_queue", renamed)
    assert not acks._batched_available()
    monkeypatch.delattr(mqtt.Client, "_packet_queue")
    assert not acks._batched_available()


def test_puback_packets_are_the_mqtt_packets() -> None:
    # PUBACK: fixed header 0x40, remaining length 2, the packet identifier, big-endian.
    assert acks.puback_packets([1, 258, 65535]) == (
        b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    )


class Session:
    """A persistent MQTT 5 session that acknowledges only when told to."""

    def __init__(self, broker: Mosquitto, client_id: str, topic: str) -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()
        self.disconnected: queue.Queue[bool] = queue.Queue()
        self.unsubscribed: queue.Queue[bool] = queue.Queue()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.on_message = lambda _c, _u, msg: self.received.put(msg)
        client.on_subscribe = lambda *_a: self.subscribed.put(True)
        client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        client.on_disconnect = lambda *_a: self.disconnected.put(True)
        client.on_unsubscribe = lambda *_a: self.unsubscribed.put(True)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        client.loop_start()
        assert self.subscribed.get(timeout=10)
        self.client = client

    def take(self, count: int) -> list[mqtt.MQTTMessage]:
        return [self.received.get(timeout=10) for _ in range(count)]

    def close(self) -> None:
        # The broker answers an UNSUBSCRIBE after the packets sent before it (the PUBACKs); a
        # new connection of the same session cannot overtake them then.
        self.client.unsubscribe("never/subscribed")
        assert self.unsubscribed.get(timeout=10)
        self.client.disconnect()
        assert self.disconnected.get(timeout=10)  # written: loop_stop() would not wait
        self.client.loop_stop()


@pytest.mark.services
@pytest.mark.parametrize("way", ["batched", "one by one", "not at all"])
def test_acknowledged_messages_are_not_delivered_again(private_broker: Mosquitto, way: str) -> None:
    topic = f"acks/{uuid.uuid4().hex[:8]}/up"
    client_id = f"acks-{uuid.uuid4().hex[:8]}"
    session = Session(private_broker, client_id, topic)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{client_id}")
    publisher.connect("127.0.0.1", private_broker.port)
    publisher.loop_start()
    for info in [publisher.publish(topic, f"m{n}".encode(), qos=1) for n in range(200)]:
        info.wait_for_publish(10)
    got = session.take(200)
    if way != "not at all":
        acks.send_pubacks(session.client, [(m.mid, m.qos) for m in got], way == "batched")
    session.close()
    # The same session again: whatever was not acknowledged comes first, then a marker.
    again = Session(private_broker, client_id, topic)
    publisher.publish(topic, b"marker", qos=1).wait_for_publish(10)
    payloads = []
    while not payloads or payloads[-1] != b"marker":
        payloads.append(bytes(again.received.get(timeout=10).payload))
    acks.send_pubacks(again.client, [], True)
    again.close()
    publisher.disconnect()
    publisher.loop_stop()
    if way == "not at all":
        assert payloads[:-1] == [f"m{n}".encode() for n in range(200)]  # the test can tell
    else:
        assert payloads == [b"marker"]
