"""Ground truth of a simulated run, written next to it (``truth.json``) so that tests and
evaluations can score the other stages.

Counts: ``messages`` and ``readings`` (also per site: ``readings_by_site``) sent that the
ingest must store (a duplicate, a late or
reordered message counts once; readings stamped by a skewed clock are not counted), the
copies sent of the messages with a reading to store (``deliveries_stored``: a duplicate counts
twice, as in the ingest's count of messages per device and day), the
rejections the ingest must record by reason (one per message and reason), the faults injected;
events (lamp failures, day burners, power drift, customer leaks, dropouts, clock skews,
meter faults: counter resets and rollovers, replaced meters, spurious zeros, power gaps); leaks
(start, end, flow over time, hourly); the true energy of every luminaire and meter [Wh] and the
water balance of every DMA, the true consumption of every customer meter and the volume the
pump moved [m³] over the run.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Truth:
    """What really happened during a run. Times in seconds since the epoch."""

    scenario: str
    seed: int
    start: float
    end: float
    messages: int = 0
    readings: int = 0
    deliveries_stored: int = 0  # copies sent of the messages with a reading to store
    readings_by_site: dict[str, int] = field(default_factory=dict)  # ``readings``, per site
    expected_rejections: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    energy_wh: dict[str, float] = field(default_factory=dict)
    volume_m3: dict[str, float] = field(default_factory=dict)
    # Per "{site}/{lighting group}/{night}" (the local date of the evening, noon to noon):
    # luminaires, kwh (true energy), lit_hours (mean per luminaire: commanded level above 0),
    # baseline_kwh (nominal power x hours lit: the no-dimming baseline), as api.lighting_nights.
    lighting_nights: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per "{site}/{cabinet}/{night}": the cabinet meter's true energy [kWh].
    cabinet_nights: dict[str, float] = field(default_factory=dict)
    water: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per "{site}/{device}" of the site meters (pump, facility, IT): [t, true Wh, true m³]
    # accumulated since the start, at each of the meter's samples (what a window of its
    # readings really measured: see :meth:`between`).
    meter_marks: dict[str, list[list[float]]] = field(default_factory=dict)

    def expect_rejection(self, reason: str) -> None:
        """One more message the ingest must reject with ``reason``."""
        self.expected_rejections[reason] = self.expected_rejections.get(reason, 0) + 1

    def count_fault(self, kind: str) -> None:
        """One more injected fault of ``kind``."""
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def mark(self, key: str, t: float, wh: float, m3: float) -> None:
        """A site meter's true totals since the start at its sample at ``t`` [s, Wh, m³]."""
        self.meter_marks.setdefault(key, []).append([t, wh, m3])

    def between(self, key: str, t0: float, t1: float) -> tuple[float, float] | None:
        """The true energy [Wh] and volume [m³] of site meter ``key`` between its samples at
        ``t0`` and ``t1`` (the last sample at or before each) — what the readings of that window
        must add up to; ``None`` when the meter has no sample at or before ``t0``."""
        marks = self.meter_marks.get(key, [])
        times = [m[0] for m in marks]
        i, j = bisect_right(times, t0) - 1, bisect_right(times, t1) - 1
        if i < 0 or j < i:
            return None
        return marks[j][1] - marks[i][1], marks[j][2] - marks[i][2]

    def write(self, path: Path) -> None:
        """Write as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def read(cls, path: Path) -> Truth:
        """Read a ``truth.json``."""
        return cls(**json.loads(path.read_text()))
