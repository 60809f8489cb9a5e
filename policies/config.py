"""The policies: lighting programs, their calendars, the luminaires that stay lit (exceptions),
the safety floors per lighting class, and the reporting rates per device kind.

One typed model, :class:`PoliciesConfig`, read either from the ``[policies]`` section of the
main configuration file (it is a :class:`core.config.Section`) or from a file of its own whose
top level is the same content (:func:`load_policies`, ``sobriety policies check FILE``).
Unknown keys are errors, and every error names the file, the key
(``programs.residential.steps[1]``), the value and what was expected. The meaning and default of
every key is in policies/README.md; ``examples/policies.toml`` is a full example.

Units: levels in % of full light, offsets in minutes, intervals in seconds, illuminance in lx,
deadbands in the canonical unit of their metric (:data:`core.contract.METRICS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.config import Section
from core.contract import DEVICE_KINDS, MetricName
from core.errors import ConfigError
from core.models import Loc, StrictModel, describe_errors, read_toml

__all__ = [
    "LIGHTING_CLASSES",
    "WEEKDAYS",
    "Accounting",
    "CalendarRule",
    "Calendars",
    "KindReporting",
    "LitException",
    "PoliciesConfig",
    "Program",
    "ServiceSettings",
    "SimulateEnergy",
    "default_reporting",
    "key_path",
    "load_policies",
    "night_minutes",
    "parse_policies",
]

LIGHTING_CLASSES: Final = (
    *(f"M{n}" for n in range(1, 7)),
    *(f"C{n}" for n in range(6)),
    *(f"P{n}" for n in range(1, 7)),
    *(f"HS{n}" for n in range(1, 5)),
    *(f"SC{n}" for n in range(1, 10)),
    *(f"EV{n}" for n in range(1, 7)),
)
"""The lighting classes of EN 13201-2: motorised traffic (M1-M6), conflict areas (C0-C5),
pedestrians and low speed (P1-P6), and the additional classes HS, SC and EV."""
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names of a calendar rule, in :meth:`datetime.date.weekday` order."""

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")


def night_minutes(when: str) -> int:
    """Minutes from 12:00 of a local ``HH:MM`` in its night (12:00 → 0, 23:30 → 690, 05:30 →
    1050, 11:59 → 1439): at or after noon is the evening, before noon the next morning."""
    return (int(when[:2]) * 60 + int(when[3:]) - 720) % 1440


