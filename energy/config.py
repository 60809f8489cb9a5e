"""The ``[energy]`` section: energy accounting (``sobriety energy``). The meaning of each key is
in energy/README.md; every key with its default in ``sobriety.sample.toml``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from core.config import Section

__all__ = ["EnergyConfig"]


class EnergyConfig(Section):
    """Energy accounting (``sobriety energy``); see energy/README.md for the meaning of each."""

    SECTION: ClassVar[str] = "energy"

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
