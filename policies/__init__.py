"""policies stage: lighting programs, their calendars, exceptions and safety floors, and the
reporting rates per device kind (see README.md). The configuration (:mod:`policies.config`) and
the pure resolution functions (:mod:`policies.programs`) exist; the service that publishes the
``config`` and ``cmd`` messages is to come."""

from policies.config import PoliciesConfig, load_policies
from policies.programs import device_program, floor_adjustments, program_for, reporting_for

__all__ = [
    "PoliciesConfig",
    "device_program",
    "floor_adjustments",
    "load_policies",
    "program_for",
    "reporting_for",
]
