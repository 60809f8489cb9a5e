"""policies.desired: what every device is told at an instant (pure, no broker, no database)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from core.lighting import SunCache, sun_times
from policies.config import parse_policies
from policies.desired import (
    Desired,
    InventoryDevice,
    InventorySite,
    desired_configs,
    digest,
    is_night,
)

PARIS = ZoneInfo("Europe/Paris")
OSLO = ZoneInfo("Europe/Oslo")
POLICIES = parse_policies(
    {
        "programs": {
            "residential": {"steps": [["23:00", 20]], "part_night": ["01:00", "05:00"]},
            "weekend": {"steps": [["01:00", 50]]},
        },
        "calendars": {
            "default": "residential",
            "rules": [{"weekdays": ["sat"], "program": "weekend"}],
        },
        "floors": {"M4": 30},
        "exceptions": [{"devices": ["lum-x"], "floor": 40, "reason": "crossing"}],
        "reporting": {
            "luminaire": {"day_interval_s": 3600, "night_interval_s": 600},
            "flow_meter": {"day_interval_s": 300, "night_interval_s": 900},
        },
    },
    source="test",
)
PARIS_SITE = InventorySite("p", "Europe/Paris", 48.85, 2.35)
DEVICES = [
    InventoryDevice(1, "p", "lum-a", "luminaire", lighting_group="rue", lighting_class="M4"),
    InventoryDevice(2, "p", "lum-b", "luminaire", lighting_group="rue", lighting_class="M4"),
    InventoryDevice(3, "p", "lum-x", "luminaire", lighting_group="rue", lighting_class="M4"),
    InventoryDevice(4, "p", "fm-1", "flow_meter", dma="d1"),
    InventoryDevice(5, "p", "fm-2", "flow_meter", dma="d2"),
]


def _at(
    when: datetime,
    site: InventorySite = PARIS_SITE,
    escalated: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, Desired]:
    found = desired_configs(POLICIES, {site.site: site}, DEVICES, escalated, when.timestamp())
    return {d.device.device: d for d in found}


def test_day_and_night_reporting_follow_the_sun_at_the_site() -> None:
    sun = sun_times(48.85, 2.35, datetime(2026, 12, 2).date(), PARIS)
    assert sun.sunset is not None
    before = datetime.fromtimestamp(sun.sunset - 60, PARIS)
    after = datetime.fromtimestamp(sun.sunset + 60, PARIS)
    day, night = _at(before), _at(after)
    assert day["lum-a"].reporting.interval_s == 3600
    assert night["lum-a"].reporting.interval_s == 600
    assert (day["fm-1"].reporting.interval_s, night["fm-1"].reporting.interval_s) == (300, 900)
    assert day["lum-a"].digest != night["lum-a"].digest  # a new version at sunset
    assert day["lum-a"].lighting == night["lum-a"].lighting  # the same night's program


def test_the_calendar_program_changes_at_local_noon_with_floors_and_exceptions() -> None:
    friday_night = _at(datetime(2026, 12, 5, 11, 59, tzinfo=PARIS))  # still Friday's night
    saturday = _at(datetime(2026, 12, 5, 12, 0, tzinfo=PARIS))
    assert friday_night["lum-a"].program == "residential"
    assert saturday["lum-a"].program == "weekend"
    lum = friday_night["lum-a"].lighting
    assert lum is not None
    assert lum.steps == (("23:00", 30.0),)
    assert lum.part_night_level == 0.0
    crossing = friday_night["lum-x"].lighting
    assert crossing is not None
    assert crossing.part_night_level == 40.0
    assert friday_night["lum-a"].digest == friday_night["lum-b"].digest  # shared content
    assert friday_night["lum-a"].digest != friday_night["lum-x"].digest
    assert friday_night["fm-1"].lighting is None
    assert friday_night["fm-1"].program is None


def test_escalation_only_for_the_sensors_of_the_alerted_dma() -> None:
    when = datetime(2026, 12, 2, 14, 0, tzinfo=PARIS)
    found = _at(when, escalated=frozenset({("p", "d1")}))
    assert found["fm-1"].escalated
    assert found["fm-1"].reporting.interval_s == 60
    assert not found["fm-2"].escalated
    assert found["fm-2"].reporting.interval_s == 300
    assert not found["lum-a"].escalated


def test_polar_nights_and_days_and_sites_without_coordinates() -> None:
    tromso = InventorySite("t", "Europe/Oslo", 69.65, 18.96)
    sun = SunCache()
    winter_noon = datetime(2026, 12, 21, 12, 0, tzinfo=OSLO).timestamp()
    summer_midnight = datetime(2026, 6, 21, 0, 30, tzinfo=OSLO).timestamp()
    assert is_night(tromso, winter_noon, sun) is True  # the sun does not rise
    assert is_night(tromso, summer_midnight, sun) is False  # the sun does not set
    nowhere = InventorySite("p", "Europe/Paris", None, None)
    assert is_night(nowhere, winter_noon, sun) is None
    found = _at(datetime(2026, 12, 2, 23, 0, tzinfo=PARIS), site=nowhere)
    assert found["lum-a"].reporting.interval_s == 600  # the shorter: nothing lost
    assert found["fm-1"].reporting.interval_s == 300


def test_the_digest_ignores_key_order_and_sees_every_change() -> None:
    found = _at(datetime(2026, 12, 2, 14, 0, tzinfo=PARIS))
    reporting = found["lum-a"].reporting
    lighting = found["lum-a"].lighting
    same = reporting.model_copy(update={"deadband": {}})
    assert digest(reporting, lighting) == digest(same, lighting)
    assert digest(reporting, lighting) != digest(
        reporting.model_copy(update={"batch": 2}), lighting
    )
    assert digest(reporting, None) != digest(reporting, lighting)
    assert found["lum-a"].config(7).version == 7
