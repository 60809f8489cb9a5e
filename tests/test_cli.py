"""The command line as a newcomer meets it: every option explained, wrong values refused with
what is accepted, periods that run backwards and unknown sites refused, empty results said,
figures that cannot be computed written for people."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from app.cli import main
from app.cli_parser import build_parser, parse_time
from app.embedded import free_port
from app.embedded.service_process import read_metrics
from app.water_commands import balance_line, counts
from tests.fix_db import register
from tests.fix_mqtt import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _actions(parser: argparse.ArgumentParser, path: str = "sobriety") -> list[tuple[str, str]]:
    """(command path, option) for every option of every command that has no help text."""
    missing = []
    for action in parser._actions:  # argparse has no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.description is None and not sub._subparsers:
                    missing.append((f"{path} {name}", "(the command's description)"))
                missing.extend(_actions(sub, f"{path} {name}"))
        elif action.help is None and action.dest != "help":
            missing.append((path, "/".join(action.option_strings) or action.dest))
    return missing


def test_every_command_and_option_has_a_help_text() -> None:
    assert _actions(build_parser()) == []


def test_anomaly_help_says_what_runs_without_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["anomaly", "--help"])
    assert "Without an action: the periodic leak-detection service" in capsys.readouterr().out


def test_now_and_durations_are_times() -> None:
    before = datetime.now(UTC)
    assert before <= parse_time("now") <= datetime.now(UTC)
    assert abs(parse_time("2h") - (before - timedelta(hours=2))) < timedelta(seconds=5)
    assert parse_time("2026-11-01T00:00:00+01:00") == datetime(2026, 10, 31, 23, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="add a UTC offset"):
        parse_time("2026-11-01T00:00:00")
    with pytest.raises(argparse.ArgumentTypeError, match="now, or a duration before now"):
        parse_time("yesterday")


@pytest.mark.parametrize(
    ("argv", "accepted"),
    [
        (["alerts", "list", "--kind", "leaks"], "'leak', 'data_gap'"),
        (["alerts", "list", "--state", "closed"], "'open', 'acknowledged'"),
        (["rejected", "--reason", "bad_json"], "'invalid_topic', 'too_large'"),
        (["rejected", "--format", "xml"], "'text', 'json'"),
        (["demo", "--days", "-1"], "expected more than 0 and at most 31"),
        (["demo", "--days", "40"], "expected more than 0 and at most 31"),
        (["simulate", "--speed", "-2"], "expected at least 0"),
        (["ingest", "--workers", "0"], "expected 1 or more"),
        (["export", "readings", "--since", "soon"], "an ISO 8601 time with offset"),
    ],
)
def test_a_wrong_value_is_a_usage_error_listing_what_is_accepted(
    argv: list[str], accepted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert accepted in capsys.readouterr().err


@pytest.mark.services
@pytest.mark.parametrize(
    "argv",
    [
        ["export", "readings", "--since", "now", "--until", "2h"],
        ["anomaly", "scan", "--since", "2026-02-02T00:00Z", "--until", "2026-02-01T00:00Z"],
        ["anomaly", "balance", "--since", "now", "--until", "1d"],
    ],
)
def test_a_period_that_runs_backwards_is_refused(
    db_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db-url", db_url, *argv]) == 2
    assert "--until must be after --since" in capsys.readouterr().err


@pytest.mark.services
def test_an_unknown_site_is_refused_listing_the_known_ones(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register(conn, site, ("lum-1", "luminaire"))
    for argv in (
        ["alerts", "list", "--site", "atlantis"],
        ["rejected", "--site", "atlantis"],
        ["export", "readings", "--since", "1d", "--site", "atlantis"],
    ):
        assert main(["--db-url", db_url, *argv]) == 2
        err = capsys.readouterr().err
        assert "--site 'atlantis': no such site; known sites:" in err
        assert site in err


@pytest.mark.services
def test_empty_results_say_so(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register(conn, site, ("lum-1", "luminaire"))
    assert main(["--db-url", db_url, "alerts", "list", "--site", site, "--kind", "leak"]) == 0
    assert capsys.readouterr().out == f"no alert at {site}, of kind leak\n"
    assert main(["--db-url", db_url, "rejected", "--site", site]) == 0
    assert capsys.readouterr().out == "no rejected message\n"
    assert main(["--db-url", db_url, "anomaly", "balance", "--since", "1d", "--site", site]) == 0
    assert capsys.readouterr().out == f"no DMA at {site}: nothing to balance\n"
    assert main(["--db-url", db_url, "alerts", "list", "--format", "json", "--site", site]) == 0
    assert capsys.readouterr().out.strip() == "[\n]"


@pytest.mark.services
def test_luminaire_fault_alerts_are_listed_and_acknowledged_like_leaks(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    register(conn, site, ("lum-1", "luminaire"))
    row = conn.execute(
        "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at) "
        "VALUES ('lamp_failure', %s, 'device', 'lum-1', now(), now()) RETURNING id",
        (site,),
    ).fetchone()
    assert row is not None
    argv = ["--db-url", db_url, "alerts", "list", "--site", site, "--format", "json"]
    assert main([*argv, "--kind", "lamp_failure"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["id"], a["subject"], a["state"]) for a in listed] == [(row[0], "lum-1", "open")]
    assert main(["--db-url", db_url, "alerts", "ack", str(row[0]), "--by", "régie"]) == 0
    capsys.readouterr()
    assert main([*argv, "--kind", "day_burner"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    state = conn.execute("SELECT state FROM alerts WHERE id = %s", (row[0],)).fetchone()
    assert state == ("acknowledged",)


def test_text_output_has_no_python_reprs() -> None:
    assert counts({}) == "none"
    assert counts({"leak": 2, "data_gap": 0}) == "leak: 2"
    row = {
        "site": "s", "dma": "d", "inflow_m3": 0.0, "outflow_m3": 0.0, "consumption_m3": 0.0,
        "losses_m3": 0.0, "yield_percent": None, "threshold_percent": 65.0, "compliant": None,
        "ili": 0.0, "incomplete": ["inlet: 1 of 1 meters without data"],
    }  # fmt: skip
    line = balance_line(row)
    assert "None" not in line
    assert "yield n/a (no inlet meter data)" in line
    assert "ILI n/a (no inlet meter data)" in line
    assert "incomplete: inlet: 1 of 1 meters without data" in line


def _readme_block(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {name} -->\n```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.services
def test_the_readme_by_hand_example_works_as_written(
    fresh_db_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """The two blocks of the README's hand-driven example, run as a person would: the first in
    one terminal (the ingest stays running), the second in another once the ingest subscribed."""
    first, second = _readme_block("by hand: terminal 1"), _readme_block("by hand: terminal 2")
    assert first[-1] == ".venv/bin/sobriety ingest"
    port = free_port()
    client_id = f"readme-{uuid.uuid4().hex[:8]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SOBRIETY_")},
        "SOBRIETY_DB_URL": fresh_db_url,  # a database of this test's own
        "SOBRIETY_MQTT_URL": mqtt_url,
        "SOBRIETY_MQTT_CLIENT_ID": client_id,  # a session of its own on the shared broker
        "SOBRIETY_METRICS_PORT": str(port),
        "SOBRIETY_SPOOL_DIR": str(tmp_path / "spool"),
    }
    for line in first[:-1]:
        done = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (line, done.stderr)
    log = (tmp_path / "ingest.log").open("wb")
    ingest = subprocess.Popen(shlex.split(first[-1]), cwd=ROOT, env=env, stdout=log, stderr=log)

    def metric(name: str) -> float:
        return (read_metrics(port) or {}).get(name, 0.0)

    try:
        wait_until(lambda: metric("sobriety_ingest_subscribed") == 1, 30, "subscribed")
        assert "subscribed to sobriety/v1/+/+/up" in (tmp_path / "ingest.log").read_text()
        pub, export = second
        host = urlsplit(mqtt_url)
        done = subprocess.run(
            pub.replace("mosquitto_pub ", f"mosquitto_pub -h {host.hostname} -p {host.port} ")
            if (host.hostname, host.port) != ("127.0.0.1", 1883) else pub,
            shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(lambda: metric("sobriety_ingest_readings_stored_total") == 1, 30, "stored")
        done = subprocess.run(export, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        rows = done.stdout.splitlines()
        assert rows[0] == "time,site,device,metric,value,unit"
        assert [r.split(",")[1:] for r in rows[1:]] == [["lyon", "lum-0001", "power", "21.4", "W"]]
    finally:
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(timeout=30) == 0
        log.close()
        _end_session(mqtt_url, client_id)


def _end_session(mqtt_url: str, client_id: str) -> None:
    """Leave nothing on the shared broker: the test ingest's persistent session ends."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, clean_start=True)
    client.loop_start()
    assert connected.wait(10)
    client.disconnect()
    client.loop_stop()


def test_the_command_line_loads_only_what_a_command_needs() -> None:
    """Every ``sobriety`` process — the ingest's too — starts by importing the command line:
    the stages' heavy dependencies (scipy, the simulators) come with the commands that run
    them, not with the parser (measured: 48 MB of RSS against 99 MB when they came along)."""
    code = "import sys, app.cli; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(done.stdout.split())
    assert not loaded & {"scipy", "simulators", "anomaly.service", "app.demo", "astral", "tqdm"}
