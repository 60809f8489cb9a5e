"""The hydraulics of a DMA over a day (:mod:`simulators.history`): total inflow, pressure-driven
background leakage and leaks (FAVAD), and what each pressure sensor reads.

Model (parameters in :class:`~simulators.history_scenario.HistoryScenario`), at each sample:

- ``Q = demand + background(P) + Σ leak_i(P) + night users + outflow`` [m³/h], everything
  that enters the DMA's mains (what passes on to an outlet causes head loss too);
- head loss at distance share ``d``: ``d · h · H · (Q / Q_peak)²`` [m], with ``h`` the far-end
  loss share at the expected peak inflow ``Q_peak`` and ``H`` the DMA's ``pressure_m``;
- background leakage at the average zone point (``d = 0.5``) and each leak at its own
  distance share follow FAVAD, ``flow = nominal · (P / P₀)^N1``, ``P₀`` the pressure there at
  the DMA's expected minimum night flow (so a leak's nominal flow is its flow at night);
- a sensor of static head ``S`` [m] at distance share ``d`` reads ``S − d · h · H · (Q/Q_peak)²``.

``Q`` depends on the pressure it lowers: a fixed point, reached in a few iterations (the
pressure-dependent part of the flow is small against the rest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.arrays import FloatArray
from simulators import physics
from simulators.history_plan import DmaModel, leak_flow
from simulators.history_scenario import HistoryScenario

ITERATIONS = 4


@dataclass(frozen=True)
class Hydraulics:
    """A DMA's flows [m³/h] and sensor pressures [bar] at each sample of a day."""

    steps: FloatArray  # sample times [s since epoch]
    inflow: FloatArray  # total true inflow through the inlets
    background: FloatArray
    leaks: FloatArray  # all leaks together, at the pressure of the moment
    nominal_leaks: FloatArray  # the same at the reference (night) pressure
    pressure_bar: FloatArray  # (sensors, samples), without noise


def solve(d: DmaModel, sc: HistoryScenario, steps: FloatArray, demand: FloatArray,
          passing: FloatArray, season: float) -> Hydraulics:  # fmt: skip
    """The inflow and pressures given the ``demand`` (consumption and unmetered night use)
    and the flow ``passing`` on to an outlet, both [m³/h] at ``steps``."""
    loss_m = sc.head_loss_share * d.pressure_m  # at the far end, at the peak inflow
    nominal = [leak_flow(lk, steps) for lk in d.leaks]
    nominal_sum = np.sum(nominal, axis=0) if nominal else np.zeros(len(steps))
    references = [d.pressure_m - lk["distance"] * loss_m * d.night_ratio for lk in d.leaks]
    bg_ref = d.pressure_m - 0.5 * loss_m * d.night_ratio
    bg_nominal = d.background * season
    base = demand + passing
    inflow = base + bg_nominal + nominal_sum
    background, leaks = np.full(len(steps), bg_nominal), nominal_sum
    for _ in range(ITERATIONS):
        background = bg_nominal * physics.favad_factor(
            d.pressure_m - physics.head_loss_m(inflow, d.peak_m3h, 0.5 * loss_m),
            bg_ref,
            sc.background_n1,
        )
        leaks = np.zeros(len(steps))
        for lk, flow, ref in zip(d.leaks, nominal, references, strict=True):
            if not flow.any():
                continue
            at = d.pressure_m - physics.head_loss_m(inflow, d.peak_m3h, lk["distance"] * loss_m)
            leaks = leaks + flow * physics.favad_factor(at, ref, lk["n1"])
        inflow = base + background + leaks
    pressure = np.array(
        [
            head - physics.head_loss_m(inflow, d.peak_m3h, dist * loss_m)
            for _, head, dist in d.sensors
        ]
    )
    return Hydraulics(
        steps=steps,
        inflow=inflow,
        background=background,
        leaks=leaks,
        nominal_leaks=nominal_sum,
        pressure_bar=np.clip(pressure, 0.0, None) * physics.M_WATER_TO_BAR,
    )


def predicted_pressure_bar(head_m: float, distance: float, inflow_m3h: FloatArray,
                           peak_m3h: float, peak_loss_m: float) -> FloatArray:  # fmt: skip
    """What a sensor of static head ``head_m`` at ``distance`` reads [bar] for a total inflow:
    the model above, for tests and notes that check a history against it."""
    loss = physics.head_loss_m(inflow_m3h, peak_m3h, distance * peak_loss_m)
    return np.asarray(np.clip(head_m - loss, 0.0, None) * physics.M_WATER_TO_BAR)
