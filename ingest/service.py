"""``sobriety ingest``: MQTT ``{root}/+/+/up`` → validate → batch → PostgreSQL (or spool).

Threads: the MQTT session's network thread (:mod:`ingest.lean_session` by default,
:mod:`ingest.paho_session` with ``ingest.mqtt_client = "paho"``) receives, validates and
appends to the :class:`Batcher`; one
writer thread takes a batch (``batch_rows`` rows or ``batch_ms`` after its first message),
commits it (or appends it to the durable spool when the database is down), and only then
acknowledges its QoS 1/2 messages, in the order they arrived. The session is persistent (fixed
client id, ``clean_start`` false, session expiry), so the broker keeps what is not acknowledged
and queues while the ingest is away; MQTT 5 ``Receive Maximum`` bounds what is held unacknowledged,
and so the memory used. A kill -9 loses nothing acknowledged; what was not acknowledged comes
again and is deduplicated on (device, metric, time).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg
from prometheus_client import CollectorRegistry, start_http_server

from core.config import Config
from core.contract import uplink_filter
from core.errors import RejectReason
from ingest.batcher import Batch, Batcher
from ingest.config import IngestConfig
from ingest.inventory_cache import InventoryCache, snapshot_name
from ingest.lean_session import LeanSession
from ingest.metrics import IngestMetrics
from ingest.mqtt_wire import AckToken, Message
from ingest.paho_session import PahoSession
from ingest.pipeline import Limits, Outcome, Pipeline, Rejection
from ingest.session import Session, SessionSettings
from ingest.spool import Spool, SpoolFullError, decode_frame, encode_frame
from ingest.store import Store

log = logging.getLogger("sobriety.ingest")
DISCONNECT_TIMEOUT_S = 5.0
"""How long a stop waits for the broker's UNSUBACK and for the DISCONNECT to be written."""
_BARRIER_FILTER = "$sobriety-ingest-barrier/none"
"""A filter never subscribed: unsubscribing from it is a round trip that changes nothing."""


