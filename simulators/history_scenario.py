"""History scenario files (TOML) for :mod:`simulators.history`: a commune's water network over
months, its customers and meters, the leak-free changes a detector must not take for leaks, and
the leaks — random (Poisson per DMA) or placed by hand. Ranges ``(low, high)`` are drawn per DMA
(per sensor, per leak where said); lists marked *cycled* give the first DMA the first value, the
second DMA the second, and start again when the list is shorter than the DMAs. Units: m³/h, m³,
km, metres of water, bar, seconds, days; see ``scenarios/evaluation*.toml``.

The hydraulic model (what the pressure keys mean; :mod:`simulators.history_pressure`):

- a DMA's total inflow ``Q`` [m³/h] is its demand, its background leakage, its leaks, an
  unmetered night consumer and what it passes on through an outlet;
- the head loss from the inlet to a point at a share ``d`` (0 inlet, 1 far end) of the network
  is ``d · head_loss_share · pressure_m · (Q / Q_peak)²`` [m] (Darcy-Weisbach: quadratic in the
  flow), ``Q_peak`` the DMA's expected peak inflow without leaks;
- a pressure sensor reads its static head ``sensor_static_head × pressure_m`` (its elevation)
  minus the loss at its distance share ``sensor_distance``, plus ``pressure_noise_bar``;
- background leakage and leaks follow FAVAD: flow ∝ (P / P₀)^N1, with P the pressure at the
  leak (background: at the average zone point, d = 0.5; a leak: at a distance share drawn in
  [0, 1]) and P₀ that pressure at the DMA's minimum night flow. A leak's size (a fraction of the
  MNF) is therefore its flow at night; by day, when the head loss is larger, it leaks less.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from core.models import StrictModel, load_file

Share = Annotated[float, Field(ge=0, le=1)]
Interval = Annotated[int, Field(ge=600, le=86400)]
MeterMetrics = Literal["volume", "flow", "both"]
DemandPattern = Literal["residential", "night_active", "touristic"]


class HistoryLeaks(StrictModel):
    """Random leaks: ``per_dma`` on average over the period (Poisson), sizes log-uniform
    between ``size_fraction`` bounds of the DMA's MNF, a ``burst_share`` of bursts (the rest
    grows over ``ramp_days``), repaired after ``repair_days`` (uniform), each with a FAVAD
    exponent drawn in ``n1``."""

    per_dma: float = Field(1.5, ge=0)
    size_fraction: tuple[float, float] = (0.03, 1.0)
    burst_share: float = Field(0.5, ge=0, le=1)
    ramp_days: tuple[float, float] = (1.0, 7.0)
    repair_days: tuple[float, float] = (3.0, 25.0)
    quiet_days: float = Field(21.0, ge=0, description="no leak in the first days (learning)")
    n1: tuple[float, float] = Field(
        (0.0, 0.0),
        description="FAVAD exponent range, drawn per leak: 0 a flow that ignores pressure (the "
        "default), 0.5 a hole in a rigid pipe, 1.5 and more cracks in plastic pipes",
    )


class FixedLeak(StrictModel):
    """A leak placed by hand: DMA index, kind, start [days from the start], duration [days]
    (None: until the end), size as a fraction of the DMA's MNF, ramp [days] if incipient, FAVAD
    exponent (None: drawn in ``leaks.n1``)."""

    dma: int = Field(0, ge=0)
    kind: Literal["burst", "incipient"] = "burst"
    start_day: float = Field(..., ge=0)
    days: float | None = Field(None, gt=0)
    size_fraction: float = Field(..., gt=0)
    ramp_days: float = Field(2.0, gt=0)
    n1: float | None = Field(None, ge=0, le=3)


class MeterGroup(StrictModel):
    """A group of the smart customer meters of every DMA: its ``share`` of them, what they
    report and how often."""

    share: float = Field(..., gt=0, le=1)
    metrics: MeterMetrics = "volume"
    interval_s: Interval = 3600


class HistoryScenario(StrictModel):
    """A history scenario (TOML). Ranges ``(low, high)`` are drawn per DMA; every key has a
    default, and the defaults are the network of the first evaluation (hourly index meters on
    85 % of the customers, one inlet, one pressure sensor, residential demand)."""

    name: str = "history"
    site: str = "eval"
    timezone: str = "Europe/Paris"
    start: date = date(2026, 2, 2)
    days: int = Field(120, ge=1)
    sample_s: int = Field(900, ge=60, le=3600, description="DMA meters and pressure [s]")
    dmas: int = Field(6, ge=1)
    customers: tuple[int, int] = (150, 500)
    consumption_m3_per_day: float = Field(0.15, gt=0, description="mean per customer")
    mains_km: tuple[float, float] = (5.0, 20.0)
    # --- customer meters --------------------------------------------------------------------
    smart_meter_share: float = Field(0.85, ge=0, le=1, description="customers with a meter")
    coverage: list[Share] = Field(
        default_factory=list,
        description="smart-meter share per DMA, cycled (empty: smart_meter_share everywhere)",
    )
    meter_metrics: list[MeterMetrics] = Field(
        default_factory=lambda: list[MeterMetrics](["volume"]),
        description="what the meters report, one value or a list cycled over the DMAs: volume "
        "(index, m³), flow (mean m³/h over the interval, stamped at its end) or both",
    )
    customer_interval_s: list[Interval] = Field(
        default_factory=lambda: [3600],
        description="reading interval [s], 600 to 86400 (daily), one value or a list cycled",
    )
    meter_groups: list[MeterGroup] = Field(
        default_factory=list,
        description="a mix of meter kinds in every DMA, shares summing to 1 (empty: one group "
        "of the DMA's meter_metrics every customer_interval_s)",
    )
    # --- demand -----------------------------------------------------------------------------
    demand_patterns: list[DemandPattern] = Field(
        default_factory=lambda: list[DemandPattern](["residential"]),
        description="per DMA, cycled: residential (households), night_active (households and "
        "a hospital or factory running day and night), touristic (holiday homes)",
    )
    night_active_m3h: tuple[float, float] = Field(
        (0.5, 2.0), description="mean flow of a night_active DMA's institution [m³/h]"
    )
    night_active_metered: bool = Field(True, description="the institution has a smart meter")
    touristic_occupancy: tuple[Share, Share, Share] = Field(
        (0.35, 0.6, 0.95),
        description="share of holiday homes occupied on weekdays, weekends and public "
        "holidays, school holidays (touristic DMAs; the MNF is sized on weekdays)",
    )
    day_to_day: float = Field(0.08, ge=0, description="relative spread of daily demand")
    # --- DMA meters and hydraulics ------------------------------------------------------------
    inlets: tuple[int, int] = Field((1, 1), description="inlet flow meters per DMA (1 or 2)")
    inlet_share: tuple[float, float] = Field(
        (0.3, 0.7), description="mean share of the inflow through the first of two inlets"
    )
    inlet_share_swing: float = Field(
        0.1, ge=0, le=0.3, description="amplitude of its slow variation (periods of days)"
    )
    outlet_share: float = Field(0.3, ge=0, le=1, description="DMAs feeding another area")
    flow_noise: float = Field(0.01, ge=0, description="relative noise of a flow sample")
    background_m3h_per_km: tuple[float, float] = (0.03, 0.12)
    background_n1: float = Field(1.0, ge=0, le=3, description="FAVAD exponent of background")
    seasonal_swing: float = Field(0.08, ge=0, description="of background leakage over a year")
    pressure_m: tuple[float, float] = Field(
        (35.0, 55.0), description="static head at the average zone point [m]"
    )
    head_loss_share: float = Field(
        0.15, ge=0, le=0.6, description="head loss at the far end at the peak inflow, of "
        "pressure_m",
    )  # fmt: skip
    pressure_sensors: tuple[int, int] = Field((1, 1), description="pressure sensors per DMA")
    sensor_static_head: tuple[float, float] = Field(
        (1.1, 1.1), description="static head of a sensor, of pressure_m (drawn per sensor)"
    )
    sensor_distance: tuple[Share, Share] = Field(
        (1.0, 1.0), description="share of the far-end head loss at a sensor (drawn per sensor)"
    )
    pressure_noise_bar: float = Field(0.005, ge=0, description="noise of a pressure sample")
    # --- leak-free changes ------------------------------------------------------------------
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
    calibration_drifts: int = Field(
        0, ge=0, description="inlet meters that start over-reading (flow rises, pressure not)"
    )
    calibration_drift: tuple[float, float] = Field(
        (0.03, 0.1), description="their relative error once drifted (measured = true * (1 + x))"
    )
    calibration_ramp_days: float = Field(7.0, ge=0, description="days the drift takes to grow")
    night_consumers: int = Field(0, ge=0, description="new unmetered night users (total)")
    night_consumer_m3h: tuple[float, float] = (0.2, 1.0)
    night_consumer_hours: tuple[float, float] = Field(
        (0.0, 5.0), description="local hours they draw water (street cleaning, irrigation)"
    )
    # --- leaks ------------------------------------------------------------------------------
    leaks: HistoryLeaks = HistoryLeaks()
    fixed_leaks: list[FixedLeak] = Field(default_factory=list)

    @field_validator("meter_metrics", "customer_interval_s", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return value if isinstance(value, list) else [value]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for key in ("customers", "mains_km", "pressure_m", "inlets", "pressure_sensors"):
            low, high = getattr(self, key)
            if low > high or low < 0:
                raise ValueError(f"{key} = {[low, high]}: expected 0 <= low <= high")
        if not 1 <= self.inlets[0] <= self.inlets[1] <= 2:
            raise ValueError(f"inlets = {list(self.inlets)}: expected 1 or 2 inlets per DMA")
        if self.pressure_sensors[0] < 1:
            raise ValueError("pressure_sensors: expected at least one sensor per DMA")
        if self.meter_groups and not math.isclose(
            sum(g.share for g in self.meter_groups), 1.0, abs_tol=1e-6
        ):
            shares = [g.share for g in self.meter_groups]
            raise ValueError(f"meter_groups: shares {shares} expected to sum to 1")
        for key in ("demand_patterns", "meter_metrics", "customer_interval_s"):
            if not getattr(self, key):
                raise ValueError(f"{key}: expected at least one value")
        return self

    def dma_coverage(self, i: int) -> float:
        """Smart-meter share of DMA ``i`` (0-based)."""
        return self.coverage[i % len(self.coverage)] if self.coverage else self.smart_meter_share

    def dma_pattern(self, i: int) -> DemandPattern:
        """Demand pattern of DMA ``i`` (0-based)."""
        return self.demand_patterns[i % len(self.demand_patterns)]

    def groups(self, i: int) -> list[MeterGroup]:
        """The customer meter groups of DMA ``i`` (one when ``meter_groups`` is empty)."""
        if self.meter_groups:
            return self.meter_groups
        metrics = self.meter_metrics[i % len(self.meter_metrics)]
        interval = self.customer_interval_s[i % len(self.customer_interval_s)]
        return [MeterGroup(share=1.0, metrics=metrics, interval_s=interval)]


def load_history_scenario(path: Path) -> HistoryScenario:
    """Read and validate a history scenario; :class:`ConfigError` names file, key, value."""
    return load_file(path, HistoryScenario, "history scenario")


def packaged_history(name: str = "evaluation") -> Path:
    """Path of a history scenario shipped with the package."""
    return Path(__file__).with_name("scenarios") / f"{name}.toml"


def packaged_family() -> list[Path]:
    """The packaged evaluation scenarios (``evaluation*.toml``), by name."""
    return sorted(Path(__file__).with_name("scenarios").glob("evaluation*.toml"))
