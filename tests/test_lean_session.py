"""The ingest's own MQTT session (ingest/lean_session.py) against a real Mosquitto: messages
with properties and large payloads whole, acknowledgement only when asked (the unacknowledged
come again, the acknowledged never), Receive Maximum, tokens of an earlier connection dropped
after a broker restart, keep alive on an idle connection, a frozen broker left, a refusal named,
the session ended on request."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.lean_session import LeanSession
from ingest.mqtt_wire import AckToken, Message
from ingest.session import SessionSettings
from tests.fix_broker_auth import auth_broker
from tests.fix_mqtt import PrivateBroker

pytestmark = pytest.mark.services

TIMEOUT_S = 20.0
ABSENT_S = 0.5
"""How long a message that must not come is waited for, after an in-order barrier."""


class Recorder:
    """The session's events, kept, each a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[Message] = []
        self.connects: list[bool] = []
        self.refusals: list[str] = []
        self.failures = 0
        self.disconnects: list[str] = []
        self.subacks: list[list[str]] = []
        self.unsubacks = 0

    def _add(self, apply: Callable[[], None]) -> None:
        with self.cond:
            apply()
            self.cond.notify_all()

    def on_connect(self, session_present: bool) -> None:
        self._add(lambda: self.connects.append(session_present))

    def on_refused(self, reason: str) -> None:
        self._add(lambda: self.refusals.append(reason))

    def on_connect_fail(self) -> None:
        def more() -> None:
            self.failures += 1

        self._add(more)

    def on_disconnect(self, reason: str) -> None:
        self._add(lambda: self.disconnects.append(reason))

    def on_messages(self, messages: list[Message]) -> None:
        self._add(lambda: self.messages.extend(messages))

    def on_subscribe(self, refused: list[str]) -> None:
        self._add(lambda: self.subacks.append(refused))

    def on_unsubscribe(self) -> None:
        def more() -> None:
            self.unsubacks += 1

        self._add(more)

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout_s):
                raise AssertionError(f"{what}: not after {timeout_s} s")

    def barrier(self, session: LeanSession) -> None:
        """An UNSUBSCRIBE round trip: the broker has handled what we sent before it."""
        before = self.unsubacks
        session.unsubscribe(["$never/subscribed"])
        self.wait(lambda: self.unsubacks > before, "the UNSUBACK")

    def tokens(self) -> list[AckToken]:
        return [token for _t, _p, token in self.messages if token is not None]


def settings(url: str, client_id: str, **changes: object) -> SessionSettings:
    parts = urlsplit(url)
    values: dict[str, object] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 1883,
        "client_id": client_id,
        "protocol": "5",
        "keepalive_s": 30,
        "session_expiry_s": 300,
        "receive_maximum": 1000,
        "username": None,
        "password": None,
        "reconnect_max_s": 1.0,
    }
    values.update(changes)
    return SessionSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def sessions() -> Iterator[Callable[..., tuple[LeanSession, Recorder]]]:
    """Start sessions subscribed to a filter (when given); all stopped after the test."""
    made: list[LeanSession] = []

    def start(cfg: SessionSettings, topic: str | None = None) -> tuple[LeanSession, Recorder]:
        events = Recorder()
        session = LeanSession(cfg, events)
        made.append(session)
        session.start()
        events.wait(lambda: bool(events.connects), "the CONNACK")
        if topic is not None:
            session.subscribe(topic)
            events.wait(lambda: bool(events.subacks), "the SUBACK")
            assert events.subacks == [[]]
        return session, events

    yield start
    for session in made:
        session.stop()


