"""``sobriety policies simulate``: the integration of a night's levels into energy (closed forms
computed here from the levels and the driver curve), DST and polar nights, missing powers, the
command against the real PostgreSQL, and the agreement with the energy the simulated town's
cabinet meters measure over a night."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import psycopg
import pytest
import tomli_w
from numpy.testing import assert_allclose

from app.cli import main
from core.inventory import SITE_FILE_COLUMNS, import_inventory, write_inventory_csv
from core.lighting import NightSchedule, night_schedule, sun_times
from core.messages import DeviceConfig, encode
from policies import energy
from policies.config import PoliciesConfig, parse_policies
from policies.energy import Luminaire, schedule_energy_wh, simulate_energy
from policies.programs import device_program, program_for
from simulators import Fleet, build_town, write_inventory
from simulators.scenario import Scenario

PARIS = ZoneInfo("Europe/Paris")
LAT, LON = 48.8566, 2.3522
H = 3600.0


def power_fraction(level: float) -> float:
    """Input power over nominal at a level (0-1), written out from the driver's curve: the LED
    power scales with the level, the efficiency is 0.90 - 0.20 (1 - level)²."""
    return level * 0.90 / (0.90 - 0.20 * (1.0 - level) ** 2) if level > 0 else 0.0


def policies_of(raw: dict[str, Any]) -> PoliciesConfig:
    return parse_policies(raw, source="test")


def at(y: int, mo: int, d: int, h: int, mi: int, tz: ZoneInfo = PARIS) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


# --- the integration -----------------------------------------------------------------------------
def test_a_hand_built_schedule_integrates_exactly() -> None:
    schedule = NightSchedule(
        0.0, 10 * H, [(0.0, 100.0), (2 * H, 50.0), (5 * H, 0.0), (7 * H, 70.0)]
    )
    nominal = np.array([40.0, 100.0])
    wh, baseline, lit = schedule_energy_wh(schedule, nominal)
    expected = nominal * (2 + 3 * power_fraction(0.5) + 2 * 0 + 3 * power_fraction(0.7))
    assert_allclose(wh, expected)
    assert_allclose(baseline, nominal * 10)
    assert lit == pytest.approx(8.0)  # the 2 h at level 0 are not lit
    assert power_fraction(0.5) == pytest.approx(0.5294, abs=1e-4)  # "50 % light, ~53 % power"


def test_an_unlit_schedule_is_zero() -> None:
    wh, baseline, lit = schedule_energy_wh(NightSchedule(None, None, []), np.array([40.0]))
    assert_allclose(wh, [0.0])
    assert_allclose(baseline, [0.0])
    assert lit == 0.0


def _steps_energy_wh(nominal: float, edges: list[float], levels: list[float]) -> float:
    """Σ duration × P(level) for levels holding between consecutive ``edges`` [s]."""
    return sum(
        (b - a) / H * nominal * power_fraction(level / 100.0)
        for a, b, level in zip(edges, edges[1:], levels, strict=False)
    )


def test_spring_forward_night_is_23_hours_and_its_skipped_step_applies_at_the_transition() -> None:
    night = date(2026, 3, 28)
    policies = policies_of(
        {
            "programs": {"res": {"steps": [["22:00", 70], ["02:30", 30]]}},
            "calendars": {"default": "res"},
            "simulate": {"standby_w": 0.5},
        }
    )
    lums = [Luminaire("a", "g", None, 40.0)]
    result = simulate_energy(policies, lums, PARIS, LAT, LON, night, night)
    sun = sun_times(LAT, LON, night, PARIS)
    assert sun.sunset is not None
    assert sun.sunrise is not None
    transition = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()  # 03:00+02:00
    edges = [sun.sunset, at(2026, 3, 28, 22, 0), transition, sun.sunrise]
    lamp_wh = _steps_energy_wh(40.0, edges, [100, 70, 30])
    (n,) = result.nights
    assert n.hours == pytest.approx(23.0)
    assert result.kwh == pytest.approx((lamp_wh + 0.5 * 23) / 1000)
    assert result.baseline_kwh == pytest.approx(((sun.sunrise - sun.sunset) / H * 40 + 11.5) / 1e3)
    assert result.groups[0].lit_hours == pytest.approx((sun.sunrise - sun.sunset) / H)


def test_fall_back_night_is_25_hours_and_a_repeated_step_applies_once() -> None:
    night = date(2026, 10, 24)
    policies = policies_of(
        {
            "programs": {"res": {"steps": [["02:30", 30]]}},
            "calendars": {"default": "res"},
            "simulate": {"standby_w": 1.0},
        }
    )
    result = simulate_energy(
        policies, [Luminaire("a", None, None, 60.0)], PARIS, LAT, LON, night, night
    )
    sun = sun_times(LAT, LON, night, PARIS)
    assert sun.sunset is not None
    assert sun.sunrise is not None
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()  # 02:30+02:00, not +01:00
    lamp_wh = _steps_energy_wh(60.0, [sun.sunset, first, sun.sunrise], [100, 30])
    assert result.hours == pytest.approx(25.0)
    assert result.kwh == pytest.approx((lamp_wh + 25.0) / 1000)
    assert [g.group for g in result.groups] == [None]


def test_a_polar_day_is_lit_0_hours() -> None:
    tz = ZoneInfo("Arctic/Longyearbyen")
    night = date(2026, 6, 21)
    policies = policies_of({"simulate": {"standby_w": 0.5}})
    assert sun_times(78.22, 15.65, night, tz).polar == "day"
    result = simulate_energy(
        policies, [Luminaire("a", "g", None, 40.0)], tz, 78.22, 15.65, night, night
    )
    (g,) = result.groups
    assert (g.lit_hours, g.baseline_hours) == (0.0, 0.0)
    assert result.kwh == pytest.approx(0.5 * 24 / 1000)  # the standby only, lit or not
    assert result.saved_kwh == pytest.approx(0.0)
    assert (
        simulate_energy(
            policies_of({}), [Luminaire("a", "g", None, 40.0)], tz, 78.22, 15.65, night, night
        ).saved_fraction
        is None
    )  # nothing to save: no baseline


def test_missing_nominal_power_is_counted_not_invented() -> None:
    night = date(2026, 1, 15)
    policies = policies_of(
        {"programs": {"p": {"steps": [["23:00", 50]]}}, "calendars": {"default": "p"}}
    )
    alone = simulate_energy(
        policies, [Luminaire("a", "g", None, 40.0)], PARIS, LAT, LON, night, night
    )
    both = simulate_energy(
        policies,
        [Luminaire("a", "g", None, 40.0), Luminaire("b", "g", None, None)],
        PARIS,
        LAT,
        LON,
        night,
        night,
    )
    assert (both.luminaires, both.missing_power) == (2, 1)
    assert (both.groups[0].luminaires, both.groups[0].missing_power) == (2, 1)
    assert both.kwh == pytest.approx(alone.kwh)
    assert both.baseline_kwh == pytest.approx(alone.baseline_kwh)
    assert both.groups[0].lit_hours == pytest.approx(alone.groups[0].lit_hours)


def test_part_night_floors_and_a_device_exception_per_luminaire() -> None:
    night = date(2026, 1, 15)  # a Thursday
    policies = policies_of(
        {
            "programs": {"pn": {"steps": [["22:00", 40]], "part_night": ["01:00", "05:00"]}},
            "calendars": {"default": "pn"},
            "exceptions": [{"devices": ["x2"], "floor": 20, "reason": "crossing"}],
            "floors": {"M4": 50},
        }
    )
    lums = [Luminaire("x1", "g", "M4", 40.0), Luminaire("x2", "g", "M4", 40.0)]
    result = simulate_energy(policies, lums, PARIS, LAT, LON, night, night)
    sun = sun_times(LAT, LON, night, PARIS)
    assert sun.sunset is not None
    assert sun.sunrise is not None
    edges = [sun.sunset, at(2026, 1, 15, 22, 0), at(2026, 1, 16, 1, 0), at(2026, 1, 16, 5, 0)]
    edges.append(sun.sunrise)
    x1 = _steps_energy_wh(40.0, edges, [100, 50, 0, 50])  # the 40 % step raised to M4's 50 %
    x2 = _steps_energy_wh(40.0, edges, [100, 50, 50, 50])  # its exception's 20 %, raised too
    assert result.kwh == pytest.approx((x1 + x2) / 1000)
    lit = (sun.sunrise - sun.sunset) / H
    assert result.groups[0].lit_hours == pytest.approx((lit + lit - 4.0) / 2)


def test_one_schedule_per_distinct_program_and_night(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[date] = []
    original = night_schedule

    def counted(*args: Any) -> NightSchedule:
        calls.append(args[1])
        return original(*args)

    monkeypatch.setattr(energy, "night_schedule", counted)  # what simulate_energy calls
    policies = policies_of(
        {
            "programs": {"a": {"steps": [["23:00", 50]]}, "b": {"steps": []}},
            "calendars": {"default": "a", "rules": [{"weekdays": ["sat"], "program": "b"}]},
        }
    )
    lums = [Luminaire(f"l{i}", f"g{i % 4}", "M3" if i % 2 else None, 30.0 + i) for i in range(200)]
    result = simulate_energy(
        policies, lums, PARIS, LAT, LON, date(2026, 1, 12), date(2026, 1, 18)
    )  # Monday to Sunday
    assert len(calls) == 7  # no floor: one program per night for all 200 luminaires
    assert [g.programs for g in result.groups] == [{"a": 6, "b": 1}] * 4
    one_by_one = sum(
        simulate_energy(policies, [lum], PARIS, LAT, LON, date(2026, 1, 12), date(2026, 1, 18)).kwh
        for lum in lums[:8]
    )
    assert one_by_one == pytest.approx(
        simulate_energy(
            policies, lums[:8], PARIS, LAT, LON, date(2026, 1, 12), date(2026, 1, 18)
        ).kwh
    )


def test_cabinet_figures_add_line_losses_and_overhead() -> None:
    night = date(2026, 1, 15)
    raw: dict[str, Any] = {"simulate": {"line_loss_fraction": 0.05, "cabinet_overhead_w": 10.0}}
    lums = [Luminaire("a", "g", None, 40.0)]
    result = simulate_energy(policies_of(raw), lums, PARIS, LAT, LON, night, night, cabinets=3)
    assert result.cabinet_kwh == pytest.approx(result.kwh * 1.05 + 3 * 10.0 * 24 / 1000)
    assert result.cabinet_baseline_kwh == pytest.approx(
        result.baseline_kwh * 1.05 + 3 * 10.0 * 24 / 1000
    )
    plain = simulate_energy(policies_of({}), lums, PARIS, LAT, LON, night, night, cabinets=3)
    assert plain.cabinet_kwh is None


def test_period_limits_and_unknown_program() -> None:
    lums = [Luminaire("a", "g", None, 40.0)]
    with pytest.raises(ValueError, match="before"):
        simulate_energy(policies_of({}), lums, PARIS, LAT, LON, date(2026, 1, 2), date(2026, 1, 1))
    with pytest.raises(ValueError, match="at most 366"):
        simulate_energy(policies_of({}), lums, PARIS, LAT, LON, date(2026, 1, 1), date(2027, 1, 2))
    with pytest.raises(LookupError, match="one of default"):
        simulate_energy(
            policies_of({}), lums, PARIS, LAT, LON, date(2026, 1, 1), date(2026, 1, 1), program="x"
        )


def test_unknown_simulate_key_is_an_error() -> None:
    with pytest.raises(Exception, match=r"simulate\.line_losses"):
        policies_of({"simulate": {"line_losses": 0.03}})


# --- the command ---------------------------------------------------------------------------------
POLICIES = """
[programs.residential]
steps = [["22:00", 70], ["00:30", 40], ["05:30", 70]]

