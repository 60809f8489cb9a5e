"""The hourly rollup on a real PostgreSQL: equal to the aggregates of the raw readings after any
mix of writes (out of order, late, duplicated, updated, deleted), idempotent, kept by every
writer (INSERT … ON CONFLICT, COPY, DELETE, TRUNCATE), never losing a write committed while a
refresh runs, backfilled by its migration, read through ``api.readings_hourly`` and
``sobriety db rollup``; its TimescaleDB form where the extension exists."""

from __future__ import annotations

import math
import random
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from app.cli import main
from core.db import dependent_views, is_continuous_aggregate, migrations, upgrade, with_database
from core.rollup import DENSE_SHARE, RefreshReport, dense, refresh
from tests.fix_db import TIMESCALE_URL, needs_timescale, register
from tests.fix_mqtt import wait_until

pytestmark = pytest.mark.services

T0 = datetime(2026, 3, 2, tzinfo=UTC)
Key = tuple[int, int, datetime]
Aggregate = tuple[int, float, float, float, float, datetime, float, datetime]


@pytest.fixture
def url(fresh_db_url: str) -> str:
    """A migrated database of the test's own (the rollup covers the whole database)."""
    with psycopg.connect(fresh_db_url) as conn:
        upgrade(conn)
    return fresh_db_url


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


def hour_of(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def expected(conn: psycopg.Connection) -> dict[Key, Aggregate]:
    """The rollup computed in Python from every raw reading."""
    groups: dict[Key, list[tuple[datetime, float]]] = {}
    for device, metric, t, value in conn.execute(
        "SELECT device_id, metric_id, time, value FROM readings"
    ):
        groups.setdefault((device, metric, hour_of(t)), []).append((t, value))
    out = {}
    for key, rows in groups.items():
        rows.sort()
        values = [v for _, v in rows]
        out[key] = (
            len(values), math.fsum(values), min(values), max(values),
            rows[0][1], rows[0][0], rows[-1][1], rows[-1][0],
        )  # fmt: skip
    return out


def stored(conn: psycopg.Connection) -> dict[Key, Aggregate]:
    rows = conn.execute(
        "SELECT device_id, metric_id, hour, count, sum, min, max, first, first_time, last, "
        "last_time FROM readings_hourly"
    ).fetchall()
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}  # type: ignore[misc]


def same(got: Aggregate | None, want: Aggregate) -> bool:
    """Equal, the sum to rounding (its terms may be added in another order)."""
    return (
        got is not None
        and math.isclose(got[1], want[1], rel_tol=1e-12, abs_tol=1e-9)
        and got[:1] + got[2:] == want[:1] + want[2:]
    )


def assert_rollup_exact(conn: psycopg.Connection) -> None:
    want, got = expected(conn), stored(conn)
    assert got.keys() == want.keys()
    wrong = {key: (got[key], row) for key, row in want.items() if not same(got[key], row)}
    assert wrong == {}


def pending(conn: psycopg.Connection) -> list[tuple[int, datetime]]:
    return conn.execute(
        "SELECT device_id, hour FROM readings_hourly_pending ORDER BY 1, 2"
    ).fetchall()