def publisher(url: str) -> mqtt.Client:
    parts = urlsplit(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, items: list[tuple[str, bytes, int]], **kw: object) -> None:
    infos = [client.publish(topic, payload, qos=qos, **kw) for topic, payload, qos in items]  # type: ignore[arg-type]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_messages_come_whole_with_their_tokens(
    mqtt_url: str, sessions: Callable[..., tuple[LeanSession, Recorder]], protocol: str
) -> None:
    """Large payloads (a three-byte remaining length, over several reads), multi-byte UTF-8
    topics, publish properties (skipped), QoS 0 (no token) beside QoS 1."""
    root = f"lean{uuid.uuid4().hex[:8]}"
    session, events = sessions(
        settings(mqtt_url, f"lean-{uuid.uuid4().hex[:8]}", protocol=protocol), f"{root}/#"
    )
    big = os.urandom(300_000)
    items = [(f"{root}/é/{i}", f"payload {i}".encode(), i % 2) for i in range(200)]
    items.insert(50, (f"{root}/big", big, 1))
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 600
    props.ContentType = "application/senml+json"
    props.UserProperty = [("gateway", "gw-1"), ("seq", "42")]
    pub = publisher(mqtt_url)
    sender = threading.Thread(target=publish_all, args=(pub, items), kwargs={"properties": props})
    sender.start()
    acked = 0
    while len(events.messages) < len(items):  # acknowledged as they come: a 3.1.1 broker
        seen = len(events.messages)  # holds back what exceeds its in-flight limit
        events.wait(lambda: len(events.messages) > seen, f"more than {seen} messages")  # noqa: B023
        acked += session.ack(events.tokens()[acked:])
    sender.join(TIMEOUT_S)
    assert len(events.messages) == len(items)
    acked += session.ack(events.tokens()[acked:])  # those of the last wait

    def by_qos(messages: list[tuple[str, bytes, object]], qos: int) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p, q in messages if q == qos]

    got = [(t, p, 0 if tok is None else tok[2]) for t, p, tok in events.messages]
    # in order within QoS 1; a broker may let a QoS 0 message pass queued QoS 1 ones
    assert by_qos(got, 1) == by_qos(items, 1)  # type: ignore[arg-type]
    assert sorted(by_qos(got, 0)) == sorted(by_qos(items, 0))  # type: ignore[arg-type]
    assert {tok[0] for tok in events.tokens()} == {1}, "all of the first connection"
    assert acked == sum(q for *_, q in items)
    pub.disconnect()
    pub.loop_stop()


