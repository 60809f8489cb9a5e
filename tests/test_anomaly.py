"""Leak detection through the real database: a simulated history written into PostgreSQL, the
SQL aggregates, the alerts table and its lifecycle, the command line and the metrics."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from anomaly.config import AnomalyConfig
from anomaly.service import AnomalyService, Scanner
from app.cli import main
from app.embedded import Cluster
from core.clock import FixedClock
from core.db import upgrade, with_database
from simulators.history import HistoryTruth, write_history
from simulators.history_scenario import FixedLeak, HistoryScenario
from tests.fix_mqtt import wait_until

pytestmark = pytest.mark.services

SCENARIO = HistoryScenario(
    name="test",
    site="anomaly-test",
    start=datetime(2026, 2, 2).date(),
    days=50,
    dmas=3,
    customers=(40, 60),
    outlet_share=0.0,
    school_holidays=[],
    large_consumers=1,
    customer_leaks=2,
    high_consumers=0,
    silent_meter_days=2.0,
    frozen_meter_days=0.0,
    leaks={"per_dma": 0.0},
    fixed_leaks=[
        FixedLeak(dma=0, kind="burst", start_day=30.4, size_fraction=0.5),
        FixedLeak(dma=1, kind="burst", start_day=25.6, days=8.0, size_fraction=0.3),
    ],
)


@pytest.fixture(scope="module")
def history(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[str, HistoryTruth]
]:  # fmt: skip
    """A migrated database holding the test history, for this module (a name of this run's
    own: two runs may share the server)."""
    name = f"sobriety_test_anomaly_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    with psycopg.connect(url) as conn:
        upgrade(conn)
        conn.commit()
        truth = write_history(conn, SCENARIO, 7, tmp_path_factory.mktemp("inventory"))
    yield url, truth
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _alerts(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> list[dict[str, object]]:
    assert main(["--db-url", url, "alerts", "list", "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_scan_finds_the_leaks_and_reports_gaps(
    history: tuple[str, HistoryTruth], capsys: pytest.CaptureFixture[str]
) -> None:
    url, truth = history
    code = main(["--db-url", url, "anomaly", "scan", "--since", _iso(truth.start),
                 "--until", _iso(truth.end), "--format", "json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dmas"] == 3
    alerts = _alerts(url, capsys)
    leaks = [a for a in alerts if a["kind"] == "leak"]
    # Exactly the two leaks, each on its DMA, after it started and within two days.
    assert sorted(a["subject"] for a in leaks) == ["dma-01", "dma-02"]
    for leak in truth.leaks:
        alert = next(a for a in leaks if a["subject"] == leak["dma"])
        opened = datetime.fromisoformat(str(alert["opened_at"])).timestamp()
        assert leak["start"] <= opened <= leak["start"] + 2 * 86400
        flow = float(alert["estimated_flow_m3h"])  # type: ignore[arg-type]
        assert abs(flow - leak["flow_m3h"]) <= 0.3 * leak["flow_m3h"]
        assert alert["subject_type"] == "dma"
        details = alert["details"]
        assert isinstance(details, dict)
        assert details["start_after"] <= _iso(leak["start"]) <= details["start_before"]
    repaired = next(a for a in leaks if a["subject"] == "dma-02")
    assert repaired["state"] == "resolved"  # back to baseline after the repair
    assert repaired["closed_at"] is not None
    still = next(a for a in leaks if a["subject"] == "dma-01")
    assert still["state"] == "open"
    assert still["closed_at"] is None
    # The silent inlet meter is a data gap on its DMA, never a leak.
    fault = truth.meter_faults[0]
    gaps = [a for a in alerts if a["kind"] == "data_gap"]
    assert [a["subject"] for a in gaps] == [fault["dma"]]
    # Customers with a leak behind the meter: continuous flow, with their flow.
    continuous = {a["subject"]: a for a in alerts if a["kind"] == "continuous_flow"}
    for cust in truth.customer_leaks:
        assert cust["device"] in continuous
        flow = float(continuous[cust["device"]]["estimated_flow_m3h"])  # type: ignore[arg-type]
        # At least the leak (less the 1 L index resolution per hourly interval).
        assert cust["flow_m3h"] - 0.0011 <= flow <= cust["flow_m3h"] * 1.5 + 0.002
    # The new large consumer runs 24/7: flagged as continuous flow (true of it), but it is
    # metered: its DMA's minimum night flow rises by its flow while the net night flow (what a
    # leak raises) does not.
    large = truth.changes[0]
    assert large["device"] in continuous
    with psycopg.connect(url) as conn:
        before, after = (
            conn.execute(
                f"""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY mnf_m3h),
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY net_m3h)
                    FROM api.dma_nights WHERE dma = %s AND gap IS NULL
                    AND window_start {op} to_timestamp(%s)""",
                (large["dma"], large["start"] + (2 * 86400 if op == ">" else 0)),
            ).fetchone()
            for op in ("<", ">")
        )
    assert before is not None
    assert after is not None
    leak_nights = [lk for lk in truth.leaks if lk["dma"] == large["dma"]]
    if not leak_nights:  # a leak on the same DMA would raise the net flow too
        assert after[0] - before[0] == pytest.approx(large["flow_m3h"], rel=0.3)
        assert abs(after[1] - before[1]) < 0.3 * large["flow_m3h"]


def test_nights_are_stored_with_gaps_not_filled(history: tuple[str, HistoryTruth]) -> None:
    url, truth = history
    fault = truth.meter_faults[0]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE gap IS NOT NULL),
                      count(*) FILTER (WHERE gap IS NOT NULL AND net_m3h IS NOT NULL)
               FROM api.dma_nights WHERE dma = %s""",
            (fault["dma"],),
        ).fetchone()
        assert rows is not None
        total, gaps, filled = rows
        assert total >= 48
        assert 1 <= gaps <= 3  # the two days of silence
        assert filled == 0
        # MNF = net + metered, per night, and the baseline is there once learnt.
        bad = conn.execute(
            """SELECT count(*) FROM api.dma_nights
               WHERE gap IS NULL AND abs(mnf_m3h - metered_m3h - net_m3h) > 1e-9"""
        ).fetchone()
        assert bad == (0,)


