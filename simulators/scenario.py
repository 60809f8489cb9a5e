"""Scenario files: a TOML description of a town (several sites), its faults and leaks.

Every key has a default, so ``[[sites]]`` with a ``site`` id is a valid scenario; unknown keys are
errors naming the file, the key, the value and what was expected. See ``scenarios/demo.toml``.
Units: powers in W (or kW where the key says so), flows in m³/h, lengths in km, pressures in metres
of water, durations in seconds unless the key says hours/days.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from core.contract import DEVICE_KINDS, valid_segment
from core.errors import ConfigError
from core.messages import LightingProgram, Reporting
from core.models import StrictModel, describe_errors, read_toml
from simulators.site_templates import expand_templates, origin_of


def _default_reporting() -> dict[str, Reporting]:
    return {
        "luminaire": Reporting(interval_s=600, batch=6),
        "cabinet_meter": Reporting(interval_s=300, batch=3),
        "flow_meter": Reporting(interval_s=300, batch=3),
        "pressure_sensor": Reporting(interval_s=300, batch=3),
        "water_meter": Reporting(interval_s=3600, batch=1),
        "pump_meter": Reporting(interval_s=300, batch=3),
        "facility_meter": Reporting(interval_s=300, batch=3),
        "it_meter": Reporting(interval_s=300, batch=3),
    }


class Lighting(StrictModel):
    """Streets of luminaires under cabinets."""

    streets: int = Field(4, ge=0)
    luminaires_per_street: int = Field(10, ge=1)
    streets_per_cabinet: int = Field(2, ge=1)
    classes: list[str] = Field(default_factory=lambda: ["M3", "M4", "M5"])
    nominal_power_w: list[float] = Field(default_factory=lambda: [30.0, 40.0, 60.0])
    standby_w: float = Field(0.4, ge=0, description="drawn by a driver, lit or not [W]")
    line_loss_fraction: float = Field(
        0.03, ge=0, le=1, description="losses of a cabinet's lines, of its luminaires' power"
    )
    cabinet_overhead_w: float = Field(
        5.0, ge=0, description="a cabinet's own electronics (meter, controller) [W]"
    )
    presence_fraction: float = Field(0.2, ge=0, le=1)
    presence_rate_per_hour: float = Field(3.0, ge=0)
    lamp_failures: int = Field(1, ge=0, description="lamps that fail during the run")
    day_burners: int = Field(1, ge=0, description="lamps stuck on in daytime")
    drifting: int = Field(1, ge=0, description="lamps whose power drifts up from their curve")
    drift_per_day: float = Field(0.05, ge=0)
    program: LightingProgram = LightingProgram()


class Leak(StrictModel):
    """A leak: ``burst`` (a step of ``flow_m3h`` at ``start_h``) or ``incipient`` (growing
    linearly to ``flow_m3h`` over ``ramp_h``), repaired at ``end_h`` if given. Hours from the
    start of the run."""

    dma: int = Field(0, ge=0, description="index of the DMA in the site")
    kind: Literal["burst", "incipient"] = "burst"
    start_h: float = Field(..., ge=0)
    end_h: float | None = None
    flow_m3h: float = Field(..., gt=0)
    ramp_h: float = Field(24.0, gt=0)


class HistoryLeak(StrictModel):
    """A leak of the history written before the live run (``history_days``): it starts
    ``start_day`` days before the live start (negative), ``burst`` (a step) or ``incipient``
    (growing linearly over ``ramp_h``), and is repaired ``end_day`` days from the live start
    (negative: during the history; positive: during the live run; absent: never — the live run
    carries it on). Sized by ``flow_m3h``, or by ``size_fraction`` of the DMA's expected minimum
    night flow (its customers' night use and its background leakage, 02:00-04:00 local)."""

    dma: int = Field(0, ge=0, description="index of the DMA in the site")
    kind: Literal["burst", "incipient"] = "burst"
    start_day: float = Field(..., lt=0, description="days from the live start, negative")
    end_day: float | None = None
    size_fraction: float | None = Field(None, gt=0)
    flow_m3h: float | None = Field(None, gt=0)
    ramp_h: float = Field(24.0, gt=0)

    @model_validator(mode="after")
    def _sized(self) -> HistoryLeak:
        if (self.size_fraction is None) == (self.flow_m3h is None):
            raise ValueError("one of size_fraction (of the DMA's minimum night flow) or flow_m3h")
        if self.end_day is not None and self.end_day <= self.start_day:
            raise ValueError(f"end_day = {self.end_day:g} after start_day = {self.start_day:g}")
        return self


class Water(StrictModel):
    """District metered areas with their meters, and the pumping station feeding them."""

    dmas: int = Field(1, ge=0)
    customers_per_dma: int = Field(20, ge=1)
    mains_km_per_dma: float = Field(8.0, gt=0)
    private_km_per_dma: float = Field(1.5, ge=0)
    avg_pressure_m: float = Field(40.0, gt=0)
    outlet_every: int = Field(2, ge=0, description="every Nth DMA has an outlet meter (0: none)")
    consumption_m3_per_day: float = Field(0.15, gt=0, description="mean per customer")
    background_leakage_m3h_per_km: float = Field(0.02, ge=0)
    flow_noise: float = Field(0.005, ge=0, description="relative noise of a flow reading")
    customer_leaks: int = Field(1, ge=0, description="customers with a continuous leak")
    customer_leak_m3h: float = Field(0.01, gt=0)
    pumping_station: bool = True
    pump_kwh_per_m3: float = Field(0.45, gt=0)
    leaks: list[Leak] = Field(default_factory=list)
    history_days: int = Field(
        0, ge=0, le=366, description="days of history before the live run (sobriety demo); 0: none"
    )
    history_leaks: list[HistoryLeak] = Field(default_factory=list)

    @model_validator(mode="after")
    def _history(self) -> Water:
        for n, leak in enumerate(self.history_leaks):
            where = f"history_leaks[{n}]"
            if leak.dma >= self.dmas:
                raise ValueError(f"{where}.dma = {leak.dma}: the site has {self.dmas} DMA(s)")
            if -leak.start_day > self.history_days:
                raise ValueError(
                    f"{where}.start_day = {leak.start_day:g}: within the history, at least "
                    f"-history_days = {-self.history_days}"
                )
        return self


class ServerRoom(StrictModel):
    """The supervision server room: IT load and cooling that follows outdoor temperature."""

    enabled: bool = True
    it_load_kw: float = Field(6.0, gt=0)
    outdoor_mean_c: float = 12.0
    outdoor_swing_c: float = Field(6.0, ge=0)


class Site(StrictModel):
    """One commune."""

    site: str
    name: str | None = None
    lat: float = Field(45.76, ge=-90, le=90)
    lon: float = Field(4.84, ge=-180, le=180)
    timezone: str = "Europe/Paris"
    lighting: Lighting = Lighting()
    water: Water = Water()
    server_room: ServerRoom = ServerRoom()

    @field_validator("site")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not valid_segment(value):
            raise ValueError("an id of 1-64 characters A-Za-z0-9_.-")
        return value


class Faults(StrictModel):
    """Faults injected during the run, counted in the ground truth."""

    malformed: int = Field(2, ge=0)
    duplicates: int = Field(2, ge=0)
    out_of_order: int = Field(1, ge=0)
    late: int = Field(1, ge=0)
    late_s: int = Field(7200, ge=60)
    dropouts: int = Field(1, ge=0)
    dropout_s: int = Field(7200, ge=60)
    clock_skew: int = Field(1, ge=0)
    clock_skew_s: int = Field(-8 * 86400, description="beyond the ingest's window by default")
    clock_skew_duration_s: int = Field(3600, ge=60)
    unknown_devices: int = Field(1, ge=0)
    # Faults of what meters report (simulators/meter_faults.py); the true energy is untouched.
    counter_resets: int = Field(
        0, ge=0, description="energy counters that restart from 0 at a random time"
    )
    counter_rollovers: int = Field(
        0, ge=0, description="energy registers that start near counter_max_wh and wrap"
    )
    counter_max_wh: float = Field(
        999_999_900.0, gt=0, description="maximum of a rolling register [Wh] (the modulus)"
    )
    meter_replacements: int = Field(
        0, ge=0, description="meters replaced: a new index, 10-50 % of the old one"
    )
    spurious_zeros: int = Field(0, ge=0, description="single counter readings sent as 0")
    power_only: int = Field(
        0,
        ge=0,
        description="devices that report power but no energy counter (power gaps pick them first)",
    )
    power_gaps: int = Field(0, ge=0, description="devices silent on power for power_gap_s")
    power_gap_s: int = Field(3 * 3600, ge=60)


class Scenario(StrictModel):
    """A whole scenario."""

    name: str = "scenario"
    start: datetime | Literal["auto"] = "auto"
    days: float = Field(1.0, gt=0)
    step_s: int = Field(60, ge=1, le=3600)
    root: str = "sobriety/v1"
    sites: list[Site] = Field(..., min_length=1)
    reporting: dict[str, Reporting] = Field(default_factory=_default_reporting)
    faults: Faults = Faults()

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | str) -> datetime | str:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("a time with a UTC offset (or 'auto')")
        return value

    @field_validator("reporting")
    @classmethod
    def _kinds(cls, value: dict[str, Reporting]) -> dict[str, Reporting]:
        unknown = sorted(set(value) - set(DEVICE_KINDS))
        if unknown:
            raise ValueError(f"device kinds ({', '.join(DEVICE_KINDS)}), not {', '.join(unknown)}")
        return {**_default_reporting(), **value}

    @model_validator(mode="after")
    def _sampling(self) -> Scenario:
        for kind, rep in self.reporting.items():
            if rep.interval_s < self.step_s:
                raise ValueError(
                    f"reporting.{kind}.interval_s = {rep.interval_s} below step_s = "
                    f"{self.step_s}: a device samples at most once per simulation step"
                )
        return self


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file, its ``[[site_templates]]`` expanded
    (:mod:`simulators.site_templates`); :class:`ConfigError` names file, key and expectation
    (a generated site by its template and id)."""
    return parse_scenario(read_toml(path, "scenario file"), str(path))


def parse_scenario(raw: dict[str, Any], where: str) -> Scenario:
    """:func:`load_scenario` of an already parsed document; ``where`` names it in errors."""
    expanded, origins = expand_templates(raw, where)
    try:
        return Scenario.model_validate(expanded)
    except ValidationError as exc:
        lines = describe_errors(
            exc, expanded, where=lambda _loc: where, name=lambda loc: origin_of(loc, origins),
            unknown="expected no such key",
        )  # fmt: skip
        raise ConfigError("; ".join(lines)) from None


def packaged_scenario(name: str) -> Path:
    """Path of a scenario shipped with the package (``demo``)."""
    return Path(__file__).with_name("scenarios") / f"{name}.toml"
