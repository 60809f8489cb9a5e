"""The store's direct-``COPY`` fast path against its staging merge: the same batches leave the
same ``readings``, ``device_reporting_daily`` and ``device_status``; a batch holding a reading
already stored falls back to the merge; a batch is still written whole or not at all.

Each test writes its batches twice, into two twin sets of sites (same devices, same time zones):
once with the fast path, once with ``direct_copy=False``, and compares the two."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from core.contract import METRICS
from core.errors import RejectReason
from ingest.pipeline import Rejection, Row, Uplinks
from ingest.store import Store, WriteResult
from ingest.store_direct import PG_EPOCH_US, QUARTER_US, encode_direct
from tests.fix_db import register
from tests.fix_mqtt import wait_until

pytestmark = pytest.mark.services

ZONES = {"par": "Europe/Paris", "kol": "Asia/Kolkata", "nyc": "America/New_York"}
DEVICES = {"par": ("lum-1", "lum-2"), "kol": ("wm-1",), "nyc": ("wm-2", "wm-3")}
Key = tuple[str, str]  # (zone key, device name)


@dataclass(frozen=True)
class Message:
    """``n`` records of one device from ``start`` (UTC) every ``step_s``, cycling ``metrics``."""

    zone: str
    device: str
    start: str
    n: int
    step_s: int
    metrics: tuple[str, ...]

    def records(self) -> list[tuple[str, int]]:
        t0 = dt.datetime.fromisoformat(self.start).replace(tzinfo=dt.UTC)
        return [
            (self.metrics[i % len(self.metrics)], us(t0 + dt.timedelta(seconds=i * self.step_s)))
            for i in range(self.n)
        ]


def us(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


@dataclass
class Twins:
    """Two copies of the same inventory: ``fast`` ids and ``merge`` ids by (zone, device)."""

    fast: dict[Key, int]
    merge: dict[Key, int]
    sites: dict[str, list[str]]  # "fast"/"merge" -> their sites

    def rows(self, side: str, messages: list[Message]) -> tuple[list[Row], Uplinks]:
        ids = self.fast if side == "fast" else self.merge
        rows: list[Row] = []
        uplinks = Uplinks()
        for m in messages:
            device_id = ids[(m.zone, m.device)]
            msg = [
                (t, device_id, METRICS[metric].id, float(t // 1_000_000 % 1000))
                for metric, t in m.records()
            ]
            rows += msg
            uplinks.add(msg)
        return rows, uplinks


@pytest.fixture
def twins(conn: psycopg.Connection, site: str) -> Twins:
    ids: dict[str, dict[Key, int]] = {"fast": {}, "merge": {}}
    sites: dict[str, list[str]] = {"fast": [], "merge": []}
    for side in ("fast", "merge"):
        for zone, tz in ZONES.items():
            name = f"{site}{zone}{side[0]}"
            got = register(conn, name, *((d, "water_meter") for d in DEVICES[zone]))
            conn.execute("UPDATE sites SET timezone = %s WHERE site = %s", (tz, name))
            ids[side].update({(zone, d): i for d, i in got.items()})
            sites[side].append(name)
    return Twins(ids["fast"], ids["merge"], sites)


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Store, Store]]:
    fast, merge = Store(db_url), Store(db_url, direct_copy=False)
    yield fast, merge
    fast.close()
    merge.close()


def snapshot(conn: psycopg.Connection, sites: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """The three tables for ``sites``, by (site's zone key, device name), without the ids."""

    def by_name(sql: str) -> list[tuple[Any, ...]]:
        got = conn.execute(
            sql + " JOIN devices d ON d.id = x.device_id WHERE d.site = ANY(%s)", (sites,)
        ).fetchall()
        return sorted((site[-4:-1], *rest) for site, *rest in got)

    return {
        "readings": by_name(
            "SELECT d.site, d.device, x.metric_id, x.time, x.value FROM readings x"
        ),
        "daily": by_name(
            "SELECT d.site, d.device, x.day, x.messages, x.readings, x.metric_mask "
            "FROM device_reporting_daily x"
        ),
        "status": by_name("SELECT d.site, d.device, x.last_reading_at FROM device_status x"),
    }


def expected_daily(
    batches: list[tuple[list[Message], bool]],
) -> list[tuple[object, ...]]:
    """The counting rule, independently: a message on the local day of its earliest reading
    (each delivery), a reading once on its own local day, the metrics stored per day."""
    msgs: Counter[tuple[str, str, dt.date]] = Counter()
    reads: Counter[tuple[str, str, dt.date]] = Counter()
    masks: Counter[tuple[str, str, dt.date]] = Counter()
    seen: set[tuple[str, str, str, int]] = set()

    def day(zone: str, t_us: int) -> dt.date:
        return dt.datetime.fromtimestamp(t_us / 1e6, ZoneInfo(ZONES[zone])).date()

    for messages, counted in batches:
        for m in messages:
            records = m.records()
            if counted:
                msgs[(m.zone, m.device, day(m.zone, min(t for _, t in records)))] += 1
            for metric, t in records:
                if (m.zone, m.device, metric, t) in seen:
                    continue
                seen.add((m.zone, m.device, metric, t))
                key = (m.zone, m.device, day(m.zone, t))
                if counted:
                    reads[key] += 1
                    masks[key] |= 1 << METRICS[metric].id
    return sorted((*k, msgs[k], reads[k], masks[k]) for k in msgs | reads)


def write_both(
    twins: Twins,
    stores: tuple[Store, Store],
    messages: list[Message],
    counted: bool = True,
    frame_id: bytes | None = None,
) -> tuple[WriteResult, WriteResult]:
    results = []
    for side, store in zip(("fast", "merge"), stores, strict=True):
        rows, uplinks = twins.rows(side, messages)
        frame = None if frame_id is None else frame_id + side.encode()  # a spool of each's own
        results.append(store.write(rows, [], uplinks=uplinks if counted else None, frame_id=frame))
    return results[0], results[1]


# Local midnight in Paris on 25 October 2026 is 22:00Z on the 24th; clocks go back at 01:00Z
# (03:00 CEST -> 02:00 CET), so the 25th ends at 23:00Z. Kolkata (+05:30) turns the day at
# 18:30Z, in the middle of a UTC hour. New York turns the day at 04:00Z on 1 November (EDT) and
# goes back at 06:00Z.
BATCHES = [
    [
        Message("par", "lum-1", "2026-10-24T21:50:00", 8, 180, ("power", "dim")),
        Message("par", "lum-2", "2026-10-25T00:40:00", 10, 300, ("power",)),
        Message("par", "lum-2", "2026-10-25T22:55:00", 6, 120, ("power", "temperature")),
        Message("kol", "wm-1", "2026-10-24T18:20:00", 5, 300, ("volume",)),
        Message("nyc", "wm-2", "2026-11-01T03:50:00", 6, 240, ("volume", "temperature")),
        Message("nyc", "wm-2", "2026-11-01T05:50:00", 6, 240, ("volume",)),
        Message("nyc", "wm-3", "2026-11-01T03:59:59", 1, 1, ("flow",)),
    ],
    [
        Message("par", "lum-1", "2026-10-24T22:30:00", 4, 60, ("dim",)),
        Message("par", "lum-2", "2026-10-24T10:00:00", 2, 60, ("power",)),  # older: status keeps
        Message("kol", "wm-1", "2026-10-24T19:00:00", 3, 900, ("volume", "pressure")),
        Message("nyc", "wm-2", "2026-11-01T07:00:00", 3, 60, ("volume",)),
        Message("nyc", "wm-3", "2026-11-01T04:00:00", 1, 1, ("flow",)),
    ],
]
NOT_COUNTED = [Message("kol", "wm-1", "2026-10-25T02:00:00", 3, 60, ("volume",))]


def test_encode_direct_is_the_binary_copy_format_and_sums_per_quarter() -> None:
    t0 = 1_988_889 * QUARTER_US  # a quarter hour's start (2026-09-21T14:15Z)
    rows: list[Row] = [
        (t0, 7, 5, 1.5),
        (t0 + QUARTER_US - 1, 7, 9, 2.0),
        (t0 + QUARTER_US, 7, 5, 3.0),
        (t0 + 5, 9, 5, 0.0),
        (t0 + 2, 7, 2, 0.0),  # device 7's first quarter again, after another device, earlier
    ]
    uplinks = Uplinks([7, 8], [t0 + 1, t0 + 2 * QUARTER_US])
    batch = encode_direct(rows, uplinks)
    assert batch.payload[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    assert batch.payload[-2:] == b"\xff\xff"
    assert len(batch.payload) == 19 + 5 * 40 + 2
    assert batch.payload[19:31] == b"\x00\x04\x00\x00\x00\x08" + (t0 - PG_EPOCH_US).to_bytes(8)[:6]
    q = t0 // QUARTER_US
    got = sorted(
        zip(
            batch.device_ids,
            batch.quarters,
            batch.messages,
            batch.readings,
            batch.metric_masks,
            strict=True,
        )
    )
    assert got == [
        (7, q, 1, 3, 1 << 2 | 1 << 5 | 1 << 9),
        (7, q + 1, 0, 1, 1 << 5),
        (8, q + 2, 1, 0, 0),  # a message without its rows here: counted, no status
        (9, q, 0, 1, 1 << 5),
    ]
    status = dict(zip(batch.status_ids, batch.status_last_us, strict=True))
    assert status == {7: t0 + QUARTER_US, 9: t0 + 5}
    assert encode_direct(rows, None).messages == [0, 0, 0]
    backwards = encode_direct(rows[::-1], uplinks)  # other runs, the same sums
    assert (
        sorted(
            zip(
                backwards.device_ids,
                backwards.quarters,
                backwards.messages,
                backwards.readings,
                backwards.metric_masks,
                strict=True,
            )
        )
        == got
    )
    assert dict(zip(backwards.status_ids, backwards.status_last_us, strict=True)) == status


def test_the_fast_path_leaves_what_the_merge_leaves(
    conn: psycopg.Connection, twins: Twins, stores: tuple[Store, Store]
) -> None:
    before = conn.execute("SELECT now()").fetchone()
    for messages in BATCHES:
        fast, merge = write_both(twins, stores, messages)
        rows = sum(m.n for m in messages)
        assert fast == WriteResult(rows, 0, 0, direct=True)
        assert merge == WriteResult(rows, 0, 0, direct=False)
    fast, merge = write_both(twins, stores, NOT_COUNTED, counted=False)
    assert (fast.direct, merge.direct, fast.stored, merge.stored) == (True, False, 3, 3)
    after = conn.execute("SELECT now()").fetchone()

    got = snapshot(conn, twins.sites["fast"])
    assert got == snapshot(conn, twins.sites["merge"])
    assert got["daily"] == expected_daily([(b, True) for b in BATCHES] + [(NOT_COUNTED, False)])
    days = {(zone, device, day) for zone, device, day, *_ in got["daily"]}
    assert {("par", "lum-1", dt.date(2026, 10, d)) for d in (24, 25)} <= days
    assert {("par", "lum-2", dt.date(2026, 10, d)) for d in (24, 25, 26)} <= days
    assert {("nyc", "wm-3", dt.date(2026, 10, 31)), ("nyc", "wm-3", dt.date(2026, 11, 1))} <= days
    assert len(got["readings"]) == sum(m.n for b in [*BATCHES, NOT_COUNTED] for m in b)
    status = {(zone, device): at for zone, device, at in got["status"]}
    assert status[("par", "lum-2")] == dt.datetime(2026, 10, 25, 23, 5, tzinfo=dt.UTC)
    assert status[("kol", "wm-1")] == dt.datetime(2026, 10, 25, 2, 2, tzinfo=dt.UTC)
    assert before is not None
    assert after is not None
    received = conn.execute(
        "SELECT min(last_received_at), max(last_received_at) FROM device_status "
        "WHERE device_id = ANY(%s)",
        (list(twins.fast.values()),),
    ).fetchone()
    assert received is not None
    assert before[0] <= received[0] <= received[1] <= after[0]


def test_a_batch_with_a_stored_reading_falls_back_to_the_merge(
    conn: psycopg.Connection, twins: Twins, stores: tuple[Store, Store]
) -> None:
    first = BATCHES[0][:3]
    write_both(twins, stores, first)
    # A redelivered message (stored already) with new ones, one of them on the same device.
    again = [BATCHES[0][1], *BATCHES[1][:3]]
    fast, merge = write_both(twins, stores, again)
    new = sum(m.n for m in BATCHES[1][:3])
    assert fast == merge == WriteResult(new, BATCHES[0][1].n, 0, direct=False)
    got = snapshot(conn, twins.sites["fast"])
    assert got == snapshot(conn, twins.sites["merge"])
    assert got["daily"] == expected_daily([(first, True), (again, True)])
    # The store goes on with the fast path afterwards.
    fast, merge = write_both(twins, stores, BATCHES[0][3:])
    assert (fast.direct, fast.duplicates, merge.direct) == (True, 0, False)
    assert snapshot(conn, twins.sites["fast"]) == snapshot(conn, twins.sites["merge"])


def test_a_duplicate_within_one_batch(
    conn: psycopg.Connection, twins: Twins, stores: tuple[Store, Store]
) -> None:
    twice = [BATCHES[0][0], BATCHES[0][3], BATCHES[0][0]]  # one message delivered twice
    fast, merge = write_both(twins, stores, twice)
    n = BATCHES[0][0].n
    assert fast == merge == WriteResult(n + BATCHES[0][3].n, n, 0, direct=False)
    got = snapshot(conn, twins.sites["fast"])
    assert got == snapshot(conn, twins.sites["merge"])
    assert got["daily"] == expected_daily([(twice, True)])
    # Twice on the day it starts, its readings once on both days.
    lum = [(m, r) for _z, d, _day, m, r, _mask in got["daily"] if d == "lum-1"]
    assert lum == [(2, 4), (0, 4)]


def test_a_replayed_spool_frame_is_counted_once(
    conn: psycopg.Connection, twins: Twins, stores: tuple[Store, Store]
) -> None:
    messages = BATCHES[0]
    frame = os.urandom(16)
    fast, merge = write_both(twins, stores, messages, frame_id=frame)
    assert (fast.direct, merge.direct) == (True, False)
    once = snapshot(conn, twins.sites["fast"])
    assert once["daily"] == expected_daily([(messages, True)])
    for _ in range(2):  # the segment replayed again: stores nothing, counts nothing
        fast, merge = write_both(twins, stores, messages, frame_id=frame)
        assert fast == merge == WriteResult(0, sum(m.n for m in messages), 0, direct=False)
        assert snapshot(conn, twins.sites["fast"]) == once == snapshot(conn, twins.sites["merge"])
    # A frame recorded already whose readings are new (nothing else to fall back on): stored by
    # the fast path, not counted.
    other = os.urandom(16)
    for side in (b"fast", b"merge"):
        conn.execute("INSERT INTO ingest_replayed_frames (frame_id) VALUES (%s)", (other + side,))
    fast, merge = write_both(twins, stores, BATCHES[1], frame_id=other)
    assert (fast.direct, merge.direct, fast.stored) == (True, False, sum(m.n for m in BATCHES[1]))
    got = snapshot(conn, twins.sites["fast"])
    assert got == snapshot(conn, twins.sites["merge"])
    assert got["daily"] == once["daily"]
    assert got["readings"] != once["readings"]


def test_rejections_and_replayed_ids_with_the_fast_path(
    conn: psycopg.Connection, db_url: str, twins: Twins, site: str
) -> None:
    topic = f"{site}/v1/{site}/x/up"
    now = dt.datetime.now(dt.UTC).timestamp()
    rejection = Rejection(now, topic, site, "x", RejectReason.UNKNOWN_DEVICE, "no", b"{}", 2)
    old = conn.execute(
        "INSERT INTO rejected_messages (fingerprint, received_at, last_received_at, topic, "
        "reason, detail, payload, payload_bytes) VALUES (%s, now(), now(), %s, 'invalid_json', "
        "'', '', 0) RETURNING id",
        (os.urandom(32), topic),
    ).fetchone()
    assert old is not None
    rows, uplinks = twins.rows("fast", BATCHES[0])
    store = Store(db_url)
    try:
        result = store.write(rows, [rejection, rejection], [old[0]], uplinks)
        assert result == WriteResult(len(rows), 0, 2, direct=True)
        later = Rejection(now + 1, topic, site, "x", RejectReason.UNKNOWN_DEVICE, "no", b"{}", 2)
        store.write([], [later])
    finally:
        store.close()
    seen = conn.execute(
        "SELECT times_seen, reason FROM rejected_messages WHERE fingerprint = %s",
        (rejection.fingerprint,),
    ).fetchall()
    assert seen == [(3, "unknown_device")]
    replayed = conn.execute(
        "SELECT replayed_at IS NOT NULL FROM rejected_messages WHERE id = %s", (old[0],)
    ).fetchone()
    assert replayed == (True,)


def test_a_batch_failing_after_the_copy_leaves_nothing(
    conn: psycopg.Connection, db_url: str, twins: Twins, site: str
) -> None:
    rows, uplinks = twins.rows("fast", BATCHES[0])
    top = conn.execute("SELECT max(id) FROM devices").fetchone()
    assert top is not None
    stray = top[0] + 1_000_000  # in no inventory: readings take it (no foreign key), the
    rows.append((rows[0][0], stray, 5, 1.0))  # status of its device cannot
    uplinks.add(rows[-1:])
    frame = os.urandom(16)
    topic = f"{site}/v1/{site}/x/up"
    rejection = Rejection(0.0, topic, site, "x", RejectReason.UNKNOWN_DEVICE, "no", b"{}", 2)
    store = Store(db_url)
    try:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            store.write(rows, [rejection], uplinks=uplinks, frame_id=frame)
        ids = [*twins.fast.values(), stray]
        for table in ("readings", "device_reporting_daily", "device_status"):
            left = conn.execute(
                f"SELECT count(*) FROM {table} WHERE device_id = ANY(%s)", (ids,)
            ).fetchone()
            assert left == (0,), table
        assert conn.execute(
            "SELECT count(*) FROM ingest_replayed_frames WHERE frame_id = %s", (frame,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM rejected_messages WHERE fingerprint = %s",
            (rejection.fingerprint,),
        ).fetchone() == (0,)
        # The same connection writes the next batch, by the fast path.
        result = store.write(rows[:-1], [rejection], uplinks=twins.rows("fast", BATCHES[0])[1])
        assert result == WriteResult(len(rows) - 1, 0, 1, direct=True)
        assert snapshot(conn, twins.sites["fast"])["daily"] == expected_daily([(BATCHES[0], True)])
    finally:
        store.close()


@pytest.mark.parametrize("direct_copy", [True, False])
def test_day_rows_are_locked_before_status_rows_on_both_paths(
    conn: psycopg.Connection, db_url: str, twins: Twins, direct_copy: bool
) -> None:
    """Writers (``--workers``) lock readings, then ``device_reporting_daily``, then
    ``device_status``, by either path: a fast and a merging writer never wait on each other in
    opposite orders. A writer held up on a device's status row holds its day row already."""
    message = [Message("par", "lum-1", "2026-10-24T10:00:00", 3, 60, ("power",))]
    later = [Message("par", "lum-1", "2026-10-24T11:00:00", 3, 60, ("power",))]
    device_id = twins.fast[("par", "lum-1")]
    store = Store(db_url, direct_copy=direct_copy)
    try:
        store.write(*_rows_and_uplinks(twins, message))
        # The locker's lock goes first when leaving (a failure must not leave the writer
        # waiting for it while the pool waits for the writer).
        with ThreadPoolExecutor(1) as pool, psycopg.connect(db_url) as locker:
            locker.execute(
                "SELECT 1 FROM device_status WHERE device_id = %s FOR UPDATE", (device_id,)
            )
            pending = pool.submit(store.write, *_rows_and_uplinks(twins, later))
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query LIKE %s",
                        ("%INSERT INTO device_status%",),
                    ).fetchone()
                    is not None
                ),
                10,
                "the writer waiting on the status row",
            )
            with psycopg.connect(db_url) as checker, pytest.raises(psycopg.errors.LockNotAvailable):
                checker.execute(
                    "SELECT 1 FROM device_reporting_daily WHERE device_id = %s AND day = %s "
                    "FOR UPDATE NOWAIT",
                    (device_id, dt.date(2026, 10, 24)),
                )
            locker.commit()
            result = pending.result(timeout=10)
        assert result == WriteResult(3, 0, 0, direct=direct_copy)
    finally:
        store.close()


def _rows_and_uplinks(
    twins: Twins, messages: list[Message]
) -> tuple[list[Row], list[Rejection], tuple[()], Uplinks]:
    rows, uplinks = twins.rows("fast", messages)
    return rows, [], (), uplinks
