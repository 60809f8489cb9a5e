"""The ``[energy]`` section: energy accounting (``sobriety energy``). The meaning of each key is
in energy/README.md; every key with its default in ``sobriety.sample.toml``."""

from __future__ import annotations

from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from core.config import Section

__all__ = ["CCF_SOURCE", "EnergyConfig"]

CCF_SOURCE = (
    "Cloud Carbon Footprint methodology, compute: AWS average over its micro-architectures "
    "(SPECpower), 0.74 W per vCPU idle, 3.5 W at 100 %"
)
"""Where the default per-core watts come from (cloudcarbonfootprint.org/docs/methodology)."""
CCF_MIN_W, CCF_MAX_W = 0.74, 3.5


class EnergyConfig(Section):
    """Energy accounting (``sobriety energy``); see energy/README.md for the meaning of each."""

    SECTION: ClassVar[str] = "energy"
    # What a commune may set for itself ([sites.SITE.energy]): its meters' counter rules and
    # its luminaires' fault thresholds; the service's timing and its own use are the install's.
    SITE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "default_hold_s",
            "glitch_readings",
            "reset_tolerance_wh",
            "resolution_wh",
            "faults_standby_fraction",
            "faults_min_hours",
            "faults_resolve_hours",
            "faults_curve_tolerance",
            "faults_daylight_margin_min",
            "faults_standby_w",
        }
    )

    interval_s: float = Field(900.0, ge=10, description="how often the service recomputes [s]")
    rescan_days: int = Field(
        3, ge=1, le=366, description="local days recomputed at each pass (late data)"
    )
    default_hold_s: float = Field(
        900.0,
        gt=0,
        description="how long a power value holds for a device without a published config [s]",
    )
    glitch_readings: int = Field(
        3, ge=0, le=20, description="readings within which a counter that fell may come back"
    )
    reset_tolerance_wh: float = Field(
        10.0, ge=0, description="a counter that falls to at most this has been reset [Wh]"
    )
    resolution_wh: float = Field(
        10.0, ge=0, description="a counter's step: a fall this small is noise [Wh]"
    )
    pue_category: Literal["PUE1", "PUE2", "PUE3"] = Field(
        "PUE1",
        description="ISO/IEC 30134-2 category: where the IT energy is measured (PUE1 UPS "
        "output, PUE2 PDU output, PUE3 IT equipment input)",
    )
    chunk_devices: int = Field(
        500, ge=1, le=100_000, description="devices computed together (memory bound)"
    )
    own_sample_s: float = Field(
        60.0, ge=1, le=3600, description="each service process samples its own CPU time every [s]"
    )
    own_keep_days: int = Field(
        35, ge=2, le=3660, description="days of CPU samples kept (older ones are deleted) [d]"
    )
    own_min_watts_per_core: float = Field(
        CCF_MIN_W, ge=0, description="power of an idle core, the cpu_time method [W]"
    )
    own_max_watts_per_core: float = Field(
        CCF_MAX_W, ge=0, description="power of a core at 100 %, the cpu_time method [W]"
    )
    own_watts_source: str = Field(
        CCF_SOURCE, min_length=1, description="where own_min/max_watts_per_core come from"
    )
    own_timezone: str = Field(
        "UTC", description="the zone of the days of api.service_energy_daily (IANA name)"
    )
    rapl_path: str = Field(
        "/sys/class/powercap", description="the powercap tree with the RAPL package counters"
    )
    faults_standby_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="luminaire faults: a lamp commanded on whose power stays below this "
        "fraction of the power expected at its level has failed; one lit in daytime draws more "
        "than standby + this fraction of (full power - standby)",
    )
    faults_min_hours: int = Field(
        2, ge=1, le=168, description="luminaire faults: hours of fault before an alert [h]"
    )
    faults_resolve_hours: int = Field(
        3, ge=1, le=168, description="luminaire faults: normal hours before it is resolved [h]"
    )
    faults_curve_tolerance: float = Field(
        0.10,
        gt=0,
        le=1,
        description="luminaire faults: relative difference of the measured power from the "
        "driver curve at its dim level beyond which it is off its curve",
    )
    faults_daylight_margin_min: float = Field(
        60.0,
        ge=0,
        le=240,
        description="luminaire faults: daytime starts this long after sunrise and ends this "
        "long before sunset, for day burners [min]",
    )
    faults_standby_w: float = Field(
        0.4,
        ge=0,
        le=50,
        description="luminaire faults: a driver's standby power, where the luminaire has no "
        "standby_w property [W]",
    )

    @field_validator("own_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA time zone name (UTC, Europe/Paris, ...)") from None
        return value

    @model_validator(mode="after")
    def _watts(self) -> EnergyConfig:
        if self.own_min_watts_per_core > self.own_max_watts_per_core:
            raise ValueError(
                f"own_min_watts_per_core = {self.own_min_watts_per_core} is above "
                f"own_max_watts_per_core = {self.own_max_watts_per_core}"
            )
        ccf = (self.own_min_watts_per_core, self.own_max_watts_per_core) == (CCF_MIN_W, CCF_MAX_W)
        if not ccf and self.own_watts_source == CCF_SOURCE:
            raise ValueError(
                "own_min_watts_per_core / own_max_watts_per_core differ from Cloud Carbon "
                "Footprint's figures: say where yours come from in own_watts_source"
            )
        return self
