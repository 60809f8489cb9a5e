"""Array types of the numeric code (pure modules take and return numpy arrays)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
"""An array of floats; the unit is in the name or the docstring of what holds it."""
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