def test_rescan_is_idempotent(
    history: tuple[str, HistoryTruth], capsys: pytest.CaptureFixture[str]
) -> None:
    url, truth = history
    before = _alerts(url, capsys)
    with psycopg.connect(url) as conn:
        report = Scanner(AnomalyConfig()).scan(conn, truth.start, truth.end)
        conn.commit()
    assert sum(report.opened.values()) == 0
    after = _alerts(url, capsys)
    assert [(a["id"], a["state"], a["closed_at"]) for a in after] == [
        (a["id"], a["state"], a["closed_at"]) for a in before
    ]


def test_one_active_alert_per_subject_and_kind(history: tuple[str, HistoryTruth]) -> None:
    url, _truth = history
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            """INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at)
               VALUES ('leak', %s, 'dma', 'dma-01', now(), now())""",
            (SCENARIO.site,),
        )


def test_lifecycle_ack_resolve_and_errors(
    history: tuple[str, HistoryTruth], capsys: pytest.CaptureFixture[str]
) -> None:
    url, truth = history
    leak = next(a for a in _alerts(url, capsys, "--kind", "leak", "--state", "open"))
    ident = str(leak["id"])
    assert main(["--db-url", url, "alerts", "ack", ident, "--by", "eau-potable"]) == 0
    capsys.readouterr()
    acked = next(a for a in _alerts(url, capsys) if a["id"] == leak["id"])
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "eau-potable"
    # An acknowledged alert is still active: a rescan updates it, does not open another.
    with psycopg.connect(url) as conn:
        report = Scanner(AnomalyConfig()).scan(conn, truth.end - 5 * 86400, truth.end)
        conn.commit()
    assert report.opened.get("leak", 0) == 0
    assert main(["--db-url", url, "alerts", "ack", ident, "--by", "x"]) == 1
    assert "cannot become acknowledged" in capsys.readouterr().err
    assert main(["--db-url", url, "alerts", "resolve", ident, "--by", "eau-potable",
                 "--note", "repaired the main"]) == 0  # fmt: skip
    capsys.readouterr()
    done = next(a for a in _alerts(url, capsys) if a["id"] == leak["id"])
    assert done["state"] == "resolved"
    assert done["resolved_by"] == "eau-potable"
    assert done["details"]["note"] == "repaired the main"  # type: ignore[index]
    assert main(["--db-url", url, "alerts", "resolve", ident, "--by", "x"]) == 1
    assert main(["--db-url", url, "alerts", "resolve", "999999", "--by", "x"]) == 1
    assert "no such alert" in capsys.readouterr().err
    # Resolved by hand while the leak still flows: the level is accepted, no new alert.
    with psycopg.connect(url) as conn:
        report = Scanner(AnomalyConfig()).scan(conn, truth.end - 3 * 86400, truth.end)
        conn.commit()
    assert report.opened.get("leak", 0) == 0