def test_only_acknowledged_messages_are_not_delivered_again(
    mqtt_url: str, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    root = f"lean{uuid.uuid4().hex[:8]}"
    cfg = settings(mqtt_url, f"lean-{uuid.uuid4().hex[:8]}")
    first, events = sessions(cfg, f"{root}/#")
    pub = publisher(mqtt_url)
    publish_all(pub, [(f"{root}/m", str(i).encode(), 1) for i in range(50)])
    events.wait(lambda: len(events.messages) == 50, "50 messages")
    assert first.ack(events.tokens()[:20]) == 20
    events.barrier(first)  # the broker has taken the 20 PUBACKs
    first.disconnect(end_session=False)
    first.stop()
    again, events2 = sessions(cfg)  # the same client id: the session resumes
    assert events2.connects == [True], "session present"
    events2.wait(lambda: len(events2.messages) == 30, "the 30 unacknowledged again")
    assert [p for _t, p, _ in events2.messages] == [str(i).encode() for i in range(20, 50)]
    assert again.ack(events2.tokens()) == 30
    publish_all(pub, [(f"{root}/m", b"marker", 1)])
    events2.wait(lambda: len(events2.messages) == 31, "the marker")
    events2.barrier(again)
    again.disconnect(end_session=False)
    again.stop()
    third, events3 = sessions(cfg)
    events3.barrier(third)
    assert [p for _t, p, _ in events3.messages] == [b"marker"], "only the unacknowledged marker"
    pub.disconnect()
    pub.loop_stop()


def test_receive_maximum_bounds_what_is_held(
    mqtt_url: str, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    """The broker holds back what exceeds the CONNECT's Receive Maximum until acknowledged.
    (Mosquitto 2.0.11 then sent all 25 queued messages after the first 5 PUBACKs, with paho's
    client as with this one: after the first window the bound is the broker's to keep.)"""
    root = f"lean{uuid.uuid4().hex[:8]}"
    cfg = settings(mqtt_url, f"lean-{uuid.uuid4().hex[:8]}", receive_maximum=5)
    session, events = sessions(cfg, f"{root}/#")
    pub = publisher(mqtt_url)
    publish_all(pub, [(f"{root}/m", str(i).encode(), 1) for i in range(30)])
    events.wait(lambda: len(events.messages) >= 5, "the first 5")
    events.barrier(session)
    time.sleep(ABSENT_S)  # a sixth message, if the broker sent one, would be here by now
    assert len(events.messages) == 5
    acked = 0
    while acked < 30:
        acked += session.ack(events.tokens()[acked:])
        events.wait(lambda: len(events.messages) > acked or acked == 30, "more once acknowledged")  # noqa: B023
    assert [p for _t, p, _ in events.messages] == [str(i).encode() for i in range(30)]
    pub.disconnect()
    pub.loop_stop()


def test_tokens_of_an_earlier_connection_are_dropped(
    private_broker: PrivateBroker, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    """After a broker restart the packet ids of the first connection may name other messages:
    acknowledging them acknowledges nothing, and the messages are delivered again."""
    root = f"lean{uuid.uuid4().hex[:8]}"
    cfg = settings(private_broker.url, f"lean-{uuid.uuid4().hex[:8]}")
    session, events = sessions(cfg, f"{root}/#")
    pub = publisher(private_broker.url)
    publish_all(pub, [(f"{root}/m", str(i).encode(), 1) for i in range(10)])
    pub.disconnect()
    pub.loop_stop()
    events.wait(lambda: len(events.messages) == 10, "10 messages")
    old = events.tokens()
    private_broker.stop()
    events.wait(lambda: bool(events.disconnects), "the connection lost")
    private_broker.start()
    events.wait(lambda: len(events.connects) == 2, "connected again")
    events.wait(lambda: len(events.messages) == 20, "the 10 delivered again")
    assert session.ack(old) == 0
    new = events.tokens()[10:]
    assert {t[0] for t in new} == {2}
    assert [p for _t, p, _ in events.messages[10:]] == [str(i).encode() for i in range(10)]
    assert session.ack(new) == 10


def test_an_idle_connection_is_kept_by_keep_alive(
    mqtt_url: str, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    """Keep alive 1 s: a broker closes a client silent for 1.5 s. Idle for 4 s, the session
    stays on its first connection and still receives."""
    root = f"lean{uuid.uuid4().hex[:8]}"
    session, events = sessions(
        settings(mqtt_url, f"lean-{uuid.uuid4().hex[:8]}", keepalive_s=1), f"{root}/#"
    )
    time.sleep(4.0)  # the idle time under test
    assert events.disconnects == []
    assert len(events.connects) == 1
    pub = publisher(mqtt_url)
    publish_all(pub, [(f"{root}/m", b"still here", 1)])
    events.wait(lambda: len(events.messages) == 1, "the message")
    assert session.ack(events.tokens()) == 1
    pub.disconnect()
    pub.loop_stop()


def test_a_broker_that_stops_answering_is_left_and_rejoined(
    private_broker: PrivateBroker, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    """A frozen broker (SIGSTOP) answers no PINGREQ: the session gives up on the connection
    after 1.5 keep alives, and connects again once the broker runs."""
    assert private_broker.proc is not None
    cfg = settings(private_broker.url, f"lean-{uuid.uuid4().hex[:8]}", keepalive_s=1)
    _session, events = sessions(cfg)
    os.kill(private_broker.proc.pid, signal.SIGSTOP)
    try:
        events.wait(lambda: bool(events.disconnects), "the frozen connection left")
    finally:
        os.kill(private_broker.proc.pid, signal.SIGCONT)
    assert "nothing from the broker" in events.disconnects[0]
    events.wait(lambda: len(events.connects) == 2, "connected again", timeout_s=40)


def test_a_refused_connection_is_named(
    tmp_path: Path, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text("")
    acl.write_text("")
    with auth_broker(tmp_path, passwd, acl) as broker:
        cfg = settings(
            f"mqtt://127.0.0.1:{broker.port}",
            "lean-refused",
            username="nobody",
            password="wrong",
        )
        events = Recorder()
        session = LeanSession(cfg, events)
        session.start()
        try:
            events.wait(lambda: len(events.refusals) >= 2, "two refusals (it retries)")
        finally:
            session.stop()
    assert events.connects == []
    assert events.refusals[0].startswith(("0x86 bad user name or password", "0x87 not auth"))


def test_an_ended_session_keeps_nothing(
    mqtt_url: str, sessions: Callable[..., tuple[LeanSession, Recorder]]
) -> None:
    root = f"lean{uuid.uuid4().hex[:8]}"
    cfg = settings(mqtt_url, f"lean-{uuid.uuid4().hex[:8]}")
    first, events = sessions(cfg, f"{root}/#")
    first.disconnect(end_session=True)
    events.wait(lambda: bool(events.disconnects), "disconnected")
    first.stop()
    assert events.disconnects == ["asked"]
    _again, events2 = sessions(cfg)
    assert events2.connects == [False], "no session present"
