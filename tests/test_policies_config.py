"""The policies: the example file, calendar resolution, floors and exceptions on the programs
sent to luminaires, reporting rates; errors that name the file, key, value and expectation;
``sobriety policies check``."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from app.cli import main
from core.config import load_config as load_sections
from core.contract import DEVICE_KINDS
from core.errors import ConfigError
from core.messages import LightingProgram, Reporting
from policies.config import PoliciesConfig, load_policies
from policies.programs import device_program, floor_adjustments, program_for, reporting_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "policies.toml"


@pytest.fixture(scope="module")
def example() -> PoliciesConfig:
    return load_policies(EXAMPLE)


def write(tmp_path: Path, text: str, name: str = "policies.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_file_loads(example: PoliciesConfig) -> None:
    assert list(example.programs) == ["default", "residential", "main-road", "festive", "weekend"]
    residential = example.programs["residential"]
    assert residential.steps == (("22:00", 70.0), ("23:30", 20.0), ("05:30", 70.0))
    assert residential.part_night == ("01:00", "05:00")
    assert example.programs["main-road"].on_lux == 20.0
    assert example.floors == {"M3": 40.0, "M4": 30.0, "P3": 15.0}
    assert len(example.calendars.rules) == 3
    assert [ex.reason for ex in example.exceptions] == [
        "roundabout",
        "pedestrian crossing by the school",
    ]


def test_no_policies_at_all_is_full_light_and_the_simulators_rates() -> None:
    policies = PoliciesConfig()
    assert list(policies.programs) == ["default"]
    assert program_for(policies, "any-street", date(2026, 12, 24)) == "default"
    program, notes = device_program(policies, "default", "M4", "any-street", "lum-1")
    assert program.steps == ()  # 100 % from sunset to sunrise
    assert (program.on_offset_min, program.off_offset_min, program.part_night) == (0, 0, None)
    assert notes == []
    assert set(policies.reporting) == set(DEVICE_KINDS)
    assert reporting_for(policies, "luminaire", night=True, escalated=False) == Reporting(
        interval_s=600, batch=6
    )
    assert reporting_for(policies, "water_meter", night=False, escalated=False) == Reporting(
        interval_s=3600, batch=1
    )


@pytest.mark.parametrize(
    ("group", "day", "program"),
    [
        # The festive season wraps over New Year (12-01 to 01-06, both included).
        ("place-bellecour", date(2026, 11, 30), "default"),  # the group's own program
        ("place-bellecour", date(2026, 12, 1), "festive"),
        ("place-bellecour", date(2026, 12, 31), "festive"),
        ("place-bellecour", date(2027, 1, 6), "festive"),
        ("place-bellecour", date(2027, 1, 7), "default"),
        # First match wins: the festive rule comes before the weekend one.
        ("rue-de-la-republique", date(2026, 12, 5), "festive"),  # a Saturday in December
        # The weekend rule, by the weekday of the evening (Friday and Saturday nights).
        ("rue-de-la-republique", date(2026, 3, 6), "weekend"),  # Friday
        ("rue-de-la-republique", date(2026, 3, 7), "weekend"),  # Saturday
        ("rue-de-la-republique", date(2026, 3, 8), "residential"),  # Sunday: the top default
        # A group's default, and the top default for a group nobody named.
        ("avenue-jean-jaures", date(2026, 3, 7), "main-road"),
        ("impasse-des-lilas", date(2026, 3, 7), "residential"),
        (None, date(2026, 3, 7), "residential"),
        # A rule without groups applies to every group, on its one date.
        ("avenue-jean-jaures", date(2026, 7, 14), "default"),
        ("avenue-jean-jaures", date(2027, 7, 14), "main-road"),
    ],
)
def test_calendar_resolution(
    example: PoliciesConfig, group: str | None, day: date, program: str
) -> None:
    assert program_for(example, group, day) == program


def test_a_floor_raises_a_step_and_says_so(example: PoliciesConfig) -> None:
    program, notes = device_program(example, "residential", "M4", "impasse-des-lilas", "lum-7")
    assert isinstance(program, LightingProgram)
    assert program.steps == (("22:00", 70.0), ("23:30", 30.0), ("05:30", 70.0))
    assert notes == [
        "program residential, step 2 (23:30, 20 %): raised to 30 % (floor of class M4)"
    ]
    # The part-night switch-off is a choice: no floor lights it.
    assert program.part_night == ("01:00", "05:00")
    assert program.part_night_level == 0.0
    # A class without a floor, or no class, changes nothing.
    for klass in ("M6", None):
        unchanged, none = device_program(example, "residential", klass, "impasse", "lum-7")
        assert unchanged.steps == example.programs["residential"].steps
        assert none == []


def test_exceptions_stay_lit_at_their_floor_during_part_night(example: PoliciesConfig) -> None:
    by_group, notes = device_program(example, "residential", "P3", "rond-point-nord", "lum-1")
    assert by_group.part_night_level == 30.0
    assert notes == [
        "program residential, part-night 01:00-05:00: stays lit at 30 % (exception: roundabout)"
    ]
    by_device, _ = device_program(example, "residential", None, "rue-x", "lum-0042")
    assert by_device.part_night_level == 50.0
    # An exception's level is raised to the floor of its class like any level.
    floored, notes = device_program(example, "residential", "M3", "rond-point-nord", "lum-1")
    assert floored.part_night_level == 40.0
    assert notes[-1].endswith("raised to 40 % (floor of class M3)")


def test_the_photocell_and_offsets_are_mapped(example: PoliciesConfig) -> None:
    road, _ = device_program(example, "main-road", "M3", "avenue-jean-jaures", "lum-2")
    assert (road.on_lux, road.off_lux, road.lux_window_min) == (20.0, 30.0, 30)
    residential, _ = device_program(example, "residential", None, "g", "lum-3")
    assert (residential.on_offset_min, residential.off_offset_min) == (10, -15)
    assert (residential.on_lux, residential.presence_boost) == (None, 80.0)
    with pytest.raises(LookupError, match="no program 'nope'"):
        device_program(example, "nope", None, None, "lum-3")


def test_floor_adjustments_cover_every_program_and_class(example: PoliciesConfig) -> None:
    assert floor_adjustments(example) == [
        "program residential, step 2 (23:30, 20 %): raised to 40 % (floor of class M3)",
        "program residential, step 2 (23:30, 20 %): raised to 30 % (floor of class M4)",
    ]


def test_reporting_by_day_by_night_and_escalated(example: PoliciesConfig) -> None:
    day = reporting_for(example, "luminaire", night=False, escalated=False)
    night = reporting_for(example, "luminaire", night=True, escalated=False)
    assert (day.interval_s, night.interval_s, night.batch) == (3600, 600, 6)
    assert night.deadband == {"power": 0.5}
    flow = reporting_for(example, "flow_meter", night=True, escalated=True)
    assert (flow.interval_s, flow.batch, flow.deadband) == (60, 3, {"flow": 0.05})
    # A kind given in part keeps its kind's defaults; a kind left out keeps all of them.
    pressure = reporting_for(example, "pressure_sensor", night=False, escalated=False)
    assert (pressure.interval_s, pressure.batch) == (300, 3)
    assert reporting_for(example, "pressure_sensor", night=False, escalated=True).interval_s == 60
    assert reporting_for(example, "water_meter", night=True, escalated=False).interval_s == 3600
    with pytest.raises(LookupError, match="no reporting for device kind 'lamp'"):
        reporting_for(example, "lamp", night=True, escalated=False)


_VALID_PROGRAM = '[programs.residential]\nsteps = [["22:00", 70], ["23:30", 20]]\n'


@pytest.mark.parametrize(
    ("text", "key", "value", "expected"),
    [
        (
            '[programs.default]\nstep = [["22:00", 70]]\n',
            "programs.default.step",
            "[['22:00', 70]]",
            "no such key",
        ),
        (
            "[programs.default]\non_offset_min = 'ten'\n",
            "programs.default.on_offset_min",
            "'ten'",
            "expected a valid integer",
        ),
        (
            _VALID_PROGRAM + '[calendars]\ndefault = "residential"\ngroups.centre = "festive"\n',
            "calendars.groups.centre",
            "'festive'",
            "expected the name of a program (one of residential)",
        ),
        (
            _VALID_PROGRAM
            + '[calendars]\ndefault = "residential"\n[[calendars.rules]]\nfrom = "12-01"\n'
            'to = "01-06"\nprogram = "festiv"\n',
            "calendars.rules[0].program",
            "'festiv'",
            "expected the name of a program (one of residential)",
        ),
        (
            _VALID_PROGRAM + '[calendars]\ndefault = "residentail"\n',
            "calendars.default",
            "'residentail'",
            "expected the name of a program",
        ),
        (
            "[floors]\nM7 = 20\n",
            "floors.M7",
            "'M7'",
            "expected a lighting class of EN 13201: one of M1, M2, M3, M4, M5, M6, C0",
        ),
        (
            '[programs.default]\nsteps = [["22:00", 70], ["24:30", 20]]\n',
            "programs.default.steps[1][0]",
            "'24:30'",
            'expected a local time "HH:MM"',
        ),
        (
            '[programs.default]\nsteps = [["22:00", 70], ["23:30", 130]]\n',
            "programs.default.steps[1][1]",
            "130",
            "expected a level from 0 to 100",
        ),
        (
            '[programs.default]\nsteps = [["23:30", 70], ["22:00", 20]]\n',
            "programs.default.steps[1]",
            "['22:00', 20]",
            "expected a time after the previous step's 23:30 in the night",
        ),
        (
            '[programs.default]\non = "lux"\n',
            "programs.default.on_lux",
            "None",
            'required with on = "lux"',
        ),
        (
            '[programs.default]\npart_night = ["05:00", "01:00"]\n',
            "programs.default.part_night",
            "['05:00', '01:00']",
            "with the end after the start in the night",
        ),
        (
            '[[calendars.rules]]\nfrom = "12-41"\nto = "01-06"\nprogram = "default"\n',
            "calendars.rules[0].from",
            "'12-41'",
            "expected a date MM-DD",
        ),
        (
            '[[calendars.rules]]\nweekdays = ["saturday"]\nprogram = "default"\n',
            "calendars.rules[0].weekdays[0]",
            "'saturday'",
            "expected a weekday: one of mon, tue",
        ),
        (
            "[[exceptions]]\nfloor = 30\nreason = 'crossing'\n",
            "exceptions[0].groups",
            "None",
            "expected groups and/or devices",
        ),
        (
            "[reporting.lamp]\nbatch = 2\n",
            "reporting.lamp",
            "'lamp'",
            "expected a device kind: one of luminaire, cabinet_meter",
        ),
        (
            "[reporting.flow_meter]\ndeadband = { flux = 0.1 }\n",
            "reporting.flow_meter.deadband.flux",
            "'flux'",
            "'flow', 'volume'",
        ),
        (
            "[reporting.flow_meter]\nday_interval_s = 120\nescalated_interval_s = 300\n",
            "reporting.flow_meter.escalated_interval_s",
            "300",
            "expected at most the day and night intervals (120 s)",
        ),
    ],
)
def test_errors_name_file_key_value_and_expectation(
    tmp_path: Path, text: str, key: str, value: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policies(path)
    message = str(info.value)
    assert f"{path}: {key} = {value}: " in message
    assert expected in message


def test_every_error_at_once_and_file_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[floors]\nM7 = 20\nM4 = 130\n")
    with pytest.raises(ConfigError) as info:
        load_policies(path)
    assert "floors.M7 = 'M7'" in str(info.value)
    assert "floors.M4 = 130: expected a level from 0 to 100" in str(info.value)
    with pytest.raises(ConfigError, match="policies file not found"):
        load_policies(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policies(write(tmp_path, "[programs\n", "broken.toml"))


def test_the_same_content_as_a_section_of_the_main_file(tmp_path: Path) -> None:
    # Every table header [x] or [[x]] of the example becomes [policies.x] or [[policies.x]].
    body = re.sub(r"^(\[+)", r"\1policies.", EXAMPLE.read_text(), flags=re.MULTILINE)
    path = write(tmp_path, body, "sobriety.toml")
    config = load_sections(path, env={}, sections=(PoliciesConfig,))
    assert config.section(PoliciesConfig) == load_policies(EXAMPLE)
    bad = write(tmp_path, "[policies.floors]\nQ1 = 10\n", "bad.toml")
    with pytest.raises(ConfigError, match=r"bad\.toml: \[policies\] floors\.Q1"):
        load_sections(bad, env={}, sections=(PoliciesConfig,))


def test_policies_check_explains_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"{EXAMPLE}: valid" in out
    assert "residential: on at sunset + 10 min; off at sunrise - 15 min; steps 22:00 70 %" in out
    assert "rule 1: 12-01 to 01-06, groups place-bellecour, rue-de-la-republique -> festive" in out
    assert "devices lum-0042, lum-0043: 50 % (pedestrian crossing by the school)" in out
    assert "floors (lowest step level per lighting class): M3 40 %, M4 30 %, P3 15 %" in out
    assert "luminaire: 3600 / 600 / 600 s, batch 6, deadband power 0.5 W" in out
    assert "program residential, step 2 (23:30, 20 %): raised to 30 % (floor of class M4)" in out


def test_policies_check_refuses_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[programs.default]\nsteps = [["22:00", 130]]\n')
    assert main(["policies", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}: programs.default.steps[0][1] = 130: expected a level from 0 to 100" in (
        captured.err
    )
