"""Energy views on a real database. The per-group nights behind api.lighting_nights (migration
0015): after every kind of write to luminaire_nights (insert, upsert, delete, truncate) the view
equals the aggregate of the luminaire nights, luminaires without a group included; two writers
of the same group night in overlapping transactions leave both luminaires counted. A month's PUE
(migration 0017) over the days that have both energies only."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import psycopg
import pytest

from tests.fix_db import register
from tests.fix_mqtt import wait_until

pytestmark = pytest.mark.services

FROM_LUMINAIRES = """
    SELECT d.site, d.lighting_group, n.night, count(*), avg(n.lit_hours), sum(n.kwh),
           sum(n.baseline_kwh), bool_and(n.complete AND n.baseline_kwh IS NOT NULL),
           max((d.properties ->> 'street_km')::float8)
    FROM luminaire_nights n JOIN devices d ON d.id = n.device_id WHERE d.site = %(s)s
    GROUP BY 1, 2, 3 ORDER BY 2 NULLS FIRST, 3"""
"""What the view must say, from the luminaire nights themselves (the view before 0015)."""

FROM_VIEW = """
    SELECT site, lighting_group, night, luminaires, lit_hours, kwh, baseline_kwh, complete,
           CASE WHEN kwh_per_km IS NOT NULL THEN kwh / kwh_per_km END
    FROM api.lighting_nights WHERE site = %(s)s ORDER BY 2 NULLS FIRST, 3"""

N1, N2 = date(2026, 1, 10), date(2026, 1, 11)


def _rows(conn: psycopg.Connection, sql: str, site: str) -> list[tuple[Any, ...]]:
    return [
        tuple(round(v, 9) if isinstance(v, float) else v for v in row)
        for row in conn.execute(sql, {"s": site}).fetchall()
    ]


def _luminaires(conn: psycopg.Connection, site: str) -> dict[str, int]:
    ids = register(conn, site, *((f"lum-{n}", "luminaire") for n in range(5)))
    groups = {"lum-0": "a", "lum-1": "a", "lum-2": "b", "lum-3": None, "lum-4": "b"}
    for device, group in groups.items():
        conn.execute(
            """UPDATE devices SET lighting_group = %s, nominal_power_w = 50,
                      properties = %s::jsonb WHERE id = %s""",
            (group, '{"street_km": 0.4}' if group == "a" else "{}", ids[device]),
        )
    return ids


def _night(
    conn: psycopg.Connection, device_id: int, night: date, kwh: float, baseline: float | None
) -> None:
    conn.execute(
        """INSERT INTO luminaire_nights (device_id, night, kwh, lit_hours, baseline_kwh, complete)
           VALUES (%s, %s, %s, %s, %s, true)
           ON CONFLICT (device_id, night) DO UPDATE
               SET kwh = excluded.kwh, baseline_kwh = excluded.baseline_kwh""",
        (device_id, night, kwh, 10.0 + kwh, baseline),
    )


def test_the_view_follows_every_write(conn: psycopg.Connection, site: str) -> None:
    ids = _luminaires(conn, site)
    with conn.transaction():  # one statement per luminaire night, several in a transaction
        for n, device in enumerate(ids.values()):
            _night(conn, device, N1, 0.2 + n / 10, 0.5)
            _night(conn, device, N2, 0.3 + n / 10, None if n == 4 else 0.5)
    expected = _rows(conn, FROM_LUMINAIRES, site)
    assert len(expected) == 6  # groups a, b and none, two nights
    assert _rows(conn, FROM_VIEW, site) == expected
    by_group = {(r[1], r[2]): r for r in expected}
    assert by_group[("b", N2)][7] is False  # lum-4 without a baseline that night
    assert by_group[("a", N1)][8] == 0.4
    # An upsert of one luminaire, then a multi-row update.
    _night(conn, ids["lum-1"], N1, 1.5, 2.0)
    conn.execute("UPDATE luminaire_nights SET complete = false WHERE night = %s", (N2,))
    assert _rows(conn, FROM_VIEW, site) == _rows(conn, FROM_LUMINAIRES, site)
    assert _rows(conn, FROM_VIEW, site) != expected
    # A luminaire night moved to another night by an update: both nights follow.
    conn.execute(
        "UPDATE luminaire_nights SET night = %s WHERE device_id = %s AND night = %s",
        (date(2026, 1, 12), ids["lum-3"], N2),
    )
    assert _rows(conn, FROM_VIEW, site) == _rows(conn, FROM_LUMINAIRES, site)
    # Deletes: a group night without luminaires left is gone.
    conn.execute(
        "DELETE FROM luminaire_nights WHERE device_id = ANY(%s) AND night = %s",
        ([ids["lum-2"], ids["lum-4"]], N1),
    )
    now = _rows(conn, FROM_VIEW, site)
    assert now == _rows(conn, FROM_LUMINAIRES, site)
    assert ("b", N1) not in {(r[1], r[2]) for r in now}


def test_a_luminaire_moved_takes_its_nights_along(conn: psycopg.Connection, site: str) -> None:
    ids = _luminaires(conn, site)
    for n, device in enumerate(ids.values()):
        _night(conn, device, N1, 0.2 + n / 10, 0.5)
    before = _rows(conn, FROM_VIEW, site)
    conn.execute(  # an inventory import: every device updated, one of them really changed
        "UPDATE devices SET lighting_group = CASE WHEN device = 'lum-1' THEN 'b' "
        "ELSE lighting_group END WHERE site = %s",
        (site,),
    )
    after = _rows(conn, FROM_VIEW, site)
    assert after == _rows(conn, FROM_LUMINAIRES, site)
    assert after != before
    conn.execute("UPDATE devices SET lighting_group = NULL WHERE id = %s", (ids["lum-0"],))
    gone = _rows(conn, FROM_VIEW, site)
    assert gone == _rows(conn, FROM_LUMINAIRES, site)
    assert "a" not in {r[1] for r in gone}  # group a lost its last luminaire
    conn.execute(
        "UPDATE devices SET properties = '{\"street_km\": 1.5}'::jsonb WHERE id = %s",
        (ids["lum-2"],),
    )
    km = _rows(conn, FROM_VIEW, site)
    assert km == _rows(conn, FROM_LUMINAIRES, site)
    assert {r[1]: r[8] for r in km}["b"] == 1.5


def test_truncate_empties_the_group_nights(fresh_db_url: str) -> None:
    from core.db import upgrade

    with psycopg.connect(fresh_db_url, autocommit=True) as own:
        upgrade(own)
        ids = _luminaires(own, "trunc")
        _night(own, ids["lum-0"], N1, 0.2, 0.5)
        assert len(_rows(own, FROM_VIEW, "trunc")) == 1
        own.execute("TRUNCATE luminaire_nights")
        assert _rows(own, FROM_VIEW, "trunc") == []


def test_two_writers_of_one_group_night_both_count(
    db_url: str, conn: psycopg.Connection, site: str
) -> None:
    """The second writer waits for the first to commit (the group night's row), then adds its
    luminaire to what the first committed."""
    ids = _luminaires(conn, site)
    first = psycopg.connect(db_url)
    second = psycopg.connect(db_url, autocommit=True)
    try:
        _night(first, ids["lum-0"], N1, 0.2, 0.5)  # transaction left open
        pid = second.info.backend_pid
        done = threading.Event()
        errors: list[BaseException] = []

        def write_second() -> None:
            try:
                _night(second, ids["lum-1"], N1, 0.3, 0.5)
            except BaseException as exc:  # reported to the test below
                errors.append(exc)
            finally:
                done.set()

        writer = threading.Thread(target=write_second)
        writer.start()

        def waiting() -> bool:
            row = conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            return row is not None and row[0] == "Lock"

        wait_until(waiting, 10, "the second writer waiting for the first")
        assert not done.is_set()
        first.commit()
        writer.join(10)
        assert done.is_set()
        assert not errors
        row = conn.execute(
            """SELECT luminaires, kwh FROM api.lighting_nights
               WHERE site = %s AND lighting_group = 'a' AND night = %s""",
            (site, N1),
        ).fetchone()
        assert row is not None
        assert (row[0], round(row[1], 9)) == (2, 0.5)
    finally:
        first.close()
        second.close()


def test_a_month_of_pue_counts_the_days_with_both_energies(
    conn: psycopg.Connection, site: str
) -> None:
    ids = register(conn, site, ("facility-1", "facility_meter"), ("it-1", "it_meter"))
    days = {  # day of January: (facility kWh, IT kWh or None: the IT meter silent)
        5: (150.0, 100.0),
        6: (160.0, 100.0),
        7: (155.0, None),
    }
    for day, (facility, it) in days.items():
        for device, kwh in (("facility-1", facility), ("it-1", it)):
            if kwh is not None:
                conn.execute(
                    """INSERT INTO energy_daily (device_id, day, kwh, source, complete,
                                                 missing_hours)
                       VALUES (%s, %s, %s, 'counter', true, 0)""",
                    (ids[device], date(2026, 1, day), kwh),
                )
    row = conn.execute(
        """SELECT facility_kwh, it_kwh, pue, complete, days_paired FROM api.pue_monthly
           WHERE site = %s AND month = '2026-01-01'""",
        (site,),
    ).fetchone()
    assert row is not None
    assert row[:3] == (310.0, 200.0, pytest.approx(1.55))  # not (465 / 200)
    assert row[3] is False
    assert row[4] == 2
