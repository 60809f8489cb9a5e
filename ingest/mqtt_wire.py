"""The MQTT packets the ingest's own receive path sends and reads (MQTT 5 and 3.1.1), free of I/O.

Only what a QoS 1 subscriber with deferred acknowledgements needs: CONNECT (persistent session,
session expiry, Receive Maximum), CONNACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK,
PINGREQ/PINGRESP, PUBLISH in, PUBACK out, DISCONNECT both ways. References are to the OASIS
MQTT Version 5.0 standard (2019) and MQTT 3.1.1 (2014). :func:`parse_stream` is the hot path: it
cuts every complete packet out of the bytes received so far, with no object per message beyond
its topic, payload and acknowledgement token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

PINGREQ_PACKET = b"\xc0\x00"
PUBACK_HEADER = b"\x40\x02"
"""PUBACK (0x40) with remaining length 2: the packet id only (MQTT 5 §3.4.2.1 lets a success
omit the reason code and properties; MQTT 3.1.1 PUBACKs have nothing else)."""
MAX_REMAINING_LENGTH = 268_435_455
"""The largest remaining length a four-byte variable byte integer can say (§1.5.5)."""
NOT_UTF8_TOPIC = "(topic not UTF-8)"
"""The topic given for a PUBLISH whose topic is not UTF-8 (brokers refuse such topics, but a
broken one must not stop the ingest: the message is rejected as an invalid topic)."""

# Property identifiers (§2.2.2.2) and how each is encoded.
SESSION_EXPIRY_INTERVAL = 0x11
RECEIVE_MAXIMUM = 0x21
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_KINDS = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip

REASONS = {
    0x00: "success", 0x04: "disconnect with will message", 0x80: "unspecified error",
    0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid",
    0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
    0x89: "server busy", 0x8A: "banned", 0x8B: "server shutting down",
    0x8C: "bad authentication method", 0x8D: "keep alive timeout", 0x8E: "session taken over",
    0x8F: "topic filter invalid", 0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x95: "packet too large", 0x97: "quota exceeded", 0x98: "administrative action",
    0x99: "payload format invalid", 0x9C: "use another server", 0x9D: "server moved",
    0x9E: "shared subscriptions not supported", 0x9F: "connection rate exceeded",
    0xA0: "maximum connect time", 0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}  # fmt: skip
"""Reason codes of MQTT 5 (§2.4), for messages."""
CONNACK_RETURN_CODES_311 = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}  # fmt: skip
"""CONNACK return codes of MQTT 3.1.1 (§3.2.2.3)."""

AckToken = tuple[int, int, int]
"""What acknowledges a message later: (connection generation, packet id, QoS)."""
Message = tuple[str, bytes, AckToken | None]
"""A received PUBLISH: topic, payload, and its token (None for QoS 0: nothing to acknowledge)."""


class ProtocolError(Exception):
    """The broker sent something this client cannot accept; the connection is closed."""


def reason_text(code: int, v5: bool = True, connack: bool = False) -> str:
    """``0x87 not authorized``: a reason code as people read it."""
    names = REASONS if v5 or not connack else CONNACK_RETURN_CODES_311
    return f"0x{code:02x} {names.get(code, 'unknown reason')}"


def varint(value: int) -> bytes:
    """A variable byte integer (§1.5.5)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); IndexError when the buffer ends inside it."""
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed variable byte integer")


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _binary(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def packet(first_byte: int, body: bytes) -> bytes:
    """Fixed header (type and flags, remaining length) then ``body``."""
    return bytes((first_byte,)) + varint(len(body)) + body


def connect(
    client_id: str,
    keepalive_s: int,
    v5: bool,
    *,
    username: str | None = None,
    password: str | None = None,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
) -> bytes:
    """CONNECT for a persistent session: clean start (5) / clean session (3.1.1) off; in MQTT 5
    the session expiry [s] and the Receive Maximum [messages unacknowledged]."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes((5 if v5 else 4, flags)) + keepalive_s.to_bytes(2, "big")
    if v5:
        props = bytes((SESSION_EXPIRY_INTERVAL,)) + session_expiry_s.to_bytes(4, "big")
        props += bytes((RECEIVE_MAXIMUM,)) + receive_maximum.to_bytes(2, "big")
        body += varint(len(props)) + props
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _binary(password.encode())
    return packet(CONNECT << 4, body)


def subscribe(packet_id: int, topic_filter: str, qos: int, v5: bool) -> bytes:
    """SUBSCRIBE to one filter at ``qos`` (MQTT 5 options: no-local off, retain as published
    off, retained messages sent at subscribe)."""
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"")
    return packet(SUBSCRIBE << 4 | 2, body + _string(topic_filter) + bytes((qos,)))


def unsubscribe(packet_id: int, topic_filters: Sequence[str], v5: bool) -> bytes:
    """UNSUBSCRIBE from ``topic_filters``."""
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"")
    return packet(UNSUBSCRIBE << 4 | 2, body + b"".join(map(_string, topic_filters)))


