"""An intercommunal operator (issue 15): the 50 communes of
``simulators/scenarios/operator-50.toml`` (three overseas, 47 from a site template), with a few
devices each, through the real chain on a database of this test's own — two weeks of water
history written by binary COPY, two days live from the simulator over the real Mosquitto into
the real ingest, then one pass of the policies, the energy stage and the leak detector — and
checked per commune against the simulator's ground truth: every reading stored (none lost),
every commune in the policies', energy's and anomaly's api views, every leak the detector had
every chance to see found in its commune, every luminaire fault visible for a day found.

Scale: about 900 devices, ~190,000 readings live and ~260,000 of history."""

from __future__ import annotations

import copy
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anomaly.config import AnomalyConfig
from anomaly.service import Scanner
from app.demo_faults import FaultFindings, find_faults
from app.demo_leaks import LeakFindings, find_leaks
from app.demo_policies import PolicyFindings, PolicyRun
from app.embedded import Mosquitto, mosquitto_binary
from core import rollup
from core.db import upgrade, with_database
from core.inventory import import_inventory
from energy.config import EnergyConfig
from energy.service import recompute
from ingest.service import IngestService
from simulators import (
    Fleet,
    Town,
    Truth,
    build_town,
    packaged_scenario,
    write_inventory,
    write_sites,
)
from simulators.fleet import resolve_start
from simulators.scenario import parse_scenario
from simulators.town_history import TownHistory
from tests.fix_ingest import make_config

pytestmark = [pytest.mark.services, pytest.mark.slow]

SETTLE_S = 60.0


def small_operator() -> dict[str, Any]:
    """operator-50.toml with the same communes, places, time zones, leaks and faults, and a
    few devices each (one street of three luminaires, one DMA of four to seven customers)."""
    raw: dict[str, Any] = tomllib.loads(packaged_scenario("operator-50").read_text())
    raw = copy.deepcopy(raw)
    for site in raw["sites"]:
        site["lighting"].update(streets=1, luminaires_per_street=3)
        site["water"].update(dmas=1, customers_per_dma=5)
    (template,) = raw["site_templates"]
    template["vary"] = {
        "lighting.luminaires_per_street": [2, 3, 4],
        "water.customers_per_dma": [4, 5, 6, 7],
    }
    template["base"]["lighting"]["streets"] = 1
    template["base"]["water"]["dmas"] = 1
    raw["step_s"] = 300  # the fleet's cost is per site and step: 5-minute steps
    return raw


@dataclass
class Run:
    """What the run left for the tests to check."""

    url: str
    town: Town
    truth: Truth
    stored: dict[str, int]
    history_start: float
    policies: PolicyFindings
    leaks: LeakFindings
    faults: FaultFindings


def _stored_by_site(conn: psycopg.Connection, since: float) -> dict[str, int]:
    return {
        str(site): int(n)
        for site, n in conn.execute(
            "SELECT d.site, count(*) FROM readings r JOIN devices d ON d.id = r.device_id "
            "WHERE r.time >= to_timestamp(%s) GROUP BY d.site",
            (since,),
        )
    }


def _settle(url: str, service: IngestService, truth: Truth) -> dict[str, int]:
    """Until every site holds its readings of the truth, or nothing moved for a while."""
    deadline = time.monotonic() + SETTLE_S
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            stored = _stored_by_site(conn, truth.start)
            idle = service.spool.size_bytes == 0 and service.batcher.pending() == 0
            if (idle and stored == truth.readings_by_site) or time.monotonic() > deadline:
                return stored
            time.sleep(0.1)  # polls a row count: the ingest commits on its own thread


def _simulate(
    url: str, mqtt_url: str, tmp: Path, run_ingest: Callable[[Any], IngestService]
) -> Run:
    root = f"test{uuid.uuid4().hex[:8]}/v1"
    scenario = parse_scenario({**small_operator(), "root": root}, "operator-50 (small)")
    town = build_town(scenario, 7)
    start = resolve_start(scenario, scenario.days)
    sites_csv = write_sites(town, tmp / "inventory")
    dmas_csv, devices_csv = write_inventory(town, tmp / "inventory", start=start)
    with psycopg.connect(url) as conn:
        for path in (sites_csv, dmas_csv, devices_csv):
            import_inventory(conn, path)
    history = TownHistory(town, start)
    config = make_config(url, mqtt_url, tmp, root)
    service = run_ingest(config)
    policies = PolicyRun(config, url)
    try:
        policies.publish()
        fleet = Fleet(history.live_town(), mqtt_url, start=start, client_prefix=root[:12])
        with psycopg.connect(url) as conn:
            history.write(conn, fleet.models)
        fleet.connect()
        try:
            truth = fleet.run()
            fleet.wait_published(timeout_s=60)
        finally:
            fleet.close()
        history.describe_leaks(truth, fleet.town)
        assert service.wait_written(fleet.sent_live, 60.0)
        stored = _settle(url, service, truth)
        with psycopg.connect(url, autocommit=True) as conn:
            rollup.refresh(conn)
        with psycopg.connect(url) as conn:
            recompute(conn, EnergyConfig(), truth.start, truth.end)
            conn.commit()
            cfg = AnomalyConfig()
            Scanner(cfg).scan(conn, history.start, truth.end)
            conn.commit()
            sites = [s.spec.site for s in town.sites]
            found = policies.finish(conn, fleet, sites, truth.start, truth.end)
            leaks = find_leaks(conn, truth, fleet.town, history.start, cfg)
            faults = find_faults(conn, truth, EnergyConfig())
    finally:
        policies.close()
    return Run(url, town, truth, stored, history.start, found, leaks, faults)


