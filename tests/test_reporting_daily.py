"""Messages and readings per device and local day (``device_reporting_daily``), counted by the
ingest with the readings, and the view ``api.reporting_daily`` that compares them with one
single-record message every ``reporting_baseline.interval_s`` per metric."""

from __future__ import annotations

import datetime as dt
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from core.config import Config
from core.contract import METRICS
from core.db import upgrade
from core.errors import RejectReason
from ingest.config import IngestConfig
from ingest.pipeline import Rejection, Uplinks
from ingest.service import IngestService
from ingest.spool import Spool, decode_frame, encode_frame
from ingest.store import Store
from tests.fix_db import PrivateCluster, count_readings, register
from tests.fix_ingest import make_config
from tests.fix_mqtt import Publisher, wait_until

pytestmark = pytest.mark.services

RunIngest = Callable[[Config], IngestService]
PARIS = ZoneInfo("Europe/Paris")  # the default time zone of a site


@dataclass(frozen=True)
class Record:
    metric: str
    t: float  # [s since the epoch]
    value: float
    valid: bool = True  # False: the ingest rejects it (out of range)


def senml(device: str, records: list[Record]) -> bytes:
    base = records[0].t
    pack: list[dict[str, object]] = [
        {"bn": f"{device}:", "bt": base, "n": records[0].metric, "v": records[0].value}
    ]
    pack += [{"n": r.metric, "t": r.t - base, "v": r.value} for r in records[1:]]
    return orjson.dumps(pack)


def local_day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, PARIS).date()


def expected_counts(
    messages: list[tuple[str, list[Record]]],
) -> dict[tuple[str, dt.date], tuple[int, int, int]]:
    """(device, local day) -> (messages, readings, metric mask), by the counting rule: a message
    with a valid record counts at the local day of its earliest valid reading (again when
    delivered again); a reading counts once, at its own local day."""
    msgs: Counter[tuple[str, dt.date]] = Counter()
    reads: Counter[tuple[str, dt.date]] = Counter()
    masks: dict[tuple[str, dt.date], int] = {}
    seen: set[tuple[str, str, float]] = set()
    for device, records in messages:
        valid = [r for r in records if r.valid]
        if not valid:
            continue
        msgs[(device, local_day(min(r.t for r in valid)))] += 1
        for r in valid:
            if (device, r.metric, r.t) in seen:
                continue
            seen.add((device, r.metric, r.t))
            key = (device, local_day(r.t))
            reads[key] += 1
            masks[key] = masks.get(key, 0) | 1 << METRICS[r.metric].id
    return {k: (msgs[k], reads[k], masks.get(k, 0)) for k in msgs.keys() | reads.keys()}


def counts(conn: psycopg.Connection, site: str) -> dict[tuple[str, dt.date], tuple[int, int, int]]:
    return {
        (device, day): (messages, readings, mask)
        for device, day, messages, readings, mask in conn.execute(
            "SELECT d.device, c.day, c.messages, c.readings, c.metric_mask "
            "FROM device_reporting_daily c JOIN devices d ON d.id = c.device_id "
            "WHERE d.site = %s",
            (site,),
        )
    }


