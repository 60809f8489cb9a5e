"""Physical models of the simulated devices: pure functions over numbers or numpy arrays.
The luminaire's power curve (``driver_efficiency``, ``luminaire_power_w``) lives in
:mod:`core.luminaire`, shared with the policy engine, and is re-exported here.

Units are in the names and docstrings: W, Wh, m³/h, m³, bar, metres of water, °C, hours.
"""

from __future__ import annotations

import numpy as np

from core.arrays import FloatArray
from core.luminaire import driver_efficiency, luminaire_power_w

__all__ = [
    "M_WATER_TO_BAR",
    "cooling_power_kw",
    "demand_pattern",
    "dma_pressure_bar",
    "driver_efficiency",
    "facility_overhead_kw",
    "favad_factor",
    "head_loss_m",
    "household_use",
    "institution_pattern",
    "leak_flow_m3h",
    "luminaire_power_w",
    "outdoor_temperature_c",
]

M_WATER_TO_BAR = 0.0980665
"""1 metre of water column in bar."""


def _raw_pattern(hour: FloatArray | float, weekend: bool) -> FloatArray:
    morning = 9.5 if weekend else 7.5
    return np.asarray(
        0.25
        + (1.1 if weekend else 1.5) * np.exp(-0.5 * ((hour - morning) / 1.3) ** 2)
        + 1.0 * np.exp(-0.5 * ((hour - 19.5) / 1.8) ** 2)
        + 0.55 * np.exp(-0.5 * ((hour - 13.0) / 2.0) ** 2)
    )


_PATTERN_MEAN = {
    weekend: float(_raw_pattern(np.linspace(0, 24, 1440, endpoint=False), weekend).mean())
    for weekend in (False, True)
}


def demand_pattern(hour: float, weekend: bool) -> float:
    """Relative household water demand at local ``hour`` (0-24), mean 1 over a day.

    Morning and evening peaks (later and lower on weekends) over a night minimum of ~0.25 of
    the mean, as in published residential diurnal curves.
    """
    return float(_raw_pattern(hour, weekend)) / _PATTERN_MEAN[weekend]


def household_use(rng: np.random.Generator, households: int, pattern: float) -> FloatArray:
    """Multipliers (mean 1) of each household's demand over one hour: most hours of the night
    draw nothing at all, the others draw more. A household uses water in the hour with
    probability ``0.6 × pattern`` (kept within 5-95 %), and then ``1/p`` times its mean with
    lognormal spread — so an index stays still for hours, and only a leak behind the meter keeps
    it moving all day (what the continuous-flow check looks for)."""
    p_use = min(max(0.6 * pattern, 0.05), 0.95)
    used = rng.random(households) < p_use
    return np.where(used, rng.lognormal(-0.125, 0.5, households) / p_use, 0.0)


def leak_flow_m3h(
    hours_since_start: float,
    kind: str,
    flow_m3h: float,
    ramp_h: float,
    end_h: float | None,
    start_h: float,
) -> float:
    """Flow of one leak [m³/h] at a time [h from the start of the run]: 0 before ``start_h`` and
    after ``end_h``; a step (burst) or a linear ramp over ``ramp_h`` (incipient)."""
    if hours_since_start < start_h or (end_h is not None and hours_since_start >= end_h):
        return 0.0
    if kind == "burst":
        return flow_m3h
    return flow_m3h * min(1.0, (hours_since_start - start_h) / ramp_h)


def dma_pressure_bar(inflow_m3h: float, static_head_m: float, peak_inflow_m3h: float) -> float:
    """Pressure at the DMA's critical point [bar]: static head minus friction losses that grow
    with the square of the inflow (Darcy-Weisbach), 15 % of the head at the expected peak."""
    loss_m = 0.15 * static_head_m * (inflow_m3h / max(peak_inflow_m3h, 1e-9)) ** 2
    return max(static_head_m - loss_m, 0.0) * M_WATER_TO_BAR


def outdoor_temperature_c(hour: float, mean_c: float, swing_c: float) -> float:
    """Outdoor temperature [°C] at local ``hour``: coldest near 05:00, warmest near 15:00."""
    return mean_c + swing_c * float(np.sin(2 * np.pi * (hour - 9.0) / 24.0))


def cooling_power_kw(it_kw: float, outdoor_c: float) -> float:
    """Cooling electrical power [kW] for an IT load [kW]: the chillers' work rises with outdoor
    temperature (free cooling below 10 °C)."""
    return it_kw * (0.18 + 0.015 * max(outdoor_c - 10.0, 0.0))


def facility_overhead_kw(it_kw: float) -> float:
    """Lighting, UPS and distribution losses of the room [kW]."""
    return 0.4 + 0.06 * it_kw


def head_loss_m(inflow_m3h: FloatArray, peak_inflow_m3h: float, peak_loss_m: float) -> FloatArray:
    """Head loss [m] from the inlet to a point whose loss is ``peak_loss_m`` at the expected
    peak inflow: quadratic in the flow (Darcy-Weisbach, fully turbulent)."""
    return np.asarray(peak_loss_m * (np.asarray(inflow_m3h) / max(peak_inflow_m3h, 1e-9)) ** 2)


def favad_factor(pressure_m: FloatArray, reference_m: float, n1: float) -> FloatArray:
    """FAVAD (May 1994; Thornton & Lambert): a leak's flow relative to its flow at the
    reference pressure, ``(P / P₀)^N1`` — N1 0.5 for a fixed orifice in a rigid pipe, 1.5 for
    background leakage and cracks that open with pressure, up to 2.5 in plastic pipes. No flow
    at zero or negative pressure."""
    ratio = np.clip(np.asarray(pressure_m) / max(reference_m, 1e-9), 0.0, None)
    return np.asarray(ratio**n1)


def _institution_raw(hour: FloatArray) -> FloatArray:
    return np.asarray(0.75 + 0.5 * np.exp(-0.5 * ((hour - 11.0) / 3.5) ** 2))


_INSTITUTION_MEAN = float(_institution_raw(np.linspace(0, 24, 1440, endpoint=False)).mean())


def institution_pattern(hour: FloatArray, weekend: bool) -> FloatArray:
    """Relative water use of a hospital or a factory on shifts at local ``hour`` (0-24), mean
    1 over a weekday: steady day and night (kitchens, laundries, cooling, processes), a broad
    late-morning peak; 80 % of it on weekends and public holidays."""
    return np.asarray(_institution_raw(hour) / _INSTITUTION_MEAN * (0.8 if weekend else 1.0))
