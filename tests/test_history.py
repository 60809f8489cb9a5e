"""The water-network history generator (simulators/history*.py): scenario validation, what a
short history written into a real PostgreSQL holds (devices, metrics, reading rates per meter
mode), the hydraulics (inflow = sum of its parts, pressure from the total inflow, FAVAD leaks)
and the scenario list of ``sobriety anomaly evaluate``."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from numpy.testing import assert_allclose

from app.evaluate import scenarios
from core.db import upgrade, with_database
from core.errors import ConfigError, UsageError
from simulators import physics
from simulators.history import HistoryTruth, HistoryWriter, write_history
from simulators.history_pressure import Hydraulics, predicted_pressure_bar
from simulators.history_rows import Rows
from simulators.history_scenario import (
    FixedLeak,
    HistoryScenario,
    MeterGroup,
    load_history_scenario,
    packaged_family,
)

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")

SHORT = HistoryScenario(
    name="short",
    site="history-test",
    start=date(2026, 3, 25),  # the spring DST night (29 March) is inside
    days=8,
    dmas=4,
    customers=(40, 60),
    coverage=[0.0, 0.2, 0.5, 1.0],
    meter_metrics=["volume", "flow", "volume", "both"],
    customer_interval_s=[3600, 3600, 86400, 3600],
    inlets=(2, 2),
    pressure_sensors=(3, 3),
    sensor_static_head=(0.9, 1.1),
    sensor_distance=(0.2, 1.0),
    head_loss_share=0.2,
    outlet_share=0.0,
    seasonal_swing=0.0,
    background_n1=0.0,
    school_holidays=[],
    large_consumers=0,
    customer_leaks=0,
    high_consumers=0,
    silent_meter_days=0.0,
    frozen_meter_days=0.0,
    leaks={"per_dma": 0.0},
    fixed_leaks=[FixedLeak(dma=0, kind="burst", start_day=5.02, size_fraction=1.0, n1=1.0)],
)


# --- scenarios ---------------------------------------------------------------------------------
def _load(tmp_path: Path, text: str) -> HistoryScenario:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return load_history_scenario(path)


def test_validation_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"coverage\.1 = 1\.5: expected less than or equal to 1"):
        _load(tmp_path, "coverage = [0.5, 1.5]\n")
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, 'meter_metrics = "index"\n')
    assert "meter_metrics" in str(err.value)
    assert "'volume', 'flow' or 'both'" in str(err.value)
    with pytest.raises(ConfigError, match=r"customer_interval_s.*expected less than or equal"):
        _load(tmp_path, "customer_interval_s = 172800\n")
    with pytest.raises(ConfigError, match=r"inlets = \[1, 3\]: expected 1 or 2"):
        _load(tmp_path, "inlets = [1, 3]\n")
    with pytest.raises(ConfigError, match=r"meter_groups: shares \[0.5, 0.3\]"):
        _load(tmp_path, "[[meter_groups]]\nshare = 0.5\n[[meter_groups]]\nshare = 0.3\n")
    with pytest.raises(ConfigError, match=r"demand_patterns\.0 = 'beach'"):
        _load(tmp_path, 'demand_patterns = ["beach"]\n')


def test_one_value_or_a_list_cycled_over_the_dmas(tmp_path: Path) -> None:
    one = _load(tmp_path, 'meter_metrics = "flow"\ncustomer_interval_s = 86400\n')
    assert one.groups(0)[0].metrics == one.groups(5)[0].metrics == "flow"
    assert one.groups(3)[0].interval_s == 86400
    many = _load(tmp_path, "coverage = [0.0, 0.1, 0.5, 1.0]\ndemand_patterns = "
                 '["residential", "touristic"]\n')  # fmt: skip
    assert [many.dma_coverage(i) for i in range(6)] == [0.0, 0.1, 0.5, 1.0, 0.0, 0.1]
    assert many.dma_pattern(3) == "touristic"
    # The defaults are today's network: hourly index meters on 85 %, one inlet, one sensor.
    default = HistoryScenario()
    assert default.dma_coverage(4) == 0.85
    assert default.groups(0)[0].model_dump() == {
        "share": 1.0, "metrics": "volume", "interval_s": 3600,
    }  # fmt: skip
    assert (default.inlets, default.pressure_sensors, default.leaks.n1) == (
        (1, 1), (1, 1), (0.0, 0.0),
    )  # fmt: skip


def test_packaged_family_loads_and_says_what_it_stands_for() -> None:
    family = packaged_family()
    names = [p.stem for p in family]
    for name in ("evaluation", "evaluation-autumn", "evaluation-sparse", "evaluation-large"):
        assert name in names
    for path in family:
        assert path.read_text().startswith("# "), path
        load_history_scenario(path)
    large = load_history_scenario(family[names.index("evaluation-large")])
    assert large.leaks.quiet_days == 7
    assert large.inlets == (2, 2)
    assert large.pressure_sensors[0] >= 25
    assert [s.stem for s in map(Path, (f for f, _ in scenarios(None)))] == names
    assert scenarios(["evaluation-sparse"])[0][1].name == "evaluation-sparse"
    with pytest.raises(UsageError, match="evaluation-large"):
        scenarios(["no-such-scenario"])


# --- hydraulics (no database) -------------------------------------------------------------------
def _days(writer: HistoryWriter, count: int) -> list[list[Hydraulics]]:
    ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    out = []
    for index in range(count):
        day = writer.day(index)
        out.append([writer.dma_day(d, day, ids, Rows()) for d in writer.dmas])
    return out


@pytest.mark.parametrize("n1", [0.0, 0.5, 1.5])
def test_favad_leak_is_larger_at_night(n1: float) -> None:
    scenario = SHORT.model_copy(
        update={"dmas": 1, "days": 3, "coverage": [0.0], "customers": (400, 500),
                "mains_km": (3.0, 5.0), "fixed_leaks": [
            FixedLeak(dma=0, kind="burst", start_day=0.5, size_fraction=0.5, n1=n1)]}
    )  # fmt: skip
    writer = HistoryWriter(scenario, 3)
    (hydraulics,) = _days(writer, 3)[2]
    leaks, nominal, inflow = hydraulics.leaks, hydraulics.nominal_leaks, hydraulics.inflow
    local = np.array([datetime.fromtimestamp(t, PARIS).hour for t in hydraulics.steps])
    night, evening = (local >= 2) & (local < 5), (local >= 18) & (local < 22)
    assert inflow[evening].mean() > 1.5 * inflow[night].mean()
    if n1 == 0.0:
        assert_allclose(leaks, nominal)
        return
    # At night the leak flows at its nominal size (what it is sized by); by day, when the
    # head loss is larger, less — the more so the larger N1.
    assert_allclose(leaks[night], nominal[night], rtol=0.03)
    assert leaks[evening].mean() < 0.99 * leaks[night].mean()
    d = writer.dmas[0]
    leak = writer.truth.leaks[0]
    loss = scenario.head_loss_share * d.pressure_m
    at = d.pressure_m - physics.head_loss_m(inflow, d.peak_m3h, leak["distance"] * loss)
    ref = d.pressure_m - leak["distance"] * loss * d.night_ratio
    assert_allclose(leaks, nominal * physics.favad_factor(at, ref, n1), rtol=0.01)


def _one_dma(**update: object) -> tuple[HistoryWriter, dict[str, int]]:
    scenario = SHORT.model_copy(update={"dmas": 1, "coverage": [1.0], "fixed_leaks": [],
                                        "customers": (100, 100), **update})  # fmt: skip
    ids: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    return HistoryWriter(scenario, 11), ids


def test_a_mix_of_meter_groups_in_one_dma() -> None:
    writer, ids = _one_dma(meter_groups=[
        MeterGroup(share=0.5, metrics="flow", interval_s=3600),
        MeterGroup(share=0.5, metrics="volume", interval_s=86400),
    ])  # fmt: skip
    rows = Rows()
    writer.dma_day(writer.dmas[0], writer.day(0), ids, rows)
    counts = {
        (j < 50, metric): len(rows.select(ids[f"wm-dma-01-{j + 1:04d}"], metric)[0])
        for j in range(100) for metric in (1, 2)
    }  # fmt: skip
    assert counts == {(True, 1): 24, (True, 2): 0, (False, 1): 0, (False, 2): 1}
    assert writer.truth.dmas["dma-01"]["meter_mode"] == "flow/3600s+volume/86400s"
    # The mean flows of a meter are the differences of its (unsent) index over the hours.
    t, flow = rows.select(ids["wm-dma-01-0001"], 1)
    assert np.all(flow >= 0)
    assert_allclose(np.diff(t), 3600.0)


def test_calibration_drift_raises_the_flow_not_the_pressure_drop() -> None:
    writer, ids = _one_dma(days=20, inlets=(1, 1), calibration_drifts=1,
                           calibration_drift=(0.08, 0.08), calibration_ramp_days=0.0)  # fmt: skip
    base, _ = _one_dma(days=20, inlets=(1, 1))
    drift = next(c for c in writer.truth.changes if c["kind"] == "inlet_calibration_drift")
    measured, true = [], []
    for index in range(20):
        rows = Rows()
        hydraulics = writer.dma_day(writer.dmas[0], writer.day(index), ids, rows)
        same = base.dma_day(base.dmas[0], base.day(index), ids, Rows())
        # The water is the same: same inflow, same pressure; only the meter reads more.
        assert_allclose(hydraulics.inflow, same.inflow)
        assert_allclose(hydraulics.pressure_bar, same.pressure_bar)
        t, flow = rows.select(ids["fm-dma-01-in"], 1)
        after = t >= drift["start"]
        measured.append(flow[after])
        true.append(hydraulics.inflow[after])
    ratio = np.concatenate(measured).sum() / np.concatenate(true).sum()
    assert ratio == pytest.approx(1.08, abs=0.005)


def test_unmetered_night_consumer_draws_at_night_only() -> None:
    writer, ids = _one_dma(days=20, night_consumers=1, night_consumer_m3h=(0.5, 0.5),
                           night_consumer_hours=(1.0, 4.0))  # fmt: skip
    user = next(c for c in writer.truth.changes if c["kind"] == "unmetered_night_consumer")
    day = writer.day(19)
    assert user["start"] < day.t_day
    base, _ = _one_dma(days=20)
    with_user = writer.dma_day(writer.dmas[0], day, ids, Rows())
    without = base.dma_day(base.dmas[0], base.day(19), ids, Rows())
    local = np.array([datetime.fromtimestamp(t, PARIS).hour for t in with_user.steps])
    extra = with_user.inflow - without.inflow
    on = (local >= 1) & (local < 4)
    assert_allclose(extra[on], 0.5, rtol=0.05)
    assert_allclose(extra[~on], 0.0, atol=0.05)


# --- a short history in PostgreSQL --------------------------------------------------------------
@pytest.fixture(scope="module")
def history(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, HistoryTruth]]:
    """A migrated database of this module's own holding the short history."""
    name = f"sobriety_test_history_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    with psycopg.connect(url) as conn:
        upgrade(conn)
        conn.commit()
        truth = write_history(conn, SHORT, 5, tmp_path_factory.mktemp("inventory"))
    yield url, truth
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _per_device(conn: psycopg.Connection, dma: str, kind: str) -> dict[str, dict[int, int]]:
    """Readings per device of a kind in a DMA, by metric."""
    out: dict[str, dict[int, int]] = {}
    for device, metric, count in conn.execute(
        """SELECT d.device, r.metric_id, count(*) FROM devices d
           LEFT JOIN readings r ON r.device_id = d.id
           WHERE d.site = %s AND d.dma = %s AND d.kind = %s GROUP BY 1, 2""",
        (SHORT.site, dma, kind),
    ):
        out.setdefault(device, {})[metric] = count
    return out