class IngestService:
    """The ingest: one MQTT session, one writer, one spool."""

    def __init__(
        self, config: Config, registry: CollectorRegistry | None = None, retiring: bool = False
    ) -> None:
        self.config = config
        self.retiring = retiring  # drain the session's queue without taking new messages
        icfg = self.settings = config.section(IngestConfig)
        self.registry = registry or CollectorRegistry()
        self.metrics = IngestMetrics(self.registry)
        spool_dir = icfg.spool_dir / config.mqtt.client_id
        self.spool = Spool(spool_dir, icfg.spool_max_bytes)
        conninfo = config.db_conninfo()
        self.inventory = InventoryCache(
            conninfo, icfg.inventory_refresh_s, spool_dir / snapshot_name(conninfo)
        )
        self.pipeline = Pipeline(
            self.inventory.lookup,
            config.mqtt.root,
            Limits(
                icfg.max_payload_bytes, icfg.max_records, icfg.past_window_s, icfg.future_window_s
            ),
        )
        self.store = Store(
            conninfo, config.database.connect_timeout_s, direct_copy=icfg.direct_copy
        )
        self.batcher = Batcher(icfg.batch_rows, icfg.batch_ms, icfg.batch_idle_ms)
        self.stopping = threading.Event()
        self._db_retry_at = 0.0
        self._db_backoff = 0.5
        self._db_up: bool | None = None  # unknown until the first write
        self._connect_failures = 0
        self.subscribed = threading.Event()  # set at the SUBACK, cleared on disconnect
        self._disconnected = threading.Event()
        self._unsubscribed = threading.Event()
        self.written = 0  # messages made durable and acknowledged by this service
        self._written_cond = threading.Condition()
        self._session: Session | None = None
        self._writer: threading.Thread | None = None
        self._http: Any = None
        self.metrics.spool_bytes.set(self.spool.size_bytes)

    # --- MQTT (the session's events, from its network thread) ---------------------------------
    def _make_session(self) -> Session:
        mcfg = self.config.mqtt
        url = urlsplit(mcfg.url)
        settings = SessionSettings(
            host=url.hostname or "127.0.0.1",
            port=url.port or 1883,
            client_id=mcfg.client_id,
            protocol=mcfg.protocol,
            keepalive_s=mcfg.keepalive_s,
            session_expiry_s=mcfg.session_expiry_s,
            receive_maximum=mcfg.receive_maximum,
            username=mcfg.username,
            password=self.config.mqtt_password() if mcfg.username else None,
            reconnect_max_s=mcfg.reconnect_max_s,
        )
        if self.settings.mqtt_client == "paho":
            return PahoSession(settings, self)
        return LeanSession(settings, self)

    def on_connect_fail(self) -> None:
        """The broker cannot be reached: said at once, and at every attempt (the session retries
        with a backoff from 1 s to ``mqtt.reconnect_max_s``)."""
        self._connect_failures += 1
        self.metrics.connect_failures.inc()
        log.warning(
            "cannot reach the broker at %s (attempt %d); retrying, backoff up to %.0f s",
            self.config.mqtt.url,
            self._connect_failures,
            self.config.mqtt.reconnect_max_s,
        )

    def on_refused(self, reason: str) -> None:
        log.error("broker refused the connection: %s", reason)

    def on_connect(self, session_present: bool) -> None:
        session = self._session
        assert session is not None
        self._connect_failures = 0
        self.metrics.broker_connected.set(1)
        topic = uplink_filter(self.config.mqtt.root, self.config.mqtt.shared_group)
        if self.retiring:
            # What the session holds is delivered anyway; nothing new should come to it.
            session.unsubscribe([topic, uplink_filter(self.config.mqtt.root)])
            log.info("retiring session %s: draining its queue", self.config.mqtt.client_id)
            return
        session.subscribe(topic)
        log.info(
            "connected to %s (session present: %s); subscribed to %s",
            self.config.mqtt.url,
            session_present,
            topic,
        )

    def on_subscribe(self, refused: list[str]) -> None:
        if refused:
            log.error("broker refused the subscription: %s", refused)
            return
        self.metrics.subscribed.set(1)
        self.subscribed.set()

    def on_unsubscribe(self) -> None:
        self._unsubscribed.set()

    def on_disconnect(self, reason: str) -> None:
        self._disconnected.set()
        self.subscribed.clear()
        self.metrics.subscribed.set(0)
        self.metrics.broker_connected.set(0)
        if not self.stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def on_messages(self, messages: list[Message]) -> None:
        """Validate messages received together (at one time) and add them to the batch."""
        received_at = time.time()
        self.metrics.received.inc(len(messages))
        process = self.pipeline.process
        outcomes: list[tuple[Outcome, AckToken | None]] = []
        for topic, payload, token in messages:
            try:
                outcome = process(topic, payload, received_at)
            except Exception as exc:  # a bug must not stop the ingest nor lose the message
                log.exception("internal error on a message of %s", topic)
                outcome = Outcome()
                outcome.rejections.append(
                    Rejection(
                        received_at,
                        topic,
                        None,
                        None,
                        RejectReason.INTERNAL_ERROR,
                        repr(exc),
                        payload[: self.pipeline.limits.max_payload_bytes],
                        len(payload),
                    )
                )
            for rej in outcome.rejections:
                self.metrics.rejected.labels(reason=rej.reason.value).inc()
            outcomes.append((outcome, token))
        self.batcher.add_many(outcomes)

    # --- writing ------------------------------------------------------------------------------
    def _db_may_try(self) -> bool:
        return time.monotonic() >= self._db_retry_at

    def _db_failed(self, exc: Exception) -> None:
        if self._db_up is not False:
            log.warning("database unavailable (%s); spooling to %s", exc, self.spool.directory)
        self._db_up = False
        self.metrics.db_up.set(0)
        self._db_retry_at = time.monotonic() + self._db_backoff
        self._db_backoff = min(self._db_backoff * 2, self.settings.db_retry_max_s)

    def _db_ok(self) -> None:
        if self._db_up is not True:
            log.info("database available")
        self._db_up = True
        self.metrics.db_up.set(1)
        self._db_backoff = 0.5

    def _persist(self, batch: Batch) -> bool:
        """Make the batch durable (database or spool). False only when stopping and neither
        could take it: its messages then stay unacknowledged for the broker to redeliver."""
        rows = batch.rows
        while True:
            if self._db_may_try():
                started = time.perf_counter()
                try:
                    result = self.store.write(rows, batch.rejections, uplinks=batch.uplinks)
                except psycopg.OperationalError as exc:
                    self._db_failed(exc)
                except psycopg.Error as exc:
                    log.error("database refused a batch (%s); it goes to the spool", exc)
                else:
                    self.metrics.batch_write.observe(time.perf_counter() - started)
                    self.metrics.stored.inc(result.stored)
                    self.metrics.duplicates.inc(result.duplicates)
                    if rows and not result.direct:
                        self.metrics.merged.inc()
                    self._db_ok()
                    return True
            try:
                self.spool.append(encode_frame(rows, batch.rejections, batch.uplinks))
                self.metrics.spooled.inc()
                self.metrics.spool_bytes.set(self.spool.size_bytes)
                return True
            except SpoolFullError as exc:
                if self.stopping.is_set():
                    log.error("%s and the database is down: leaving messages unacknowledged", exc)
                    return False
                log.error("%s; holding messages until the database is back", exc)
                time.sleep(max(0.05, self._db_retry_at - time.monotonic()))

    def _ack(self, batch: Batch) -> None:
        now = time.time()
        for newest in batch.newest:
            self.metrics.lag.observe(now - newest)
        if self._session is not None:
            # An id from an earlier connection may now name another message: the session
            # drops it, the broker redelivers the old one, stored (deduplicated) and acknowledged.
            self._session.ack(batch.acks)

    def drain_spool(self, budget_s: float) -> None:
        """Replay spooled segments into the database for at most about ``budget_s`` seconds."""
        deadline = time.monotonic() + budget_s
        while self.spool.size_bytes and self._db_may_try() and time.monotonic() < deadline:
            found = self.spool.oldest()
            if found is None:
                break
            path, frames = found
            try:
                for body in frames:
                    frame = decode_frame(body)
                    self.store.write(
                        frame.rows,
                        frame.rejections,
                        uplinks=frame.uplinks,
                        frame_id=frame.frame_id,
                    )
            except psycopg.OperationalError as exc:
                self._db_failed(exc)
                return
            except psycopg.Error as exc:
                target = self.spool.quarantine(path)
                log.error("database refuses spool segment (%s); kept at %s", exc, target)
            else:
                self.spool.remove(path)
                self._db_ok()
                log.info("replayed spool segment %s (%d frames)", path.name, len(frames))
            self.metrics.spool_bytes.set(self.spool.size_bytes)

    def _writer_loop(self) -> None:
        wait = self.settings.batch_ms / 1000.0
        while True:
            batch = self.batcher.take(timeout=wait)
            if batch is not None:
                if self._persist(batch):
                    self._ack(batch)
                    self.metrics.written.inc(batch.messages)
                    with self._written_cond:
                        self.written += batch.messages
                        self._written_cond.notify_all()
                self.metrics.pending.set(self.batcher.pending())
            elif self.stopping.is_set():
                return
            if self.spool.size_bytes and not self.stopping.is_set():
                self.drain_spool(budget_s=wait)

    def wait_written(self, count: int, timeout_s: float) -> bool:
        """Wait until this service has made ``count`` messages durable (False after
        ``timeout_s`` without getting there)."""
        deadline = time.monotonic() + timeout_s
        with self._written_cond:
            while self.written < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written_cond.wait(left)
            return True

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the inventory, start the metrics endpoint, the writer and the MQTT session."""
        while not self.inventory.load() and self.inventory.size == 0:
            if self.stopping.wait(2.0):
                return
            log.warning("waiting for the database to load the inventory")
        log.info("inventory: %d devices", self.inventory.size)
        if self.config.metrics.port:
            self._http = start_http_server(
                self.config.metrics.port, self.config.metrics.host, registry=self.registry
            )
        self._writer = threading.Thread(target=self._writer_loop, name="ingest-writer")
        self._writer.start()
        self._session = self._make_session()
        self._session.start()

    def stop(self, end_session: bool = False) -> None:
        """Flush what was received, acknowledge it, disconnect.

        The session stays at the broker (it queues for our return) unless ``end_session``.
        """
        self.stopping.set()
        self.batcher.close()
        if self._writer is not None:
            self._writer.join()
        if self._session is not None:
            self._close_session(self._session, end_session)
        self.store.close()
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        log.info("ingest stopped")

    def _close_session(self, session: Session, end_session: bool) -> None:
        """Make the broker take our last PUBACKs, then disconnect.

        A broker reads a connection's packets in order: once it answers an UNSUBSCRIBE (of a
        filter we never used) sent after the PUBACKs, it has processed them — a new connection
        of the same session (a restart right after) cannot overtake them, and what we stored is
        not delivered again. Then wait until the DISCONNECT is written: ``stop()`` ends the
        network thread at once.
        """
        connected = self.metrics.value("broker_connected") == 1
        if connected:
            self._unsubscribed.clear()
            session.unsubscribe([_BARRIER_FILTER])
            if not self._unsubscribed.wait(DISCONNECT_TIMEOUT_S):
                log.warning("no UNSUBACK from the broker before disconnecting")
        self._disconnected.clear()
        session.disconnect(end_session)
        if connected:  # (never connected: there is no DISCONNECT to wait for)
            self._disconnected.wait(DISCONNECT_TIMEOUT_S)
        session.stop()

    def run(self) -> None:
        """Start, wait for :attr:`stopping` (set by SIGTERM/SIGINT), stop."""
        self.start()
        try:
            while not self.stopping.wait(60.0):
                log.info(
                    "received %d messages, stored %d readings, spool %d bytes",
                    self.metrics.value("messages_received_total"),
                    self.metrics.value("readings_stored_total"),
                    self.spool.size_bytes,
                )
        finally:
            self.stop()
