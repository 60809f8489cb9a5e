"""Pressure as evidence for the night-flow detector: pure functions, no I/O.

Water that leaves the network through a leak flows through the pipes from the inlet, and the
head loss of a pipe grows with the square of its flow: the pressure at a sensor downstream falls
by ``ΔP = c · ((Q₀ + L)² − Q₀²)`` when a leak ``L`` [m³/h] adds to a night inflow ``Q₀``, where
``c`` [bar per (m³/h)²] is the sensor's head-loss coefficient. ``c`` is measured, not assumed:
over the scanned period, the sensor's mean pressure at each local hour of the day against the
DMA's mean squared inflow at that hour (:func:`head_loss_slope`: the daily demand cycle spans a
wide range of flows). At night flows are low, so
small leaks move the pressure very little: the evidence says how much drop the flow excess
*should* cause (``expected_z``, in units of the sensors' night-to-night noise, combined over
sensors) and how much there *is* (``drop_z``):

- where a drop of at least a few noise units is expected and about that drop is seen, the rise
  of the night flow is real water leaving the pipes: a leak is confirmed after one night;
- where such a drop is expected and none is seen, the rise is in the flow meter, not in the
  pipes (a calibration drift, a meter swapped): the night is not counted as leak evidence;
- where the expected drop is within the noise (small leaks, flat networks, few sensors),
  pressure says nothing and the flow detector decides alone.

Pressure cannot tell a leak from a real new use of water: both draw water through the pipes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from core.arrays import FloatArray, IntArray

MAD_TO_SIGMA = 1.4826
SENSOR_RESOLUTION_BAR = 0.002
"""Floor of a sensor's night-to-night noise [bar] (about 2 cm of water: the resolution of a
network pressure logger)."""


@dataclass(frozen=True, slots=True)
class PressureParams:
    """Rule of the pressure evidence.

    - ``history_nights``: nights each sensor's usual night pressure is the median of.
    - ``min_history_nights``: nights needed before a sensor gives evidence.
    - ``min_expected_z``: expected drop [noise units] from which pressure is informative.
    - ``confirm_share``: share of the expected drop that confirms a leak.
    - ``contradict_share``: below this share of the expected drop, the rise is not water.
    """

    history_nights: int = 28
    min_history_nights: int = 7
    min_expected_z: float = 3.0
    confirm_share: float = 0.5
    contradict_share: float = 0.25


@dataclass(slots=True)
class PressureEvidence:
    """Per night of a DMA: ``drop_z`` the drop of the night pressure below the sensors' usual
    level [noise units: each sensor's drop over its own noise, averaged over the sensors, then
    over the noise of that average], ``gain`` the expected drop per (m³/h)² of extra inflow
    [same units per (m³/h)²] (NaN: no usable sensor or history that night), ``sensors`` how
    many sensors contributed."""

    drop_z: FloatArray
    gain: FloatArray
    sensors: IntArray

    def expected_z(self, i: int, inflow_m3h: float, excess_m3h: float) -> float:
        """Expected combined drop [noise units] of night ``i`` for an ``excess_m3h`` over a
        night inflow ``inflow_m3h``."""
        g = self.gain[i]
        if not math.isfinite(g) or excess_m3h <= 0:
            return 0.0
        return float(g * ((inflow_m3h + excess_m3h) ** 2 - inflow_m3h**2))

    def verdict(self, i: int, inflow_m3h: float, excess_m3h: float, params: PressureParams) -> str:
        """``confirmed``, ``contradicted`` or ``silent`` (pressure cannot tell) for night
        ``i``."""
        expected = self.expected_z(i, inflow_m3h, excess_m3h)
        seen = self.drop_z[i]
        if expected < params.min_expected_z or not math.isfinite(seen):
            return "silent"
        if seen >= params.confirm_share * expected:
            return "confirmed"
        if seen < params.contradict_share * expected:
            return "contradicted"
        return "silent"


def head_loss_slope(by_hour_bar: FloatArray, by_hour_q2: FloatArray) -> FloatArray:
    """Head-loss coefficient [bar per (m³/h)²] of each sensor: the least-squares slope of its
    mean pressure per local hour of the day (sensors × 24 [bar]) against the DMA's mean squared
    inflow per local hour of the day (24 [(m³/h)²]); NaN with fewer than 12 hours known or no
    spread of the flow."""
    out = np.full(by_hour_bar.shape[0], np.nan)
    for j, row in enumerate(by_hour_bar):
        ok = np.isfinite(row) & np.isfinite(by_hour_q2)
        if ok.sum() < 12:
            continue
        x = by_hour_q2[ok] - by_hour_q2[ok].mean()
        if float(x @ x) <= 0:
            continue
        out[j] = float(x @ (row[ok] - row[ok].mean())) / float(x @ x)
    return out


def pressure_evidence(
    night_days: IntArray,
    sensor_days: IntArray,
    bar: FloatArray,
    slope: FloatArray,
    params: PressureParams = PressureParams(),
) -> PressureEvidence:
    """Evidence per night of ``night_days`` (local day numbers) from the night pressure ``bar``
    (sensors × ``sensor_days``, [bar], NaN: no data) and each sensor's head-loss coefficient
    ``slope`` [bar per (m³/h)²] (see the module docstring). A sensor's usual night pressure is
    the median of its previous ``history_nights`` nights and its noise their MAD (floored at
    the sensor resolution); sensors whose pressure does not fall with the flow (slope ≥ 0 or
    unknown) give no evidence."""
    n = len(night_days)
    drop = np.zeros(n)
    gain = np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    if len(sensor_days) == 0:
        return PressureEvidence(np.full(n, np.nan), np.full(n, np.nan), count)
    pos = night_days - int(sensor_days[0])
    inside = (pos >= 0) & (pos < len(sensor_days))
    for j in range(bar.shape[0]):
        if not (math.isfinite(slope[j]) and slope[j] < 0):
            continue
        series = np.full(n, np.nan)
        series[inside] = bar[j, pos[inside]]
        usual, noise, enough = _rolling(series, params)
        noise = np.maximum(noise, SENSOR_RESOLUTION_BAR)
        ok = enough & np.isfinite(series) & np.isfinite(usual)
        drop[ok] += (usual[ok] - series[ok]) / noise[ok]
        gain[ok] += -slope[j] / noise[ok]
        count[ok] += 1
    has = count > 0
    # Sensors of one DMA share much of their night-to-night noise (the inlet pressure, the
    # reservoir level): the mean of their drops is scaled by its own observed noise, not by
    # √sensors as if they were independent.
    mean_drop = np.where(has, drop / np.maximum(count, 1), np.nan)
    mean_gain = np.where(has, gain / np.maximum(count, 1), np.nan)
    centre, spread, enough = _rolling(mean_drop, params)
    spread = np.where(enough & (spread > 0), spread, np.nan)
    return PressureEvidence((mean_drop - centre) / spread, mean_gain / spread, count)


def _rolling(series: FloatArray, params: PressureParams) -> tuple[FloatArray, FloatArray, Any]:
    """Median and MAD-based noise of the previous ``history_nights`` values of each night
    (tonight excluded), and whether there were ``min_history_nights`` of them."""
    n = len(series)
    w = params.history_nights
    padded = np.concatenate([np.full(w, np.nan), series[:-1]]) if n else series
    windows = sliding_window_view(padded, w)[:n]
    enough = np.isfinite(windows).sum(axis=1) >= params.min_history_nights
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sensor without history yet
        usual = np.nanmedian(windows, axis=1)
        noise = MAD_TO_SIGMA * np.nanmedian(np.abs(windows - usual[:, None]), axis=1)
    return usual, noise, enough
