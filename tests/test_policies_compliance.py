"""Compliance with the arrêté of 27 December 2018: the pure rules (a fixed sun), then
``sobriety policies compliance`` over an imported inventory (real PostgreSQL)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from app.cli import main
from core.lighting import SunTimes, local_instant, sun_times
from policies.compliance import (
    AFTER_CLOSING_S,
    Luminaire,
    check_compliance,
)
from policies.config import PoliciesConfig, parse_policies

PARIS = ZoneInfo("Europe/Paris")
LAT, LON = 48.8566, 2.3522
NIGHT = date(2026, 1, 14)  # a Wednesday; standard time all night


def _sun(night: date) -> SunTimes:
    """A fixed sun: sunset at 19:00, sunrise at 07:00."""
    return SunTimes(local_instant(night, "19:00", PARIS), local_instant(night, "07:00", PARIS))


def _policies(raw: dict[str, Any] | None = None) -> PoliciesConfig:
    return parse_policies(raw or {}, source="test")


def _check(
    luminaires: list[Luminaire], policies: PoliciesConfig, nights: list[date] | None = None
) -> Any:
    return check_compliance(luminaires, policies, nights or [NIGHT], PARIS, _sun)


PARK = Luminaire("p1", group="parc", usage="park", closing_time="20:00")


def test_park_lit_all_night_is_a_finding() -> None:
    result = _check([PARK], _policies())
    assert not result.compliant
    [finding] = result.lit
    deadline = local_instant(NIGHT, "20:00", PARIS) + AFTER_CLOSING_S
    sunrise = _sun(NIGHT).sunrise
    assert sunrise is not None
    assert (finding.kind, finding.device, finding.program) == ("lit_after_closing", "p1", "default")
    assert (finding.deadline, finding.lit_from, finding.lit_until) == (deadline, deadline, sunrise)
    assert finding.lit_s == sunrise - deadline


def test_part_night_from_an_hour_after_closing_is_compliant() -> None:
    policies = _policies({"programs": {"default": {"part_night": ["21:00", "08:00"]}}})
    result = _check([PARK], policies)
    assert result.compliant
    assert result.lit == []


@pytest.mark.parametrize(("start", "late_s"), [("21:00", 0), ("21:01", 60), ("20:59", 0)])
def test_boundary_at_closing_plus_one_hour(start: str, late_s: int) -> None:
    policies = _policies({"programs": {"default": {"part_night": [start, "08:00"]}}})
    result = _check([PARK], policies)
    if late_s == 0:
        assert result.lit == []
        return
    [finding] = result.lit
    assert finding.lit_from == local_instant(NIGHT, "21:00", PARIS)
    assert finding.lit_until == local_instant(NIGHT, start, PARIS)
    assert finding.lit_s == late_s


def test_relit_at_the_end_of_part_night_counts() -> None:
    """No opening time in the inventory: lit again at 05:00 is lit after closing + 1 h."""
    policies = _policies({"programs": {"default": {"part_night": ["21:00", "05:00"]}}})
    [finding] = _check([PARK], policies).lit
    assert finding.lit_from == local_instant(NIGHT, "05:00", PARIS)
    assert finding.lit_s == 2 * 3600


def test_weekend_rule_changes_the_program_on_one_night_only() -> None:
    policies = _policies(
        {
            "programs": {"quiet": {"part_night": ["21:00", "08:00"]}, "festive": {}},
            "calendars": {
                "default": "quiet",
                "rules": [{"weekdays": ["sat"], "groups": ["parc"], "program": "festive"}],
            },
        }
    )
    nights = [NIGHT + timedelta(days=n) for n in range(7)]
    result = _check([PARK], policies, nights)
    [finding] = result.lit
    assert finding.night.weekday() == 5  # the Saturday
    assert finding.program == "festive"


def test_a_dimmed_level_is_still_lit_and_an_exception_keeps_it_lit() -> None:
    dimmed = _policies({"programs": {"default": {"steps": [["21:00", 10]]}}})
    [finding] = _check([PARK], dimmed).lit
    assert finding.lit_from == local_instant(NIGHT, "21:00", PARIS)
    part = {"programs": {"default": {"part_night": ["21:00", "08:00"]}}}
    kept = _policies({**part, "exceptions": [{"devices": ["p1"], "floor": 20, "reason": "path"}]})
    assert len(_check([PARK], kept).lit) == 1


def test_heritage_after_one_in_the_morning() -> None:
    heritage = Luminaire("h1", usage="heritage")
    [finding] = _check([heritage], _policies()).lit
    assert finding.kind == "lit_after_1am"
    assert finding.deadline == local_instant(NIGHT, "01:00", PARIS)
    assert _check([heritage], _policies()).unchecked.closing_time_missing == 1
    off = _policies({"programs": {"default": {"part_night": ["01:00", "08:00"]}}})
    assert _check([heritage], off).compliant
    closing = Luminaire("h2", usage="heritage", closing_time="23:30")
    late = _policies({"programs": {"default": {"part_night": ["00:45", "08:00"]}}})
    [finding] = _check([closing], late).lit  # 15 min past closing + 1 h, before 01:00
    assert (finding.kind, finding.lit_s) == ("lit_after_closing", 15 * 60)


def test_closing_after_midnight_and_on_the_fall_back_night() -> None:
    night = date(2026, 10, 24)  # clocks go back at 03:00 on the 25th
    park = Luminaire("p1", usage="park", closing_time="01:30")
    policies = _policies({"programs": {"default": {"part_night": ["02:30", "08:00"]}}})
    result = check_compliance([park], policies, [night], PARIS, _sun)
    assert result.compliant  # 01:30 + 1 h is the first 02:30, when it goes off
    policies = _policies({"programs": {"default": {"part_night": ["03:00", "08:00"]}}})
    [finding] = check_compliance([park], policies, [night], PARIS, _sun).lit
    assert finding.lit_s == 3600 + 1800  # 02:30 (summer time) to 03:00 (winter time)


@pytest.mark.parametrize(
    ("usage", "cct", "finding"),
    [
        ("road", 3000.0, False),
        ("road", 4000.0, True),
        ("parking", 3001.0, True),
        ("pedestrian", 2700.0, False),
        ("park", 4000.0, False),  # parks are not under the colour limit
        ("heritage", 5000.0, False),
        (None, 4000.0, False),  # no usage: not judged, counted
    ],
)
def test_colour_temperature(usage: str | None, cct: float, finding: bool) -> None:
    result = _check([Luminaire("l1", group="g", usage=usage, cct_k=cct)], _policies())
    assert [f.cct_k for f in result.cct] == ([cct] if finding else [])
    assert not result.cct or not result.compliant


def test_missing_data_is_counted_not_a_finding() -> None:
    luminaires = [
        Luminaire("a"),  # nothing: no usage, no cct
        Luminaire("b", usage="road"),  # no cct
        Luminaire("c", usage="road", cct_k=2700),
        Luminaire("d", usage="park"),  # no closing time; cct not required
        Luminaire("e", usage="heritage", closing_time="22:00", cct_k=3000),
        Luminaire("f", cct_k=4000),  # no usage
    ]
    policies = _policies({"programs": {"default": {"part_night": ["22:30", "08:00"]}}})
    result = _check(luminaires, policies)
    assert result.compliant
    assert (result.luminaires, result.lit, result.cct) == (6, [], [])
    u = result.unchecked
    assert (u.usage_missing, u.cct_k_missing, u.closing_time_missing) == (2, 2, 1)


# ---- the command, over an imported inventory -------------------------------------------

INVENTORY = (
    "site,device,kind,group,lighting_class,cct_k,usage,closing_time\n"
    "{site},r1,luminaire,rue,M4,4000,road,\n"
    "{site},r2,luminaire,rue,M4,3000,Road,\n"
    "{site},p1,luminaire,parc,P3,4000,park,22:30\n"
    "{site},p2,luminaire,parc,P3,,park,\n"
    "{site},x1,luminaire,,,,,\n"
)
POLICIES = """
[programs.default]