def test_service_metrics_and_balance(
    history: tuple[str, HistoryTruth], capsys: pytest.CaptureFixture[str]
) -> None:
    url, truth = history
    registry = CollectorRegistry()
    service = AnomalyService(url, AnomalyConfig(), registry, clock=FixedClock(truth.end))
    service.run_once()
    text = generate_latest(registry).decode()
    with psycopg.connect(url) as conn:
        active = dict(conn.execute(
            "SELECT kind, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY kind"
        ).fetchall())  # fmt: skip
    assert active.get("continuous_flow", 0) >= 2
    for kind, count in active.items():
        assert f'sobriety_anomaly_alerts_active{{kind="{kind}"}} {float(count)}' in text
    assert "sobriety_anomaly_scan_seconds_count 1.0" in text
    assert main(["--db-url", url, "anomaly", "balance", "--since", _iso(truth.start),
                 "--until", _iso(truth.end), "--format", "json"]) == 0  # fmt: skip
    rows = {r["dma"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(truth.dmas)
    for row in rows.values():
        assert row["losses_m3"] == pytest.approx(
            row["inflow_m3"] - row["outflow_m3"] - row["consumption_m3"], abs=0.01
        )
        assert 0 < row["yield_percent"] < 100
        assert row["ili"] > 0
        assert row["threshold_percent"] <= 85.0
    # A leak is a loss: per km of mains and per day, dma-01 loses the leak's flow more after it
    # started than before.
    leak = next(lk for lk in truth.leaks if lk["dma"] == "dma-01")
    ilp = []
    for since, until in ((truth.start + 86400, leak["start"] - 86400),
                         (leak["start"] + 86400, truth.end)):  # fmt: skip
        assert main(["--db-url", url, "anomaly", "balance", "--since", _iso(since),
                     "--until", _iso(until), "--format", "json"]) == 0  # fmt: skip
        row = next(r for r in json.loads(capsys.readouterr().out) if r["dma"] == "dma-01")
        ilp.append(row["ilp_m3_km_day"])
    expected = leak["flow_m3h"] * 24.0 / truth.dmas["dma-01"]["mains_km"]
    assert ilp[1] - ilp[0] == pytest.approx(expected, rel=0.2)


def test_evaluate_command_scores_a_scenario(
    server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(
        'name = "small"\nsite = "ev"\nstart = 2026-02-02\ndays = 45\ndmas = 2\n'
        "customers = [30, 40]\nschool_holidays = []\nsilent_meter_days = 0.0\n"
        "frozen_meter_days = 0.0\ncustomer_leaks = 1\nhigh_consumers = 0\n"
        "[leaks]\nper_dma = 0.0\n"
        "[[fixed_leaks]]\ndma = 1\nstart_day = 30.5\nsize_fraction = 0.6\n"
    )
    out = tmp_path / "report.json"
    scratch = f"sobriety_test_evaluate_{uuid.uuid4().hex[:10]}"
    args = ["anomaly", "evaluate", "--scenario", str(scenario), "--database", scratch]
    code = main(["--db-url", server_url, *args, "--out", str(out)])
    report = json.loads(out.read_text())
    assert "leak size / MNF" in capsys.readouterr().out
    assert report["leaks"] == 1
    big = next(row for row in report["by_size"] if row["size"] == ">=50%")
    assert (big["leaks"], big["detected"]) == (1, 1)
    assert report["targets"]["median_flow_error_pct"]["value"] < 30
    # One large burst and nothing else to mislead: every target is met, the command succeeds.
    assert all(t["met"] for t in report["targets"].values()), report["targets"]
    assert code == 0
    with psycopg.connect(server_url) as conn:  # the scratch database is gone
        assert conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (scratch,)
        ).fetchone() == (0,)
    # Two scenarios: the second has its leak start hours before the end (no night to see it
    # by); a section each, one overall, the targets per scenario, and the command fails
    # because one scenario misses its targets.
    late = tmp_path / "late.toml"
    late.write_text(
        'name = "late"\nsite = "ev"\nstart = 2026-02-02\ndays = 40\ndmas = 2\n'
        'customers = [30, 40]\nmeter_metrics = "flow"\ncoverage = [0.0, 0.5]\n'
        "inlets = [2, 2]\npressure_sensors = [3, 3]\nschool_holidays = []\n"
        "silent_meter_days = 0.0\nfrozen_meter_days = 0.0\ncustomer_leaks = 0\n"
        "high_consumers = 0\nlarge_consumers = 0\n[leaks]\nper_dma = 0.0\n"
        "[[fixed_leaks]]\ndma = 0\nstart_day = 39.8\nsize_fraction = 0.6\n"
    )
    two = ["--scenario", str(scenario), "--scenario", str(late)]
    code = main(["--db-url", server_url, *args[:2], *two, "--database", scratch, "--out", str(out)])
    text = capsys.readouterr().out
    for section in ("== scenario small", "== scenario late", "== overall: 2 scenarios",
                    "targets per scenario"):  # fmt: skip
        assert section in text
    report = json.loads(out.read_text())
    assert [(s["scenario"], s["met"]) for s in report["scenarios"]] == [
        ("small", True), ("late", False),
    ]  # fmt: skip
    assert report["met"] is False
    assert report["leaks"] == 2
    late_leak = report["scenarios"][1]["details"][0]["leaks"][0]
    assert (late_leak["coverage"], late_leak["meter_mode"]) == (0.0, "none")
    assert [row["size"] for row in report["by_coverage"]] == ["0", "<50%", ">=50%"]
    assert code == 1
    # A detector told that no leak below 1,000 m3/h is worth finding finds none: the target is
    # missed, the report says so, the command fails.
    strict = tmp_path / "strict.toml"
    strict.write_text("[anomaly]\nmin_leak_m3h = 1000.0\nmin_burst_m3h = 1000.0\n")
    code = main(["--db-url", server_url, "--config", str(strict), *args, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["targets"]["detected_share_above_5pct"] == {
        "value": 0.0, "target": 0.9, "met": False,
    }  # fmt: skip
    assert "detected_share_above_5pct" in capsys.readouterr().out.split("NOT MET")[0]
    assert code == 1


def test_bad_scan_arguments(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db-url", db_url, "anomaly", "scan", "--since", "2026-02-02T00:00Z",
                 "--until", "2026-02-01T00:00Z"]) == 2  # fmt: skip
    assert "--until must be after --since" in capsys.readouterr().err


def test_service_retries_through_a_database_outage(private_postgres: Cluster) -> None:
    """Under ``sobriety run`` the service is a thread: a scan failing because the database is
    down must be retried, not end it."""
    url = private_postgres.url()
    with psycopg.connect(url) as conn:
        upgrade(conn)
    registry = CollectorRegistry()
    # interval_s is at least 10 s in a configuration file; a test may not wait that long.
    cfg = AnomalyConfig().model_copy(update={"interval_s": 0.05})
    service = AnomalyService(url, cfg, registry, clock=FixedClock(1.77e9))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: service.scans >= 1, 30, "a first scan")
        private_postgres.stop("fast")
        wait_until(lambda: service.failures >= 2, 30, "failed scans, retried")
        assert thread.is_alive()
        scans = service.scans
        private_postgres.start()
        wait_until(lambda: service.scans > scans, 30, "scans again once the database is back")
        failed = registry.get_sample_value("sobriety_anomaly_scan_failures_total")
        assert failed is not None
        assert failed >= 2
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
