"""The MQTT contract: topics, device kinds, canonical metrics and units, physical limits.

Topics are ``{root}/{site}/{device}/{channel}`` (default root ``sobriety/v1``). Every metric has
one canonical unit; :func:`unit_conversion` gives the affine map ``canonical = raw * scale +
offset`` from an accepted alternative unit. The payloads of the ``config``, ``cmd`` and
``state`` channels are typed in :mod:`core.messages`, those of ``up`` decoded by
:mod:`core.payloads`. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from core.errors import RejectReason, TopicError

DEFAULT_ROOT: Final = "sobriety/v1"
CHANNELS: Final = frozenset({"up", "state", "config", "cmd"})
DEVICE_KINDS: Final = (
    "luminaire",
    "cabinet_meter",
    "flow_meter",
    "pressure_sensor",
    "water_meter",
    "pump_meter",
    "facility_meter",
    "it_meter",
)
"""The kinds of device in an inventory (column ``kind``)."""
FLOW_METER_ROLES: Final = ("inlet", "outlet")
"""The role of a flow meter in its DMA (column ``role``)."""
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class TopicParts:
    """A parsed topic: the tenant (``site``), the inventory id (``device``) and the channel."""

    site: str
    device: str
    channel: str


def valid_segment(value: str) -> bool:
    """Whether ``value`` is allowed as a site or device id (1-64 of ``A-Za-z0-9_.-``)."""
    return bool(_SEGMENT.match(value))


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> TopicParts:
    """Split ``{root}/{site}/{device}/{channel}``; raise :class:`TopicError` otherwise."""
    prefix = root.rstrip("/") + "/"
    if not topic.startswith(prefix):
        raise TopicError(RejectReason.INVALID_TOPIC, f"topic does not start with {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3:
        raise TopicError(
            RejectReason.INVALID_TOPIC, "expected {root}/{site}/{device}/{channel} after the root"
        )
    site, device, channel = parts
    if not valid_segment(site) or not valid_segment(device):
        raise TopicError(
            RejectReason.INVALID_TOPIC, "site and device ids are 1-64 characters of A-Za-z0-9_.-"
        )
    if channel not in CHANNELS:
        raise TopicError(RejectReason.INVALID_TOPIC, f"unknown channel {channel!r}")
    return TopicParts(site, device, channel)


def build_topic(site: str, device: str, channel: str, root: str = DEFAULT_ROOT) -> str:
    """The topic of ``device`` at ``site`` on ``channel``."""
    if not valid_segment(site) or not valid_segment(device) or channel not in CHANNELS:
        raise ValueError(f"invalid topic parts {site!r}/{device!r}/{channel!r}")
    return f"{root.rstrip('/')}/{site}/{device}/{channel}"


def uplink_filter(root: str = DEFAULT_ROOT, shared_group: str | None = None) -> str:
    """The subscription filter of the ingest, shared (``$share/group/...``) when a group is set."""
    base = f"{root.rstrip('/')}/+/+/up"
    return f"$share/{shared_group}/{base}" if shared_group else base


@dataclass(frozen=True, slots=True)
class Metric:
    """A canonical metric: its id in the ``metrics`` table, unit and physically possible range.

    ``low`` and ``high`` are inclusive and in the canonical unit.
    """

    id: int
    name: str
    unit: str
    low: float
    high: float
    description: str


# Ids are stored in the database (table ``metrics``, seeded by migration 0001): never renumber.
METRICS: Final[dict[str, Metric]] = {
    m.name: m
    for m in (
        Metric(1, "flow", "m3/h", -1e5, 1e5, "volumetric flow rate, negative when reversed"),
        Metric(2, "volume", "m3", 0.0, 1e10, "volume index of a meter (cumulative)"),
        Metric(3, "pressure", "bar", -1.0, 100.0, "gauge pressure"),
        Metric(4, "level", "m", -1e3, 1e4, "water level"),
        Metric(5, "power", "W", 0.0, 1e8, "active electrical power"),
        Metric(6, "energy", "Wh", 0.0, 1e14, "active energy index (cumulative counter)"),
        Metric(7, "dim", "%", 0.0, 100.0, "dimming level, 100 = full light"),
        Metric(8, "illuminance", "lx", 0.0, 2e5, "illuminance"),
        Metric(9, "temperature", "°C", -80.0, 200.0, "temperature"),
        Metric(10, "presence", "count", 0.0, 1e6, "presence detections in the interval"),
    )
}
METRICS_BY_ID: Final[dict[int, Metric]] = {m.id: m for m in METRICS.values()}
MetricName = Literal[
    "flow", "volume", "pressure", "level", "power", "energy", "dim", "illuminance",
    "temperature", "presence",
]  # fmt: skip
"""A canonical metric's name, as a type (the keys of :data:`METRICS`)."""

# (scale, offset): canonical = raw * scale + offset. Keys are the units devices may send;
# the canonical unit itself is listed so that it is accepted explicitly.
_CONVERSIONS: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "flow": {
        "m3/h": (1.0, 0.0),
        "m3/s": (3600.0, 0.0),
        "m3/min": (60.0, 0.0),
        "l/s": (3.6, 0.0),
        "L/s": (3.6, 0.0),
        "l/min": (0.06, 0.0),
        "L/min": (0.06, 0.0),
        "l/h": (0.001, 0.0),
        "L/h": (0.001, 0.0),
    },
    "volume": {"m3": (1.0, 0.0), "l": (0.001, 0.0), "L": (0.001, 0.0)},
    "pressure": {
        "bar": (1.0, 0.0),
        "mbar": (0.001, 0.0),
        "Pa": (1e-5, 0.0),
        "hPa": (1e-3, 0.0),
        "kPa": (0.01, 0.0),
        "MPa": (10.0, 0.0),
        "psi": (0.0689475729, 0.0),
        "mH2O": (0.0980665, 0.0),
    },
    "level": {"m": (1.0, 0.0), "cm": (0.01, 0.0), "mm": (0.001, 0.0)},
    "power": {"W": (1.0, 0.0), "kW": (1000.0, 0.0), "MW": (1e6, 0.0), "mW": (0.001, 0.0)},
    "energy": {
        "Wh": (1.0, 0.0),
        "kWh": (1000.0, 0.0),
        "MWh": (1e6, 0.0),
        "J": (1.0 / 3600.0, 0.0),
        "kJ": (1000.0 / 3600.0, 0.0),
        "MJ": (1e6 / 3600.0, 0.0),
    },
    "dim": {"%": (1.0, 0.0), "/": (100.0, 0.0)},
    "illuminance": {"lx": (1.0, 0.0)},
    "temperature": {
        "°C": (1.0, 0.0),
        "Cel": (1.0, 0.0),
        "degC": (1.0, 0.0),
        "K": (1.0, -273.15),
        "degF": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
        "°F": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    },
    "presence": {"count": (1.0, 0.0), "1": (1.0, 0.0)},
}


def unit_conversion(metric: str, unit: str | None) -> tuple[float, float] | None:
    """``(scale, offset)`` taking ``unit`` to the canonical unit of ``metric``.

    ``None`` (no unit) means the canonical unit. Returns ``None`` when the unit is not a unit
    of that metric.
    """
    if unit is None or unit == "":
        return (1.0, 0.0)
    return _CONVERSIONS[metric].get(unit)


def accepted_units(metric: str) -> list[str]:
    """Units accepted for ``metric`` (for error messages and documentation)."""
    return sorted(_CONVERSIONS[metric])
