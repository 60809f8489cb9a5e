"""Simulated devices as they report: per kind, the metrics and units they send, and per group of
devices (one kind at one site, behind one gateway) their reporting state — sampling interval,
samples per message, deadbands with a maximum silence — which a pushed ``config``
(:class:`core.messages.DeviceConfig`) changes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.arrays import FloatArray
from core.contract import build_topic
from core.messages import Reporting
from simulators.gateways import Gateway

Metric = tuple[str, str | None, float]
"""(metric, unit sent, factor from the canonical value to the unit sent)."""
KIND_METRICS: dict[str, tuple[Metric, ...]] = {
    "luminaire": (("power", "W", 1.0), ("energy", "Wh", 1.0), ("dim", "%", 1.0)),
    "cabinet_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3)),
    "flow_meter": (("flow", "m3/h", 1.0), ("volume", "m3", 1.0)),
    "pressure_sensor": (("pressure", "bar", 1.0),),
    "water_meter": (("volume", "L", 1000.0),),
    "pump_meter": (
        ("power", "kW", 1e-3),
        ("energy", "kWh", 1e-3),
        ("flow", "m3/h", 1.0),
        ("volume", "m3", 1.0),
    ),
    "facility_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3), ("temperature", "Cel", 1.0)),
    "it_meter": (("power", "kW", 1e-3), ("energy", "kWh", 1e-3)),
}
PRESENCE: Metric = ("presence", "count", 1.0)
"""Sent in addition by luminaires with a presence sensor."""
Record = tuple[str, float, str | None, float, bool]
"""A sample waiting to be sent: (metric, value, unit, time [s], time is skewed)."""
_DIGITS = {
    "power": 2,
    "energy": 2,
    "dim": 1,
    "flow": 4,
    "volume": 4,
    "pressure": 4,
    "temperature": 2,
    "presence": 0,
}


def sent_value(metric: str, value: float, factor: float) -> float:
    """``value`` (canonical unit) as a device sends it: times ``factor`` (the unit it sends)
    and rounded to the resolution of its register (3 more digits in a larger unit)."""
    return round(value * factor, _DIGITS[metric] + (3 if factor < 1 else 0))


class Group:
    """Devices of one kind at one site that report the same metrics through one gateway."""

    def __init__(
        self,
        site: str,
        kind: str,
        ids: list[str],
        gateway: Gateway,
        reporting: Reporting,
        root: str,
        metrics: tuple[Metric, ...],
        values: Callable[[], dict[str, FloatArray]],
        t0: float,
        rng: np.random.Generator,
    ) -> None:
        n = len(ids)
        self.site, self.kind, self.ids, self.gateway = site, kind, ids, gateway
        self.metrics = metrics
        self.values = values
        self.topics = [build_topic(site, d, "up", root) for d in ids]
        self.state_topics = [build_topic(site, d, "state", root) for d in ids]
        self.interval = np.full(n, float(reporting.interval_s))
        self.batch = [reporting.batch] * n
        self.deadband = [dict(reporting.deadband) for _ in range(n)]
        self.max_silence = [float(reporting.max_silence_s)] * n
        # Phases are spread over the first interval so that devices do not all report at once.
        self.next_sample = t0 + np.floor(rng.uniform(0, reporting.interval_s, n))
        self.pending: list[list[Record]] = [[] for _ in range(n)]
        self.samples = [0] * n
        self.last_sent: list[dict[str, tuple[float, float]]] = [{} for _ in range(n)]
        self.config_version = [0] * n  # 0: the built-in program, no config received yet
        self.on_sampled: Callable[[int], None] | None = None

    def apply_reporting(self, i: int, reporting: Reporting, now: float) -> None:
        """Device ``i`` reports as ``reporting`` says from ``now`` [s since the epoch] on; a
        shorter interval takes effect at once."""
        self.interval[i] = float(reporting.interval_s)
        self.next_sample[i] = min(self.next_sample[i], now + self.interval[i])
        self.batch[i] = reporting.batch
        self.deadband[i] = dict(reporting.deadband)
        self.max_silence[i] = float(reporting.max_silence_s)

    def sample(
        self,
        i: int,
        t: float,
        stamp: float,
        values: dict[str, FloatArray],
        skip: frozenset[str] = frozenset(),
    ) -> bool:
        """Device ``i`` samples at ``t``, stamping ``stamp`` (its clock, maybe skewed); a metric
        inside its deadband since the last value sent is skipped unless it has been silent for
        ``max_silence_s``, and so is a metric of ``skip`` (a reporting fault). True when the
        device holds a full batch to send."""
        skewed = stamp != t
        last = self.last_sent[i]
        band = self.deadband[i]
        for metric, unit, factor in self.metrics:
            if metric in skip:
                continue
            value = float(values[metric][i])
            if band and metric in band and metric in last:
                prev, when = last[metric]
                if abs(value - prev) < band[metric] and t - when < self.max_silence[i]:
                    continue
            last[metric] = (value, t)
            sent = sent_value(metric, value, factor)
            self.pending[i].append((metric, sent, unit, stamp, skewed))
        if self.on_sampled is not None:
            self.on_sampled(i)
        self.samples[i] += 1
        return self.samples[i] >= self.batch[i]

    def take(self, i: int) -> list[Record]:
        """The samples device ``i`` holds, now sent (none: its count of samples stands)."""
        records = self.pending[i]
        if records:
            self.pending[i] = []
            self.samples[i] = 0
        return records