def test_devices_and_metrics_follow_the_scenario(history: tuple[str, HistoryTruth]) -> None:
    url, truth = history
    hours = 8 * 24 - 1  # the spring DST day has 23 hours
    with psycopg.connect(url) as conn:
        for i, (dma, net) in enumerate(sorted(truth.dmas.items())):
            inlets = conn.execute(
                "SELECT device FROM devices WHERE site = %s AND dma = %s AND kind = 'flow_meter' "
                "AND role = 'inlet' ORDER BY 1", (SHORT.site, dma),
            ).fetchall()  # fmt: skip
            assert [r[0] for r in inlets] == [f"fm-{dma}-in", f"fm-{dma}-in2"]
            sensors = _per_device(conn, dma, "pressure_sensor")
            assert len(sensors) == net["pressure_sensors"] == 3
            assert all(m == {3: hours * 4} for m in sensors.values())
            meters = _per_device(conn, dma, "water_meter")
            assert len(meters) == round(net["customers"] * SHORT.coverage[i])
            expected = [{}, {1: hours}, {2: 8}, {1: hours, 2: hours}][i]
            assert all(m == expected for m in meters.values()), (dma, meters)
        # Daily meters read once per local day, the 23-hour day included.
        days = conn.execute(
            """SELECT DISTINCT count(*) FROM readings r JOIN devices d ON d.id = r.device_id
               WHERE d.dma = 'dma-03' AND d.kind = 'water_meter'
               GROUP BY d.id, (r.time AT TIME ZONE 'Europe/Paris')::date"""
        ).fetchall()
        assert days == [(1,)]
        # Meters reporting both send the index and the flow at the same times.
        apart = conn.execute(
            """SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id
               WHERE d.dma = 'dma-04' AND d.kind = 'water_meter' AND r.metric_id = 1
               AND NOT EXISTS (SELECT 1 FROM readings v WHERE v.device_id = r.device_id
                               AND v.metric_id = 2 AND v.time = r.time)"""
        ).fetchone()
        assert apart == (0,)


