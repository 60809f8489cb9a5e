"""Site templates of scenario files (simulators/site_templates.py): copies with their ids,
names, spread coordinates, per-copy variation, and errors that name the template, the copy
and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from simulators import load_scenario
from simulators.scenario import parse_scenario


def test_copies_take_their_number_their_place_and_their_variation() -> None:
    scenario = parse_scenario(
        {
            "sites": [{"site": "cayenne", "timezone": "America/Cayenne"}],
            "site_templates": [{
                "count": 4, "first": 7, "site": "c{n:02d}", "name": "Commune {n}",
                "lat": [44.0, 45.0], "lon": [1.0, 2.0],
                "base": {"water": {"customers_per_dma": 9}},
                "vary": {"lighting.streets": [1, 2, 3]},
                "every": [{"every": 2, "offset": 1,
                           "set": {"water": {"leaks": [{"start_h": 1.0, "flow_m3h": 0.5}]}}}],
            }],
        },
        "inline",
    )  # fmt: skip
    sites = scenario.sites
    assert [s.site for s in sites] == ["cayenne", "c07", "c08", "c09", "c10"]
    assert [s.name for s in sites[1:]] == ["Commune 7", "Commune 8", "Commune 9", "Commune 10"]
    assert [s.lighting.streets for s in sites[1:]] == [1, 2, 3, 1]
    assert all(s.water.customers_per_dma == 9 for s in sites[1:])
    assert [len(s.water.leaks) for s in sites[1:]] == [0, 1, 0, 1]
    assert all(44.0 <= s.lat <= 45.0 and 1.0 <= s.lon <= 2.0 for s in sites[1:])
    assert len({(s.lat, s.lon) for s in sites}) == 5


def test_the_packaged_operator_has_fifty_communes() -> None:
    scenario = load_scenario(Path("simulators/scenarios/operator-50.toml"))
    assert len(scenario.sites) == 50
    assert sum(1 for s in scenario.sites if s.water.history_leaks) == 15
    assert sum(1 for s in scenario.sites if s.server_room.enabled) == 1


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"count": 0, "site": "c{n}"}, r"site_templates\.0\.count = 0: expected greater than"),
        ({"count": 2, "site": "c{n}", "vary": {"lighting.streetz": [1]}},
         r"site_templates\.0\[c1\]\.lighting\.streetz = 1: expected no such key"),
        ({"count": 2, "site": "c{n}", "vary": {"water.dmas": [1, -1]}},
         r"site_templates\.0\[c2\]\.water\.dmas = -1: expected greater than or equal to 0"),
        ({"count": 2, "site": "c{x}"}, r"site_templates\.0\.site = 'c\{x\}': expected a pattern"),
        ({"count": 2, "site": "c"}, r"site 'c' already given by site_templates\.0\[c\]"),
        ({"count": 2, "site": "c {n}"}, r"site_templates\.0\.site = 'c \{n\}': copy 0 gives"),
        ({"count": 2, "site": "c{n}", "base": {"lat": 1.0}}, r"site_templates\.0\.base = .*lat"),
        ({"count": 2, "site": "c{n}", "every": [{"every": 2, "offset": 2, "set": {}}]},
         r"site_templates\.0\.every\.0 = .*offset = 2: below every = 2"),
        ({"count": 1, "site": "cayenne"}, r"site 'cayenne' already given by sites\.0"),
    ],
)  # fmt: skip
def test_errors_name_the_template_the_copy_and_the_key(
    template: dict[str, object], message: str
) -> None:
    raw = {"sites": [{"site": "cayenne"}], "site_templates": [template]}
    with pytest.raises(ConfigError, match=rf"^f\.toml: .*{message}"):
        parse_scenario(raw, "f.toml")
