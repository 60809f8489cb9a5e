"""Typed payloads of the device channels other than ``up``: ``config`` (service → device,
retained, versioned), ``cmd`` (service → device, momentary) and ``state`` (device → service,
retained). The policy engine publishes them and the simulated devices obey them with these same
models; ``sobriety contract schema`` prints their JSON Schemas for device integrators.

Every model is frozen and refuses unknown keys: a device that receives a payload it cannot
validate keeps what it was doing and says why on its ``state`` (``config_error``). Units: seconds,
minutes where the key says ``_min``, levels in % of full light, deadbands in the canonical unit of
their metric (W, Wh, m³/h, m³, bar, ...; see :data:`core.contract.METRICS`).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from pydantic import Field, StringConstraints, ValidationError, model_validator

from core.contract import MetricName
from core.models import StrictModel

__all__ = [
    "Command",
    "DeviceConfig",
    "DeviceState",
    "LightingProgram",
    "MessageError",
    "Reporting",
    "decode_command",
    "decode_config",
    "decode_state",
    "encode",
]

M = TypeVar("M", bound=StrictModel)
Level = Annotated[float, Field(ge=0, le=100)]
"""A light level [% of full light]."""
LocalTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
"""A local time of day, ``HH:MM`` (24 h)."""


class MessageError(ValueError):
    """A ``config`` or ``cmd`` payload that a device must refuse; the message says why."""


class Reporting(StrictModel):
    """How a device reports: it samples every ``interval_s`` and sends ``batch`` samples per
    message (several SenML records); a metric that moved less than its ``deadband`` since the
    last value sent is skipped (report by exception) unless ``max_silence_s`` has passed."""

    interval_s: int = Field(600, ge=1, le=86400, description="sampling interval [s]")
    batch: int = Field(1, ge=1, le=100, description="samples per message")
    deadband: dict[MetricName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="per canonical metric, in its canonical unit"
    )
    max_silence_s: int = Field(
        3600, ge=1, description="a value is sent at least this often despite the deadband [s]"
    )


class LightingProgram(StrictModel):
    """A night's program of a luminaire: on at sunset + ``on_offset_min``, off at the next
    sunrise + ``off_offset_min`` (astronomical clock at the site's coordinates, sun's upper limb
    with standard refraction), and in between the dimming ``steps`` of (local ``"HH:MM"``,
    level %) — a step holds until the next one, through midnight; before the first step of the
    night the light is at 100 %. A local time at or after 12:00 belongs to the evening, before
    12:00 to the next morning.

    With a photocell, ``on_lux`` / ``off_lux`` [lx] switch on when the ambient light falls
    below the threshold (off when it rises above it), searched within ±``lux_window_min``
    [min] of the astronomical instant; ``None`` means the astronomical clock only.
    ``part_night`` (local ``"HH:MM"`` start, end; same noon rule) is a part-night switch-off:
    between them the level is ``part_night_level`` % (0 = off; an exception such as a crossing
    keeps a floor above 0), overriding the steps; at its end the step in force returns.
    A presence detection raises the level to ``presence_boost`` % for ``presence_hold_s``
    (device-side, not part of the schedule). :mod:`core.lighting` holds the semantics."""

    on_offset_min: int = Field(0, ge=-720, le=720, description="after sunset [min]")
    off_offset_min: int = Field(0, ge=-720, le=720, description="after sunrise [min]")
    steps: tuple[tuple[LocalTime, Level], ...] = Field(
        (("22:00", 70.0), ("23:30", 40.0), ("05:30", 70.0)),
        description='dimming steps: ["HH:MM" local time, level %]',
    )
    presence_boost: Level = 100.0
    presence_hold_s: int = Field(120, ge=0, description="hold time after a detection [s]")
    on_lux: float | None = Field(
        None,
        ge=0,
        description="photocell: on when ambient light falls below this [lx], searched within "
        "±lux_window_min of sunset + on_offset_min; null = astronomical clock only",
    )
    off_lux: float | None = Field(
        None,
        ge=0,
        description="photocell: off when ambient light rises above this [lx], searched within "
        "±lux_window_min of sunrise + off_offset_min; null = astronomical clock only",
    )
    lux_window_min: int = Field(
        30,
        ge=0,
        le=240,
        description="photocell search window around the astronomical instant [min]",
    )
    part_night: tuple[LocalTime, LocalTime] | None = Field(
        None,
        description='part-night switch-off: ["HH:MM" start, "HH:MM" end] local time, at or '
        "after 12:00 = evening, before = next morning; null = none",
    )
    part_night_level: Level = Field(
        0.0, description="level during part-night [%] (0 = off; > 0 for an exception)"
    )

    @model_validator(mode="after")
    def _part_night_is_an_interval(self) -> LightingProgram:
        if self.part_night is not None:
            start, end = (_minutes_after_noon(when) for when in self.part_night)
            if start == end:
                raise ValueError(f"part_night {self.part_night}: start equals end")
            if start > end:
                raise ValueError(
                    f"part_night {self.part_night}: the end comes before the start in the night "
                    "(times at or after 12:00 are the evening, before 12:00 the next morning)"
                )
        return self


def _minutes_after_noon(when: str) -> int:
    """Minutes from 12:00 of a local ``HH:MM`` in its night (12:00 → 0, 11:59 → 1439)."""
    return (int(when[:2]) * 60 + int(when[3:]) - 720) % 1440


class DeviceConfig(StrictModel):
    """The retained ``config`` of a device: what it should do until the next ``version``.
    A part left out (``reporting``, ``lighting``) leaves the device's current one in force."""

    version: int = Field(..., ge=0, description="increases with every change")
    reporting: Reporting | None = None
    lighting: LightingProgram | None = None


class Command(StrictModel):
    """A momentary ``cmd``: hold the light at ``dim`` % for ``duration_s``, then return to the
    program (luminaires)."""

    dim: Level = Field(..., description="light level [%]")
    duration_s: float = Field(3600.0, gt=0, le=7 * 86400, description="how long [s]")


class DeviceState(StrictModel):
    """The retained ``state`` of a device or gateway: online (a gateway's last will says
    ``false``), the version of the config it applied, and why it refused the last one."""

    online: bool
    config_version: int | None = Field(None, ge=0)
    config_error: str | None = None


def _decode(model: type[M], payload: bytes) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MessageError(problems) from None


def decode_config(payload: bytes) -> DeviceConfig:
    """A ``config`` payload; :class:`MessageError` saying what is wrong."""
    return _decode(DeviceConfig, payload)


def decode_command(payload: bytes) -> Command:
    """A ``cmd`` payload; :class:`MessageError` saying what is wrong."""
    return _decode(Command, payload)


def decode_state(payload: bytes) -> DeviceState:
    """A ``state`` payload; :class:`MessageError` saying what is wrong."""
    return _decode(DeviceState, payload)


def encode(message: DeviceConfig | Command | DeviceState) -> bytes:
    """The JSON payload of a message (keys left at None are omitted)."""
    return orjson.dumps(message.model_dump(mode="json", exclude_none=True))