def _local_time(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError('a local time "HH:MM" from 00:00 to 23:59')
    return value


def _level(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError("a level from 0 to 100 [%]")
    return value


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("a name of 1-64 of A-Za-z0-9_.- (starting with a letter or digit)")
    return value


def _lighting_class(value: str) -> str:
    upper = value.strip().upper()
    if upper not in LIGHTING_CLASSES:
        raise ValueError(f"a lighting class of EN 13201: one of {', '.join(LIGHTING_CLASSES)}")
    return upper


def _device_kind(value: str) -> str:
    if value not in DEVICE_KINDS:
        raise ValueError(f"a device kind: one of {', '.join(DEVICE_KINDS)}")
    return value


def _calendar_day(value: str) -> str:
    """``MM-DD`` (every year) or ``YYYY-MM-DD`` (that day only)."""
    expected = "a date MM-DD (every year, e.g. 12-01) or YYYY-MM-DD (e.g. 2026-07-14)"
    match = _MONTH_DAY.match(value)
    try:
        if match:
            date(2000, int(match[1]), int(match[2]))  # a leap year: 02-29 is a day
        elif len(value) == 10:
            date.fromisoformat(value)
        else:
            raise ValueError(expected)
    except ValueError:
        raise ValueError(expected) from None
    return value


LocalTime = Annotated[str, AfterValidator(_local_time)]
"""A local time of day, ``"HH:MM"`` (24 h)."""
Level = Annotated[float, AfterValidator(_level)]
"""A light level [% of full light]."""
Name = Annotated[str, AfterValidator(_name)]
LightingClass = Annotated[str, AfterValidator(_lighting_class)]
CalendarDay = Annotated[str, AfterValidator(_calendar_day)]
DeviceKind = Annotated[str, AfterValidator(_device_kind)]
"""A device kind (:data:`core.contract.DEVICE_KINDS`)."""


def _problems(title: str, problems: list[tuple[Loc, Any, str]]) -> None:
    """Raise the ``(key, value, expected)`` problems of a rule across keys as one
    :class:`ValidationError`, each at its own key (so the message names it)."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("policies", "{expected}", {"expected": expected}),
                    loc=loc,
                    input=value,
                )
                for loc, value, expected in problems
            ],
        )


class Program(StrictModel):
    """A lighting program: when the light goes on and off, its dimming steps, its part-night
    switch-off and its presence boost. Mapped onto :class:`core.messages.LightingProgram` by
    :func:`policies.programs.device_program`."""

    on: Literal["sunset", "lux"] = "sunset"
    on_offset_min: int = Field(0, ge=-720, le=720)
    on_lux: float | None = Field(None, ge=0, le=2e5)
    off: Literal["sunrise", "lux"] = "sunrise"
    off_offset_min: int = Field(0, ge=-720, le=720)
    off_lux: float | None = Field(None, ge=0, le=2e5)
    lux_window_min: int = Field(30, ge=0, le=240)
    steps: tuple[tuple[LocalTime, Level], ...] = ()
    part_night: tuple[LocalTime, LocalTime] | None = None
    presence_boost: Level = 100.0
    presence_hold_s: int = Field(120, ge=0, le=86400)

    @model_validator(mode="after")
    def _consistent(self) -> Program:
        problems: list[tuple[Loc, Any, str]] = []
        for switch, lux in (("on", self.on_lux), ("off", self.off_lux)):
            mode = getattr(self, switch)
            if mode == "lux" and lux is None:
                problems.append(
                    ((f"{switch}_lux",), None, f'a threshold [lx] (required with {switch} = "lux")')
                )
            elif mode != "lux" and lux is not None:
                problems.append(((f"{switch}_lux",), lux, f'no threshold unless {switch} = "lux"'))
        night = [night_minutes(when) for when, _level in self.steps]
        problems.extend(
            (
                ("steps", index),
                list(self.steps[index]),
                f"a time after the previous step's {self.steps[index - 1][0]} in the night "
                "(steps in night order: 12:00-23:59 the evening, then 00:00-11:59 the next "
                "morning)",
            )
            for index in range(1, len(night))
            if night[index] <= night[index - 1]
        )
        if self.part_night is not None:
            start, end = (night_minutes(when) for when in self.part_night)
            if end <= start:
                problems.append(
                    (
                        ("part_night",),
                        list(self.part_night),
                        '["start", "end"] with the end after the start in the night '
                        "(12:00-23:59 the evening, 00:00-11:59 the next morning)",
                    )
                )
        _problems("Program", problems)
        return self


def _known_weekday(value: str) -> str:
    if value not in WEEKDAYS:
        raise ValueError(f"a weekday: one of {', '.join(WEEKDAYS)}")
    return value


class CalendarRule(StrictModel):
    """Use ``program`` on the nights (by the local date of the evening) within ``from``-``to``
    (inclusive; ``MM-DD`` every year — the range may wrap over New Year — or ``YYYY-MM-DD``),
    on ``weekdays``, for ``groups``; an absent condition matches everything."""

    from_: CalendarDay | None = Field(None, alias="from")
    to: CalendarDay | None = None
    weekdays: tuple[Annotated[str, AfterValidator(_known_weekday)], ...] | None = None
    groups: tuple[str, ...] | None = None
    program: str

    @model_validator(mode="after")
    def _range(self) -> CalendarRule:
        problems: list[tuple[Loc, Any, str]] = []
        yearly = [d is not None and len(d) == 5 for d in (self.from_, self.to)]
        if any(yearly):
            if self.from_ is None or self.to is None:
                missing = "to" if self.to is None else "from"
                problems.append(
                    ((missing,), None, "a date too (a yearly MM-DD range needs both from and to)")
                )
            elif not all(yearly):
                problems.append(
                    (("to",), self.to, "the same form as from (both MM-DD or both YYYY-MM-DD)")
                )
        elif self.from_ is not None and self.to is not None and self.to < self.from_:
            problems.append((("to",), self.to, f"a date on or after from ({self.from_})"))
        if self.weekdays is not None and not self.weekdays:
            problems.append((("weekdays",), [], "at least one weekday (or no weekdays key)"))
        if self.groups is not None and not self.groups:
            problems.append((("groups",), [], "at least one group (or no groups key: all)"))
        _problems("CalendarRule", problems)
        return self


class Calendars(StrictModel):
    """Which program a lighting group follows on a night: the first matching rule, else the
    group's program, else ``default``."""

    default: str = "default"
    groups: dict[str, str] = Field(default_factory=dict)
    rules: tuple[CalendarRule, ...] = ()


def _lit_level(value: float) -> float:
    if not 0 < value <= 100:
        raise ValueError("a level above 0 and at most 100 [%] (lit)")
    return value


def _reason(value: str) -> str:
    if not value.strip():
        raise ValueError("a reason: why they stay lit (a crossing, a roundabout)")
    return value


class LitException(StrictModel):
    """Luminaires (by lighting ``groups`` and/or ``devices`` ids) that stay lit at ``floor`` %
    during a part-night switch-off: a pedestrian crossing, a roundabout."""

    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    floor: Annotated[float, AfterValidator(_lit_level)]
    reason: Annotated[str, AfterValidator(_reason)]

    @model_validator(mode="after")
    def _names_someone(self) -> LitException:
        if not self.groups and not self.devices:
            _problems("LitException", [(("groups",), None, "groups and/or devices (a list)")])
        return self


class KindReporting(StrictModel):
    """How the devices of one kind report: every ``day_interval_s`` by day and every
    ``night_interval_s`` by night (between sunset and sunrise at the site), ``batch`` samples
    per message, ``deadband`` per metric (report by exception) unless ``max_silence_s`` passed,
    and every ``escalated_interval_s`` for the sensors of a DMA with an active leak alert."""

    day_interval_s: int = Field(600, ge=1, le=86400)
    night_interval_s: int = Field(600, ge=1, le=86400)
    batch: int = Field(1, ge=1, le=100)
    deadband: dict[MetricName, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    max_silence_s: int = Field(3600, ge=1)
    escalated_interval_s: int = Field(600, ge=1, le=86400)

    @model_validator(mode="after")
    def _escalation_is_faster(self) -> KindReporting:
        if self.escalated_interval_s > min(self.day_interval_s, self.night_interval_s):
            _problems(
                "KindReporting",
                [
                    (
                        ("escalated_interval_s",),
                        self.escalated_interval_s,
                        "at most the day and night intervals "
                        f"({min(self.day_interval_s, self.night_interval_s)} s): a faster rate",
                    )
                ],
            )
        return self


_DEFAULT_RATES: Final[dict[str, tuple[int, int, int]]] = {
    # kind: (interval [s], batch, escalated interval [s]); the simulators' defaults
    "luminaire": (600, 6, 600),
    "cabinet_meter": (300, 3, 300),
    "flow_meter": (300, 3, 60),
    "pressure_sensor": (300, 3, 60),
    "water_meter": (3600, 1, 3600),
    "pump_meter": (300, 3, 300),
    "facility_meter": (300, 3, 300),
    "it_meter": (300, 3, 300),
}


def _default_values(kind: str) -> dict[str, Any]:
    interval, batch, escalated = _DEFAULT_RATES[kind]
    return {
        "day_interval_s": interval,
        "night_interval_s": interval,
        "batch": batch,
        "escalated_interval_s": escalated,
    }


def default_reporting() -> dict[str, KindReporting]:
    """The reporting of every kind when the policies say nothing: the simulators' defaults
    (:func:`simulators.scenario` ``Reporting``), one rate day and night, and a 60 s escalated
    rate for flow meters and pressure sensors."""
    return {kind: KindReporting.model_validate(_default_values(kind)) for kind in DEVICE_KINDS}


def _with_kind_defaults(value: Any) -> Any:
    """A kind given in part keeps that kind's defaults for the keys it leaves out; a kind left
    out keeps all of them."""
    if not isinstance(value, Mapping):
        return value
    merged: dict[Any, Any] = {kind: _default_values(kind) for kind in DEVICE_KINDS}
    for kind, given in value.items():
        if isinstance(given, Mapping) and kind in _DEFAULT_RATES:
            merged[kind] = {**_default_values(kind), **given}
        else:
            merged[kind] = given
    return merged


class ServiceSettings(StrictModel):
    """How the policies service runs (``[policies.service]``)."""

    interval_s: float = Field(
        60.0, ge=1, le=3600, description="how often the desired configs are recomputed [s]"
    )
    publish_timeout_s: float = Field(
        60.0, gt=0, description="how long to wait for the broker to acknowledge a pass [s]"
    )
    resend_after_s: float = Field(
        600.0,
        ge=0,
        description="an online device still not running its published version after this "
        "long is sent it again (same version) [s]; 0 = never",
    )


class Accounting(StrictModel):
    """The fixed-rate baseline of ``api.reporting_daily`` (``[policies.accounting]``)."""

    baseline_interval_s: int = Field(
        900,
        ge=1,
        le=86400,
        description="baseline: one single-record message per metric this often [s]",
    )
    uplink_energy_j: float = Field(
        0.0366,
        ge=0,
        description="radio energy of one uplink message at the device [J] (a LoRaWAN SF9 "
        "uplink of ~20 bytes with its two receive windows; ingest/README.md)",
    )


class SimulateEnergy(StrictModel):
    """What ``sobriety policies simulate`` adds to the luminaires' lamp power: their drivers'
    standby, and the losses between the luminaires and their cabinets' meters (line losses, the
    cabinet's own electronics). All 0 by default: the figures are then at the luminaires only."""

    standby_w: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="drawn by a luminaire's driver whenever powered, lit or not [W]; a "
        "luminaire's inventory property standby_w overrides it",
    )
    line_loss_fraction: float = Field(
        0.0, ge=0, le=1, description="a cabinet's line losses, of its luminaires' power"
    )
    cabinet_overhead_w: float = Field(
        0.0,
        ge=0,
        le=100000,
        description="a cabinet's own constant draw (meter, controller) [W], per cabinet_meter",
    )


class PoliciesConfig(Section):
    """The policies (see policies/README.md): with no key at all, one program ``default`` —
    on at sunset, off at sunrise, full light all night — for every group, and the simulators'
    reporting rates."""

    SECTION: ClassVar[str] = "policies"
    # What a commune may set for itself ([sites.SITE.policies]): its programs, calendars,
    # exceptions, floors, reporting and cabinets; the service and the accounting baseline are
    # the install's.
    SITE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"programs", "calendars", "exceptions", "floors", "reporting", "simulate"}
    )

    programs: dict[Annotated[str, AfterValidator(_name)], Program] = Field(
        default_factory=lambda: {"default": Program()}
    )
    calendars: Calendars = Field(default_factory=Calendars)
    exceptions: tuple[LitException, ...] = ()
    floors: dict[LightingClass, Level] = Field(default_factory=dict)
    reporting: Annotated[dict[DeviceKind, KindReporting], BeforeValidator(_with_kind_defaults)] = (
        Field(default_factory=default_reporting)
    )
    simulate: SimulateEnergy = Field(default_factory=SimulateEnergy)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    accounting: Accounting = Field(default_factory=Accounting)

    @model_validator(mode="after")
    def _programs_exist(self) -> PoliciesConfig:
        known = ", ".join(self.programs) or "none"
        expected = f"the name of a program (one of {known})"
        named: list[tuple[Loc, str]] = [(("calendars", "default"), self.calendars.default)]
        named += [(("calendars", "groups", g), p) for g, p in self.calendars.groups.items()]
        named += [
            (("calendars", "rules", n, "program"), rule.program)
            for n, rule in enumerate(self.calendars.rules)
        ]
        _problems(
            "PoliciesConfig",
            [(loc, name, expected) for loc, name in named if name not in self.programs],
        )
        return self


def key_path(loc: Loc) -> str:
    """``programs.residential.steps[1]``: a location as a key path (``[key]``, pydantic's mark
    of a mapping's key, is dropped: the key is the part before it)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out


def load_policies(path: Path) -> PoliciesConfig:
    """Read a policies file (its top level is the content of a ``[policies]`` section).
    :class:`ConfigError` naming the file, the key, the value and what was expected, for every
    error at once (joined by ``; ``)."""
    raw = read_toml(path, "policies file")
    return parse_policies(raw, source=str(path))


def parse_policies(raw: Mapping[str, Any], source: str) -> PoliciesConfig:
    """Validate policies already read (``source`` names where they came from in errors)."""
    try:
        return PoliciesConfig.model_validate(raw)
    except ValidationError as exc:
        lines = describe_errors(
            exc,
            raw,
            where=lambda _loc: source,
            name=key_path,
            unknown="no such key (see policies/README.md for the keys)",
        )
        raise ConfigError("; ".join(lines)) from None
