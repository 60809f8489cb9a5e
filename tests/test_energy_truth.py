"""api.energy_daily against the simulator's ground truth: three local days of the small town with
a counter reset, a rollover, a replaced meter and a spurious zero injected, its messages through
the ingest's own pipeline and store (the backfill path), the rollup, then the energy stage; every
metered device's days within 1 % of its true energy, and each fault in the flags of the day
it happened."""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

from core import rollup
from core.inventory import import_inventory
from core.messages import Reporting
from energy.config import EnergyConfig
from energy.service import recompute
from ingest.backfill import Backfill
from ingest.pipeline import Pipeline
from ingest.store import Store
from simulators import Fleet, build_town, write_inventory, write_sites
from simulators.scenario import Scenario
from simulators.town import SiteTown
from simulators.truth import Truth
from tests.test_simulators import _METER_FAULTS, _QUIET, small_scenario

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")
DAYS = 3  # local days simulated: two whole nights (noon to noon) inside them


def test_three_days_of_the_town_match_the_truth_with_every_counter_fault(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    root = f"e{uuid.uuid4().hex[:9]}/v1"
    # Every counter fault, two devices with power and no counter, a power gap on one of them.
    faults = {**_METER_FAULTS, "power_only": 2}
    # Luminaires that sample every minute and report their level by exception (at most 10 min
    # of silence), as a controller reports a switch: the lit hours, hence the no-dimming
    # baseline and the savings, are then known to the minute (with 10-min samples only, to
    # 10 min a switch: over 1 % of a baseline, several % of a saving).
    scenario = small_scenario(root, **_QUIET, **faults).model_copy(
        update={
            "reporting": {
                **small_scenario(root).reporting,
                "luminaire": Reporting(
                    interval_s=60, batch=10, deadband={"dim": 0.5}, max_silence_s=600
                ),
            }
        }
    )
    site = scenario.sites[0].site
    start = _start()
    town, truth, ids = _run_town(conn, db_url, tmp_path, scenario, start)

    rows = conn.execute(
        """SELECT device, day, kwh, resets, rollovers, replacements, glitches, source,
                  flagged, missing_hours, complete
           FROM api.energy_daily WHERE site = %s ORDER BY device, day""",
        (site,),
    ).fetchall()
    power_only = {e["device"] for e in truth.events if e["kind"] == "power_only"}
    gap = next(e for e in truth.events if e["kind"] == "power_gap")
    assert len(power_only) == 2
    assert gap["device"] in power_only
    kwh: dict[str, float] = defaultdict(float)
    events: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    gap_rows = []
    for device, day, value, resets, rollovers, replacements, glitches, source, *more in rows:
        assert source == ("power" if device in power_only else "counter"), device
        kwh[device] += value
        if device == gap["device"]:
            gap_rows.append((day, *more))
        for name, n in (("counter_reset", resets), ("counter_rollover", rollovers),
                        ("meter_replaced", replacements), ("spurious_zero", glitches)):  # fmt: skip
            events[device][name] += n
    metered = {k.split("/", 1)[1]: v / 1000.0 for k, v in truth.energy_wh.items()}
    assert set(kwh) == {d for d in metered if d in ids}
    for device, true_kwh in metered.items():
        if device in kwh and true_kwh > 0.1 and device != gap["device"]:
            assert kwh[device] == pytest.approx(true_kwh, rel=0.01), device
    # The power gap: flagged on the day(s) it falls in, never filled (the device counts less
    # than it used); missing_hours its duration past the last sample's hold (no published
    # config here: energy.default_hold_s), within a sampling interval.
    gap_h = (gap["end"] - gap["start"]) / 3600.0
    flagged_days = [r for r in gap_rows if r[1] > 0]
    assert flagged_days
    assert all(not r[3] for r in flagged_days)
    gap_kind = conn.execute(
        "SELECT kind FROM devices WHERE site = %s AND device = %s", (site, gap["device"])
    ).fetchone()
    assert gap_kind is not None
    interval_h = scenario_interval_s(scenario, gap_kind[0]) / 3600.0
    hold_h = EnergyConfig().default_hold_s / 3600.0
    missing = sum(r[2] for r in flagged_days)
    assert abs(missing - (gap_h - hold_h)) <= interval_h, (gap_rows, gap_h)
    assert kwh[gap["device"]] < metered[gap["device"]]
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
    assert len(days) == DAYS
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
    assert len(pumped) == DAYS
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
    # The nights hold the days' energy (of the counters: a power sample after the run's end
    # holds into the last night, which no day covers).
    every_night = conn.execute(
        """SELECT sum(n.kwh) FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
           WHERE d.site = %s AND NOT d.device = ANY(%s)""",
        (site, list(power_only)),
    ).fetchone()
    assert every_night is not None
    counted = sum(kwh[d] for d in lamps if d not in power_only)
    assert every_night[0] == pytest.approx(counted, rel=1e-6)

    # Against the truth of that night, per lighting group: energy, the no-dimming baseline and
    # the savings within 1 %.
    for whole in (night, night + timedelta(days=1)):
        _nights_match_the_truth(conn, site, whole, truth)
        _cabinets_match_the_truth(conn, site, whole, truth, town)


def _nights_match_the_truth(conn: psycopg.Connection, site: str, night: date, truth: Truth) -> None:
    groups = conn.execute(
        """SELECT lighting_group, luminaires, kwh, baseline_kwh, saved_kwh, complete
           FROM api.lighting_nights WHERE site = %s AND night = %s""",
        (site, night),
    ).fetchall()
    assert groups
    for group, luminaires, night_kwh, baseline, saved, complete in groups:
        true = truth.lighting_nights[f"{site}/{group}/{night.isoformat()}"]
        print(group, complete, night_kwh, true["kwh"], baseline, true["baseline_kwh"], saved)
        assert luminaires == true["luminaires"]
        assert night_kwh == pytest.approx(true["kwh"], rel=0.01), group
        assert baseline == pytest.approx(true["baseline_kwh"], rel=0.01), group
        assert saved == pytest.approx(true["baseline_kwh"] - true["kwh"], rel=0.01), group


def _cabinets_match_the_truth(
    conn: psycopg.Connection, site: str, night: date, truth: Truth, town: SiteTown
) -> None:
    """Each cabinet's night against its meter's truth, beside the sum of its luminaires (the
    difference: the line losses and the cabinet's own electronics), its baseline the sum of
    theirs."""
    rows = conn.execute(
        """SELECT cabinet, kwh, complete, luminaires, measured, luminaires_kwh, difference_kwh,
                  baseline_kwh, baseline_source, saved_kwh
           FROM api.lighting_cabinets WHERE site = %s AND night = %s ORDER BY cabinet""",
        (site, night),
    ).fetchall()
    assert [r[0] for r in rows] == sorted(town.cabinets)
    light = town.spec.lighting
    for row in rows:
        cab, cab_kwh, complete, luminaires, measured, lum_kwh, diff, baseline, source, saved = row
        under = [k for k, c in enumerate(town.lum_cabinet) if town.cabinets[c] == cab]
        assert luminaires == measured == len(under)
        assert complete
        assert cab_kwh == pytest.approx(truth.cabinet_nights[f"{site}/{cab}/{night}"], rel=0.01)
        expected_diff = lum_kwh * light.line_loss_fraction + light.cabinet_overhead_w * 24 / 1000
        print(cab, cab_kwh, lum_kwh, diff, expected_diff, baseline, source)
        assert diff == pytest.approx(expected_diff, rel=0.1, abs=0.005)
        lamps_baseline = conn.execute(
            """SELECT sum(n.baseline_kwh) FROM luminaire_nights n JOIN devices d
               ON d.id = n.device_id WHERE d.site = %s AND n.night = %s
               AND d.properties ->> 'cabinet' = %s""",
            (site, night, cab),
        ).fetchone()
        assert lamps_baseline is not None
        assert baseline == pytest.approx(lamps_baseline[0])
        assert source == "telemetry"
        assert saved == pytest.approx(baseline - cab_kwh)


def _start() -> float:
    """Three whole local days ending last midnight: inside the ingest's window of 7 days."""
    today = datetime.now(PARIS).date()
    return datetime.combine(today - timedelta(days=DAYS), datetime.min.time(), PARIS).timestamp()


def _run_town(
    conn: psycopg.Connection,
    db_url: str,
    tmp_path: Path,
    scenario: Scenario,
    start: float,
    keep: Callable[[str], bool] = lambda _topic: True,
) -> tuple[SiteTown, Truth, dict[str, int]]:
    """Simulate ``DAYS`` days of the town from ``start``, import its inventory, store the
    messages whose topic ``keep`` keeps through the ingest's pipeline and store (the backfill
    path), refresh the rollup and recompute the energy; (the site's town, the truth, device ids)."""
    site = scenario.sites[0].site
    town = build_town(scenario, 4)
    fleet = Fleet(town, "mqtt://127.0.0.1:1", days=DAYS, start=start)
    fleet.log = []
    truth = fleet.run()
    directory = tmp_path / "inventory"
    import_inventory(conn, write_sites(town, directory))
    for path in write_inventory(town, directory, start=start, days=DAYS):
        import_inventory(conn, path)
    ids: dict[str, int] = dict(
        conn.execute("SELECT device, id FROM devices WHERE site = %s", (site,)).fetchall()
    )
    store = Store(db_url)
    backfill = Backfill(
        store, Pipeline(lambda s, d: ids.get(d) if s == site else None, scenario.root)
    )
    received = time.time()
    for topic, payload in fleet.log:
        if keep(topic):
            backfill.add(topic, payload, received)
    backfill.flush()
    store.close()
    assert backfill.report.rejected == {}
    with psycopg.connect(db_url, autocommit=True) as work:
        rollup.refresh(work)
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start + 3600, start + DAYS * 86400 - 3600, site)
    return town.sites[0], truth, ids


