"""The MQTT packets of the ingest's own receive path (ingest/mqtt_wire.py), byte by byte against
the standard's encodings (OASIS MQTT 5.0 and 3.1.1), and the stream parser at every cut."""

from __future__ import annotations

import pytest

from ingest import mqtt_wire as wire
from ingest.mqtt_wire import ProtocolError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_are_the_standards_examples(value: int, encoded: bytes) -> None:
    """The table of §1.5.5, both ways."""
    assert wire.varint(value) == encoded
    assert wire.read_varint(encoded + b"\x99", 0) == (value, len(encoded))


def test_out_of_range_variable_byte_integers_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        wire.varint(268_435_456)
    with pytest.raises(ProtocolError, match="malformed"):
        wire.read_varint(b"\xff\xff\xff\xff\x01", 0)


def test_connect_asks_for_a_persistent_session_with_its_limits() -> None:
    packet = wire.connect(
        "ing", 30, True, username="u", password="pw", session_expiry_s=3600, receive_maximum=500
    )
    body = (
        b"\x00\x04MQTT\x05"
        + bytes((0x80 | 0x40,))  # user name, password; clean start off
        + b"\x00\x1e"  # keep alive 30 s
        + b"\x08\x11\x00\x00\x0e\x10\x21\x01\xf4"  # session expiry 3600, receive maximum 500
        + b"\x00\x03ing\x00\x01u\x00\x02pw"
    )
    assert packet == b"\x10" + bytes((len(body),)) + body
    v311 = wire.connect("ing", 30, False)
    assert v311 == b"\x10\x0f\x00\x04MQTT\x04\x00\x00\x1e\x00\x03ing"


def test_subscribe_unsubscribe_and_disconnect_packets() -> None:
    assert wire.subscribe(7, "a/+", 1, True) == b"\x82\x09\x00\x07\x00\x00\x03a/+\x01"
    assert wire.subscribe(7, "a/+", 1, False) == b"\x82\x08\x00\x07\x00\x03a/+\x01"
    assert wire.unsubscribe(9, ["a", "bc"], True) == b"\xa2\x0a\x00\x09\x00\x00\x01a\x00\x02bc"
    assert wire.disconnect(False) == b"\xe0\x00"
    assert wire.disconnect(True) == b"\xe0\x02\x00\x00"
    assert wire.disconnect(True, 0) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"
    assert wire.puback_packets([1, 258, 65535]) == (
        b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    )


def test_connack_and_its_properties() -> None:
    props = (
        b"\x13\x00\x3c" + b"\x1f\x00\x02hi" + b"\x26\x00\x01k\x00\x01v" + b"\x27\x00\x01\x00\x00"
    )
    ack = wire.parse_connack(b"\x01\x00" + wire.varint(len(props)) + props, v5=True)
    assert ack.session_present
    assert not ack.refused
    assert ack.properties[wire.SERVER_KEEP_ALIVE] == 60
    assert ack.properties[wire.REASON_STRING] == "hi"
    assert ack.properties[0x27] == 65536
    refused = wire.parse_connack(b"\x00\x86\x00", v5=True)
    assert refused.refused
    assert wire.reason_text(refused.reason_code) == "0x86 bad user name or password"
    old = wire.parse_connack(b"\x00\x05", v5=False)
    assert wire.reason_text(old.reason_code, v5=False, connack=True) == "0x05 not authorized"
    with pytest.raises(ProtocolError, match="unknown property"):
        wire.parse_connack(b"\x00\x00\x02\x7e\x00", v5=True)
    with pytest.raises(ProtocolError, match="longer than"):
        wire.parse_connack(b"\x00\x00\x09\x13\x00", v5=True)


def test_suback_reasons() -> None:
    assert wire.parse_ack_reasons(b"\x00\x05\x00\x01\x87", v5=True) == (5, [1, 0x87])
    assert wire.parse_ack_reasons(b"\x00\x05\x80", v5=False) == (5, [0x80])


def publish(topic: bytes, payload: bytes, qos: int, mid: int, props: bytes | None) -> bytes:
    """A PUBLISH as a broker sends it (props None: MQTT 3.1.1)."""
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += wire.varint(len(props)) + props
    return wire.packet(0x30 | qos << 1, body + payload)


def test_the_stream_parser_cuts_every_packet_at_every_boundary() -> None:
    """Messages split anywhere (a chunk ends inside a header, a length, a payload) come out
    whole, once, in order; other packets beside them; a long property list skipped."""
    big = bytes(range(256)) * 800  # 204,800 bytes: a three-byte remaining length
    user = b"\x26\x00\x01k\x00\x03val" * 40  # 360 bytes of properties: a two-byte length
    stream = (
        publish("s/é/up".encode(), b'{"v":1}', 1, 1, b"")
        + b"\xd0\x00"  # PINGRESP
        + publish(b"s/d/up", big, 1, 65535, b"\x01\x01" + user)
        + publish(b"s/d/up", b"q0", 0, 0, b"\x02\x00\x00\x00\x3c")
        + b"\x90\x04\x00\x01\x00\x01"  # SUBACK
    )
    expected = [("s/é/up", b'{"v":1}', (3, 1, 1)), ("s/d/up", big, (3, 65535, 1))]
    expected.append(("s/d/up", b"q0", None))
    cuts = [*range(0, 40), *range(len(stream) - 40, len(stream) + 1), 100_000]
    for cut in cuts:
        buf = bytearray(stream[:cut])
        got, controls, used = wire.parse_stream(buf, True, 3)
        del buf[:used]
        buf += stream[cut:]
        more, controls2, used2 = wire.parse_stream(buf, True, 3)
        assert got + more == expected, cut
        assert [c[0] for c in controls + controls2] == [0xD0, 0x90], cut
        assert used + used2 == len(stream)


def test_mqtt_311_publishes_have_no_properties() -> None:
    stream = publish(b"a/b", b"\x00\x01", 1, 9, None)
    assert wire.parse_stream(bytearray(stream), False, 1) == (
        [("a/b", b"\x00\x01", (1, 9, 1))],
        [],
        len(stream),
    )


def test_a_topic_that_is_not_utf8_is_named_so() -> None:
    stream = publish(b"s/\xff/up", b"x", 1, 2, b"")
    (message,), _, _ = wire.parse_stream(bytearray(stream), True, 1)
    assert message[0] == wire.NOT_UTF8_TOPIC


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (publish(b"a", b"x", 2, 1, b""), "QoS 2"),
        (publish(b"", b"x", 1, 1, b"\x23\x00\x01"), "topic alias"),
        (b"\x30\xff\xff\xff\xff\x01", "malformed remaining length"),
        (wire.packet(0x32, b"\x00\x01a\x00\x01\x7f"), "header longer"),
    ],
)
def test_what_the_subscriber_cannot_take_is_a_protocol_error(stream: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        wire.parse_stream(bytearray(stream), True, 1)