[programs.parc]
part_night = ["23:30", "11:00"]

[programs.festif]

[calendars]
default = "default"
groups = {parc = "parc"}

[[calendars.rules]]
weekdays = ["sat"]
groups = ["parc"]
program = "festif"
"""


@pytest.fixture
def town(
    conn: psycopg.Connection,
    db_url: str,
    site: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """A site at Paris whose luminaires are imported by ``sobriety inventory import``."""
    conn.execute(
        "INSERT INTO sites (site, name, timezone, lat, lon) VALUES (%s, 'Paris', %s, %s, %s)",
        (site, "Europe/Paris", LAT, LON),
    )
    path = tmp_path / "devices.csv"
    path.write_text(INVENTORY.format(site=site), encoding="utf-8")
    assert main(["--db-url", db_url, "inventory", "import", str(path)]) == 0
    assert "5 new" in capsys.readouterr().out
    return site


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES, encoding="utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--db-url", db_url, "policies", "compliance", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_imported_properties_are_stored(conn: psycopg.Connection, town: str) -> None:
    rows = conn.execute(
        "SELECT device, properties FROM devices WHERE site = %s ORDER BY device", (town,)
    ).fetchall()
    assert dict(rows) == {
        "p1": {"cct_k": "4000", "usage": "park", "closing_time": "22:30"},
        "p2": {"usage": "park"},
        "r1": {"cct_k": "4000", "usage": "road"},
        "r2": {"cct_k": "3000", "usage": "road"},
        "x1": {},
    }


def test_json_findings_and_exit_1(
    capsys: pytest.CaptureFixture[str], db_url: str, town: str, policies_file: Path
) -> None:
    since = date(2026, 6, 8)  # a Monday: the Saturday is the 13th
    code, out, err = _run(
        capsys,
        db_url,
        *("--site", town, "--since", since.isoformat(), "--until", "2026-06-14"),
        *("--policies", str(policies_file), "--format", "json"),
    )
    assert code == 1, err
    doc = orjson.loads(out)
    assert (doc["since"], doc["until"], doc["nights"], doc["luminaires"]) == (
        "2026-06-08",
        "2026-06-14",
        7,
        5,
    )
    assert doc["compliant"] is False
    cct = [f for f in doc["findings"] if f["kind"] == "cct_above_3000k"]
    assert cct == [
        {"kind": "cct_above_3000k", "device": "r1", "group": "rue", "usage": "road", "cct_k": 4000}
    ]
    [late] = [f for f in doc["findings"] if f["kind"] == "lit_after_closing"]
    saturday = date(2026, 6, 13)
    sun = sun_times(LAT, LON, saturday, PARIS)
    assert sun.sunrise is not None
    deadline = local_instant(saturday, "22:30", PARIS) + AFTER_CLOSING_S
    assert (late["night"], late["device"], late["program"]) == ("2026-06-13", "p1", "festif")
    assert (late["group"], late["usage"], late["closing_time"]) == ("parc", "park", "22:30")
    assert late["deadline"] == "2026-06-13T23:30:00+02:00"
    assert late["lit_from"] == late["deadline"]
    assert abs(date.fromisoformat(late["lit_until"][:10]) - saturday) == timedelta(days=1)
    assert late["lit_beyond_min"] == pytest.approx((sun.sunrise - deadline) / 60, abs=0.1)
    assert doc["unchecked"] == {"usage_missing": 1, "cct_k_missing": 1, "closing_time_missing": 1}
    assert doc["invalid_properties"] == []


def test_compliant_exit_0_and_table(
    capsys: pytest.CaptureFixture[str],
    db_url: str,
    conn: psycopg.Connection,
    town: str,
    policies_file: Path,
) -> None:
    conn.execute("UPDATE devices SET properties = '{}' WHERE site = %s AND device = 'r1'", (town,))
    code, out, err = _run(
        capsys, db_url, "--site", town, "--date", "2026-06-10", "--policies", str(policies_file)
    )
    assert code == 0, err
    assert "conforme / compliant" in out
    assert "Non vérifié / not checked" in out
    code, out, _err = _run(capsys, db_url, "--site", town, "--date", "2026-06-13")  # defaults
    assert code == 1
    assert "Allumé plus d'une heure après la fermeture / lit more than one hour" in out
    assert "non conforme / not compliant" in out


def test_default_period_is_seven_nights(
    capsys: pytest.CaptureFixture[str], db_url: str, town: str, policies_file: Path
) -> None:
    code, out, _err = _run(
        capsys, db_url, "--site", town, "--policies", str(policies_file), "--format", "json"
    )
    assert code == 1  # r1 is above 3000 K whatever the night
    doc = orjson.loads(out)
    assert doc["nights"] == 7
    first = date.fromisoformat(doc["since"])
    assert date.fromisoformat(doc["until"]) - first == timedelta(days=6)
    # Exactly one Saturday in any 7 nights: p1 lit after closing + 1 h on it only.
    lit = [f for f in doc["findings"] if f["kind"] == "lit_after_closing"]
    assert [date.fromisoformat(f["night"]).weekday() for f in lit] == [5]


def test_a_property_stored_unchecked_is_ignored_and_listed(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: psycopg.Connection, town: str
) -> None:
    conn.execute(
        "UPDATE devices SET properties = %s WHERE site = %s AND device = 'x1'",
        (Jsonb({"usage": "parc", "cct_k": "warm"}), town),
    )
    code, out, _err = _run(
        capsys, db_url, "--site", town, "--date", "2026-06-10", "--format", "json"
    )
    assert code == 1
    doc = orjson.loads(out)
    assert {(i["device"], i["property"], i["value"]) for i in doc["invalid_properties"]} == {
        ("x1", "usage", "parc"),
        ("x1", "cct_k", "warm"),
    }
    assert doc["unchecked"]["usage_missing"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--since", "2026-06-10", "--until", "2026-06-09"), "--until must be on or after"),
        (("--date", "2026-06-10", "--until", "2026-06-12"), "--date is one night"),
        (("--since", "2026-01-01", "--until", "2027-06-01"), "at most 366"),
    ],
)
def test_bad_periods_exit_2(
    capsys: pytest.CaptureFixture[str], db_url: str, town: str, args: tuple[str, ...], expected: str
) -> None:
    code, out, err = _run(capsys, db_url, "--site", town, *args)
    assert code == 2
    assert expected in err
    assert out == ""


def test_unknown_site_and_site_without_coordinates_exit_2(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: psycopg.Connection, site: str
) -> None:
    code, _out, err = _run(capsys, db_url, "--site", site, "--date", "2026-06-10")
    assert code == 2
    assert "no such site" in err
    conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
    code, _out, err = _run(capsys, db_url, "--site", site, "--date", "2026-06-10")
    assert code == 2
    assert "lat and lon missing" in err


@pytest.mark.parametrize("args", [("--date", "2026-13-01"), ("--date", "x", "--since", "y")])
def test_bad_date_exit_2(capsys: pytest.CaptureFixture[str], db_url: str, args: tuple[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--db-url", db_url, "policies", "compliance", "--site", "s", *args])
    assert exited.value.code == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
