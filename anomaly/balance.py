"""Water balance of a DMA: network yield, the decree 2012-97 threshold and the Infrastructure
Leakage Index. Pure functions; volumes in m³, lengths in km, pressures in metres of water.

- Yield (*rendement du réseau*) = (metered consumption + volume exported) / volume put in, %.
- ILC (*indice linéaire de consommation*) = metered consumption per day and km of mains
  [m³/km/day]; the decree 2012-97 (art. D. 213-48-14-1 of the environment code) requires a yield
  of at least 85 %, or else of at least 65 + ILC/5 %.
- ILP (*indice linéaire de pertes*) = losses per day and km of mains [m³/km/day].
- ILI = CARL / UARL, with Lambert's unavoidable annual real losses
  UARL = (18·Lm + 0.8·Nc + 25·Lp)·P [L/day] (Lm mains km, Nc connections, Lp private pipe km
  from the property line to the meter, P average pressure m). CARL is taken as all losses
  (inflow minus metered consumption and export): apparent losses (meter under-registration,
  unmetered use) are not separated, so the ILI is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def decree_threshold_percent(ilc_m3_km_day: float) -> float:
    """Minimum yield [%] of decree 2012-97: 85 %, or 65 + ILC/5 when that is lower."""
    return min(85.0, 65.0 + ilc_m3_km_day / 5.0)


def uarl_litres_per_day(
    mains_km: float, connections: float, private_km: float, pressure_m: float
) -> float:
    """Lambert's unavoidable annual real losses, per day [L/day]."""
    return (18.0 * mains_km + 0.8 * connections + 25.0 * private_km) * pressure_m


@dataclass(frozen=True, slots=True)
class Balance:
    """Water balance of one DMA over a period (volumes [m³], days [d]); ratios NaN when a term
    is missing (no inflow, no mains length...)."""

    days: float
    inflow_m3: float
    outflow_m3: float
    consumption_m3: float
    losses_m3: float
    yield_percent: float
    ilc_m3_km_day: float
    ilp_m3_km_day: float
    threshold_percent: float
    compliant: bool | None
    uarl_m3_day: float
    ili: float


def water_balance(
    days: float,
    inflow_m3: float,
    outflow_m3: float,
    consumption_m3: float,
    mains_km: float | None = None,
    connections: float | None = None,
    private_km: float | None = None,
    pressure_m: float | None = None,
) -> Balance:
    """Balance of a DMA over ``days`` from its inlet and outlet volumes and the metered
    consumption of its customers [m³]; ILC, ILP and the threshold need ``mains_km``, the ILI
    needs all four of mains length, connections, private length and pressure."""
    losses = inflow_m3 - outflow_m3 - consumption_m3
    yield_pct = 100.0 * (consumption_m3 + outflow_m3) / inflow_m3 if inflow_m3 > 0 else math.nan
    if mains_km and days > 0:
        ilc = consumption_m3 / days / mains_km
        ilp = losses / days / mains_km
        threshold = decree_threshold_percent(ilc)
    else:
        ilc = ilp = threshold = math.nan
    compliant = None if math.isnan(yield_pct) or math.isnan(threshold) else yield_pct >= threshold
    uarl = math.nan
    ili = math.nan
    if (
        mains_km is not None
        and connections is not None
        and private_km is not None
        and pressure_m is not None
        and days > 0
    ):
        uarl = uarl_litres_per_day(mains_km, connections, private_km, pressure_m) / 1000.0
        if uarl > 0:
            ili = (losses / days) / uarl
    return Balance(
        days=days,
        inflow_m3=inflow_m3,
        outflow_m3=outflow_m3,
        consumption_m3=consumption_m3,
        losses_m3=losses,
        yield_percent=yield_pct,
        ilc_m3_km_day=ilc,
        ilp_m3_km_day=ilp,
        threshold_percent=threshold,
        compliant=compliant,
        uarl_m3_day=uarl,
        ili=ili,
    )