@pytest.fixture(scope="module")
def run(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The run on a database and a Mosquitto of its own (the limits of deploy/mosquitto: the
    fleet publishes at full speed, no message dropped by the broker)."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto not installed: run scripts/services")
    tmp = tmp_path_factory.mktemp("operator")
    broker = Mosquitto(tmp / "broker")
    broker.start()
    name = f"sobriety_h1_operator_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    started: list[IngestService] = []

    def run_ingest(config: Any) -> IngestService:
        service = IngestService(config)
        service.start()
        started.append(service)
        assert service.subscribed.wait(10), "the ingest did not subscribe (no SUBACK)"
        return service

    try:
        with psycopg.connect(url) as conn:
            upgrade(conn)
        yield _simulate(url, broker.url, tmp, run_ingest)
    finally:
        for service in started:
            service.stop(end_session=True)
        broker.stop()
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_scenario_has_fifty_communes_in_four_time_zones() -> None:
    scenario = parse_scenario(small_operator(), "operator-50 (small)")
    ids = [s.site for s in scenario.sites]
    assert len(ids) == len(set(ids)) == 50
    zones = {s.timezone for s in scenario.sites}
    assert zones == {"Europe/Paris", "America/Cayenne", "Indian/Reunion", "America/Martinique"}
    assert len({(s.lat, s.lon) for s in scenario.sites}) == 50


def test_every_communes_readings_are_stored_none_lost(run: Run) -> None:
    sites = {s.spec.site for s in run.town.sites}
    assert set(run.truth.readings_by_site) == sites
    assert all(n > 0 for n in run.truth.readings_by_site.values())
    assert sum(run.truth.readings_by_site.values()) == run.truth.readings
    lost = {s: run.truth.readings_by_site[s] - run.stored.get(s, 0) for s in sorted(sites)}
    assert {s: n for s, n in lost.items() if n} == {}


def test_every_commune_is_in_the_stages_views(run: Run) -> None:
    sites = {s.spec.site for s in run.town.sites}
    views = {
        "api.device_configs": "policies",  # the configs published and the states recorded
        "api.reporting_daily": "policies",  # messages per device and day against the baseline
        "api.energy_daily": "energy",
        "api.lighting_nights": "energy",
        "api.dma_nights": "anomaly",
    }
    with psycopg.connect(run.url) as conn:
        for view, stage in views.items():
            seen = {str(r[0]) for r in conn.execute(f"SELECT DISTINCT site FROM {view}")}
            assert seen == sites, f"{stage}: {view} lacks {sorted(sites - seen)[:5]}"
    assert run.policies.problems == []
    assert run.policies.applied == run.policies.applied_truth > 0


def test_the_injected_leaks_are_found_in_their_commune(run: Run) -> None:
    assessable = [r for r in run.leaks.leaks if run.leaks.assessable(r)]
    injected = {s.spec.site for s in run.town.sites if s.spec.water.history_leaks}
    assert {r.site for r in assessable} == injected
    assert len(injected) == 15  # Cayenne, Le Lamentin and 13 mainland communes
    missed = [f"{r.site}/{r.dma} {r.kind}" for r in assessable if not r.detected]
    assert missed == []
    for row in assessable:
        assert row.alert is not None
        assert row.alert.site == row.site
        assert row.alert.dma == row.dma


def test_the_luminaire_faults_are_found_in_their_commune(run: Run) -> None:
    assert run.faults.problems == []
    due = [f for f in run.faults.faults if f.due]
    assert len({f.site for f in due}) >= 5, [(f.site, f.kind) for f in run.faults.faults]
    assert all(f.opened_at is not None for f in due)
