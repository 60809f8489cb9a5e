"""History scenario files (TOML) for :mod:`simulators.history`: a commune's water network over
months, its customers and meters, the leak-free changes a detector must not take for leaks, and
the leaks — random (Poisson per DMA) or placed by hand. Ranges ``(low, high)`` are drawn per DMA.
Units: m³/h, m³, km, metres of water, days; see ``scenarios/evaluation.toml``."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field

from core.models import StrictModel, load_file


class HistoryLeaks(StrictModel):
    """Random leaks: ``per_dma`` on average over the period (Poisson), sizes log-uniform
    between ``size_fraction`` bounds of the DMA's MNF, a ``burst_share`` of bursts (the rest
    grows over ``ramp_days``), repaired after ``repair_days`` (uniform)."""

    per_dma: float = Field(1.5, ge=0)
    size_fraction: tuple[float, float] = (0.03, 1.0)
    burst_share: float = Field(0.5, ge=0, le=1)
    ramp_days: tuple[float, float] = (1.0, 7.0)
    repair_days: tuple[float, float] = (3.0, 25.0)
    quiet_days: float = Field(21.0, ge=0, description="no leak in the first days (learning)")


class FixedLeak(StrictModel):
    """A leak placed by hand: DMA index, kind, start [days from the start], duration [days]
    (None: until the end), size as a fraction of the DMA's MNF, ramp [days] if incipient."""

    dma: int = Field(0, ge=0)
    kind: Literal["burst", "incipient"] = "burst"
    start_day: float = Field(..., ge=0)
    days: float | None = Field(None, gt=0)
    size_fraction: float = Field(..., gt=0)
    ramp_days: float = Field(2.0, gt=0)


class HistoryScenario(StrictModel):
    """A history scenario (TOML). Ranges ``(low, high)`` are drawn per DMA."""

    name: str = "history"
    site: str = "eval"
    timezone: str = "Europe/Paris"
    start: date = date(2026, 2, 2)
    days: int = Field(120, ge=1)
    sample_s: int = Field(900, ge=60, le=3600)
    customer_interval_s: int = Field(3600, ge=600, le=86400)
    dmas: int = Field(6, ge=1)
    customers: tuple[int, int] = (150, 500)
    smart_meter_share: float = Field(0.85, ge=0, le=1)
    consumption_m3_per_day: float = Field(0.15, gt=0, description="mean per customer")
    mains_km: tuple[float, float] = (5.0, 20.0)
    background_m3h_per_km: tuple[float, float] = (0.03, 0.12)
    seasonal_swing: float = Field(0.08, ge=0, description="of background leakage over a year")
    pressure_m: tuple[float, float] = (35.0, 55.0)
    outlet_share: float = Field(0.3, ge=0, le=1, description="DMAs feeding another area")
    flow_noise: float = Field(0.01, ge=0, description="relative noise of a flow sample")
    day_to_day: float = Field(0.08, ge=0, description="relative spread of daily demand")
    school_holidays: list[tuple[date, date, float]] = Field(
        default_factory=lambda: [
            (date(2026, 2, 14), date(2026, 3, 2), 0.25),
            (date(2026, 4, 11), date(2026, 4, 27), 0.25),
            (date(2026, 7, 4), date(2026, 9, 1), 0.35),
            (date(2026, 10, 17), date(2026, 11, 2), 0.2),
            (date(2026, 12, 19), date(2027, 1, 4), 0.2),
        ],
        description="(first day, day after the last, share of households away)",
    )
    public_holidays: list[date] = Field(
        default_factory=lambda: [
            date(2026, 1, 1),
            date(2026, 4, 6),
            date(2026, 5, 1),
            date(2026, 5, 8),
            date(2026, 5, 14),
            date(2026, 5, 25),
            date(2026, 7, 14),
            date(2026, 8, 15),
            date(2026, 11, 1),
            date(2026, 11, 11),
            date(2026, 12, 25),
        ]
    )
    large_consumers: int = Field(1, ge=0, description="new metered 24/7 consumers (total)")
    large_consumer_m3h: tuple[float, float] = (0.3, 1.5)
    customer_leaks: int = Field(3, ge=0, description="customers with a leak behind the meter")
    customer_leak_m3h: tuple[float, float] = (0.003, 0.03)
    high_consumers: int = Field(2, ge=0, description="customers who start using 3x more")
    silent_meter_days: float = Field(2.0, ge=0, description="an inlet meter stops (0: never)")
    frozen_meter_days: float = Field(1.0, ge=0, description="an inlet meter freezes (0: never)")
    leaks: HistoryLeaks = HistoryLeaks()
    fixed_leaks: list[FixedLeak] = Field(default_factory=list)


def load_history_scenario(path: Path) -> HistoryScenario:
    """Read and validate a history scenario; :class:`ConfigError` names file, key, value."""
    return load_file(path, HistoryScenario, "history scenario")


def packaged_history(name: str = "evaluation") -> Path:
    """Path of a history scenario shipped with the package."""
    return Path(__file__).with_name("scenarios") / f"{name}.toml"
