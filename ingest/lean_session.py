"""The ingest's own MQTT receive path: one socket, one network thread, no object per message.

Why not paho here: profiling the ingest at full speed (``bench/ingest_profile.py``) put paho's
per-message handling at about 40 % of the ingest's CPU (an ``MQTTMessage``, and in MQTT 5 a
``Properties`` object made and cleared, per message; a callback lookup; one lock per packet).
This session reads the socket in chunks of up to :data:`CHUNK_BYTES`, cuts every complete
packet out with :func:`ingest.mqtt_wire.parse_stream` and hands the chunk's messages to the
service in one call; the writer thread acknowledges a batch with one ``sendall`` of its PUBACKs.
paho stays available (``ingest.mqtt_client = "paho"``, :mod:`ingest.paho_session`).

Kept exactly: the persistent session (clean start off, session expiry), Receive Maximum, QoS 1
acknowledged only when the service says so (after durability), tokens of an earlier connection
dropped, keep alive (PINGREQ when nothing was sent for half the keep alive; the connection is
closed when the broker sends nothing for 1.5 keep alives), reconnection with a backoff from 1 s
to ``reconnect_max_s``. Plain TCP only, as the ingest's configuration (``mqtt://``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence

from ingest import mqtt_wire as wire
from ingest.mqtt_wire import AckToken, ProtocolError
from ingest.session import Session, SessionEvents, SessionSettings

log = logging.getLogger("sobriety.ingest")

CHUNK_BYTES = 1 << 18
"""The most read from the socket at once [bytes]."""
CONNECT_TIMEOUT_S = 10.0
"""How long the TCP connection and the CONNACK may take [s]."""


class ConnectionLostError(Exception):
    """The connection ended (the broker closed it, or it stopped answering)."""


class LeanSession(Session):
    """A QoS 1 subscriber's session on one TCP connection at a time."""

    def __init__(self, settings: SessionSettings, events: SessionEvents) -> None:
        self.settings = settings
        self.events = events
        self.v5 = settings.protocol == "5"
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None  # the connected socket, under _send_lock
        self._generation = 0  # under _send_lock
        self._last_sent = 0.0
        self._packet_id = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = bytearray()  # what came after the CONNACK, read by the loop
        self.keepalive_s = float(settings.keepalive_s)

    # --- the service's side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-mqtt", daemon=True)
        self._thread.start()

    def _send(self, data: bytes, generation: int | None = None) -> bool:
        """Write ``data`` on the current connection (only if it is still ``generation``)."""
        with self._send_lock:
            sock = self._sock
            if sock is None or (generation is not None and generation != self._generation):
                return False
            try:
                sock.sendall(data)
            except OSError as exc:
                log.warning("write to the broker failed (%s)", exc)
                self._shutdown(sock)
                return False
            self._last_sent = time.monotonic()
            return True

    def _next_packet_id(self) -> int:
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

    def subscribe(self, topic_filter: str) -> None:
        self._send(wire.subscribe(self._next_packet_id(), topic_filter, 1, self.v5))

    def unsubscribe(self, topic_filters: Sequence[str]) -> None:
        self._send(wire.unsubscribe(self._next_packet_id(), topic_filters, self.v5))

    def ack(self, tokens: Sequence[AckToken]) -> int:
        if not tokens:
            return 0
        generation = self._generation
        mids = [mid for gen, mid, _qos in tokens if gen == generation]
        if mids and self._send(wire.puback_packets(mids), generation):
            return len(mids)
        return 0

    def disconnect(self, end_session: bool) -> None:
        expiry = 0 if end_session and self.v5 else None
        self._stopping.set()
        with self._send_lock:
            sock = self._sock
            if sock is None:
                return
            try:
                sock.sendall(wire.disconnect(self.v5, expiry))
            except OSError as exc:
                log.warning("could not send DISCONNECT (%s)", exc)
            self._shutdown(sock)

    def stop(self) -> None:
        self._stopping.set()
        with self._send_lock:
            if self._sock is not None:
                self._shutdown(self._sock)
        if self._thread is not None:
            self._thread.join(CONNECT_TIMEOUT_S + self.keepalive_s)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        """Wake the network thread's ``recv``: the connection is over."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    # --- the network thread -----------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            sock = self._open()
            if sock is None:
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            backoff = 1.0
            reason = "connection closed"
            try:
                self._read_loop(sock)
            except (OSError, ConnectionLostError, ProtocolError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug must not end the session: reconnect, redelivered
                log.exception("internal error in the MQTT session")
                reason = f"internal error: {exc!r}"
            with self._send_lock:
                self._sock = None
            sock.close()
            self.events.on_disconnect("asked" if self._stopping.is_set() else reason)
            if not self._stopping.is_set():
                self._stopping.wait(backoff)

    def _open(self) -> socket.socket | None:
        """Connect and take the CONNACK; None (said through the events) when that failed."""
        cfg = self.settings
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self.events.on_connect_fail()
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                wire.connect(
                    cfg.client_id,
                    cfg.keepalive_s,
                    self.v5,
                    username=cfg.username,
                    password=cfg.password if cfg.username else None,
                    session_expiry_s=cfg.session_expiry_s,
                    receive_maximum=cfg.receive_maximum,
                )
            )
            first, body, rest = self._read_packet(sock)
            if first >> 4 != wire.CONNACK:
                raise ProtocolError(f"expected CONNACK, got packet type {first >> 4}")
            connack = wire.parse_connack(body, self.v5)
        except (OSError, ProtocolError, ConnectionLostError) as exc:
            sock.close()
            self.events.on_refused(f"no CONNACK ({exc})")
            return None
        if connack.refused:
            sock.close()
            text = wire.reason_text(connack.reason_code, self.v5, connack=True)
            said = connack.properties.get(wire.REASON_STRING)
            self.events.on_refused(f"{text}: {said}" if said else text)
            return None
        server_keepalive = connack.properties.get(wire.SERVER_KEEP_ALIVE)
        if isinstance(server_keepalive, int) and server_keepalive > 0:
            self.keepalive_s = float(server_keepalive)
        sock.settimeout(max(0.2, min(1.0, self.keepalive_s / 4)))
        with self._send_lock:
            self._generation += 1
            self._sock = sock
            self._last_sent = time.monotonic()
            self._pending = rest
        self.events.on_connect(connack.session_present)
        return sock

    @staticmethod
    def _read_packet(sock: socket.socket) -> tuple[int, bytes, bytearray]:
        """One whole packet (first byte, body) and whatever came after it."""
        buf = bytearray()
        while True:
            if len(buf) >= 2:
                try:
                    length, start = wire.read_varint(buf, 1)
                except IndexError:
                    length, start = -1, 0
                if length >= 0 and len(buf) >= start + length:
                    return buf[0], bytes(buf[start : start + length]), buf[start + length :]
            data = sock.recv(65536)
            if not data:
                raise ConnectionLostError("the broker closed the connection")
            buf += data

    def _read_loop(self, sock: socket.socket) -> None:
        chunk = bytearray(CHUNK_BYTES)
        view = memoryview(chunk)
        buf = self._pending
        self._pending = bytearray()
        v5 = self.v5
        on_messages = self.events.on_messages
        generation = self._generation
        last_heard = last_ping = time.monotonic()
        ping_due = self.keepalive_s / 2
        silence_limit = self.keepalive_s * 1.5
        while True:
            if buf:
                messages, controls, used = wire.parse_stream(buf, v5, generation)
                if used:
                    del buf[:used]
                if messages:
                    on_messages(messages)
                for first, body in controls:
                    self._control(first, body)
            try:
                got = sock.recv_into(view)
            except TimeoutError:
                got = -1
            now = time.monotonic()
            if got == 0:
                if self._stopping.is_set():
                    return
                raise ConnectionLostError("the broker closed the connection")
            if got > 0:
                buf += view[:got]
                last_heard = now
            elif now - last_heard > silence_limit:
                raise ConnectionLostError(f"nothing from the broker for {now - last_heard:.0f} s")
            if now - self._last_sent >= ping_due or (
                now - last_heard >= ping_due and now - last_ping >= ping_due
            ):
                last_ping = now
                self._send(wire.PINGREQ_PACKET)

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.SUBACK:
            _pid, codes = wire.parse_ack_reasons(body, self.v5)
            self.events.on_subscribe([wire.reason_text(c) for c in codes if c >= 0x80])
        elif kind == wire.UNSUBACK:
            self.events.on_unsubscribe()
        elif kind == wire.PINGRESP:
            pass
        elif kind == wire.DISCONNECT:
            code = body[0] if body else 0
            raise ConnectionLostError(f"the broker disconnected us: {wire.reason_text(code)}")
        else:
            raise ProtocolError(f"unexpected packet type {kind} from the broker")