[programs.sobre]
steps = [["21:00", 50]]
part_night = ["01:00", "05:00"]

[calendars]
default = "residential"

[[calendars.rules]]
weekdays = ["sat"]
groups = ["nord"]
program = "sobre"

[simulate]
standby_w = 0.4
"""


@pytest.fixture
def paris(conn: psycopg.Connection, site: str) -> str:
    """A site at Paris: ``nord`` (l1 40 W, l2 60 W, l3 without power), ``sud`` (l4 30 W with
    a standby property of 0.8 W), a luminaire without a group (l5 50 W), a cabinet meter."""
    conn.execute(
        "INSERT INTO sites (site, name, timezone, lat, lon) VALUES (%s, 'Paris', %s, %s, %s)",
        (site, "Europe/Paris", LAT, LON),
    )
    rows = [
        ("l1", "luminaire", "nord", "M4", 40.0, "{}"),
        ("l2", "luminaire", "nord", None, 60.0, "{}"),
        ("l3", "luminaire", "nord", "M4", None, "{}"),
        ("l4", "luminaire", "sud", "P3", 30.0, '{"standby_w": "0.8"}'),
        ("l5", "luminaire", None, None, 50.0, "{}"),
        ("c1", "cabinet_meter", "nord", None, None, "{}"),
    ]
    for device, kind, group, klass, power, props in rows:
        conn.execute(
            "INSERT INTO devices (site, device, kind, lighting_group, lighting_class, "
            "nominal_power_w, properties) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
            (site, device, kind, group, klass, power, props),
        )
    return site


PARIS_LUMINAIRES = [
    Luminaire("l1", "nord", "M4", 40.0),
    Luminaire("l2", "nord", None, 60.0),
    Luminaire("l3", "nord", "M4", None),
    Luminaire("l4", "sud", "P3", 30.0, 0.8),
    Luminaire("l5", None, None, 50.0),
]


@pytest.fixture
def policies_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES, encoding="utf-8")
    return path


def _run(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str, str]:
    code = main(["--db-url", db_url, "policies", "simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> dict[str, Any]:
    code, out, err = _run(capsys, db_url, *args, "--format", "json")
    assert code == 0, err
    doc: dict[str, Any] = orjson.loads(out)
    return doc


def test_json_per_group_and_in_all(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    since, until = date(2026, 1, 12), date(2026, 1, 18)  # Monday to Sunday
    doc = _json(
        capsys,
        db_url,
        *("--site", paris, "--since", since.isoformat(), "--until", until.isoformat()),
        *("--policies", str(policies_file)),
    )
    expected = simulate_energy(
        policies_of(
            {
                "programs": {
                    "residential": {"steps": [["22:00", 70], ["00:30", 40], ["05:30", 70]]},
                    "sobre": {"steps": [["21:00", 50]], "part_night": ["01:00", "05:00"]},
                },
                "calendars": {
                    "default": "residential",
                    "rules": [{"weekdays": ["sat"], "groups": ["nord"], "program": "sobre"}],
                },
                "simulate": {"standby_w": 0.4},
            }
        ),
        PARIS_LUMINAIRES,
        PARIS,
        LAT,
        LON,
        since,
        until,
        cabinets=1,
    )
    assert {k: doc[k] for k in ("site", "since", "until", "program", "nights")} == {
        "site": paris,
        "since": "2026-01-12",
        "until": "2026-01-18",
        "program": None,
        "nights": 7,
    }
    assert (doc["luminaires"], doc["missing_power"]) == (5, 1)
    assert doc["kwh"] == pytest.approx(expected.kwh)
    assert doc["baseline_kwh"] == pytest.approx(expected.baseline_kwh)
    assert doc["saved_kwh"] == pytest.approx(doc["baseline_kwh"] - doc["kwh"])
    assert doc["saved_fraction"] == pytest.approx(doc["saved_kwh"] / doc["baseline_kwh"])
    assert 0.2 < doc["saved_fraction"] < 0.6
    assert doc["cabinet"] is None  # no loss configured
    groups = {g["group"]: g for g in doc["groups"]}
    assert list(groups) == ["nord", "sud", None]
    assert groups["nord"]["programs"] == [
        {"program": "residential", "nights": 6},
        {"program": "sobre", "nights": 1},
    ]
    assert groups["sud"]["programs"] == [{"program": "residential", "nights": 7}]
    assert (groups["nord"]["luminaires"], groups["nord"]["missing_power"]) == (3, 1)
    assert sum(g["kwh"] for g in doc["groups"]) == pytest.approx(doc["kwh"])
    assert groups["nord"]["lit_hours"] < groups["nord"]["baseline_hours"]  # a part-night
    assert groups["sud"]["lit_hours"] == pytest.approx(groups["sud"]["baseline_hours"])
    assert [n["night"] for n in doc["per_night"]][::6] == ["2026-01-12", "2026-01-18"]
    assert sum(n["kwh"] for n in doc["per_night"]) == pytest.approx(doc["kwh"])


def test_a_proposed_program_and_cabinet_figures(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, tmp_path: Path
) -> None:
    path = tmp_path / "losses.toml"
    text = POLICIES + "line_loss_fraction = 0.03\ncabinet_overhead_w = 5\n"
    path.write_text(text, encoding="utf-8")
    args = ("--site", paris, "--since", "2026-01-15", "--until", "2026-01-15", "--policies")
    calendar = _json(capsys, db_url, *args, str(path))
    proposed = _json(capsys, db_url, *args, str(path), "--program", "sobre")
    assert proposed["program"] == "sobre"
    assert all(g["programs"] == [{"program": "sobre", "nights": 1}] for g in proposed["groups"])
    assert proposed["kwh"] < calendar["kwh"]
    assert proposed["baseline_kwh"] == pytest.approx(calendar["baseline_kwh"])
    cabinet = proposed["cabinet"]
    assert cabinet["cabinets"] == 1
    assert cabinet["kwh"] == pytest.approx(proposed["kwh"] * 1.03 + 5 * 24 / 1000)
    assert cabinet["saved_kwh"] == pytest.approx(proposed["saved_kwh"] * 1.03)


def test_table(capsys: pytest.CaptureFixture[str], db_url: str, paris: str, tmp_path: Path) -> None:
    path = tmp_path / "losses.toml"
    path.write_text(POLICIES + "line_loss_fraction = 0.03\n", encoding="utf-8")
    code, out, err = _run(
        capsys,
        db_url,
        *("--site", paris, "--since", "2026-01-15", "--until", "2026-01-16"),
        *("--policies", str(path)),
    )
    assert code == 0, err
    assert "groupe / group" in out
    assert "référence / baseline kWh" in out
    assert "nord" in out
    assert "(sans groupe / no group)" in out
    assert "residential (2)" in out
    assert "total" in out
    assert "without nominal power: 1" in out
    assert "at the cabinet meters (1 cabinets, line losses 3 %" in out


def test_default_policies_save_nothing(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str
) -> None:
    doc = _json(capsys, db_url, "--site", paris, "--since", "2026-01-15", "--until", "2026-01-15")
    assert doc["saved_kwh"] == pytest.approx(0.0)
    assert doc["kwh"] > 0


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("2026-01-15", "2026-01-14", "is before --since"),
        ("2026-01-01", "2027-01-02", "367 nights, at most 366"),
    ],
)
def test_bad_periods(
    capsys: pytest.CaptureFixture[str],
    db_url: str,
    paris: str,
    since: str,
    until: str,
    message: str,
) -> None:
    code, _out, err = _run(capsys, db_url, "--site", paris, "--since", since, "--until", until)
    assert code == 2
    assert message in err


def test_a_date_that_is_not_a_date(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(capsys, db_url, "--site", "x", "--since", "2026-13-01", "--until", "2026-12-01")
    assert exc.value.code == 2
    assert "expected a date YYYY-MM-DD" in capsys.readouterr().err


def test_unknown_program_lists_the_programs(
    capsys: pytest.CaptureFixture[str], db_url: str, paris: str, policies_file: Path
) -> None:
    code, _out, err = _run(
        capsys,
        db_url,
        *("--site", paris, "--since", "2026-01-15", "--until", "2026-01-15"),
        *("--policies", str(policies_file), "--program", "nuit"),
    )
    assert code == 2
    assert "'nuit'" in err
    assert "residential, sobre" in err


def test_unknown_site(capsys: pytest.CaptureFixture[str], db_url: str, site: str) -> None:
    code, _out, err = _run(
        capsys, db_url, "--site", site, "--since", "2026-01-15", "--until", "2026-01-15"
    )
    assert code == 2
    assert "no such site" in err


def test_site_without_coordinates(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: psycopg.Connection, site: str
) -> None:
    conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
    code, _out, err = _run(
        capsys, db_url, "--site", site, "--since", "2026-01-15", "--until", "2026-01-15"
    )
    assert code == 2
    assert "lat and lon missing" in err


# --- agreement with the simulated town ------------------------------------------------------------
AGREEMENT_POLICIES: dict[str, Any] = {
    "programs": {
        "residential": {"steps": [["22:00", 70], ["23:30", 40], ["05:30", 70]]},
        "sobre": {
            "on_offset_min": 10,
            "off_offset_min": -15,
            "steps": [["21:00", 60], ["02:30", 35]],
            "part_night": ["00:30", "05:00"],
        },
    },
    "calendars": {"default": "residential", "groups": {"street-01": "sobre", "street-02": "sobre"}},
    "exceptions": [{"groups": ["street-02"], "floor": 20, "reason": "pedestrian crossing"}],
    "floors": {"M3": 50, "M4": 45},
}


def _agreement_town(site: str) -> Scenario:
    """A town without per-device variations: no presence sensors (a presence boost is the
    device's business, not the schedule's), no lamp failure, day burner or power drift, no
    message fault (a dropout would hide cabinet readings)."""
    faults = ("malformed", "duplicates", "out_of_order", "late", "dropouts", "clock_skew")
    return Scenario.model_validate(
        {
            "name": "agreement",
            "step_s": 60,
            "root": "agree/v1",
            "sites": [
                {
                    "site": site,
                    "lighting": {
                        "streets": 4,
                        "luminaires_per_street": 5,
                        "presence_fraction": 0.0,
                        "lamp_failures": 0,
                        "day_burners": 0,
                        "drifting": 0,
                    },
                    "water": {"dmas": 0},
                    "server_room": {"enabled": False},
                }
            ],
            "faults": {**dict.fromkeys(faults, 0), "unknown_devices": 0},
        }
    )


def _counter_wh(log: list[tuple[str, bytes]], device: str, t: float) -> float:
    """The ``energy`` counter [Wh] ``device`` reported, linearly interpolated at ``t`` between
    the readings around it (exact at local noon: then nothing is lit and the power is
    constant)."""
    series: list[tuple[float, float]] = []
    for topic, payload in log:
        if topic.endswith(f"/{device}/up"):
            records = orjson.loads(payload)
            base = float(records[0].get("bt", 0.0))
            for r in records:
                if r.get("n") == "energy":
                    scale = 1000.0 if r.get("u") == "kWh" else 1.0
                    series.append((base + float(r.get("t", 0.0)), float(r["v"]) * scale))
    times, values = np.array(sorted(series)).T
    assert times[0] < t < times[-1]
    return float(np.interp(t, times, values))


@pytest.mark.parametrize(
    "night",
    [date(2026, 1, 15), date(2026, 3, 28), date(2026, 10, 24)],
    ids=["winter", "spring-forward", "fall-back"],
)
def test_the_cabinet_meters_of_the_simulated_town_agree_within_2_percent(
    capsys: pytest.CaptureFixture[str],
    conn: psycopg.Connection,
    db_url: str,
    site: str,
    tmp_path: Path,
    night: date,
) -> None:
    scenario = _agreement_town(site)
    spec = scenario.sites[0]
    light = spec.lighting
    town = build_town(scenario, 5)
    st = town.sites[0]
    tz = ZoneInfo(spec.timezone)
    # The losses and standby the simulated town's cabinets and drivers have, read from it.
    raw = {
        **AGREEMENT_POLICIES,
        "simulate": {
            "standby_w": light.standby_w,
            "line_loss_fraction": light.line_loss_fraction,
            "cabinet_overhead_w": light.cabinet_overhead_w,
        },
    }
    policies = policies_of(raw)
    # The inventory, as the town writes it, and the site's coordinates and time zone.
    _dmas, devices = write_inventory(town, tmp_path / "inventory")
    sites = write_inventory_csv(
        tmp_path / "inventory" / "sites.csv",
        [
            {
                "site": site,
                "name": "agreement",
                "timezone": spec.timezone,
                "lat": spec.lat,
                "lon": spec.lon,
            }
        ],
        SITE_FILE_COLUMNS,
    )
    import_inventory(conn, devices)
    import_inventory(conn, sites)
    # The night's window (local noon to noon), with 15 min of daylight on each side so that
    # the cabinets' readings (every 5 min, phases spread) bracket it.
    start = datetime(night.year, night.month, night.day, 12, tzinfo=tz).timestamp()
    end = datetime.fromordinal(night.toordinal() + 1).replace(hour=12, tzinfo=tz).timestamp()
    margin = 900.0
    fleet = Fleet(
        town, "mqtt://127.0.0.1:1", days=(end - start + 2 * margin) / 86400, start=start - margin
    )
    fleet.log = []
    # Each luminaire gets its config as the policy engine would push it (retained `config`,
    # delivered by its gateway): the program of its group that night, floors and exceptions
    # applied.
    for d in st.devices:
        if d.kind == "luminaire":
            name = program_for(policies, d.group, night)
            program, _notes = device_program(policies, name, d.lighting_class, d.group, d.device)
            config = encode(DeviceConfig(version=1, lighting=program))
            fleet.inbox.put((site, d.device, "config", config))
    fleet.run()
    assert len(fleet.models[0].programs) > 2  # the pushed programs were taken up
    measured = {
        "cabinets": sum(
            _counter_wh(fleet.log, c, end) - _counter_wh(fleet.log, c, start) for c in st.cabinets
        )
        / 1000.0,
        "luminaires": sum(
            _counter_wh(fleet.log, d, end) - _counter_wh(fleet.log, d, start) for d in st.luminaires
        )
        / 1000.0,
    }
    policies_file = tmp_path / "policies.toml"
    policies_file.write_text(tomli_w.dumps(raw), encoding="utf-8")
    doc = _json(
        capsys,
        db_url,
        *("--site", site, "--since", night.isoformat(), "--until", night.isoformat()),
        *("--policies", str(policies_file)),
    )
    assert doc["cabinet"]["cabinets"] == len(st.cabinets)
    assert doc["missing_power"] == 0
    cabinet_gap = measured["cabinets"] / doc["cabinet"]["kwh"] - 1.0
    lamp_gap = measured["luminaires"] / doc["kwh"] - 1.0
    print(
        f"{night}: cabinets measured {measured['cabinets']:.4f} kWh, simulate "
        f"{doc['cabinet']['kwh']:.4f} kWh ({100 * cabinet_gap:+.3f} %); luminaires "
        f"{measured['luminaires']:.4f} / {doc['kwh']:.4f} kWh ({100 * lamp_gap:+.3f} %)"
    )
    assert abs(cabinet_gap) < 0.02
    assert abs(lamp_gap) < 0.02
    assert doc["saved_fraction"] > 0.2  # the programs do dim: the test is not 100 % vs 100 %