def test_messages_and_readings_counted_per_device_and_local_day(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
) -> None:
    register(conn, site, ("lum-1", "luminaire"), ("wm-1", "water_meter"))
    # Yesterday's local midnight (23:00 UTC in winter, 22:00 in summer): inside the past window.
    today = dt.datetime.now(PARIS).date()
    midnight = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(), PARIS).timestamp()
    assert dt.datetime.fromtimestamp(midnight, dt.UTC).hour in (22, 23)
    m = 60.0
    before = [Record("power", midnight - 20 * m, 10.0), Record("dim", midnight - 10 * m, 50.0)]
    across = [  # one message either side of midnight: counted the day before, readings on both
        Record("power", midnight - 5 * m, 11.0),
        Record("power", midnight + 5 * m, 12.0),
        Record("dim", midnight + 10 * m, 40.0),
    ]
    after = [Record("power", midnight + 30 * m, 13.0)]
    partly = [
        Record("power", midnight + 40 * m, 14.0),
        Record("dim", midnight + 41 * m, 500.0, False),
    ]
    bad = [Record("dim", midnight + 50 * m, 700.0, False)]  # every record rejected: not counted
    meter = [Record("volume", midnight + 60 * m, 12.5), Record("volume", midnight + 75 * m, 12.6)]
    sent = [
        ("lum-1", before),
        ("lum-1", across),
        ("lum-1", after),
        ("lum-1", after),  # delivered twice: two messages, one reading
        ("lum-1", partly),
        ("lum-1", bad),
        ("wm-1", meter),
    ]
    service = run_ingest(make_config(db_url, mqtt_url, tmp_path, root))
    pub = Publisher(mqtt_url)
    messages = [(f"{root}/{site}/{device}/up", senml(device, records)) for device, records in sent]
    messages.append((f"{root}/{site}/ghost/up", senml("ghost", after)))  # unknown device
    messages.append((f"{root}/{site}/lum-1/up", b"{not json"))
    pub.publish(messages)
    assert service.wait_written(len(messages), 20), "the messages were not written"
    pub.close()
    expected = expected_counts(sent)
    assert counts(conn, site) == expected
    # The counts match what is stored, and the rejections are stored but not counted.
    assert sum(r for _, r, _ in expected.values()) == count_readings(conn, site)
    assert service.metrics.value("readings_duplicate_total") == 1
    assert {k[1] for k in expected} == {
        local_day(midnight) - dt.timedelta(days=1),
        local_day(midnight),
    }
    rejected = conn.execute(
        "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s", (f"%/{site}/%",)
    ).fetchone()
    assert rejected is not None
    assert rejected[0] == 4  # ghost, not JSON, all records out of range, one record out of range


def test_a_spooled_batch_is_counted_once_when_drained(
    tmp_path: Path,
    site: str,
    root: str,
    mqtt_url: str,
    private_postgres: PrivateCluster,
    run_ingest: RunIngest,
) -> None:
    url = private_postgres.url()
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
        register(conn, site, ("lum-1", "luminaire"), ("lum-2", "luminaire"))
    service = run_ingest(make_config(url, mqtt_url, tmp_path, root))
    private_postgres.stop("fast")
    t0 = time.time() - 600
    sent = [
        (device, [Record("power", t0 + 10 * n + r, float(n)) for r in range(3)])
        for n in range(20)
        for device in ("lum-1", "lum-2")
    ]
    pub = Publisher(mqtt_url)
    pub.publish([(f"{root}/{site}/{d}/up", senml(d, records)) for d, records in sent])
    assert service.wait_written(len(sent), 30), "the batches were not spooled"
    pub.close()
    assert service.metrics.value("batches_spooled_total") > 0
    assert service.spool.size_bytes > 0
    private_postgres.start()
    wait_until(lambda: service.spool.size_bytes == 0, 30, "the spool drained")
    with psycopg.connect(url, autocommit=True) as conn:
        assert counts(conn, site) == expected_counts(sent)
        assert count_readings(conn, site) == 3 * len(sent)


def old_format_body(rows: list[tuple[int, int, int, float]], rejections: list[Rejection]) -> bytes:
    """A frame body as the spool wrote it before message counts: row count, rows, rejections."""
    rej = orjson.dumps(
        [
            [
                r.received_at,
                r.topic,
                r.site,
                r.device,
                r.reason.value,
                r.detail,
                r.payload.hex(),
                r.payload_bytes,
            ]
            for r in rejections
        ]
    )
    return struct.pack("<Q", len(rows)) + b"".join(struct.pack("<qihd", *r) for r in rows) + rej