def _series(conn: psycopg.Connection, device: str, metric: int) -> tuple[np.ndarray, np.ndarray]:
    rows = conn.execute(
        """SELECT extract(epoch FROM r.time)::float8, r.value FROM readings r
           JOIN devices d ON d.id = r.device_id
           WHERE d.site = %s AND d.device = %s AND r.metric_id = %s ORDER BY r.time""",
        (SHORT.site, device, metric),
    ).fetchall()
    data = np.array(rows, dtype=np.float64)
    return data[:, 0], data[:, 1]


def test_inflow_is_the_sum_of_its_parts(history: tuple[str, HistoryTruth]) -> None:
    url, truth = history
    net = truth.dmas["dma-04"]  # every customer metered, mean flow hourly; no leak, no outlet
    with psycopg.connect(url) as conn:
        t, first = _series(conn, "fm-dma-04-in", 1)
        t2, second = _series(conn, "fm-dma-04-in2", 1)
        assert_allclose(t, t2)
        inflow = first + second
        share = first / inflow
        # The inflow splits between the two inlets in a share that moves over the days.
        assert share.min() > 0.03
        assert share.max() < 0.97
        assert share.std() > 0.01
        (metered,) = conn.execute(
            """SELECT sum(m) FROM (SELECT avg(r.value) AS m FROM readings r
               JOIN devices d ON d.id = r.device_id
               WHERE d.dma = 'dma-04' AND d.kind = 'water_meter' AND r.metric_id = 1
               GROUP BY d.id) AS per_meter"""
        ).fetchone() or (None,)
    assert metered is not None
    # Consumption (every customer) plus background leakage (pressure-independent here).
    assert inflow.mean() == pytest.approx(metered + net["background_m3h"], rel=0.02)


