"""Topics, metrics and unit conversions of the MQTT contract."""

from __future__ import annotations

import pytest

from core.contract import (
    METRICS,
    TopicParts,
    build_topic,
    parse_topic,
    unit_conversion,
    uplink_filter,
)
from core.errors import RejectReason, TopicError


def test_parse_topic() -> None:
    assert parse_topic("sobriety/v1/lyon/lum-0001/up") == TopicParts("lyon", "lum-0001", "up")
    assert parse_topic("x/y/a/b/cmd", root="x/y") == TopicParts("a", "b", "cmd")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/lyon/lum/up",
        "sobriety/v1/lyon/up",
        "sobriety/v1/lyon/lum/up/extra",
        "sobriety/v1/lyon/lum/telemetry",
        "sobriety/v1/ly on/lum/up",
        "sobriety/v1//lum/up",
        "sobriety/v1/lyon/" + "x" * 65 + "/up",
    ],
)
def test_parse_topic_rejects(topic: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(topic)
    assert info.value.reason is RejectReason.INVALID_TOPIC


def test_build_topic_round_trips_and_refuses_wildcards() -> None:
    topic = build_topic("lyon", "fm-1", "config")
    assert parse_topic(topic) == TopicParts("lyon", "fm-1", "config")
    with pytest.raises(ValueError):
        build_topic("lyon", "+", "up")


def test_uplink_filter() -> None:
    assert uplink_filter() == "sobriety/v1/+/+/up"
    assert uplink_filter("a/b", "ingest") == "$share/ingest/a/b/+/+/up"


@pytest.mark.parametrize(
    ("metric", "unit", "raw", "canonical"),
    [
        ("power", "kW", 1.5, 1500.0),
        ("energy", "kWh", 2.0, 2000.0),
        ("energy", "J", 3600.0, 1.0),
        ("flow", "l/s", 1.0, 3.6),
        ("flow", "m3/s", 0.01, 36.0),
        ("flow", "L/h", 500.0, 0.5),
        ("volume", "L", 1500.0, 1.5),
        ("pressure", "Pa", 350000.0, 3.5),
        ("pressure", "kPa", 350.0, 3.5),
        ("temperature", "K", 273.15, 0.0),
        ("temperature", "degF", 212.0, 100.0),
        ("temperature", "Cel", 21.0, 21.0),
        ("dim", "/", 0.5, 50.0),
        ("power", None, 12.0, 12.0),
    ],
)
def test_unit_conversion(metric: str, unit: str | None, raw: float, canonical: float) -> None:
    conv = unit_conversion(metric, unit)
    assert conv is not None
    assert raw * conv[0] + conv[1] == pytest.approx(canonical)


def test_unit_of_another_metric_is_unknown() -> None:
    assert unit_conversion("power", "m3") is None
    assert unit_conversion("flow", "kW") is None


def test_metric_ids_are_stable() -> None:
    assert {m.name: m.id for m in METRICS.values()} == {
        "flow": 1,
        "volume": 2,
        "pressure": 3,
        "level": 4,
        "power": 5,
        "energy": 6,
        "dim": 7,
        "illuminance": 8,
        "temperature": 9,
        "presence": 10,
    }


def test_metric_names_type_lists_every_canonical_metric() -> None:
    from typing import get_args

    from core.contract import MetricName

    assert list(get_args(MetricName)) == list(METRICS)


def test_device_kinds_are_one_list() -> None:
    from core.contract import DEVICE_KINDS
    from simulators.devices import KIND_METRICS
    from simulators.scenario import Scenario

    assert set(KIND_METRICS) == set(DEVICE_KINDS)
    assert set(Scenario(sites=[{"site": "x"}]).reporting) == set(DEVICE_KINDS)