def insert(conn: psycopg.Connection, rows: list[tuple[datetime, int, int, float]]) -> int:
    """The ingest's way: INSERT … ON CONFLICT DO NOTHING; the rows actually stored."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO readings (time, device_id, metric_id, value) "
            "SELECT * FROM unnest(%s::timestamptz[], %s::int[], %s::smallint[], %s::float8[]) "
            "ON CONFLICT DO NOTHING",
            [list(col) for col in zip(*rows, strict=True)],
        )
        return cur.rowcount


def random_rows(
    rng: random.Random, n: int, devices: range, hours: int
) -> list[tuple[datetime, int, int, float]]:
    return [
        (
            T0 + timedelta(seconds=rng.randrange(hours * 3600), microseconds=rng.randrange(10**6)),
            rng.choice(devices),
            rng.choice((1, 2, 3, 5)),
            rng.uniform(-50, 50),
        )
        for _ in range(n)
    ]


def test_rollup_equals_the_raw_aggregates_through_every_kind_of_write(
    conn: psycopg.Connection,
) -> None:
    rng = random.Random(20260302)
    devices = range(1, 7)
    rows = random_rows(rng, 3000, devices, 72)  # random order: out of order within each hour
    for start in range(0, len(rows), 500):
        insert(conn, rows[start : start + 500])
    first = refresh(conn, batch_hours=37)  # many chunks: the cursor walks the log
    assert first.chunks > 1
    assert first.device_hours >= len({(d, hour_of(t)) for t, d, _, _ in rows})  # a pair marked
    assert first.written >= len(stored(conn))  # by several statements may fall in two chunks
    assert first.deleted == 0
    assert_rollup_exact(conn)
    assert pending(conn) == []

    # Late data into two old hours (a sparse chunk: the primary-key path), with duplicates.
    late = [(T0 + timedelta(hours=3, minutes=m), 2, 1, float(m)) for m in range(0, 60, 7)]
    late += [(T0 + timedelta(hours=40, seconds=s), 5, 3, -float(s)) for s in range(5)]
    assert not dense(2, 2, 38)  # refresh counts the chunk's devices when none is registered
    assert insert(conn, late + rows[:200]) == len(
        {(t, d, m) for t, d, m, _ in late} - {(t, d, m) for t, d, m, _ in rows}
    )
    assert refresh(conn).device_hours == 2
    assert_rollup_exact(conn)

    # Values corrected, readings deleted: some of an hour, all of another.
    conn.execute("UPDATE readings SET value = value * 2 WHERE device_id = 3 AND metric_id = 2")
    gone = conn.execute(
        "DELETE FROM readings WHERE device_id = 4 AND time < %s", (T0 + timedelta(hours=10),)
    ).rowcount
    conn.execute("DELETE FROM readings WHERE device_id = 1 AND metric_id = 5 AND random() < 0.5")
    assert gone > 0
    report = refresh(conn)
    assert report.deleted >= 10  # device 4's first ten hours, every metric
    assert_rollup_exact(conn)


def test_refresh_is_idempotent_and_a_second_one_does_nothing(conn: psycopg.Connection) -> None:
    insert(conn, random_rows(random.Random(7), 800, range(1, 4), 30))
    refresh(conn)
    before = stored(conn)
    again = refresh(conn)
    assert (again.claimed, again.device_hours, again.written, again.deleted, again.chunks) == (
        0, 0, 0, 0, 0,
    )  # fmt: skip
    conn.execute(  # every pair marked again, nothing changed in readings
        "INSERT INTO readings_hourly_pending "
        "SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch') FROM readings"
    )
    redo = refresh(conn)
    assert redo.device_hours == len({(d, h) for d, _, h in before})
    assert (redo.written, redo.deleted) == (0, 0)  # the sum is added in time order: same bits
    assert stored(conn).keys() == before.keys()
    assert_rollup_exact(conn)


def test_only_rows_really_written_are_marked_and_copy_marks_too(conn: psycopg.Connection) -> None:
    rows = [(T0 + timedelta(minutes=15 * i), 9, 1, float(i)) for i in range(8)]  # 2 hours
    assert insert(conn, rows) == 8
    assert pending(conn) == [(9, T0), (9, T0 + timedelta(hours=1))]  # one per statement-hour
    refresh(conn)
    assert insert(conn, rows) == 0  # all duplicates: ON CONFLICT DO NOTHING wrote nothing
    assert pending(conn) == []
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY readings (time, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["timestamptz", "int4", "int2", "float8"])
        for i in range(3):
            copy.write_row((T0 + timedelta(hours=5, minutes=i), 10, 5, 1.5))
    assert pending(conn) == [(10, T0 + timedelta(hours=5))]
    refresh(conn)
    assert_rollup_exact(conn)
    conn.execute("TRUNCATE readings")  # no transition table: the trigger empties both
    assert stored(conn) == {}
    assert pending(conn) == []


def _waiting_on_a_lock(conn: psycopg.Connection, pid: int) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return bool(row and row[0])


def test_writes_committed_while_a_refresh_runs_are_not_lost(url: str) -> None:
    """Writers commit between the refresh's claim and its recompute (held there by a lock on the
    rollup, then released), or after it ended. Whatever the refresh saw, every write is then in
    the rollup or still pending, and the next refresh makes the rollup exact."""
    with (
        psycopg.connect(url, autocommit=True) as admin,
        psycopg.connect(url) as refresher,
        psycopg.connect(url) as early,
        psycopg.connect(url) as late,
        psycopg.connect(url) as straggler,
        psycopg.connect(url) as blocker,
    ):
        insert(admin, [(T0 + timedelta(minutes=m), 1, 1, 1.0) for m in range(0, 60, 15)])
        insert(early, [(T0 + timedelta(minutes=5), 1, 2, 2.0)])  # open before the refresh
        insert(straggler, [(T0 + timedelta(hours=5), 2, 1, 5.0)])  # commits after it
        pid = refresher.info.backend_pid
        blocker.execute("LOCK TABLE readings_hourly IN EXCLUSIVE MODE")  # holds the recompute
        result: list[RefreshReport | BaseException] = []

        def run() -> None:
            try:
                result.append(refresh(refresher))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_until(lambda: _waiting_on_a_lock(admin, pid), 10, "the refresh to wait on the lock")
        assert pending(admin) == [(1, T0)]  # claimed, not committed; open marks are invisible
        early.commit()
        late_rows = [(T0 + timedelta(minutes=20), 1, 1, 3.0), (T0 + timedelta(hours=2), 2, 1, 4.0)]
        insert(late, late_rows)
        late.commit()
        blocker.commit()
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(result[0], RefreshReport), result
        straggler.commit()
        want, got = expected(admin), stored(admin)
        marked = set(pending(admin))
        assert (2, T0 + timedelta(hours=5)) in marked  # invisible to the refresh: still pending
        for key, row in want.items():
            if (key[0], key[2]) not in marked:
                assert same(got.get(key), row), f"{key} neither current nor pending"
        refresh(admin)
        assert_rollup_exact(admin)


def test_concurrent_refreshes_share_the_work(url: str, conn: psycopg.Connection) -> None:
    insert(conn, random_rows(random.Random(3), 4000, range(1, 9), 120))
    marks = len(pending(conn))
    reports: list[RefreshReport] = []

    def run() -> None:
        with psycopg.connect(url) as own:
            reports.append(refresh(own, batch_hours=25))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(reports) == 3
    assert sum(r.claimed for r in reports) == marks
    assert pending(conn) == []
    assert_rollup_exact(conn)


def test_the_migration_backfills_readings_stored_before_it(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in [m for m in migrations() if m.version < 4]:  # as it was before the rollup
            conn.execute(m.sql.encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (m.version, m.label))
        rows = random_rows(random.Random(11), 1500, range(1, 5), 48)
        insert(conn, rows)
        conn.commit()
        assert upgrade(conn)[0] == "0004_core_readings_hourly"
        assert len(pending(conn)) == len({(d, hour_of(t)) for t, d, _, _ in rows})
        marked = len(pending(conn))
        conn.commit()
        assert refresh(conn).device_hours == marked
        assert_rollup_exact(conn)


def test_the_api_view_reads_the_rollup_with_names(conn: psycopg.Connection) -> None:
    site = f"t{uuid.uuid4().hex[:12]}"
    ids = register(conn, site, ("lum-1", "luminaire"), ("fm-1", "flow_meter"))
    insert(conn, [(T0 + timedelta(minutes=m), ids["lum-1"], 5, 20.0 + m) for m in (10, 40, 25)])
    insert(conn, [(T0 + timedelta(hours=1), ids["fm-1"], 1, 3.5)])
    refresh(conn)
    cur = conn.execute("SELECT * FROM api.readings_hourly WHERE site = %s ORDER BY 3", (site,))
    assert [c.name for c in cur.description or ()] == [
        "time", "site", "device", "kind", "metric", "count", "sum", "min", "max", "first",
        "first_time", "last", "last_time", "unit",
    ]  # fmt: skip
    assert cur.fetchall() == [
        (T0 + timedelta(hours=1), site, "fm-1", "flow_meter", "flow", 1, 3.5, 3.5, 3.5,
         3.5, T0 + timedelta(hours=1), 3.5, T0 + timedelta(hours=1), "m3/h"),
        (T0, site, "lum-1", "luminaire", "power", 3, 135.0, 30.0, 60.0,
         30.0, T0 + timedelta(minutes=10), 60.0, T0 + timedelta(minutes=40), "W"),
    ]  # fmt: skip


def test_the_db_rollup_command_says_what_it_did(
    url: str, conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = random_rows(random.Random(5), 2000, range(1, 6), 60)
    insert(conn, rows)
    pairs = len({(d, hour_of(t)) for t, d, _, _ in rows})
    assert main(["--db-url", url, "db", "rollup"]) == 0
    line = capsys.readouterr().out
    match = re.fullmatch(
        r"rollup: ([\d,]+) device-hours refreshed, ([\d,]+) rows written, ([\d,]+) deleted "
        r"in \d+\.\d s\n",
        line,
    )
    assert match, line
    refreshed, written, deleted = (int(g.replace(",", "")) for g in match.groups())
    count = conn.execute("SELECT count(*) FROM readings_hourly").fetchone()
    assert (refreshed, written, deleted) == (pairs, count[0] if count else -1, 0)
    with pytest.raises(SystemExit):
        main(["--db-url", url, "db", "rollup", "--batch-hours", "0"])
    assert main(["--db-url", url, "db", "rollup"]) == 0
    assert capsys.readouterr().out.startswith("rollup: 0 device-hours refreshed, 0 rows written")


def test_views_over_the_rollup_can_be_rebuilt_on_its_replacement(conn: psycopg.Connection) -> None:
    """What the TimescaleDB step does with the views over readings_hourly, on plain tables."""
    assert 0 < DENSE_SHARE < 1
    conn.execute("CREATE VIEW api.busy_hours AS SELECT time, device FROM api.readings_hourly")
    views = dependent_views(conn, "readings_hourly")
    assert [(s, n) for s, n, _ in views] == [("api", "readings_hourly"), ("api", "busy_hours")]
    with conn.transaction():
        for schema, name, _ in reversed(views):
            conn.execute(f"DROP VIEW {schema}.{name}")
        conn.execute("ALTER TABLE readings_hourly RENAME TO readings_hourly_old")
        conn.execute("CREATE TABLE readings_hourly (LIKE readings_hourly_old)")
        for schema, name, definition in views:
            conn.execute(f"CREATE VIEW {schema}.{name} AS {definition}")
    assert conn.execute("SELECT * FROM api.busy_hours").fetchall() == []


@pytest.mark.timescale
@needs_timescale
def test_timescale_rollup_is_a_continuous_aggregate_of_the_same_columns() -> None:
    assert TIMESCALE_URL is not None
    name = f"sobriety_test_ts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(with_database(TIMESCALE_URL, name)) as conn:
            assert "timescaledb" in upgrade(conn)
            conn.commit()
            assert is_continuous_aggregate(conn)
            triggers = conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'readings'::regclass "
                "AND tgname LIKE 'readings_hourly%%'"
            ).fetchall()
            assert triggers == []
            assert conn.execute("SELECT to_regclass('readings_hourly_pending')").fetchone() == (
                None,
            )
            jobs = {
                r[0] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")
            }
            assert "policy_refresh_continuous_aggregate" in jobs
            conn.commit()
            conn.autocommit = True
            insert(conn, random_rows(random.Random(2), 1000, range(1, 4), 30))
            assert_rollup_exact(conn)  # materialized_only = false: current before a refresh
            report = refresh(conn)
            assert report.continuous_aggregate
            assert report.summary().startswith("rollup: TimescaleDB continuous aggregate")
            assert_rollup_exact(conn)
            cur = conn.execute("SELECT * FROM api.readings_hourly LIMIT 0")
            assert [c.name for c in cur.description or ()][:6] == [
                "time", "site", "device", "kind", "metric", "count",
            ]  # fmt: skip
            # A database already on TimescaleDB when 0004 arrives: the migration adds no
            # trigger to the hypertable, the runner makes the continuous aggregate.
            conn.execute("DROP VIEW api.readings_hourly")
            conn.execute("DROP MATERIALIZED VIEW readings_hourly")
            conn.execute("DELETE FROM schema_migrations WHERE version = 4")
            conn.autocommit = False
            assert upgrade(conn) == ["0004_core_readings_hourly"]
            conn.commit()
            assert is_continuous_aggregate(conn)
            conn.autocommit = True
            assert_rollup_exact(conn)
    finally:
        with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
