"""Faults injected into the simulated fleet, at seeded random times and devices, and counted in
the ground truth: malformed payloads, duplicates, out-of-order and late messages, dropouts
(silence), clock skew and messages from unknown devices. See ``[faults]`` in
:mod:`simulators.scenario`; the faults of what meters report are in
:mod:`simulators.meter_faults`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.contract import build_topic
from core.payloads import encode_senml
from simulators.devices import Group
from simulators.gateways import Gateway
from simulators.scenario import Faults as FaultSpec
from simulators.truth import Truth

Key = tuple[int, int]
"""A device: (group index, index in the group)."""
Send = Callable[[Gateway, str, bytes], None]


class Faults:
    """The fault plan of one run and its effects on what is sent."""

    def __init__(
        self,
        spec: FaultSpec,
        groups: Sequence[Group],
        t0: float,
        days: float,
        rng: np.random.Generator,
        truth: Truth,
        send: Send,
        root: str,
    ) -> None:
        self.spec, self.groups, self.rng, self.truth, self.send = spec, groups, rng, truth, send
        self.root = root
        self.events = self._plan(t0, days)
        self.duplicate_next: set[Key] = set()
        self.late_next: set[Key] = set()
        self.swap_next: dict[Key, tuple[str, bytes] | None] = {}
        self.dropout_until: dict[Key, float] = {}
        self.skew_until: dict[Key, float] = {}
        self.delayed: list[tuple[float, Gateway, str, bytes]] = []

    def _plan(self, t0: float, days: float) -> list[tuple[float, str, int, int]]:
        f = self.spec
        span = days * 86400.0
        events: list[tuple[float, str, int, int]] = []
        kinds = (
            ("malformed", f.malformed),
            ("duplicate", f.duplicates),
            ("out_of_order", f.out_of_order),
            ("late", f.late),
            ("dropout", f.dropouts),
            ("clock_skew", f.clock_skew),
            ("unknown_device", f.unknown_devices),
        )
        for kind, count in kinds:
            for _ in range(count):
                gi = int(self.rng.integers(len(self.groups)))
                i = int(self.rng.integers(len(self.groups[gi].ids)))
                at = t0 + float(self.rng.uniform(0.05, 0.85)) * span
                events.append((at, kind, gi, i))
        events.sort()
        return events

    # --- while sampling -----------------------------------------------------------------------
    def silent(self, key: Key, t: float) -> bool:
        """Whether the device is in a dropout at ``t``."""
        return self.dropout_until.get(key, -1.0) > t

    def stamp(self, key: Key, t: float) -> float:
        """The time the device's clock reads at ``t`` (skewed during a clock fault)."""
        return t + (self.spec.clock_skew_s if self.skew_until.get(key, -1.0) > t else 0.0)

    def inject(self, t: float) -> None:
        """Start the faults due at ``t``."""
        while self.events and self.events[0][0] <= t:
            _at, kind, gi, i = self.events.pop(0)
            group = self.groups[gi]
            key = (gi, i)
            if kind == "malformed":  # cut short; numbered, so that no two are the same message
                n = self.truth.faults.get(kind, 0)
                cut = b'{"power": 12.5, "n": %d, "energy": ' % n
                self.send(group.gateway, group.topics[i], cut)
                self.truth.count_fault(kind)
                self.truth.expect_rejection("invalid_json")
            elif kind == "unknown_device":
                ghost = f"ghost-{int(self.rng.integers(10**6)):06d}"
                topic = build_topic(group.site, ghost, "up", self.root)
                self.send(group.gateway, topic, encode_senml(ghost, [("power", 1.0, "W", t)]))
                self.truth.count_fault(kind)
                self.truth.expect_rejection("unknown_device")
            elif kind == "duplicate":
                self.duplicate_next.add(key)
            elif kind == "late":
                self.late_next.add(key)
            elif kind == "out_of_order":
                self.swap_next[key] = None
            elif kind == "dropout":
                self.dropout_until[key] = t + self.spec.dropout_s
                self.truth.count_fault(kind)
                self._event(kind, group, i, t, end=t + self.spec.dropout_s)
            elif kind == "clock_skew":
                self.skew_until[key] = t + self.spec.clock_skew_duration_s
                self.truth.count_fault(kind)
                self._event(kind, group, i, t, skew_s=self.spec.clock_skew_s)

    def _event(self, kind: str, group: Group, i: int, t: float, **extra: float) -> None:
        self.truth.events.append(
            {"kind": kind, "device": group.ids[i], "site": group.site, "start": t, **extra}
        )

    # --- when a device sends ------------------------------------------------------------------
    def deliver(self, key: Key, topic: str, payload: bytes, t: float) -> int:
        """Send one message of device ``key``, duplicated, held back or swapped with the next
        one when a fault says so; how many copies go out (2 when duplicated, sooner or
        later)."""
        gateway = self.groups[key[0]].gateway
        copies = 1
        if key in self.duplicate_next:
            self.duplicate_next.discard(key)
            self.send(gateway, topic, payload)
            self.truth.count_fault("duplicate")
            copies = 2
        if key in self.late_next:
            self.late_next.discard(key)
            self.delayed.append((t + self.spec.late_s, gateway, topic, payload))
            self.truth.count_fault("late")
            return copies
        if key in self.swap_next:
            held = self.swap_next[key]
            if held is None:  # hold this one, send it after the next one
                self.swap_next[key] = (topic, payload)
                return copies
            del self.swap_next[key]
            self.send(gateway, topic, payload)
            self.send(gateway, held[0], held[1])
            self.truth.count_fault("out_of_order")
            return copies
        self.send(gateway, topic, payload)
        return copies

    def release(self, t: float, everything: bool = False) -> None:
        """Send the late messages due at ``t`` (all of them with ``everything``)."""
        keep = []
        for item in self.delayed:
            release, gateway, topic, payload = item
            if everything or release <= t:
                self.send(gateway, topic, payload)
            else:
                keep.append(item)
        self.delayed = keep

    def send_held(self, gi: int) -> None:
        """At the end of the run: the messages of group ``gi`` still held for a swap."""
        for (kgi, ki), held in list(self.swap_next.items()):
            if kgi == gi and held is not None:
                self.send(self.groups[gi].gateway, held[0], held[1])
                del self.swap_next[(kgi, ki)]