def scenario_interval_s(scenario: Scenario, kind: str) -> float:
    """The sampling interval of a kind's devices in a scenario (their built-in reporting)."""
    return float(scenario.reporting[kind].interval_s)


def faults_kinds() -> tuple[str, ...]:
    """The truth's event kinds of the counter faults this test injects."""
    return ("counter_reset", "counter_rollover", "meter_replaced", "spurious_zero")


def test_a_cabinet_alone_gives_the_baseline_from_the_programs_in_force(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """Luminaires without telemetry of their own (none of their messages stored): the cabinet
    meter measures, the baseline comes from their nominal power and the lit hours of the
    program their published config holds, under the site's sun."""
    root = f"c{uuid.uuid4().hex[:9]}/v1"
    scenario = small_scenario(root, **_QUIET)
    site = scenario.sites[0].site
    start = _start()
    town, truth, _ids = _run_town(
        conn, db_url, tmp_path, scenario, start, keep=lambda topic: "/lum-" not in topic
    )
    night = datetime.fromtimestamp(start, PARIS).date()
    before = conn.execute(
        """SELECT baseline_kwh, baseline_source, baseline_complete, measured, difference_kwh
           FROM api.lighting_cabinets WHERE site = %s AND night = %s""",
        (site, night),
    ).fetchall()
    assert before
    assert all(r == (None, None, False, 0, None) for r in before)  # not guessed
    program = scenario.sites[0].lighting.program
    payload = Jsonb({"version": 1, "lighting": program.model_dump(mode="json")})
    conn.execute(
        """INSERT INTO device_configs (device_id, version, digest, payload, published_at)
           SELECT id, 1, '\\x00', %s, now() FROM devices WHERE site = %s AND kind = 'luminaire'""",
        (payload, site),
    )
    conn.commit()
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start + 3600, start + DAYS * 86400 - 3600, site)
    group_of = {d.device: d.group for d in town.devices if d.kind == "luminaire"}
    for whole in (night, night + timedelta(days=1)):
        rows = conn.execute(
            """SELECT cabinet, kwh, luminaires, measured, luminaires_kwh, difference_kwh,
                      baseline_kwh, baseline_source, baseline_complete, saved_kwh
               FROM api.lighting_cabinets WHERE site = %s AND night = %s ORDER BY cabinet""",
            (site, whole),
        ).fetchall()
        assert [r[0] for r in rows] == sorted(town.cabinets)
        for cab, kwh, luminaires, measured, lum_kwh, diff, baseline, source, full, saved in rows:
            lamps = [town.luminaires[k] for k, c in enumerate(town.lum_cabinet)
                     if town.cabinets[c] == cab]  # fmt: skip
            groups = {group_of[lamp] for lamp in lamps}
            true_baseline = sum(
                truth.lighting_nights[f"{site}/{g}/{whole}"]["baseline_kwh"] for g in groups
            )
            true_kwh = truth.cabinet_nights[f"{site}/{cab}/{whole}"]
            assert (luminaires, measured, lum_kwh, diff) == (len(lamps), 0, None, None)
            assert (source, full) == ("program", True)
            assert kwh == pytest.approx(true_kwh, rel=0.01)
            assert baseline == pytest.approx(true_baseline, rel=0.01)
            assert saved == pytest.approx(true_baseline - true_kwh, rel=0.01)