def test_frames_carry_the_messages_and_old_frames_still_decode() -> None:
    rejection = Rejection(1.5, "a/b/c/d/up", "c", "d", RejectReason.INVALID_JSON, "bad", b"{", 1)
    rows = [(1_000_000, 7, 5, 1.5), (2_000_000, 7, 7, 50.0), (-3, 8, 5, 1e300)]
    uplinks = Uplinks([7, 8, 7], [1_000_000, -3, 1_000_000])
    body = encode_frame(rows, [rejection], uplinks)
    new = decode_frame(body)
    assert (new.rows, new.rejections, new.uplinks) == (rows, [rejection], uplinks)
    assert new.frame_id is not None
    assert len(new.frame_id) == 16
    assert (
        decode_frame(body).frame_id == new.frame_id != decode_frame(encode_frame(rows, [])).frame_id
    )
    assert decode_frame(encode_frame([], [])).uplinks == Uplinks()
    old = decode_frame(old_format_body(rows, [rejection]))
    assert (old.rows, old.rejections, old.uplinks, old.frame_id) == (rows, [rejection], None, None)
    empty = decode_frame(old_format_body([], []))
    assert (empty.rows, empty.rejections, empty.uplinks) == ([], [], None)


def test_a_frame_replayed_again_is_counted_once(
    conn: psycopg.Connection, db_url: str, site: str
) -> None:
    """A drain interrupted after some frames of a segment replays the segment from its start."""
    ids = register(conn, site, ("lum-1", "luminaire"))
    yesterday = dt.datetime.now(PARIS).date() - dt.timedelta(days=1)
    noon = dt.datetime.combine(yesterday, dt.time(12), PARIS)  # far from a day's edge
    t0 = round(noon.timestamp() * 1e6)
    messages = [
        [(t0 + (10 * n + r) * 1_000_000, ids["lum-1"], METRICS["power"].id, 1.0) for r in range(4)]
        for n in range(3)
    ]
    uplinks = Uplinks()
    for rows in messages:
        uplinks.add(rows)
    frame = decode_frame(encode_frame([r for rows in messages for r in rows], [], uplinks))
    store = Store(db_url)
    try:
        for _ in range(2):
            store.write(frame.rows, [], uplinks=frame.uplinks, frame_id=frame.frame_id)
        day = local_day(t0 / 1e6)
        assert counts(conn, site) == {("lum-1", day): (3, 12, 1 << METRICS["power"].id)}
        # The same messages delivered again (not a replay): counted again, readings once.
        store.write(frame.rows, [], uplinks=frame.uplinks)
        assert counts(conn, site) == {("lum-1", day): (6, 12, 1 << METRICS["power"].id)}
    finally:
        store.close()


def test_a_spool_written_before_the_upgrade_drains(
    conn: psycopg.Connection,
    db_url: str,
    mqtt_url: str,
    tmp_path: Path,
    site: str,
    root: str,
    run_ingest: RunIngest,
) -> None:
    ids = register(conn, site, ("lum-1", "luminaire"))
    config = make_config(db_url, mqtt_url, tmp_path, root)
    t0 = round((time.time() - 3600) * 1e6)
    rows = [(t0 + i * 1_000_000, ids["lum-1"], METRICS["power"].id, float(i)) for i in range(5)]
    spool = Spool(config.section(IngestConfig).spool_dir / config.mqtt.client_id, 1 << 20)
    spool.append(old_format_body(rows, []))
    service = run_ingest(config)
    wait_until(lambda: service.spool.size_bytes == 0, 20, "the old spool drained")
    assert count_readings(conn, site) == 5
    assert counts(conn, site) == {}  # its messages are unknown: not counted


# --- the view --------------------------------------------------------------------------------
DAYS = [dt.date(2026, 3, 29), dt.date(2026, 10, 25), dt.date(2026, 11, 10)]  # 23, 25, 24 h


def day_seconds(day: dt.date) -> float:
    start = dt.datetime.combine(day, dt.time(), PARIS)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), PARIS)
    return end.timestamp() - start.timestamp()


