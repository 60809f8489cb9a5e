"""api.energy_daily against the simulator's ground truth: two local days of the small town with
a counter reset, a rollover, a replaced meter and a spurious zero injected, its messages through
the ingest's own pipeline and store (the backfill path), the rollup, then the energy stage; every
metered device's two days within 1 % of its true energy, and each fault in the flags of the day
it happened."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from core import rollup
from core.inventory import import_inventory
from energy.config import EnergyConfig
from energy.service import recompute
from ingest.backfill import Backfill
from ingest.pipeline import Pipeline
from ingest.store import Store
from simulators import Fleet, build_town, write_inventory, write_sites
from simulators.scenario import Scenario
from tests.test_simulators import _METER_FAULTS, _QUIET, small_scenario

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")


def test_two_days_of_the_town_match_the_truth_with_every_counter_fault(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    root = f"e{uuid.uuid4().hex[:9]}/v1"
    faults = {k: v for k, v in _METER_FAULTS.items() if k != "power_gaps"}
    scenario = small_scenario(root, **_QUIET, **faults)
    site = scenario.sites[0].site
    # Two whole local days ending yesterday: inside the ingest's window of 7 days.
    today = datetime.now(PARIS).date()
    start = datetime.combine(today - timedelta(days=3), datetime.min.time(), PARIS).timestamp()
    town = build_town(scenario, 4)
    fleet = Fleet(town, "mqtt://127.0.0.1:1", days=2.0, start=start)
    fleet.log = []
    truth = fleet.run()
    directory = tmp_path / "inventory"
    import_inventory(conn, write_sites(town, directory))
    for path in write_inventory(town, directory, start=start, days=2.0):
        import_inventory(conn, path)
    ids = dict(conn.execute("SELECT device, id FROM devices WHERE site = %s", (site,)).fetchall())
    store = Store(db_url)
    backfill = Backfill(store, Pipeline(lambda s, d: ids.get(d) if s == site else None, root))
    received = time.time()
    for topic, payload in fleet.log:
        backfill.add(topic, payload, received)
    backfill.flush()
    store.close()
    assert backfill.report.rejected == {}
    with psycopg.connect(db_url, autocommit=True) as work:
        rollup.refresh(work)
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start + 3600, start + 2 * 86400 - 3600, site)

    rows = conn.execute(
        """SELECT device, day, kwh, resets, rollovers, replacements, glitches, source
           FROM api.energy_daily WHERE site = %s ORDER BY device, day""",
        (site,),
    ).fetchall()
    kwh: dict[str, float] = defaultdict(float)
    events: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for device, _day, value, resets, rollovers, replacements, glitches, source in rows:
        assert source == "counter"
        kwh[device] += value
        for name, n in (("counter_reset", resets), ("counter_rollover", rollovers),
                        ("meter_replaced", replacements), ("spurious_zero", glitches)):  # fmt: skip
            events[device][name] += n
    metered = {k.split("/", 1)[1]: v / 1000.0 for k, v in truth.energy_wh.items()}
    assert set(kwh) == {d for d in metered if d in ids}
    for device, true_kwh in metered.items():
        if device in kwh and true_kwh > 0.1:
            assert kwh[device] == pytest.approx(true_kwh, rel=0.01), device
    lamps = [d for d in kwh if d.startswith("lum-")]
    assert sum(kwh[d] for d in lamps) == pytest.approx(sum(metered[d] for d in lamps), rel=0.01)
    injected = {e["kind"]: e["device"] for e in truth.events if e["kind"] in faults_kinds()}
    assert set(injected) == set(faults_kinds())
    for kind, device in injected.items():
        assert events[device][kind] >= 1, (kind, device, dict(events[device]))
    for device, counts in events.items():
        for kind in ("counter_reset", "counter_rollover", "meter_replaced"):
            if injected.get(kind) != device:
                assert counts[kind] == 0, (kind, device)

    # PUE: the server room's facility energy over its IT energy, against the truth's.
    days = conn.execute(
        """SELECT facility_kwh, it_kwh, pue, category FROM api.pue_daily WHERE site = %s
           ORDER BY day""",
        (site,),
    ).fetchall()
    assert len(days) == 2
    assert {row[3] for row in days} == {"PUE1"}  # the default category, stated with each
    assert all(row[2] == pytest.approx(row[0] / row[1]) for row in days)
    true_pue = metered["facility-1"] / metered["it-1"]
    assert sum(r[0] for r in days) / sum(r[1] for r in days) == pytest.approx(true_pue, rel=0.01)
    months = conn.execute(
        "SELECT facility_kwh, it_kwh, interim, category FROM api.pue_monthly WHERE site = %s",
        (site,),
    ).fetchall()
    assert sum(m[0] for m in months) == pytest.approx(sum(r[0] for r in days))
    assert all(m[2] for m in months)  # fewer than twelve months: interim
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(pue_category="PUE2"), start + 3600, start + 3600, site)
    category = conn.execute(
        "SELECT DISTINCT category FROM api.pue_daily WHERE site = %s", (site,)
    ).fetchall()
    assert category == [("PUE2",)]
    with psycopg.connect(db_url) as work:  # back to the default for the other tests
        recompute(work, EnergyConfig(), start + 3600, start + 3600, site)

    # Pumping: the pump's volume index per day, its kWh per m³ against the truth's.
    pumped = conn.execute(
        "SELECT kwh, m3, kwh_per_m3 FROM api.pumping_daily WHERE site = %s ORDER BY day", (site,)
    ).fetchall()
    assert len(pumped) == 2
    assert all(row[2] == pytest.approx(row[0] / row[1]) for row in pumped)
    true_m3 = truth.volume_m3[f"{site}/pump-1"]
    assert sum(r[1] for r in pumped) == pytest.approx(true_m3, rel=0.01)
    assert sum(r[0] for r in pumped) / sum(r[1] for r in pumped) == pytest.approx(
        metered["pump-1"] / true_m3, rel=0.01
    )

    # Lighting per night: the night of the first evening, wholly inside the run. The hours lit
    # from each luminaire's dim telemetry against its program's schedule (within one sampling
    # interval: the telemetry cannot say better), the baseline nominal power times those hours.
    from core.lighting import night_schedule, sun_times

    spec = scenario.sites[0]
    night = datetime.fromtimestamp(start, PARIS).date()
    sun = sun_times(spec.lat, spec.lon, night, PARIS)
    plan = night_schedule(spec.lighting.program, night, PARIS, sun)
    assert plan.on is not None
    assert plan.off is not None
    scheduled_h = (plan.off - plan.on) / 3600.0
    faulted = {e["device"] for e in truth.events if e["kind"] in ("day_burner", "lamp_failure")}
    lamps_n = conn.execute(
        """SELECT d.device, n.kwh, n.lit_hours, n.baseline_kwh, d.nominal_power_w
           FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
           WHERE d.site = %s AND n.night = %s""",
        (site, night),
    ).fetchall()
    assert len(lamps_n) == len(lamps)
    interval_h = scenario_interval_s(scenario, "luminaire") / 3600.0
    for device, night_kwh, lit, baseline, nominal in lamps_n:
        assert baseline == pytest.approx(nominal * lit / 1000.0)
        assert 0 < night_kwh <= baseline * 1.001 or device in faulted
        if device not in faulted:
            assert abs(lit - scheduled_h) <= interval_h, (device, lit, scheduled_h)
    group = conn.execute(
        """SELECT sum(luminaires), sum(kwh), sum(baseline_kwh), sum(saved_kwh)
           FROM api.lighting_nights WHERE site = %s AND night = %s""",
        (site, night),
    ).fetchone()
    assert group is not None
    assert group[0] == len(lamps)
    assert group[1] == pytest.approx(sum(r[1] for r in lamps_n))
    assert group[3] == pytest.approx(group[2] - group[1])
    every_night = conn.execute(
        """SELECT sum(n.kwh) FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
           WHERE d.site = %s""",
        (site,),
    ).fetchone()
    assert every_night is not None
    assert every_night[0] == pytest.approx(sum(kwh[d] for d in lamps), rel=1e-6)  # same energy


def scenario_interval_s(scenario: Scenario, kind: str) -> float:
    """The sampling interval of a kind's devices in a scenario (their built-in reporting)."""
    return float(scenario.reporting[kind].interval_s)


def faults_kinds() -> tuple[str, ...]:
    """The truth's event kinds of the counter faults this test injects."""
    return ("counter_reset", "counter_rollover", "meter_replaced", "spurious_zero")