def test_luminaire_faults_against_the_truth(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """Three days of the small town with two lamp failures, a day burner and a lamp whose
    power drifts 5 %/day off its curve: each found on its device, its start within the stated
    tolerance, and no fault alert on any other luminaire."""
    from core.lighting import program_level, sun_times
    from energy.fault_scan import scan_site
    from energy.fault_store import FAULT_KINDS

    root = f"f{uuid.uuid4().hex[:9]}/v1"
    data = small_scenario(root, **_QUIET).model_dump(mode="json")
    data["days"] = DAYS  # the failures fall anywhere in the three days
    data["sites"][0]["lighting"].update(lamp_failures=2, day_burners=1, drifting=1)
    scenario = Scenario.model_validate(data)
    spec = scenario.sites[0]
    site = spec.site
    start = _start()
    _run_town(conn, db_url, tmp_path, scenario, start)
    config = EnergyConfig()
    with psycopg.connect(db_url) as work:  # the cost of the scan alone (alerts already there)
        began = time.perf_counter()
        scan = scan_site(work, config, site, PARIS, start - 86400, start + (DAYS + 1) * 86400)
        work.commit()
        print(f"fault scan: {scan.luminaires} luminaires, {time.perf_counter() - began:.3f} s")
    assert scan.outcome.opened == 0  # the recompute's pass had found them all
    truth = Fleet(build_town(scenario, 4), "mqtt://127.0.0.1:1", days=DAYS, start=start)
    truth.log = []
    events = [e for e in truth.run().events if e["kind"] in
              ("lamp_failure", "day_burner", "power_drift")]  # fmt: skip
    rows = conn.execute(
        """SELECT kind, device, extract(epoch FROM started_at)::float8,
                  extract(epoch FROM opened_at)::float8, state, details
           FROM api.luminaire_faults WHERE site = %s ORDER BY device, kind""",
        (site,),
    ).fetchall()
    found = {(r[1], r[0]): r for r in rows}
    assert len(found) == len(rows)  # one alert per device and kind
    program = spec.lighting.program
    margin = config.faults_daylight_margin_min * 60.0

    def lit_through(h: float) -> bool:
        return all(program_level(program, h + s, PARIS, spec.lat, spec.lon) > 0
                   for s in (-600.0, 0.0, 1800.0, 3599.0))  # fmt: skip

    def daylight(h: float) -> bool:
        day = datetime.fromtimestamp(h, PARIS).date()
        rise = sun_times(spec.lat, spec.lon, day - timedelta(days=1), PARIS).sunrise
        down = sun_times(spec.lat, spec.lon, day, PARIS).sunset
        assert rise is not None
        assert down is not None
        return rise + margin <= h and h + 3600.0 <= down - margin

    expected: set[tuple[str, str]] = set()
    for event in events:
        kind = {"power_drift": "power_off_curve"}.get(event["kind"], event["kind"])
        key = (event["device"], kind)
        expected.add(key)
        assert key in found, (key, rows)
        _kind, _device, started, opened, state, details = found[key]
        at = float(event["at"])
        if kind == "lamp_failure":  # seen from its first hour commanded on throughout
            first = math.ceil(at / 3600.0) * 3600.0
            while not lit_through(first):
                first += 3600.0
            assert first <= started <= first + 3600.0, (event, started, first)
            assert details["started_after"] is None or details["started_after"] <= at
        elif kind == "day_burner":  # seen from the first whole daylight hour
            first = math.ceil(at / 3600.0) * 3600.0
            while not daylight(first):
                first += 3600.0
            assert started == first, (event, started, first)
        else:  # off its curve once the drift passes the tolerance (steady hours only)
            crossing = at + config.faults_curve_tolerance / event["per_day"] * 86400.0
            assert started >= crossing - 3600.0, (event, started, crossing)
            assert details["ratio"] > 1.0 + config.faults_curve_tolerance
        print(kind, event["device"], f"true {at:.0f} started {started - at:+.0f} s "
              f"opened {opened - at:+.0f} s", state, details)  # fmt: skip
    assert {e["kind"] for e in events} == {"lamp_failure", "day_burner", "power_drift"}
    assert set(found) == expected, set(found) - expected  # no false positive
    assert {r[0] for r in rows} <= set(FAULT_KINDS)