def expected_view(
    rows: list[tuple[str, str, dt.date, int, int, int]], interval_s: int, energy_j: float
) -> dict[tuple[str, dt.date], tuple[object, ...]]:
    """(kind, day) -> the view's columns from devices after kind, from the rows put in."""
    out: dict[tuple[str, dt.date], list[float]] = {}
    for _device, kind, day, messages, readings, mask in rows:
        acc = out.setdefault((kind, day), [0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += messages
        acc[2] += readings
        acc[3] += bin(mask).count("1") * day_seconds(day) / interval_s
    result: dict[tuple[str, dt.date], tuple[object, ...]] = {}
    for key, (devices, messages, readings, baseline) in out.items():
        saved = 1 - messages / baseline if baseline else None
        result[key] = (
            devices,
            messages,
            readings,
            pytest.approx(baseline),
            None if saved is None else pytest.approx(saved),
            pytest.approx(messages * energy_j / 3600),
            pytest.approx(baseline * energy_j / 3600),
        )
    return result


def test_the_view_compares_with_the_baseline_and_follows_the_settings(
    conn: psycopg.Connection, site: str
) -> None:
    kinds = {
        "lum-1": "luminaire",
        "lum-2": "luminaire",
        "wm-1": "water_meter",
        "wm-2": "water_meter",
    }
    ids = register(conn, site, *kinds.items())
    power, dim, volume = (METRICS[n].id for n in ("power", "dim", "volume"))
    rows = [  # device, kind, day, messages, readings, metric mask
        ("lum-1", DAYS[0], 24, 48, 1 << power | 1 << dim),
        ("lum-2", DAYS[0], 96, 96, 1 << power),
        ("lum-1", DAYS[1], 10, 30, 1 << power | 1 << dim),
        ("wm-1", DAYS[1], 1, 100, 1 << volume),
        ("wm-2", DAYS[1], 3, 0, 0),  # only duplicates that day: no metric, no baseline
        ("wm-2", DAYS[2], 2, 0, 0),  # the whole group has no baseline: saved_fraction NULL
        ("lum-2", DAYS[2], 200, 200, 1 << power),  # more than the baseline: negative saving
    ]
    full = [(d, kinds[d], day, m, r, mask) for d, day, m, r, mask in rows]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO device_reporting_daily (device_id, day, messages, readings, metric_mask) "
            "VALUES (%s, %s, %s, %s, %s)",
            [(ids[d], day, m, r, mask) for d, day, m, r, mask in rows],
        )

    def view() -> dict[tuple[str, dt.date], tuple[object, ...]]:
        return {
            (kind, day): tuple(rest)
            for _site, kind, day, *rest in conn.execute(
                "SELECT site, kind, day, devices, messages, readings, baseline_messages, "
                "saved_fraction, radio_energy_wh, baseline_radio_energy_wh "
                "FROM api.reporting_daily WHERE site = %s",
                (site,),
            )
        }

    settings = conn.execute("SELECT interval_s, uplink_energy_j FROM reporting_baseline").fetchall()
    assert len(settings) == 1
    interval_s, energy_j = settings[0]
    assert (interval_s, energy_j) == (900, pytest.approx(0.0366))
    assert view() == expected_view(full, interval_s, energy_j)
    assert [day_seconds(d) for d in DAYS] == [82800, 90000, 86400]
    assert view()[("luminaire", DAYS[0])][3] == pytest.approx(92 * 2 + 92)  # 23 h: 92 a metric
    try:
        conn.execute("UPDATE reporting_baseline SET interval_s = 600, uplink_energy_j = 0.05")
        assert view() == expected_view(full, 600, 0.05)
    finally:
        conn.execute(
            "UPDATE reporting_baseline SET interval_s = %s, uplink_energy_j = %s",
            (interval_s, energy_j),
        )
    columns = [
        c.name for c in conn.execute("SELECT * FROM api.reporting_daily LIMIT 0").description or []
    ]
    assert columns == [
        "site",
        "kind",
        "day",
        "devices",
        "messages",
        "readings",
        "baseline_messages",
        "saved_fraction",
        "radio_energy_wh",
        "baseline_radio_energy_wh",
    ]
