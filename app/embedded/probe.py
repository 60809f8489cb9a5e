"""Probes: is there a PostgreSQL we can use at a URL, an MQTT broker at an address, and which
protocol does it speak? A raw CONNECT/CONNACK exchange tells an MQTT 5 broker (its CONNACK has a
properties field) from an MQTT 3.1.1-only one without any client library's help."""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import time

import psycopg

PROBE_TIMEOUT_S = 3.0
"""A service that does not answer within this is not there."""
MQTT_5 = "5"
MQTT_311 = "3.1.1"


def db_problem(url: str) -> str | None:
    """Why ``url`` cannot be used, or None. A missing database is fine: the caller creates it."""
    try:
        psycopg.connect(url, connect_timeout=int(PROBE_TIMEOUT_S)).close()
    except psycopg.OperationalError as exc:
        message = str(exc).strip()
        if re.search(r'database ".*" does not exist', message):
            return None
        return message or type(exc).__name__
    return None


def _connect_packet(protocol: str, client_id: str) -> bytes:
    """An MQTT CONNECT with a clean session, no credentials, keep-alive 10 s."""
    level = 5 if protocol == MQTT_5 else 4
    variable = b"\x00\x04MQTT" + bytes([level, 0x02]) + (10).to_bytes(2, "big")
    if level == 5:
        variable += b"\x00"  # no properties
    cid = client_id.encode()
    body = variable + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128  # one-byte remaining length
    return bytes([0x10, len(body)]) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connack(host: str, port: int, protocol: str, timeout_s: float) -> tuple[bool, int] | None:
    """Send a CONNECT; return (whether the CONNACK has MQTT 5 properties, return code).

    None when the connection closes or times out without a CONNACK; OSError when no TCP
    connection can be made.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            sock.sendall(_connect_packet(protocol, f"sobriety-probe-{secrets.token_hex(4)}"))
            if _recv_exact(sock, 1) != b"\x20":
                return None
            length, shift = 0, 0
            for _ in range(4):
                byte = _recv_exact(sock, 1)
                if not byte:
                    return None
                length |= (byte[0] & 0x7F) << shift
                shift += 7
                if not byte[0] & 0x80:
                    break
            body = _recv_exact(sock, length)
            if len(body) < 2 or len(body) != length:
                return None
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
        except (TimeoutError, ConnectionError):
            return None
    return length >= 3, body[1]


def probe_mqtt(host: str, port: int, timeout_s: float) -> tuple[str, int] | None:
    """The broker's best protocol (``"5"`` or ``"3.1.1"``) and its CONNACK code to an anonymous
    client, or None if it answers no CONNECT. OSError when nothing listens there."""
    deadline = time.monotonic() + timeout_s
    answer = _connack(host, port, MQTT_5, timeout_s)
    if answer is not None and answer[0]:
        return MQTT_5, answer[1]
    remaining = max(0.1, deadline - time.monotonic())
    answer = _connack(host, port, MQTT_311, remaining)
    return None if answer is None else (MQTT_311, answer[1])


def mqtt_up(port: int, protocol: str) -> bool:
    """Whether our broker on ``port`` accepts an anonymous ``protocol`` client."""
    with contextlib.suppress(OSError):
        answer = _connack("127.0.0.1", port, protocol, 1.0)
        return answer is not None and answer[1] == 0
    return False
