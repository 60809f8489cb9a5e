"""Nothing lost, nothing doubled: kill -9, SIGTERM, database and broker restarts, shared
subscriptions and worker scale-down. Each test streams a known set of distinct readings and
checks the database ends up with exactly that many (the primary key on device, metric and time
makes a second copy impossible, so an exact count means nothing lost and nothing doubled)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from core.config import Config
from core.db import upgrade
from ingest.config import IngestConfig
from ingest.service import IngestService
from tests.fix_db import PrivateCluster, count_readings, register
from tests.fix_ingest import IngestProcess, make_config
from tests.fix_mqtt import PrivateBroker, Publisher, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICES = [f"lum-{i}" for i in range(20)]


def stream(root: str, site: str, messages: int, records: int = 10) -> Iterator[tuple[str, bytes]]:
    """``messages`` SenML packs of ``records`` readings each, every reading distinct."""
    t0 = time.time() - 3600
    for n in range(messages):
        device = DEVICES[n % len(DEVICES)]
        base = t0 + (n // len(DEVICES)) * records
        pack = [{"bn": f"{device}:", "bt": base, "n": "power", "v": float(n)}]
        pack += [{"n": "power", "t": r, "v": float(n)} for r in range(1, records)]
        yield f"{root}/{site}/{device}/up", orjson.dumps(pack)


@dataclass
class Town:
    """A site with 20 registered luminaires, a private broker and a topic root of its own."""

    conn: psycopg.Connection
    db_url: str
    broker: PrivateBroker
    tmp_path: Path
    site: str
    root: str

    def config(self, db_url: str | None = None, **sections: dict[str, Any]) -> Config:
        return make_config(
            db_url or self.db_url, self.broker.url, self.tmp_path, self.root, **sections
        )

    def stream(self, messages: int, records: int = 10) -> Iterator[tuple[str, bytes]]:
        return stream(self.root, self.site, messages, records)

    def stored(self) -> int:
        return count_readings(self.conn, self.site)

    def publish_in_background(
        self, messages: int, pause_every: int = 200
    ) -> tuple[Publisher, threading.Thread]:
        """Stream ``messages`` 10-record packs from a thread, pausing 10 ms every
        ``pause_every``."""
        pub = Publisher(self.broker.url)
        items = self.stream(messages)
        thread = threading.Thread(
            target=lambda: pub.publish(items, pause_every=pause_every, pause_s=0.01)
        )
        thread.start()
        return pub, thread


@pytest.fixture
def town(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
) -> Town:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    return Town(conn, db_url, private_broker, tmp_path, site, root)


Processes = Callable[[Config], IngestProcess]
Services = Callable[[Config], IngestService]


SESSIONS = pytest.mark.parametrize("client", ["lean", "paho"])
"""The ingest's own MQTT session (the default) and paho's (``ingest.mqtt_client``)."""


@SESSIONS
def test_kill_9_during_a_stream_loses_nothing(
    town: Town, ingest_process: Processes, client: str
) -> None:
    config = town.config(ingest={"mqtt_client": client})
    ingest = ingest_process(config)
    ingest.start()
    total_msgs = 6000
    # 20 messages, then 10 ms: three seconds of stream at least, well beyond the kill.
    pub, thread = town.publish_in_background(total_msgs, pause_every=20)
    wait_until(lambda: town.stored() >= 15000, 60, "part of the stream stored")
    ingest.kill9()
    stored_at_kill = town.stored()
    acked_at_kill = pub.acked
    # The stream goes on while the ingest is down: the broker queues it for the session.
    wait_until(lambda: pub.acked >= acked_at_kill + 300, 60, "messages queued while down")
    ingest.start()
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=60)
    wait_until(
        lambda: town.stored() == total_msgs * 10,
        60,
        f"all {total_msgs * 10} readings stored",
    )
    assert stored_at_kill < total_msgs * 10, "the kill must happen during the stream"
    pub.close()
    assert ingest.terminate() == 0


def test_sigterm_flushes_and_exits_cleanly(town: Town, ingest_process: Processes) -> None:
    # A batch would wait a minute: only the SIGTERM flush can store these readings in time.
    config = town.config(
        ingest={"batch_ms": 60000, "batch_rows": 1_000_000, "batch_idle_ms": 0},
    )
    ingest = ingest_process(config)
    ingest.start()
    pub = Publisher(town.broker.url)
    pub.wait_acked(pub.publish(town.stream(100)))
    wait_until(
        lambda: ingest.metric("sobriety_ingest_messages_received_total") == 100,
        10,
        "100 messages received",
    )
    assert town.stored() == 0
    started = time.monotonic()
    assert ingest.terminate() == 0
    assert time.monotonic() - started < 10
    assert town.stored() == 1000
    assert "ingest stopped" in ingest.log()
    pub.close()


def test_backlog_queued_while_stopped_is_drained(town: Town, run_ingest: Services) -> None:
    config = town.config()
    run_ingest(config).stop()  # the persistent session now exists at the broker
    pub = Publisher(town.broker.url)
    pub.wait_acked(pub.publish(town.stream(3000)))
    assert town.stored() == 0
    run_ingest(config)
    wait_until(lambda: town.stored() == 30000, 60, "the backlog stored")
    pub.close()


def test_database_restart_spools_then_drains(
    town: Town, private_postgres: PrivateCluster, run_ingest: Services
) -> None:
    with psycopg.connect(private_postgres.url(), autocommit=True) as conn:
        upgrade(conn)
        register(conn, town.site, *((d, "luminaire") for d in DEVICES))
    service = run_ingest(town.config(db_url=private_postgres.url()))
    total_msgs = 4000
    pub, thread = town.publish_in_background(total_msgs)
    wait_until(lambda: service.metrics.value("readings_stored_total") >= 5000, 60, "part stored")
    private_postgres.stop("fast")
    wait_until(lambda: service.spool.size_bytes > 0, 30, "batches spooled while the db is down")
    wait_until(
        lambda: service.metrics.value("messages_received_total") >= total_msgs * 0.9,
        60,
        "the stream goes on being acknowledged while the database is down",
    )
    private_postgres.start()
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=60)
    with psycopg.connect(private_postgres.url(), autocommit=True) as conn:
        wait_until(
            lambda: count_readings(conn, town.site) == total_msgs * 10,
            60,
            "every reading stored after the database came back",
        )
    wait_until(lambda: service.spool.size_bytes == 0, 30, "the spool drained")
    assert service.metrics.value("batches_spooled_total") > 0
    pub.close()


@SESSIONS
def test_broker_restart_loses_nothing(town: Town, run_ingest: Services, client: str) -> None:
    service = run_ingest(town.config(ingest={"mqtt_client": client}))
    total_msgs = 4000
    pub, thread = town.publish_in_background(total_msgs)
    wait_until(lambda: town.stored() >= 5000, 60, "part stored")
    town.broker.stop()  # returns once the broker process is gone
    town.broker.start()  # returns once it answers a CONNECT again
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=90)
    wait_until(
        lambda: town.stored() == total_msgs * 10,
        60,
        "every reading stored after the broker restart",
    )
    assert service.metrics.value("broker_connected") == 1
    pub.close()


def test_two_ingest_processes_share_the_subscription(town: Town, ingest_process: Processes) -> None:
    workers = []
    for _ in range(2):
        config = town.config(mqtt={"shared_group": "ingest"})
        worker = ingest_process(config)
        worker.start()
        workers.append(worker)
    total_msgs = 2000
    pub = Publisher(town.broker.url)
    pub.wait_acked(pub.publish(town.stream(total_msgs)))
    wait_until(lambda: town.stored() == total_msgs * 10, 60, "every reading stored")
    received = [w.metric("sobriety_ingest_messages_received_total") for w in workers]
    assert sum(received) == total_msgs, "each message went to exactly one worker"
    assert min(received) > 0, f"the load was split: {received}"
    for worker in workers:
        assert worker.terminate() == 0
    pub.close()


def test_workers_split_the_load_and_scaling_down_strands_nothing(
    town: Town, ingest_process: Processes
) -> None:
    two = town.config(ingest={"workers": 2})
    supervisor = ingest_process(two)
    supervisor.start()
    wait_until(
        lambda: supervisor.metric("sobriety_ingest_subscribed", supervisor.metrics_port + 1) == 1,
        20,
        "worker 1 subscribed",
    )
    pub = Publisher(town.broker.url)
    pub.wait_acked(pub.publish(town.stream(1000)))
    wait_until(lambda: town.stored() == 10000, 60, "every reading stored")
    received = [
        supervisor.metric("sobriety_ingest_messages_received_total", p)
        for p in (supervisor.metrics_port, supervisor.metrics_port + 1)
    ]
    assert sum(received) == 1000
    assert min(received) > 0, f"the load was split: {received}"
    assert supervisor.terminate() == 0
    # While stopped, the broker queues the stream for both offline sessions of the group.
    pub.wait_acked(1000 + pub.publish(town.stream(2000, records=1)))
    one = two.replace(two.section(IngestConfig).model_copy(update={"workers": 1}))
    single = ingest_process(one)
    single.start()
    wait_until(
        lambda: town.stored() == 10000 + 2000,
        60,
        "the retired worker's queue drained too",
    )
    assert "retired" in single.log()
    assert single.terminate() == 0
    pub.close()


@pytest.mark.parametrize(
    ("client", "protocol"), [("lean", "5"), ("paho", "5"), ("lean", "3.1.1"), ("paho", "3.1.1")]
)
def test_stored_messages_are_acknowledged_and_never_redelivered(
    town: Town, run_ingest: Services, client: str, protocol: str
) -> None:
    config = town.config(ingest={"mqtt_client": client}, mqtt={"protocol": protocol})
    first = run_ingest(config)
    pub = Publisher(town.broker.url)
    pub.wait_acked(pub.publish(town.stream(3000, records=1)))
    wait_until(lambda: town.stored() == 3000, 30, "all stored")
    first.stop()
    again = run_ingest(config)  # same client id: the broker resumes the session
    # A marker published now comes after whatever the session still held (a broker delivers a
    # session's messages in order): once it is in, anything redelivered would be in too.
    marker = (f"{town.root}/{town.site}/{DEVICES[0]}/up", b'{"power": 1.5}')
    pub.wait_acked(3000 + pub.publish([marker]))
    wait_until(lambda: town.stored() == 3001, 30, "the marker stored")
    assert again.metrics.value("messages_received_total") == 1, "acknowledged messages came back"
    assert first.metrics.value("readings_duplicate_total") == 0
    assert first.metrics.value("batches_merged_total") == 0, "all new: every batch copied direct"
    assert "protocol error" not in town.broker.log().lower()
    pub.close()