def test_pressure_drops_as_the_model_predicts_when_a_leak_starts(
    history: tuple[str, HistoryTruth],
) -> None:
    url, truth = history
    leak = truth.leaks[0]
    dma = leak["dma"]
    net = truth.dmas[dma]
    start = leak["start"]
    assert 1 <= datetime.fromtimestamp(start, PARIS).hour < 2  # at night
    with psycopg.connect(url) as conn:
        t, first = _series(conn, f"fm-{dma}-in", 1)
        _, second = _series(conn, f"fm-{dma}-in2", 1)
        inflow = first + second
        before = (t >= start - 86400 + 1800) & (t < start - 86400 + 3 * 3600)
        after = (t >= start + 1800) & (t < start + 3 * 3600)
        assert inflow[after].mean() > inflow[before].mean() + 0.7 * leak["flow_m3h"]
        drops = []
        for name, sensor in truth.sensors.items():
            if sensor["dma"] != dma:
                continue
            tp, pressure = _series(conn, name, 3)
            assert_allclose(tp, t)
            predicted = predicted_pressure_bar(
                sensor["static_head_m"], sensor["distance"], inflow, net["peak_inflow_m3h"],
                net["peak_loss_m"],
            )  # fmt: skip
            # The model holds sample by sample (noise: 0.005 bar, and the 1 % of the flows).
            assert abs(np.mean(pressure - predicted)) < 0.003
            observed = pressure[after].mean() - pressure[before].mean()
            expected = predicted[after].mean() - predicted[before].mean()
            assert observed == pytest.approx(expected, abs=0.004)
            drops.append(observed)
    # Every sensor sees the leak, the far ones more.
    assert max(drops) < 0
    assert min(drops) < -0.02