def disconnect(v5: bool, session_expiry_s: int | None = None) -> bytes:
    """DISCONNECT (normal); in MQTT 5 with a new session expiry [s] when given (0 ends the
    session at the broker)."""
    if not v5:
        return b"\xe0\x00"
    if session_expiry_s is None:
        return packet(DISCONNECT << 4, b"\x00\x00")
    props = bytes((SESSION_EXPIRY_INTERVAL,)) + session_expiry_s.to_bytes(4, "big")
    return packet(DISCONNECT << 4, b"\x00" + varint(len(props)) + props)


def puback_packets(mids: Sequence[int]) -> bytes:
    """The PUBACK packets of ``mids``, one after the other."""
    return b"".join([PUBACK_HEADER + mid.to_bytes(2, "big") for mid in mids])


def parse_properties(body: bytes, pos: int) -> tuple[dict[int, object], int]:
    """The properties at ``pos`` (their length first) and the position after them. A repeated
    property (user properties) keeps its last value: this client reads none of those."""
    length, pos = read_varint(body, pos)
    end = pos + length
    if end > len(body):
        raise ProtocolError("properties longer than their packet")
    found: dict[int, object] = {}
    while pos < end:
        ident = body[pos]
        kind = _PROPERTY_KINDS.get(ident)
        pos += 1
        value: object
        if kind == _BYTE:
            value, pos = body[pos], pos + 1
        elif kind == _TWO:
            value, pos = int.from_bytes(body[pos : pos + 2], "big"), pos + 2
        elif kind == _FOUR:
            value, pos = int.from_bytes(body[pos : pos + 4], "big"), pos + 4
        elif kind == _VARINT:
            value, pos = read_varint(body, pos)
        elif kind in (_STRING, _BINARY):
            size = int.from_bytes(body[pos : pos + 2], "big")
            raw = body[pos + 2 : pos + 2 + size]
            value, pos = (raw.decode(errors="replace") if kind == _STRING else raw), pos + 2 + size
        elif kind == _PAIR:
            size = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2 + size
            size = int.from_bytes(body[pos : pos + 2], "big")
            value, pos = None, pos + 2 + size
        else:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        found[ident] = value
    if pos != end:
        raise ProtocolError("a property runs past the end of the properties")
    return found, end


@dataclass(frozen=True, slots=True)
class Connack:
    """The broker's answer to CONNECT."""

    session_present: bool
    reason_code: int
    properties: dict[int, object] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        """The broker did not accept the connection."""
        return self.reason_code != 0


def parse_connack(body: bytes, v5: bool) -> Connack:
    """CONNACK's variable header (and MQTT 5 properties)."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    props: dict[int, object] = {}
    if v5 and len(body) > 2:
        props, _ = parse_properties(body, 2)
    return Connack(bool(body[0] & 1), body[1], props)


def parse_ack_reasons(body: bytes, v5: bool) -> tuple[int, list[int]]:
    """SUBACK or UNSUBACK: (packet id, reason codes; MQTT 3.1.1 UNSUBACKs have none)."""
    if len(body) < 2:
        raise ProtocolError("acknowledgement too short")
    packet_id = int.from_bytes(body[:2], "big")
    pos = 2
    if v5:
        _, pos = parse_properties(body, pos)
    return packet_id, list(body[pos:])


def parse_stream(
    buf: bytearray, v5: bool, generation: int
) -> tuple[list[Message], list[tuple[int, bytes]], int]:
    """Every complete packet at the start of ``buf``: the PUBLISH messages, the other packets as
    (type, body), and how many bytes they took (what remains is the start of a packet).

    Raises :class:`ProtocolError` for what this client cannot take: a QoS 2 PUBLISH (the
    subscription is QoS 1, so the broker must not send one), a topic alias (none is allowed: the
    CONNECT gives no Topic Alias Maximum), a packet larger than the standard allows.
    """
    messages: list[Message] = []
    controls: list[tuple[int, bytes]] = []
    end = len(buf)
    pos = 0
    while end - pos >= 2:
        first = buf[pos]
        # the remaining length, inlined (this loop runs once per message)
        length = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= end:
                return messages, controls, pos
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("malformed remaining length")
        stop = i + length
        if stop > end:
            break
        if first >> 4 == PUBLISH:
            qos = (first >> 1) & 3
            size = buf[i] << 8 | buf[i + 1]
            j = i + 2 + size
            if size == 0:
                raise ProtocolError("PUBLISH without a topic (topic aliases are not allowed)")
            try:
                topic = buf[i + 2 : j].decode()
            except UnicodeDecodeError:
                topic = NOT_UTF8_TOPIC
            token: AckToken | None = None
            if qos:
                if qos > 1:
                    raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
                token = (generation, buf[j] << 8 | buf[j + 1], 1)
                j += 2
            if v5:
                props = buf[j]
                if props < 0x80:
                    j += 1 + props
                else:
                    props, j = read_varint(buf, j)
                    j += props
            if j > stop:
                raise ProtocolError("PUBLISH header longer than its packet")
            messages.append((topic, bytes(buf[j:stop]), token))
        else:
            controls.append((first, bytes(buf[i:stop])))
        pos = stop
    return messages, controls, pos
