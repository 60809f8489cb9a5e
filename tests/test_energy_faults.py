"""Luminaire faults: the rules of energy/faults.py against closed forms and edge cases, and
the alert lifecycle on a real PostgreSQL (a lamp failure resolved when its readings return to
normal, an acknowledged alert updated and not reopened, a manual resolution, a luminaire
without nominal power skipped), through the energy service's pass."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from prometheus_client import CollectorRegistry

from anomaly.alerts import acknowledge, resolve
from core.luminaire import luminaire_power_w
from core.rollup import refresh
from energy import faults
from energy.config import EnergyConfig
from energy.faults import FAULT, NORMAL, UNKNOWN, HourlyLamp
from energy.service import EnergyService, recompute
from tests.fix_db import register

F, N, U = FAULT, NORMAL, UNKNOWN
H0 = 1.7e9 - 1.7e9 % 3600


def _lamp(p: list[float], d: list[float], spread: float = 0.0) -> HourlyLamp:
    """Hourly power [W] and dim [%] held through each hour (NaN: no telemetry)."""
    n = len(p)
    pa, da = np.array(p, dtype=float), np.array(d, dtype=float)
    return HourlyLamp(H0 + 3600.0 * np.arange(n), pa, pa - spread, pa + spread, da, da, da)


# --- expected power ---------------------------------------------------------------------------
def test_expected_power_is_the_driver_curve() -> None:
    got = faults.expected_power_w(np.array([100.0, 50.0, 0.0, np.nan]), 40.0, 0.4)
    assert_allclose(got[:3], [40.4, 40 * 0.5 * 0.90 / 0.85 + 0.4, 0.4])
    assert np.isnan(got[3])


# --- lamp failure -------------------------------------------------------------------------------
def test_a_lamp_commanded_on_at_standby_exactly_has_failed() -> None:
    lamp = _lamp([0.4, 0.4, 21.6, 0.4], [50, 0, 50, np.nan])
    lo, _hi, _told = faults.command_range(lamp)
    state = faults.lamp_failure_hours(lamp, lo, 40.0, 0.4, 0.2)
    # Hour 1 off (not commanded), hour 2 lit but its previous level 0 holds into it (a switch
    # hour), hour 3 without dim and without a program: nothing to tell.
    assert_array_equal(state, [F, U, U, U])


def test_the_threshold_is_the_fraction_of_the_expected_power_at_the_level() -> None:
    expected = float(luminaire_power_w(0.5, 40.0, 0.4))
    below, above = 0.2 * expected - 0.01, 0.2 * expected + 0.01
    lamp = _lamp([50, below, above], [50, 50, 50])
    lo, _hi, _told = faults.command_range(lamp)
    assert_array_equal(faults.lamp_failure_hours(lamp, lo, 40.0, 0.4, 0.2), [N, F, N])


def test_a_program_says_commanded_where_dim_is_missing() -> None:
    lamp = _lamp([0.4, 0.4, 0.4], [np.nan] * 3)
    lo, _hi, told = faults.command_range(lamp, np.array([0.0, 40.0, 40.0]), np.array([40.0] * 3))
    assert not told.any()
    assert_array_equal(faults.lamp_failure_hours(lamp, lo, 40.0, 0.4, 0.2), [U, F, F])


def test_a_threshold_below_standby_tells_nothing() -> None:
    lamp = _lamp([0.4], [1.0])  # 1 %: expected 0.75 W, a fifth of it under the standby
    lo, _hi, _told = faults.command_range(lamp)
    assert_array_equal(faults.lamp_failure_hours(lamp, lo, 40.0, 0.4, 0.2), [U])


def test_the_dusk_hour_is_not_a_failure_however_low_its_power() -> None:
    # Off, then the switch-on hour (dim min 0, max 100, a mean power halfway), then lit.
    hour = H0 + 3600.0 * np.arange(3)
    lamp = HourlyLamp(hour, np.array([0.4, 20.0, 40.4]), np.array([0.4, 0.4, 40.4]),
                      np.array([0.4, 40.4, 40.4]), np.array([0.0, 0.0, 100.0]),
                      np.array([0.0, 100.0, 100.0]), np.array([0.0, 100.0, 100.0]))  # fmt: skip
    lo, _hi, _told = faults.command_range(lamp)
    assert_array_equal(lo, [0.0, 0.0, 100.0])
    assert_array_equal(faults.lamp_failure_hours(lamp, lo, 40.0, 0.4, 0.2), [U, U, N])


# --- day burner ---------------------------------------------------------------------------------
def test_daylight_hours_keep_the_margin_from_sunrise_and_sunset() -> None:
    hour = H0 + 3600.0 * np.arange(24)
    rise, down = H0 + 7.5 * 3600, H0 + 17.25 * 3600
    day = faults.daylight_hours(hour, [rise], [down], 3600.0)
    # From 08:30 to 16:15: the whole hours 09-10 ... 15-16.
    assert_array_equal(np.flatnonzero(day), np.arange(9, 16))


def test_a_day_burner_is_lit_in_daylight_only() -> None:
    threshold = 0.4 + 0.2 * 40.0
    lamp = _lamp([40.4, threshold + 0.01, threshold, 0.4, 0.4, np.nan, 40.4],
                 [0, 0, 0, 0, 10, np.nan, 0])  # fmt: skip
    daylight = np.array([True] * 6 + [False])
    got = faults.day_burner_hours(lamp, daylight, 40.0, 0.4, 0.2)
    # Lit, just above, just at the threshold, off, off but commanded on, a gap, night.
    assert_array_equal(got, [F, F, N, N, F, U, U])


# --- off its curve ------------------------------------------------------------------------------
def test_power_off_its_curve_beyond_the_tolerance_when_steady() -> None:
    expected = float(luminaire_power_w(0.7, 40.0, 0.4))
    lamp = _lamp([expected * 1.05, expected * 1.11, expected * 0.89, 0.4, expected * 1.2],
                 [70, 70, 70, 70, 70])  # fmt: skip
    lo, hi, told = faults.command_range(lamp)
    state, ratio = faults.off_curve_hours(lamp, lo, hi, told, 40.0, 0.4, 0.10, 0.2)
    # 5 % within, 11 % above, 11 % below, a failed lamp (not this rule's), 20 % above.
    assert_array_equal(state, [N, F, F, U, F])
    assert_allclose(ratio[[0, 1, 2, 4]], [1.05, 1.11, 0.89, 1.2])
    assert np.isnan(ratio[3])


def test_an_unsteady_hour_is_not_judged_against_the_curve() -> None:
    expected = float(luminaire_power_w(0.4, 40.0, 0.4))
    lamp = _lamp([expected * 1.3] * 2, [40, 40], spread=expected * 0.1)  # a presence boost
    lo, hi, told = faults.command_range(lamp)
    state, _ = faults.off_curve_hours(lamp, lo, hi, told, 40.0, 0.4, 0.10, 0.2)
    assert_array_equal(state, [U, U])
    dim_min, dim_max = np.array([40.0, 40.0]), np.array([100.0, 40.0])
    boosted = HourlyLamp(lamp.hour, lamp.p_mean, lamp.p_mean, lamp.p_mean, dim_min, dim_max,
                         dim_min)  # fmt: skip
    lo, hi, told = faults.command_range(boosted)
    state, _ = faults.off_curve_hours(boosted, lo, hi, told, 40.0, 0.4, 0.10, 0.2)
    assert_array_equal(state, [U, F])  # one level throughout the second hour only


# --- episodes -----------------------------------------------------------------------------------
def _hours(n: int) -> np.ndarray:
    return H0 + 3600.0 * np.arange(n)


def test_an_episode_is_confirmed_after_min_hours_and_ends_after_resolve_hours() -> None:
    state = np.array([N, F, F, F, N, N, N, N])
    (ep,) = faults.episodes(_hours(8), state, 2, 3)
    assert ep.started_at == H0 + 3600
    assert ep.after == H0  # the fault began after the start of the last normal hour
    assert ep.opened_at == H0 + 3 * 3600
    assert ep.seen_until == H0 + 4 * 3600
    assert ep.normal_since == H0 + 4 * 3600
    assert ep.ended_at == H0 + 7 * 3600
    assert_array_equal(ep.hours, [1, 2, 3])


def test_gaps_never_count_as_a_fault() -> None:
    state = np.array([F, U, U, U, U, N, F, U, N])
    assert faults.episodes(_hours(9), state, 2, 3) == []
    # Unknown hours do not break a run either: two fault hours across a gap confirm it.
    (ep,) = faults.episodes(_hours(4), np.array([F, U, U, F]), 2, 3)
    assert ep.opened_at == H0 + 4 * 3600
    assert ep.ended_at is None
    assert_array_equal(ep.hours, [0, 3])


def test_a_fault_hour_restarts_the_count_of_normal_hours() -> None:
    state = np.array([F, F, N, N, F, N, N, U, N])
    (ep,) = faults.episodes(_hours(9), state, 2, 3)
    assert ep.seen_until == H0 + 5 * 3600
    assert ep.ended_at == H0 + 9 * 3600
    assert ep.normal_since == H0 + 5 * 3600


def test_an_active_alert_goes_on_and_ends_without_fault_hours() -> None:
    (ep,) = faults.episodes(_hours(4), np.array([U, N, N, N]), 2, 3, active=True)
    assert (ep.started_at, ep.opened_at, ep.seen_until) == (H0, None, None)
    assert ep.ended_at == H0 + 4 * 3600
    assert faults.episodes(_hours(3), np.array([U, U, U]), 2, 3, active=False) == []


def test_a_manual_resolution_cuts_the_run() -> None:
    state = np.array([F, F, F, F, F, F])
    first, second = faults.episodes(_hours(6), state, 2, 3, resets=[H0 + 3 * 3600])
    assert (first.started_at, first.ended_at) == (H0, None)
    assert_array_equal(first.hours, [0, 1, 2])
    assert second.started_at == H0 + 3 * 3600
    assert second.opened_at == H0 + 5 * 3600


# --- the lifecycle on PostgreSQL, through the service -------------------------------------------
NOMINAL, STANDBY, LEVEL = 40.0, 0.4, 50.0


def _night(start: float) -> tuple[float, float]:
    """A night of 14 h [s], six hours after ``start``: the site has no coordinates (day burners
    are not looked for there), so the test holds in every season."""
    return start + 6 * 3600.0 + 1800.0, start + 20 * 3600.0 + 1800.0


def _write(conn: psycopg.Connection, device_id: int, times: np.ndarray, night: tuple[float, float],
           failed: tuple[float, float]) -> None:  # fmt: skip
    """Every 10 min: dim 50 % through the night (0 outside), power on the curve, at standby
    while ``failed`` ([from, to) [s])."""
    lit = (times >= night[0]) & (times < night[1])
    level = np.where(lit, LEVEL, 0.0)
    power = luminaire_power_w(level / 100.0, NOMINAL, STANDBY)
    power = np.where(lit & (times >= failed[0]) & (times < failed[1]), STANDBY, power)
    rows = [
        (datetime.fromtimestamp(float(t), UTC), device_id, metric, float(v))
        for t, p, d in zip(times, power, level, strict=True)
        for metric, v in ((5, p), (7, d))
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (time, device_id, metric_id, value) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            rows,
        )


def _alerts(conn: psycopg.Connection, site: str) -> list[tuple[object, ...]]:
    return conn.execute(
        """SELECT id, kind, device, state, resolved_by, extract(epoch FROM started_at),
                  extract(epoch FROM updated_at), extract(epoch FROM closed_at), details,
                  lighting_group
           FROM api.luminaire_faults WHERE site = %s ORDER BY id""",
        (site,),
    ).fetchall()


def test_fault_alerts_open_update_resolve_and_stay_acknowledged(
    conn: psycopg.Connection, db_url: str, site: str
) -> None:
    ids = register(conn, site, ("l1", "luminaire"), ("l2", "luminaire"), ("l3", "luminaire"))
    conn.execute(
        "UPDATE devices SET nominal_power_w = %s, lighting_group = 'rue' WHERE id = ANY(%s)",
        (NOMINAL, [ids["l1"], ids["l2"]]),
    )  # l3 has none
    now = datetime.now(UTC).timestamp()
    start = math.floor(now / 3600.0) * 3600.0 - 2 * 86400.0
    night = _night(start)
    assert night[1] < now
    times = np.arange(start, night[1] + 3 * 3600.0, 600.0)
    # The first hour lit throughout: its previous hour's last sample lit too.
    on = math.ceil(night[0] / 3600.0) * 3600.0 + 3600.0
    # l1 fails for 3 h after its first whole lit hour, then is repaired: back to normal.
    _write(conn, ids["l1"], times, night, (on, on + 3 * 3600.0))
    # l2 fails from its first whole lit hour to the end of the data; l3 as l2.
    cut = night[1] - 3 * 3600.0
    part = times[times < cut]
    _write(conn, ids["l2"], part, night, (on, math.inf))
    _write(conn, ids["l3"], part, night, (on, math.inf))
    service = EnergyService(db_url, EnergyConfig(), CollectorRegistry())
    report = service.run_pass(now=cut)
    assert report is not None
    # No nominal power: said so, not guessed (the other sites of the shared database aside).
    assert [d for d in report.faults.skipped if d.startswith(f"{site}/")] == [f"{site}/l3"]
    rows = _alerts(conn, site)
    assert [(r[1], r[2]) for r in rows] == [("lamp_failure", "l1"), ("lamp_failure", "l2")]
    l1, l2 = rows
    assert (l1[3], l1[4]) == ("resolved", "sobriety")
    assert l1[5] == on  # the start of its first hour at standby
    assert l1[6] == on + 3 * 3600.0  # the end of its last hour at standby
    assert l1[7] == on + 6 * 3600.0  # after three normal hours (faults_resolve_hours)
    expected = float(luminaire_power_w(LEVEL / 100.0, NOMINAL, STANDBY))
    details = l1[8]
    assert isinstance(details, dict)
    assert details["expected_w"] == pytest.approx(expected, rel=1e-3)
    assert details["measured_w"] == pytest.approx(STANDBY)
    assert (details["dim"], details["fault_hours"], l1[9]) == (LEVEL, 3, "rue")
    assert l2[3] == "open"
    assert l2[5] == on
    # Acknowledged by a person: the next pass with more data updates it, never reopens one.
    acknowledge(conn, int(l2[0]), "équipe EP")  # type: ignore[call-overload]
    _write(conn, ids["l2"], times[(times >= cut) & (times < night[1] - 3600.0)], night,
           (on, math.inf))  # fmt: skip
    assert service.run_pass(now=night[1]) is not None
    rows = _alerts(conn, site)
    assert len(rows) == 2
    assert (rows[1][0], rows[1][3]) == (l2[0], "acknowledged")
    assert float(rows[1][6]) > float(l2[6])  # type: ignore[arg-type]
    # Idempotent: the same data again changes nothing.
    with psycopg.connect(db_url) as work:
        again = recompute(work, EnergyConfig(), start, night[1], site)
    assert (again.faults.outcome.opened, again.faults.outcome.closed) == (0, 0)
    assert _alerts(conn, site) == rows
    # A person resolves it (at the clock's now, after every reading): the rescans over the
    # same readings do not reopen it; only fault hours after the resolution would.
    resolve(conn, int(l2[0]), "équipe EP", "changed the lamp")  # type: ignore[call-overload]
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start, night[1], site)
    assert len(_alerts(conn, site)) == 2  # no fault hour after the resolution yet


def test_a_fault_is_not_confirmed_before_min_hours(
    conn: psycopg.Connection, db_url: str, site: str
) -> None:
    ids = register(conn, site, ("l1", "luminaire"))
    conn.execute("UPDATE devices SET nominal_power_w = %s WHERE id = %s", (NOMINAL, ids["l1"]))
    start = H0
    night = _night(start)
    on = math.ceil(night[0] / 3600.0) * 3600.0 + 3600.0
    times = np.arange(start, night[1] + 3600.0, 600.0)
    _write(conn, ids["l1"], times, night, (on + 3600.0, on + 2 * 3600.0))  # one hour only
    refresh(conn)
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start, night[1], site)
    assert _alerts(conn, site) == []
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(faults_min_hours=1), start, night[1], site)
    assert [(r[1], r[3]) for r in _alerts(conn, site)] == [("lamp_failure", "resolved")]
