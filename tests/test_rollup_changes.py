"""Following the rollup (core.rollup_changes) on a real PostgreSQL: each refresh logs the (device,
hour) pairs it recomputed; a follower learns the changes after its position (a new or forgotten
one is told to rescan), advances, and the refresh prunes what every follower has read and the
followers idle for a week; the energy service recomputes late data older than its rescan."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from core import rollup_changes
from core.db import upgrade
from core.rollup import refresh
from tests.fix_db import register

pytestmark = pytest.mark.services

T0 = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
def conn(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a migrated database of the test's own (followers and the
    log are database-wide)."""
    with psycopg.connect(fresh_db_url, autocommit=True) as connection:
        upgrade(connection)
        yield connection


def _write(conn: psycopg.Connection, device_id: int, hours: list[int]) -> None:
    for h in hours:
        conn.execute(
            "INSERT INTO readings (device_id, metric_id, time, value) VALUES (%s, 1, %s, 1.0)",
            (device_id, T0 + timedelta(hours=h, minutes=7)),
        )


def _logged(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM readings_hourly_changes").fetchone()
    assert row is not None
    return int(row[0])


def test_a_follower_sees_what_each_refresh_recomputed(conn: psycopg.Connection) -> None:
    ids = register(conn, "follow", ("a", "luminaire"), ("b", "luminaire"))
    _write(conn, ids["a"], [0, 1])
    refresh(conn)
    assert _logged(conn) == 0  # nobody follows: pruned at once
    with psycopg.connect(conn.info.dsn) as work:
        first = rollup_changes.follow(work, "test")
        assert not first.whole
        assert first.hours == {}
    _write(conn, ids["a"], [30])
    _write(conn, ids["b"], [5, 2, 9])
    refresh(conn)
    assert _logged(conn) == 4
    with psycopg.connect(conn.info.dsn) as work:
        seen = rollup_changes.follow(work, "test")
        assert seen.whole
        hour = 3600.0
        base = T0.timestamp()
        assert seen.hours == {
            ids["a"]: (base + 30 * hour, base + 30 * hour),
            ids["b"]: (base + 2 * hour, base + 9 * hour),
        }
        rollup_changes.advance(work, "test", seen.upto)
        work.commit()
    _write(conn, ids["b"], [40])
    refresh(conn)  # prunes what "test" read, keeps the new pair
    assert _logged(conn) == 1
    with psycopg.connect(conn.info.dsn) as work:
        again = rollup_changes.follow(work, "test")
        assert again.whole
        assert set(again.hours) == {ids["b"]}
        # Not advanced (a pass that failed): the same changes next time.
        assert rollup_changes.follow(work, "test").hours == again.hours


def test_an_idle_follower_is_forgotten_and_told_to_rescan(conn: psycopg.Connection) -> None:
    ids = register(conn, "idle", ("a", "luminaire"))
    with psycopg.connect(conn.info.dsn) as work:
        rollup_changes.follow(work, "busy")
        rollup_changes.follow(work, "idle")
    _write(conn, ids["a"], [1])
    refresh(conn)
    conn.execute(
        "UPDATE readings_hourly_followers SET updated_at = now() - interval '8 days' "
        "WHERE follower = 'idle'"
    )
    with psycopg.connect(conn.info.dsn) as work:
        busy = rollup_changes.follow(work, "busy")
        rollup_changes.advance(work, "busy", busy.upto)
        work.commit()
    _write(conn, ids["a"], [2])
    refresh(conn)
    followers = conn.execute("SELECT follower FROM readings_hourly_followers").fetchall()
    assert [f[0] for f in followers] == ["busy"]
    assert _logged(conn) == 1  # hour 2, not yet read by "busy"
    with psycopg.connect(conn.info.dsn) as work:
        assert not rollup_changes.follow(work, "idle").whole


def test_the_energy_service_recomputes_late_data_older_than_its_rescan(
    conn: psycopg.Connection, fresh_db_url: str
) -> None:
    """A gateway that replays ten days of a cabinet meter: the days are recomputed at the next
    pass though its rescan covers three."""
    from prometheus_client import CollectorRegistry

    from energy.config import EnergyConfig
    from energy.service import EnergyService

    site = f"late-{uuid.uuid4().hex[:6]}"
    conn.execute("INSERT INTO sites (site, timezone) VALUES (%s, 'UTC')", (site,))
    ids = register(conn, site, ("cab", "cabinet_meter"))
    energy = conn.execute("SELECT id FROM metrics WHERE name = 'energy'").fetchone()
    assert energy is not None
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    service = EnergyService(fresh_db_url, EnergyConfig(rescan_days=3), CollectorRegistry())
    assert service.run_pass(now.timestamp()) is not None  # registers the follower
    late_day = (now - timedelta(days=10)).replace(hour=0)
    for n in range(6):  # 1 kWh an hour from 08:00 to 13:00 on that day
        conn.execute(
            "INSERT INTO readings (device_id, metric_id, time, value) VALUES (%s, %s, %s, %s)",
            (ids["cab"], energy[0], late_day + timedelta(hours=8 + n), 1000.0 * n),
        )
    report = service.run_pass(now.timestamp())
    assert report is not None
    assert report.late_devices == 1
    row = conn.execute(
        "SELECT kwh FROM api.energy_daily WHERE site = %s AND device = 'cab' AND day = %s",
        (site, late_day.date()),
    ).fetchone()
    assert row is not None
    assert row[0] == pytest.approx(5.0)
    again = service.run_pass(now.timestamp())  # nothing new: nothing late
    assert again is not None
    assert again.late_devices == 0


def test_late_changes_are_grouped_by_their_days_and_cut_at_the_rescan() -> None:
    """A backfill of many devices is one period; a device late by a year is its own; what the
    rescan covers is left to it."""
    from energy.service import MARGIN_S, late_changes

    day = 86400.0
    window = 400 * day  # the rescan starts here
    changes = rollup_changes.Changes(
        upto=9,
        whole=True,
        hours={
            1: (100 * day + 3600, 100 * day + 7200),  # a backfill of two devices, day 100
            2: (100 * day + 10800, 100 * day + 10800),
            3: (30 * day, 30 * day),  # late by a year
            4: (399 * day + 3600, window + 7200),  # straddles the rescan's start
            5: (window + 2 * day, window + 2 * day),  # inside the rescan: not late
        },
    )
    got = late_changes(changes, window)
    assert got == [
        (30 * day - MARGIN_S, 32 * day - 1.0, [3]),  # a day either side
        (99 * day, 102 * day - 1.0, [1, 2]),
        (398 * day, window - 1.0, [4]),
    ]
