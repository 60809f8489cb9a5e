"""The electrical power of an LED luminaire at a dimming level: the one implementation of the
power curve that the simulated luminaires draw and the policy engine's ``policies simulate``
integrates. Pure: numpy in, numpy out.

Units: levels as fractions of full light (0-1, not %), powers in W, efficiencies as fractions.
"""

from __future__ import annotations

import numpy as np

from core.arrays import FloatArray

__all__ = ["driver_efficiency", "luminaire_power_w"]


def driver_efficiency(level: FloatArray | float) -> FloatArray:
    """LED driver efficiency (0-1) at a dimming ``level`` (0-1): 0.90 at full load, falling to
    0.70 near zero load, as drivers do at low output."""
    return np.asarray(0.90 - 0.20 * (1.0 - np.asarray(level, dtype=float)) ** 2)


def luminaire_power_w(
    level: FloatArray | float, nominal_w: FloatArray | float, standby_w: FloatArray | float
) -> FloatArray:
    """Electrical input power [W] of a luminaire at dimming ``level`` (0-1, clipped).

    ``nominal_w`` [W] is the input power at full light; the LED power scales with the level
    and the driver's efficiency (:func:`driver_efficiency`) falls at low load, so 50 % light
    draws ~53 % of the nominal power. ``standby_w`` [W] is drawn whenever the driver is powered
    (also when the light is off, level 0). Arguments broadcast against each other.
    """
    light = np.clip(np.asarray(level, dtype=float), 0.0, 1.0)
    led = nominal_w * light * driver_efficiency(np.ones_like(light)) / driver_efficiency(light)
    return np.asarray(np.where(light > 0, led, 0.0) + standby_w, dtype=float)
