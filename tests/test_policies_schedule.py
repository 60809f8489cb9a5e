"""``sobriety policies schedule``: the night of each lighting group of a site, from the inventory
(real PostgreSQL) and a policies file."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from app.cli import main
from core.lighting import sun_times

PARIS = ZoneInfo("Europe/Paris")
LAT, LON = 48.8566, 2.3522

POLICIES = """
[programs.residential]
steps = [["22:00", 70], ["02:30", 30], ["05:30", 70]]

[programs.late]
on_offset_min = 15
off_offset_min = -10
steps = [["00:30", 50]]

[calendars]
default = "residential"

[calendars.groups]
nord = "late"

[[calendars.rules]]
weekdays = ["fri"]
groups = ["nord"]
program = "residential"
"""


@pytest.fixture
def paris(conn: psycopg.Connection, site: str) -> str:
    """A site at Paris with luminaires in groups ``nord`` (3) and ``sud`` (2), and a meter."""
    conn.execute(
        "INSERT INTO sites (site, name, timezone, lat, lon) VALUES (%s, 'Paris', %s, %s, %s)",
        (site, "Europe/Paris", LAT, LON),
    )
    rows = [
        ("l1", "luminaire", "nord", "M4"),
        ("l2", "luminaire", "nord", "M4"),
        ("l3", "luminaire", "nord", "M5"),
        ("l4", "luminaire", "sud", None),
        ("l5", "luminaire", "sud", "P3"),
        ("m1", "cabinet_meter", "est", None),
    ]
    for device, kind, group, klass in rows:
        conn.execute(
            "INSERT INTO devices (site, device, kind, lighting_group, lighting_class) "
            "VALUES (%s, %s, %s, %s, %s)",
            (site, device, kind, group, klass),
        )
    return site


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES, encoding="utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--db-url", db_url, "policies", "schedule", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> dict[str, Any]:
    code, out, err = _run(capsys, db_url, *args, "--format", "json")
    assert code == 0, err
    doc: dict[str, Any] = orjson.loads(out)
    return doc


def _at(doc: dict[str, Any], group: str) -> dict[str, Any]:
    found = [g for g in doc["groups"] if g["group"] == group]
    assert len(found) == 1
    return found[0]


def _local(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_json_shape_sun_and_steps(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    night = date(2026, 6, 10)  # a Wednesday
    doc = _json(
        capsys,
        db_url,
        "--site",
        paris,
        "--date",
        night.isoformat(),
        "--policies",
        str(policies_file),
    )
    assert set(doc) == {"site", "night", "timezone", "sunset", "sunrise", "groups"}
    assert (doc["site"], doc["night"], doc["timezone"]) == (paris, "2026-06-10", "Europe/Paris")
    sun = sun_times(LAT, LON, night, PARIS)
    assert sun.sunset is not None
    assert sun.sunrise is not None
    assert abs(_local(doc["sunset"]).timestamp() - sun.sunset) <= 1
    assert abs(_local(doc["sunrise"]).timestamp() - sun.sunrise) <= 1
    assert doc["sunset"].endswith("+02:00")
    assert [g["group"] for g in doc["groups"]] == ["nord", "sud"]  # not the meter's group
    for g in doc["groups"]:
        assert set(g) == {"group", "program", "on", "off", "changes"}
        assert all(set(c) == {"at", "level"} for c in g["changes"])

    sud = _at(doc, "sud")
    assert sud["program"] == "residential"
    assert abs(_local(sud["on"]).timestamp() - sun.sunset) <= 1
    assert abs(_local(sud["off"]).timestamp() - sun.sunrise) <= 1
    steps = [(c["at"][11:16], c["at"][19:], c["level"]) for c in sud["changes"][1:]]
    assert sud["changes"][0]["level"] == 100
    assert steps == [("22:00", "+02:00", 70), ("02:30", "+02:00", 30), ("05:30", "+02:00", 70)]
    assert sud["changes"][1]["at"] == "2026-06-10T22:00:00+02:00"
    assert sud["changes"][2]["at"] == "2026-06-11T02:30:00+02:00"

    nord = _at(doc, "nord")
    assert nord["program"] == "late"
    assert abs(_local(nord["on"]).timestamp() - (sun.sunset + 15 * 60)) <= 1
    assert abs(_local(nord["off"]).timestamp() - (sun.sunrise - 10 * 60)) <= 1
    assert [(c["at"], c["level"]) for c in nord["changes"][1:]] == [
        ("2026-06-11T00:30:00+02:00", 50)
    ]


def test_calendar_rule_and_group_filter(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    doc = _json(
        capsys,
        db_url,
        *("--site", paris, "--date", "2026-06-12", "--group", "nord"),  # a Friday
        *("--policies", str(policies_file)),
    )
    assert [g["group"] for g in doc["groups"]] == ["nord"]
    assert doc["groups"][0]["program"] == "residential"


def test_spring_forward_step_at_the_transition(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    doc = _json(
        capsys,
        db_url,
        *("--site", paris, "--date", "2026-03-28", "--group", "sud"),
        *("--policies", str(policies_file)),
    )
    assert doc["sunset"].endswith("+01:00")
    assert doc["sunrise"].endswith("+02:00")
    at = {c["at"]: c["level"] for c in doc["groups"][0]["changes"]}
    assert at["2026-03-28T22:00:00+01:00"] == 70
    assert at["2026-03-29T03:00:00+02:00"] == 30  # 02:30 does not exist that night


def test_floor_of_the_most_common_class(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, tmp_path: Path
) -> None:
    path = tmp_path / "floors.toml"
    path.write_text(POLICIES + "\n[floors]\nM4 = 40\nM5 = 60\n", encoding="utf-8")
    doc = _json(
        capsys,
        db_url,
        *("--site", paris, "--date", "2026-06-10", "--group", "nord", "--policies", str(path)),
    )
    # nord: two M4, one M5 -> the floor of M4: 40 % leaves the 50 % step, 55 % raises it
    assert [c["level"] for c in doc["groups"][0]["changes"]] == [100, 50]
    path.write_text(POLICIES + "\n[floors]\nM4 = 55\nM5 = 20\n", encoding="utf-8")
    doc = _json(
        capsys,
        db_url,
        *("--site", paris, "--date", "2026-06-10", "--group", "nord", "--policies", str(path)),
    )
    assert [c["level"] for c in doc["groups"][0]["changes"]] == [100, 55]


def test_default_policies(capsys: pytest.CaptureFixture[str], db_url: str, paris: str) -> None:
    doc = _json(capsys, db_url, "--site", paris, "--date", "2026-06-10")
    sun = sun_times(LAT, LON, date(2026, 6, 10), PARIS)
    assert sun.sunset is not None
    for g in doc["groups"]:
        assert g["program"] == "default"
        assert g["changes"] == [{"at": g["on"], "level": 100}]
        assert abs(_local(g["on"]).timestamp() - sun.sunset) <= 1


def test_table(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    code, out, err = _run(
        capsys, db_url, "--site", paris, "--date", "2026-06-10", "--policies", str(policies_file)
    )
    assert code == 0, err
    assert "groupe / group" in out
    assert "UTC" in out
    assert "2026-06-10 22:00:00 +02:00" in out
    assert "2026-06-10 20:00:00Z" in out
    assert "nord" in out
    assert "sud" in out
    assert "70 %" in out


def test_unknown_site(capsys: pytest.CaptureFixture[str], db_url: str, site: str) -> None:
    code, _out, err = _run(capsys, db_url, "--site", site, "--date", "2026-06-10")
    assert code == 2
    assert site in err
    assert "no such site" in err


def test_site_without_coordinates(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: psycopg.Connection, site: str
) -> None:
    conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
    code, _out, err = _run(capsys, db_url, "--site", site, "--date", "2026-06-10")
    assert code == 2
    assert site in err
    assert "lat and lon missing" in err


def test_unknown_group(capsys: pytest.CaptureFixture[str], db_url: str, paris: str) -> None:
    code, _out, err = _run(
        capsys, db_url, "--site", paris, "--date", "2026-06-10", "--group", "ouest"
    )
    assert code == 2
    assert "'ouest'" in err
    assert "nord, sud" in err


def test_bad_date(capsys: pytest.CaptureFixture[str], db_url: str, paris: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--db-url", db_url, "policies", "schedule", "--site", paris, "--date", "2026-13-01"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--date" in err
    assert "2026-13-01" in err
    assert "YYYY-MM-DD" in err
