"""The anomaly stage's api.water_balance_daily (migration 0020) against ``sobriety anomaly
balance`` (anomaly/report.py, anomaly/balance.py) on a simulated run and on hand-made meters
(a DST day, a customer meter without an index, an index reset, a silent meter); the operator's
api.commune_benchmark_monthly (migration 0021) against the views it sums. Real PostgreSQL."""

from __future__ import annotations

import io
import math
import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from anomaly.balance import water_balance
from anomaly.balance_store import refresh_balance_days
from anomaly.config import AnomalyConfig
from anomaly.report import balances
from anomaly.service import AnomalyService, Scanner
from app.config import load_config
from app.demo import run_demo
from core import rollup
from core.clock import FixedClock
from core.db import upgrade, with_database

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")
ROLES = {"inlet": "inflow_m3", "outlet": "outflow_m3", "customer": "consumption_m3"}
VIEW = {"inlet": "input_m3", "outlet": "output_m3", "customer": "metered_m3"}


@pytest.fixture(scope="module")
def url(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-day demo (two communes, four weeks of water history) in a database of its own."""
    name = f"sobriety_test_balance_{uuid.uuid4().hex[:8]}"
    made = with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(made) as conn:
            upgrade(conn)
        config = load_config(None, env={}, overrides={"metrics": {"port": 0}, "mqtt": {}})
        out = io.StringIO()
        report = run_demo(
            config, days=1, seed=4, embedded=True, configured_db=made, configured_mqtt=None,
            workdir=tmp_path_factory.mktemp("balance-demo"), serve=False,
            stop=threading.Event(), out=out,
        )  # fmt: skip
        assert report.problems == [], out.getvalue()
        yield made
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _all(conn: psycopg.Connection, query: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows as dicts (the connection itself gives tuples, which the anomaly store reads)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query.encode(), params).fetchall()


def _one(conn: psycopg.Connection, query: str, params: Any = None) -> dict[str, Any]:
    rows = _all(conn, query, params)
    assert len(rows) == 1, rows
    return rows[0]


def _midnight(day: date, tz: ZoneInfo = PARIS) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _view_sums(
    conn: psycopg.Connection, site: str, d0: date, d1: date
) -> dict[str, dict[str, Any]]:
    rows = _all(
        conn,
        "SELECT dma, sum(input_m3) AS input_m3, sum(output_m3) AS output_m3, "
        "sum(metered_m3) AS metered_m3, sum(hours) / 24 AS days, max(mains_km) AS mains_km, "
        "max(connections) AS connections, max(private_km) AS private_km, "
        "max(avg_pressure_m) AS avg_pressure_m, sum(uarl_m3_day * hours / 24) AS uarl_m3 "
        "FROM api.water_balance_daily WHERE site = %s AND day >= %s AND day < %s GROUP BY dma",
        (site, d0, d1),
    )
    return {r["dma"]: r for r in rows}


def _span(conn: psycopg.Connection, site: str) -> tuple[date, date]:
    row = _one(
        conn,
        "SELECT min(day) AS d0, max(day) + 1 AS d1 FROM api.water_balance_daily WHERE site = %s",
        (site,),
    )
    assert row["d0"] is not None
    return row["d0"], row["d1"]


def test_the_view_agrees_with_anomaly_balance_over_the_whole_run(url: str) -> None:
    """From the local midnight before the first reading to the one after the last: the same
    volumes as the command (max - min of each index), the same days, the same ratios."""
    with psycopg.connect(url) as conn:
        checked = 0
        for site in ("lyon-3e", "villeurbanne"):
            d0, d1 = _span(conn, site)
            assert (d1 - d0).days >= 28  # the history and the live day
            view = _view_sums(conn, site, d0, d1)
            cli = balances(conn, _midnight(d0), _midnight(d1), site)
            assert {b["dma"] for b in cli} == set(view)
            for b in cli:
                v = view[b["dma"]]
                for role, key in ROLES.items():
                    assert v[VIEW[role]] == pytest.approx(b[key], abs=1e-3), (site, b["dma"])
                assert v["days"] == pytest.approx(b["days"], abs=1e-3)
                assert b["inflow_m3"] > 0
                # The ratios of the sums, by anomaly/balance.py's own rules.
                own = water_balance(v["days"], v["input_m3"], v["output_m3"], v["metered_m3"],
                                    v["mains_km"], v["connections"], v["private_km"],
                                    v["avg_pressure_m"])  # fmt: skip
                assert own.yield_percent == pytest.approx(b["yield_percent"], abs=0.05)
                assert own.ili == pytest.approx(b["ili"], abs=0.005)
                assert own.threshold_percent == pytest.approx(b["threshold_percent"], abs=0.05)
                assert own.compliant == b["compliant"]
                losses = v["input_m3"] - v["output_m3"] - v["metered_m3"]
                assert losses / v["uarl_m3"] == pytest.approx(own.ili, rel=1e-9)
                checked += 1
        assert checked == 3  # lyon-3e's two DMAs and villeurbanne's one


def test_an_inner_period_also_counts_the_use_since_the_reading_before_it(url: str) -> None:
    """Days add up: a period after the first reading counts from the last index before it,
    where the command counts from the first index in it — exactly that use apart."""
    with psycopg.connect(url) as conn:
        d0, _ = _span(conn, "lyon-3e")
        since, until = d0 + timedelta(days=5), d0 + timedelta(days=15)
        view = _view_sums(conn, "lyon-3e", since, until)
        cli = {b["dma"]: b for b in balances(conn, _midnight(since), _midnight(until), "lyon-3e")}
        edge = _all(
            conn,
            """SELECT d.dma, CASE WHEN d.kind = 'water_meter' THEN 'customer' ELSE d.role END
                      AS role,
                      sum((SELECT h.first FROM readings_hourly h WHERE h.device_id = d.id
                           AND h.metric_id = 2 AND h.hour >= %(t)s ORDER BY h.hour LIMIT 1)
                          - (SELECT h.last FROM readings_hourly h WHERE h.device_id = d.id
                             AND h.metric_id = 2 AND h.hour < %(t)s
                             ORDER BY h.hour DESC LIMIT 1)) AS m3
               FROM devices d
               WHERE d.site = 'lyon-3e' AND d.dma IS NOT NULL
                 AND (d.kind = 'water_meter' OR d.role IN ('inlet', 'outlet'))
               GROUP BY 1, 2""",
            {"t": _midnight(since)},
        )
        assert len(edge) == 5  # dma-0: inlet, customers; dma-1: inlet, outlet, customers
        for e in edge:
            assert e["m3"] > 0
            expected = cli[e["dma"]][ROLES[e["role"]]] + e["m3"]
            assert view[e["dma"]][VIEW[e["role"]]] == pytest.approx(expected, abs=2e-3)


def _rules_site(conn: psycopg.Connection) -> str:
    """A DMA over 28-29 March 2026 (29 March: 23 local hours) read every 15 min: an inlet at
    4 m³/h, customer meter A by index at 1 m³/h reset to 0 at 10:00 local on the 29th, B by
    flow only at 0.5 m³/h, C registered and silent."""
    site = f"t{uuid.uuid4().hex[:10]}"
    conn.execute("INSERT INTO sites (site, timezone) VALUES (%s, 'Europe/Paris')", (site,))
    conn.execute(
        "INSERT INTO dmas (site, dma, mains_km, connections, private_km, avg_pressure_m) "
        "VALUES (%s, 'd', 2, 3, 0.1, 40)",
        (site,),
    )
    ids = {}
    for device, kind, role in (("in", "flow_meter", "inlet"), ("a", "water_meter", None),
                               ("b", "water_meter", None), ("c", "water_meter", None)):  # fmt: skip
        row = _one(
            conn,
            "INSERT INTO devices (site, device, kind, dma, role) "
            "VALUES (%s, %s, %s, 'd', %s) RETURNING id",
            (site, device, kind, role),
        )
        ids[device] = row["id"]
    start = _midnight(date(2026, 3, 28)).astimezone(ZoneInfo("UTC"))
    reset = _midnight(date(2026, 3, 29)).replace(hour=10).astimezone(ZoneInfo("UTC"))
    rows = []
    t, k = start, 0
    while t < _midnight(date(2026, 3, 30)):
        rows.append((t, ids["in"], 2, 1000.0 + k))
        a = 0.25 * k if t < reset else 0.25 * (t - reset).total_seconds() / 900
        rows.append((t, ids["a"], 2, a))
        rows.append((t, ids["b"], 1, 0.5))
        t, k = t + timedelta(minutes=15), k + 1
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO readings VALUES (%s, %s, %s, %s)", rows)
    rollup.refresh(conn)
    with conn.transaction():  # what the anomaly scan does for the days of its period
        refresh_balance_days(
            conn, site, "Europe/Paris", min(r[0] for r in rows).timestamp(),
            max(r[0] for r in rows).timestamp(),
        )  # fmt: skip
    return site


def test_the_rules_on_a_dst_day_a_flow_only_meter_a_reset_and_a_silent_meter(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        site = _rules_site(conn)
        days = {
            r["day"]: r
            for r in _all(conn, "SELECT * FROM api.water_balance_daily WHERE site = %s", (site,))
        }
        assert sorted(days) == [date(2026, 3, 28), date(2026, 3, 29)]
        first, dst = days[date(2026, 3, 28)], days[date(2026, 3, 29)]
        assert (first["hours"], dst["hours"]) == (24, 23)
        assert (first["covered_hours"], dst["covered_hours"]) == (24, 23)
        # The first hour counts from the first reading; the 29th from the 28th's last index.
        assert first["input_m3"] == pytest.approx(95)
        assert dst["input_m3"] == pytest.approx(92)
        # A: 1 m³/h less its first quarter hour; the reset hour counts nothing. B: 0.5 m³/h.
        assert first["metered_m3"] == pytest.approx(23.75 + 12)
        assert dst["metered_m3"] == pytest.approx(22 + 11.5)
        assert (first["index_backwards"], dst["index_backwards"]) == (0, 1)
        assert (dst["customer_meters"], dst["customer_meters_reporting"]) == (3, 2)
        assert dst["complete"] is False  # C never reported
        own = water_balance(23 / 24, 92, 0, 33.5, 2, 3, 0.1, 40)
        assert dst["losses_m3"] == pytest.approx(own.losses_m3)
        for column, value in (("yield_percent", own.yield_percent),
                              ("ilc_m3_km_day", own.ilc_m3_km_day),
                              ("ilp_m3_km_day", own.ilp_m3_km_day),
                              ("threshold_percent", own.threshold_percent),
                              ("uarl_m3_day", own.uarl_m3_day), ("ili", own.ili)):  # fmt: skip
            assert dst[column] == pytest.approx(value, rel=1e-9), column
        assert dst["compliant"] is own.compliant
        # Before the reset the command agrees, the flow-only meter included.
        (cli,) = balances(conn, _midnight(date(2026, 3, 28)), _midnight(date(2026, 3, 29)), site)
        assert cli["inflow_m3"] == pytest.approx(first["input_m3"], abs=1e-3)
        assert cli["consumption_m3"] == pytest.approx(first["metered_m3"], abs=1e-3)
        assert cli["incomplete"] == ["customers: 1 of 3 meters without data"]


def test_the_benchmark_sums_the_views_it_reads(url: str) -> None:
    with psycopg.connect(url) as conn:
        rows = _all(
            conn,
            "SELECT * FROM api.commune_benchmark_monthly WHERE site IN ('lyon-3e', "
            "'villeurbanne') ORDER BY site, month",
        )
        assert {r["site"] for r in rows} == {"lyon-3e", "villeurbanne"}
        lit = 0
        for r in rows:
            w = _one(
                conn,
                "SELECT sum(input_m3) AS i, sum(output_m3 + metered_m3) AS used, "
                "sum(losses_m3) AS losses, sum(uarl_m3_day * hours / 24) AS uarl "
                "FROM api.water_balance_daily WHERE site = %s "
                "AND date_trunc('month', day) = %s",
                (r["site"], r["month"]),
            )
            assert r["water_input_m3"] == pytest.approx(w["i"])
            assert r["yield_percent"] == pytest.approx(100 * w["used"] / w["i"])
            assert r["ili"] == pytest.approx(w["losses"] / w["uarl"])
            assert r["water_complete"] is False  # no month of the run is whole
            n = _one(
                conn,
                "SELECT sum(kwh) AS kwh, sum(luminaires)::float8 AS lum, sum(baseline_kwh) AS base "
                "FROM api.lighting_nights WHERE site = %s AND date_trunc('month', night) = %s",
                (r["site"], r["month"]),
            )
            if n["kwh"] is None:
                assert r["kwh_per_luminaire_night"] is None
                continue
            lit += 1
            assert r["kwh_per_luminaire_night"] == pytest.approx(n["kwh"] / n["lum"])
            assert r["lighting_saved_fraction"] == pytest.approx(1 - n["kwh"] / n["base"])
            assert 0 < r["lighting_saved_fraction"] < 1
        assert lit >= 2  # both communes' lighting of the live day
        pue = _all(
            conn,
            "SELECT b.pue, p.pue AS own FROM api.commune_benchmark_monthly b "
            "JOIN api.pue_monthly p USING (site, month)",
        )
        assert pue
        assert all(math.isclose(p["pue"], p["own"]) for p in pue)


def test_the_scan_keeps_the_days_of_its_period_current(url: str) -> None:
    """The balance lives in water_balance_days (migration 0020): a reading the inlet sends late
    changes its day once the anomaly scan has passed over that day, and only that day."""
    with psycopg.connect(url, autocommit=True) as conn:
        site = _rules_site(conn)
        before = {
            r["day"]: r["input_m3"]
            for r in _all(
                conn, "SELECT day, input_m3 FROM api.water_balance_daily WHERE site = %s", (site,)
            )
        }
        inlet = _one(conn, "SELECT id FROM devices WHERE site = %s AND device = 'in'", (site,))
        last = _one(
            conn, "SELECT max(time) AS t, max(value) AS v FROM readings WHERE device_id = %s",
            (inlet["id"],),
        )  # fmt: skip
        late = last["t"] + timedelta(minutes=7)  # still the 29th, local
        conn.execute(
            "INSERT INTO readings VALUES (%s, %s, 2, %s)", (late, inlet["id"], last["v"] + 5.0)
        )
        unchanged = {
            r["day"]: r["input_m3"]
            for r in _all(
                conn, "SELECT day, input_m3 FROM api.water_balance_daily WHERE site = %s", (site,)
            )
        }
        assert unchanged == before  # nothing until a scan has recomputed the day
        Scanner(AnomalyConfig()).scan(
            conn, _midnight(date(2026, 3, 29)).timestamp(), late.timestamp() + 1, site
        )
        after = {
            r["day"]: r["input_m3"]
            for r in _all(
                conn, "SELECT day, input_m3 FROM api.water_balance_daily WHERE site = %s", (site,)
            )
        }
        assert after[date(2026, 3, 28)] == before[date(2026, 3, 28)]
        assert after[date(2026, 3, 29)] == pytest.approx(before[date(2026, 3, 29)] + 5.0)


def test_the_service_recomputes_older_days_that_late_data_changed(url: str) -> None:
    """Late data older than the service's rescan (a customer meter's indexes backfilled
    weeks later): the service follows the rollup's log and recomputes the days they change —
    the day of the late reading and the day of the meter's next index, which now counts from
    it — and no other."""
    with psycopg.connect(url, autocommit=True) as conn:
        site = _rules_site(conn)
        service = AnomalyService(
            url, AnomalyConfig(), clock=FixedClock(_midnight(date(2026, 4, 20)).timestamp())
        )
        service.run_once()  # registers its position in the log
        before = _inputs(conn, site)
        inlet = _one(conn, "SELECT id FROM devices WHERE site = %s AND device = 'in'", (site,))
        day28_last = _one(
            conn,
            "SELECT max(time) AS t, max(value) AS v FROM readings WHERE device_id = %s "
            "AND time < %s",
            (inlet["id"], _midnight(date(2026, 3, 29))),
        )
        late = day28_last["t"] + timedelta(minutes=7)  # still the 28th, before midnight
        value = day28_last["v"] + 0.5  # between its neighbours: the index still only rises
        conn.execute("INSERT INTO readings VALUES (%s, %s, 2, %s)", (late, inlet["id"], value))
        assert _inputs(conn, site) == before
        report = service.run_once()
        assert report.balance_days == 2  # the DMA's 28th and 29th, both older than the rescan
        after = _inputs(conn, site)
        assert after[date(2026, 3, 28)] == pytest.approx(before[date(2026, 3, 28)] + 0.5)
        assert after[date(2026, 3, 29)] == pytest.approx(before[date(2026, 3, 29)] - 0.5)
        assert service.run_once().balance_days == 0  # nothing new in the log


def _inputs(conn: psycopg.Connection, site: str) -> dict[date, float]:
    return {
        r["day"]: r["input_m3"]
        for r in _all(
            conn, "SELECT day, input_m3 FROM api.water_balance_daily WHERE site = %s", (site,)
        )
    }
