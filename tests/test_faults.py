"""Nothing lost, nothing doubled: kill -9, SIGTERM, database and broker restarts, two ingest
processes on one shared subscription. Each test streams a known set of readings and checks the
database holds exactly that set."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from ingest.service import IngestService
from sobriety.config import Config
from sobriety.db import upgrade
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


def publish_in_background(
    url: str, items: Iterator[tuple[str, bytes]], pause_every: int = 200, pause_s: float = 0.01
) -> tuple[Publisher, threading.Thread, list[int]]:
    pub = Publisher(url)
    sent: list[int] = []
    thread = threading.Thread(
        target=lambda: sent.append(pub.publish(items, pause_every=pause_every, pause_s=pause_s))
    )
    thread.start()
    return pub, thread, sent


def duplicates(conn: psycopg.Connection, site: str) -> int:
    row = conn.execute(
        "SELECT count(*) - count(DISTINCT (r.device_id, r.metric_id, r.time)) FROM readings r "
        "JOIN devices d ON d.id = r.device_id WHERE d.site = %s",
        (site,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_kill_9_during_a_stream_loses_nothing(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    ingest_process: Callable[[Config], IngestProcess],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    config = make_config(db_url, private_broker.url, tmp_path, root)
    ingest = ingest_process(config)
    ingest.start()
    total_msgs = 6000
    pub, thread, _ = publish_in_background(private_broker.url, stream(root, site, total_msgs))
    wait_until(lambda: count_readings(conn, site) >= 15000, 60, "part of the stream stored")
    ingest.kill9()
    stored_at_kill = count_readings(conn, site)
    time.sleep(0.5)
    ingest.start()
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=60)
    wait_until(
        lambda: count_readings(conn, site) == total_msgs * 10,
        60,
        f"all {total_msgs * 10} readings stored",
    )
    assert stored_at_kill < total_msgs * 10, "the kill must happen during the stream"
    assert duplicates(conn, site) == 0
    pub.close()
    assert ingest.terminate() == 0


def test_sigterm_flushes_and_exits_cleanly(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    ingest_process: Callable[[Config], IngestProcess],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    # A batch would wait a minute: only the SIGTERM flush can store these readings in time.
    config = make_config(
        db_url,
        private_broker.url,
        tmp_path,
        root,
        ingest={"batch_ms": 60000, "batch_rows": 1_000_000},
    )
    ingest = ingest_process(config)
    ingest.start()
    pub = Publisher(private_broker.url)
    pub.wait_acked(pub.publish(stream(root, site, 100)))
    wait_until(
        lambda: ingest.metric("sobriety_ingest_messages_received_total") == 100,
        10,
        "100 messages received",
    )
    assert count_readings(conn, site) == 0
    started = time.monotonic()
    assert ingest.terminate() == 0
    assert time.monotonic() - started < 10
    assert count_readings(conn, site) == 1000
    assert "ingest stopped" in ingest.log()
    pub.close()


def test_backlog_queued_while_stopped_is_drained(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: Callable[[Config], IngestService],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    config = make_config(db_url, private_broker.url, tmp_path, root)
    run_ingest(config).stop()  # the persistent session now exists at the broker
    pub = Publisher(private_broker.url)
    pub.wait_acked(pub.publish(stream(root, site, 3000)))
    assert count_readings(conn, site) == 0
    run_ingest(config)
    wait_until(lambda: count_readings(conn, site) == 30000, 60, "the backlog stored")
    pub.close()


def test_database_restart_spools_then_drains(
    private_postgres: PrivateCluster,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: Callable[[Config], IngestService],
) -> None:
    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        upgrade(conn)
        register(conn, site, *((d, "luminaire") for d in DEVICES))
    config = make_config(private_postgres.url, private_broker.url, tmp_path, root)
    service = run_ingest(config)
    total_msgs = 4000
    pub, thread, _ = publish_in_background(private_broker.url, stream(root, site, total_msgs))
    wait_until(lambda: service.metrics.stored._value.get() >= 5000, 60, "part stored")
    private_postgres.stop("fast")
    wait_until(lambda: service.spool.size_bytes > 0, 30, "batches spooled while the db is down")
    wait_until(
        lambda: service.metrics.received._value.get() >= total_msgs * 0.9,
        60,
        "the stream goes on being acknowledged while the database is down",
    )
    private_postgres.start()
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=60)
    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        wait_until(
            lambda: count_readings(conn, site) == total_msgs * 10,
            60,
            "every reading stored after the database came back",
        )
        assert duplicates(conn, site) == 0
    wait_until(lambda: service.spool.size_bytes == 0, 30, "the spool drained")
    assert service.metrics.spooled._value.get() > 0
    pub.close()


def test_broker_restart_loses_nothing(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: Callable[[Config], IngestService],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    service = run_ingest(make_config(db_url, private_broker.url, tmp_path, root))
    total_msgs = 4000
    pub, thread, _ = publish_in_background(private_broker.url, stream(root, site, total_msgs))
    wait_until(lambda: count_readings(conn, site) >= 5000, 60, "part stored")
    private_broker.stop()
    time.sleep(0.5)
    private_broker.start()
    thread.join(timeout=120)
    pub.wait_acked(total_msgs, timeout_s=90)
    wait_until(
        lambda: count_readings(conn, site) == total_msgs * 10,
        60,
        "every reading stored after the broker restart",
    )
    assert duplicates(conn, site) == 0
    assert service.metrics.broker_connected._value.get() == 1
    pub.close()


def test_two_ingest_processes_share_the_subscription(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    ingest_process: Callable[[Config], IngestProcess],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    workers = []
    for _ in range(2):
        config = make_config(
            db_url, private_broker.url, tmp_path, root, mqtt={"shared_group": "ingest"}
        )
        worker = ingest_process(config)
        worker.start()
        workers.append(worker)
    total_msgs = 2000
    pub = Publisher(private_broker.url)
    pub.wait_acked(pub.publish(stream(root, site, total_msgs)))
    wait_until(lambda: count_readings(conn, site) == total_msgs * 10, 60, "every reading stored")
    received = [w.metric("sobriety_ingest_messages_received_total") for w in workers]
    assert sum(received) == total_msgs, "each message went to exactly one worker"
    assert min(received) > 0, f"the load was split: {received}"
    assert duplicates(conn, site) == 0
    for worker in workers:
        assert worker.terminate() == 0
    pub.close()


def test_workers_split_the_load_and_scaling_down_strands_nothing(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    ingest_process: Callable[[Config], IngestProcess],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    two = make_config(db_url, private_broker.url, tmp_path, root, ingest={"workers": 2})
    supervisor = ingest_process(two)
    supervisor.start()
    wait_until(
        lambda: (
            supervisor.metric("sobriety_ingest_broker_connected", port=supervisor.metrics_port + 1)
            == 1
        ),
        20,
        "worker 1 connected",
    )
    pub = Publisher(private_broker.url)
    pub.wait_acked(pub.publish(stream(root, site, 1000)))
    wait_until(lambda: count_readings(conn, site) == 10000, 60, "every reading stored")
    received = [
        supervisor.metric("sobriety_ingest_messages_received_total", port=p)
        for p in (supervisor.metrics_port, supervisor.metrics_port + 1)
    ]
    assert sum(received) == 1000
    assert min(received) > 0, f"the load was split: {received}"
    assert supervisor.terminate() == 0
    # While stopped, the broker queues the stream for both offline sessions of the group.
    pub.wait_acked(1000 + pub.publish(stream(root, site, 2000, records=1)))
    one = two.model_copy(update={"ingest": two.ingest.model_copy(update={"workers": 1})})
    single = ingest_process(one)
    single.start()
    wait_until(
        lambda: count_readings(conn, site) == 10000 + 2000,
        60,
        "the retired worker's queue drained too",
    )
    assert "retired" in single.log()
    assert duplicates(conn, site) == 0
    assert single.terminate() == 0
    pub.close()


def test_stored_messages_are_acknowledged_and_never_redelivered(
    conn: psycopg.Connection,
    db_url: str,
    private_broker: PrivateBroker,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: Callable[[Config], IngestService],
) -> None:
    register(conn, site, *((d, "luminaire") for d in DEVICES))
    config = make_config(db_url, private_broker.url, tmp_path, root)
    first = run_ingest(config)
    pub = Publisher(private_broker.url)
    pub.wait_acked(pub.publish(stream(root, site, 3000, records=1)))
    wait_until(lambda: count_readings(conn, site) == 3000, 30, "all stored")
    first.stop()
    again = run_ingest(config)  # same client id: the broker resumes the session
    time.sleep(1.0)
    assert again.metrics.received._value.get() == 0, "acknowledged messages came back"
    assert first.metrics.duplicates._value.get() == 0
    assert "protocol error" not in private_broker.log().lower()
    pub.close()
