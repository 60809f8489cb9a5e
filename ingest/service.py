"""``sobriety ingest``: MQTT ``{root}/+/+/up`` → validate → batch → PostgreSQL (or spool).

Threads: paho's network thread receives, validates and appends to the :class:`Batcher`; one
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

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, start_http_server

from core.config import Config
from core.contract import uplink_filter
from core.errors import RejectReason
from ingest.acks import send_pubacks
from ingest.batcher import Batch, Batcher
from ingest.config import IngestConfig
from ingest.inventory_cache import InventoryCache, snapshot_name
from ingest.metrics import IngestMetrics
from ingest.pipeline import Limits, Outcome, Pipeline, Rejection
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
        self.store = Store(conninfo, config.database.connect_timeout_s)
        self.batcher = Batcher(icfg.batch_rows, icfg.batch_ms, icfg.batch_idle_ms)
        self.stopping = threading.Event()
        self._generation = 0
        self._db_retry_at = 0.0
        self._db_backoff = 0.5
        self._db_up: bool | None = None  # unknown until the first write
        self._connect_failures = 0
        self.subscribed = threading.Event()  # set at the SUBACK, cleared on disconnect
        self._disconnected = threading.Event()
        self._unsubscribed = threading.Event()
        self.written = 0  # messages made durable and acknowledged by this service
        self._written_cond = threading.Condition()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._http: Any = None
        self.metrics.spool_bytes.set(self.spool.size_bytes)

    # --- MQTT ---------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        mcfg = self.config.mqtt
        if mcfg.protocol == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=mcfg.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:  # MQTT 3.1.1: the persistent session is clean_session=False
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=mcfg.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if mcfg.username:
            client.username_pw_set(mcfg.username, self.config.mqtt_password())
        client.reconnect_delay_set(1, max(1, int(mcfg.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = lambda *_args: self._unsubscribed.set()
        client.on_connect_fail = self._on_connect_fail
        return client

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        """The broker cannot be reached: said at once, and at every attempt (paho retries with a
        backoff from 1 s to ``mqtt.reconnect_max_s``)."""
        self._connect_failures += 1
        self.metrics.connect_failures.inc()
        log.warning(
            "cannot reach the broker at %s (attempt %d); retrying, backoff up to %.0f s",
            self.config.mqtt.url,
            self._connect_failures,
            self.config.mqtt.reconnect_max_s,
        )

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._connect_failures = 0
        self._generation += 1
        self.metrics.broker_connected.set(1)
        topic = uplink_filter(self.config.mqtt.root, self.config.mqtt.shared_group)
        if self.retiring:
            # What the session holds is delivered anyway; nothing new should come to it.
            client.unsubscribe([topic, uplink_filter(self.config.mqtt.root)])
            log.info("retiring session %s: draining its queue", self.config.mqtt.client_id)
            return
        client.subscribe(topic, options=SubscribeOptions(qos=1))
        log.info(
            "connected to %s (session present: %s); subscribed to %s",
            self.config.mqtt.url,
            flags.session_present,
            topic,
        )

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("broker refused the subscription: %s", refused)
            return
        self.metrics.subscribed.set(1)
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._disconnected.set()
        self.subscribed.clear()
        self.metrics.subscribed.set(0)
        self.metrics.broker_connected.set(0)
        if not self.stopping.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received_at = time.time()
        self.metrics.received.inc()
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers refuse such topics; a broken one must not stop us
            topic = "(topic not UTF-8)"
        try:
            outcome = self.pipeline.process(topic, bytes(msg.payload), received_at)
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
                    bytes(msg.payload[: self.pipeline.limits.max_payload_bytes]),
                    len(msg.payload),
                )
            )
        for rej in outcome.rejections:
            self.metrics.rejected.labels(reason=rej.reason.value).inc()
        ack = (self._generation, msg.mid, msg.qos) if msg.qos else None
        self.batcher.add(outcome, ack)

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
        client = self._client
        now = time.time()
        for newest in batch.newest:
            self.metrics.lag.observe(now - newest)
        if client is None:
            return
        generation = self._generation
        # An id from an earlier connection may now name another message: the broker
        # redelivers the old one, which is then stored (deduplicated) and acknowledged.
        send_pubacks(client, [(mid, qos) for gen, mid, qos in batch.acks if gen == generation])

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
        mcfg = self.config.mqtt
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
        self._client = self._make_client()
        url = urlsplit(mcfg.url)
        host, port = url.hostname or "127.0.0.1", url.port or 1883
        if mcfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = mcfg.session_expiry_s
            props.ReceiveMaximum = mcfg.receive_maximum
            self._client.connect_async(
                host, port, keepalive=mcfg.keepalive_s, clean_start=False, properties=props
            )
        else:
            self._client.connect_async(host, port, keepalive=mcfg.keepalive_s)
        self._client.loop_start()

    def stop(self, end_session: bool = False) -> None:
        """Flush what was received, acknowledge it, disconnect.

        The session stays at the broker (it queues for our return) unless ``end_session``.
        """
        self.stopping.set()
        self.batcher.close()
        if self._writer is not None:
            self._writer.join()
        if self._client is not None:
            props = None
            if end_session and self.config.mqtt.protocol == "5":
                props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
            self._close_session(self._client, props)
        self.store.close()
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        log.info("ingest stopped")

    def _close_session(self, client: mqtt.Client, props: Properties | None) -> None:
        """Make the broker take our last PUBACKs, then disconnect.

        A broker reads a connection's packets in order: once it answers an UNSUBSCRIBE (of a
        filter we never used) sent after the PUBACKs, it has processed them — a new connection
        of the same session (a restart right after) cannot overtake them, and what we stored is
        not delivered again. Then wait until the DISCONNECT is written: ``loop_stop()`` ends the
        network thread at once.
        """
        connected = self.metrics.value("broker_connected") == 1
        if connected:
            self._unsubscribed.clear()
            client.unsubscribe(_BARRIER_FILTER)
            if not self._unsubscribed.wait(DISCONNECT_TIMEOUT_S):
                log.warning("no UNSUBACK from the broker before disconnecting")
        self._disconnected.clear()
        client.disconnect(properties=props)
        if connected:  # (never connected: there is no DISCONNECT to wait for)
            self._disconnected.wait(DISCONNECT_TIMEOUT_S)
        client.loop_stop()

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
