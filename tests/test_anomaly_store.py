"""The anomaly stage's reads of the hourly rollup, on a real PostgreSQL: customer meters' use
per UTC hour from index readings taken at any minute, or from flow readings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from numpy.testing import assert_allclose

from anomaly import store
from core.rollup import refresh
from tests.fix_db import register

T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)  # a Tuesday, far from the DST dates
FLOW, VOLUME = 1, 2


def _index(t: float, spans: Sequence[tuple[float, float, float]]) -> float:
    """Index [m³] at ``t`` [h after T0] of a meter using ``rate`` m³/h in each ``(from, to,
    rate)`` span [h after T0]."""
    return sum(rate * max(0.0, min(t, b) - a) for a, b, rate in spans)


def _put(conn: psycopg.Connection, device: int, metric: int, hours: list[float],
         values: list[float]) -> None:  # fmt: skip
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (time, device_id, metric_id, value) VALUES (%s, %s, %s, %s)",
            [(T0 + timedelta(hours=h), device, metric, v)
             for h, v in zip(hours, values, strict=True)],
        )  # fmt: skip


def test_customer_use_per_utc_hour_from_readings_at_any_minute(
    conn: psycopg.Connection, site: str
) -> None:
    """A meter read hourly at minute 10 whose household used 1 m³/h from 01:10 to 03:10 used
    5/6, 1 and 1/6 m³ in the UTC hours 01, 02 and 03 — not 1, 1 and 0, as the use of the
    reading intervals assigned to the hour of their middle said: the hours around a night
    window leaked into it. A meter read every two hours (at minute 40) with a steady use
    counts in every hour; one that sends only its flow counts its hourly mean."""
    conn.execute("INSERT INTO sites (site, timezone) VALUES (%s, 'UTC')", (site,))
    conn.execute("INSERT INTO dmas (site, dma) VALUES (%s, 'z')", (site,))
    ids = register(conn, site, ("in", "flow_meter"), ("a", "water_meter"),
                   ("b", "water_meter"), ("c", "water_meter"))  # fmt: skip
    conn.execute("UPDATE devices SET dma = 'z', role = CASE WHEN device = 'in' THEN 'inlet' END "
                 "WHERE site = %s", (site,))  # fmt: skip
    hours = 8
    minutes = [m / 60.0 for m in range(0, hours * 60, 5)]
    _put(conn, ids["in"], FLOW, minutes, [3.0] * len(minutes))
    a_reads = [h + 10 / 60 for h in range(hours)]
    _put(conn, ids["a"], VOLUME, a_reads, [_index(t, [(1 + 10 / 60, 3 + 10 / 60, 1.0)])
                                           for t in a_reads])  # fmt: skip
    b_reads = [h + 40 / 60 for h in range(0, hours, 2)]
    _put(conn, ids["b"], VOLUME, b_reads, [100.0 + 0.5 * t for t in b_reads])
    _put(conn, ids["c"], FLOW, minutes, [0.2] * len(minutes))
    refresh(conn)

    dma = next(d for d in store.dmas(conn, site) if d.dma == "z")
    got = store.dma_hours(conn, site, "UTC", T0, T0 + timedelta(hours=hours), [dma])["z"]
    at = {round((t - T0.timestamp()) / 3600.0): i for i, t in enumerate(got.hour_start)}
    # a: the hours between its first and last boundaries (01 to 07); b: hours 02 to 05 (its
    # boundaries are the starts of the hours it was read in, 00, 02, 04 and 06, but the first).
    for hour, use, meters in [(1, 5 / 6 + 0.2, 2), (2, 1.0 + 0.7, 3), (3, 1 / 6 + 0.7, 3),
                              (4, 0.7, 3), (6, 0.2, 2), (7, 0.2, 1)]:  # fmt: skip
        i = at[hour]
        assert got.meters[i] == meters, hour
        assert_allclose(got.metered_m3h[i], use, atol=1e-9, err_msg=str(hour))
    assert np.all(got.inflow_m3h == 3.0)


def test_an_index_that_goes_back_or_is_read_too_seldom_tells_no_night_use(
    conn: psycopg.Connection, site: str
) -> None:
    """A meter read every 3 hours (more than MAX_INDEX_INTERVAL_H) and one whose index went
    back are not counted: their hours have no metered use and no reporting meter."""
    assert store.MAX_INDEX_INTERVAL_H < 3
    conn.execute("INSERT INTO sites (site, timezone) VALUES (%s, 'UTC')", (site,))
    conn.execute("INSERT INTO dmas (site, dma) VALUES (%s, 'z')", (site,))
    ids = register(conn, site, ("in", "flow_meter"), ("slow", "water_meter"),
                   ("back", "water_meter"))  # fmt: skip
    conn.execute("UPDATE devices SET dma = 'z', role = CASE WHEN device = 'in' THEN 'inlet' END "
                 "WHERE site = %s", (site,))  # fmt: skip
    _put(conn, ids["in"], FLOW, [h + 0.5 for h in range(9)], [1.0] * 9)
    _put(conn, ids["slow"], VOLUME, [0.5, 3.5, 6.5], [1.0, 2.0, 3.0])
    _put(conn, ids["back"], VOLUME, [0.5, 1.5, 2.5], [5.0, 4.0, 3.0])
    refresh(conn)
    dma = next(d for d in store.dmas(conn, site) if d.dma == "z")
    got = store.dma_hours(conn, site, "UTC", T0, T0 + timedelta(hours=9), [dma])["z"]
    assert got.meters.tolist() == [0] * 9
    assert got.metered_m3h.tolist() == [0.0] * 9


@pytest.mark.parametrize("local_hours", [(2, 3), tuple(range(24))])
def test_the_local_hours_read_still_give_their_whole_use(
    conn: psycopg.Connection, site: str, local_hours: tuple[int, ...]
) -> None:
    """Reading only some local hours (the detectors read the night) gives those hours the same
    use as reading the whole day."""
    conn.execute("INSERT INTO sites (site, timezone) VALUES (%s, 'UTC')", (site,))
    conn.execute("INSERT INTO dmas (site, dma) VALUES (%s, 'z')", (site,))
    ids = register(conn, site, ("in", "flow_meter"), ("a", "water_meter"))
    conn.execute("UPDATE devices SET dma = 'z', role = CASE WHEN device = 'in' THEN 'inlet' END "
                 "WHERE site = %s", (site,))  # fmt: skip
    _put(conn, ids["in"], FLOW, [h + 0.5 for h in range(24)], [1.0] * 24)
    reads = [h + 25 / 60 for h in range(24)]
    spans = [(h, h + 1, 0.1 * (h % 5)) for h in range(24)]
    _put(conn, ids["a"], VOLUME, reads, [_index(t, spans) for t in reads])
    refresh(conn)
    dma = next(d for d in store.dmas(conn, site) if d.dma == "z")
    got = store.dma_hours(conn, site, "UTC", T0, T0 + timedelta(hours=24), [dma], local_hours)["z"]
    for hour in (2, 3):
        # Exact where the use is steady across the readings on both sides of the hour's
        # bounds, else between the rates of the hours around.
        rates = [0.1 * ((hour + d) % 5) for d in (-1, 0, 1)]
        assert got.meters[hour] == 1
        assert min(rates) - 1e-9 <= got.metered_m3h[hour] <= max(rates) + 1e-9
    whole = store.dma_hours(conn, site, "UTC", T0, T0 + timedelta(hours=24), [dma])["z"]
    assert_allclose(got.metered_m3h[[2, 3]], whole.metered_m3h[[2, 3]], atol=1e-12)
