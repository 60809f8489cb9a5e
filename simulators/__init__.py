"""Simulated town: scenario files, device physics, the MQTT fleet and its ground truth."""

from simulators.fleet import Backfilled, Fleet, Pace, Progress
from simulators.scenario import Scenario, load_scenario, packaged_scenario
from simulators.town import Town, build_town, write_inventory, write_sites
from simulators.truth import Truth

__all__ = [
    "Backfilled",
    "Fleet",
    "Pace",
    "Progress",
    "Scenario",
    "Town",
    "Truth",
    "build_town",
    "load_scenario",
    "packaged_scenario",
    "write_inventory",
    "write_sites",
]
