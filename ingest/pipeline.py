"""Decode → check the device → normalise units → validate, for one message.

:class:`Pipeline` is pure apart from the inventory lookup it is given: it turns ``(topic, payload,
received_at)`` into the rows to store (tuples that :mod:`ingest.store` writes by binary ``COPY``)
and the rejections, one per (message, reason). A message can be partly stored: records with a
bad unit or value are rejected with their reason while the good records of the same message are
kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.contract import METRICS, TopicParts, accepted_units, parse_topic, unit_conversion
from core.errors import RejectError, RejectReason
from core.payloads import RawRecord, RecordProblem, decode

Row = tuple[int, int, int, float]
"""A reading ready to store: (time [µs since epoch], device id, metric id, canonical value)."""


@dataclass(slots=True)
class Uplinks:
    """The messages that gave rows (stored or duplicates), in two parallel lists: the device id
    and the earliest reading time [µs since the epoch] of each — what the store counts per device
    and local day (``device_reporting_daily``)."""

    device_ids: list[int] = field(default_factory=list)
    t_us: list[int] = field(default_factory=list)

    def add(self, rows: Sequence[Row]) -> None:
        """Count one message of ``rows`` (non-empty, all of one device)."""
        self.device_ids.append(rows[0][1])
        self.t_us.append(min(rows)[0])

    def __len__(self) -> int:
        return len(self.device_ids)


DeviceLookup = Callable[[str, str], int | None]
"""(site, device) -> device id, or None when the device is not in the inventory."""

_MAX_DETAILS = 5
_TOPICS_MAX = 200_000
"""Parsed topics kept (one per device in practice); the cache is emptied when it is full."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits: payload size [bytes], records per message, time window [s]."""

    max_payload_bytes: int = 65536
    max_records: int = 1000
    past_window_s: float = 7 * 86400.0
    future_window_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected message (or part of one), as stored in ``rejected_messages``."""

    received_at: float
    topic: str
    site: str | None
    device: str | None
    reason: RejectReason
    detail: str
    payload: bytes
    payload_bytes: int

    @property
    def fingerprint(self) -> bytes:
        """Identity of a rejection: same topic, reason and payload are one rejected message."""
        digest = hashlib.sha256()
        for part in (self.topic.encode(), self.reason.value.encode(), self.payload):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        return digest.digest()


@dataclass(slots=True)
class Outcome:
    """What one message gives: rows to store and rejections.

    A row is ``(time [µs since the epoch], device id, metric id, value [canonical unit])``.
    """

    rows: list[Row] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    newest: float = 0.0  # newest reading time [s since epoch], for lag measurement


class Pipeline:
    """Validates messages against the contract, the inventory and the limits."""

    def __init__(self, lookup: DeviceLookup, root: str, limits: Limits | None = None) -> None:
        self.lookup = lookup
        self._root = root
        self.limits = limits or Limits()
        # (metric, unit as sent) -> (metric id, scale, offset, low, high), filled on first use.
        self._rules: dict[tuple[str, str | None], tuple[int, float, float, float, float]] = {}
        # topic -> its parts, for topics that parsed (a topic's validity never changes)
        self._topics: dict[str, TopicParts] = {}

    def _rule(
        self, metric: str, unit: str | None
    ) -> tuple[int, float, float, float, float] | RecordProblem:
        """How to normalise and check ``metric`` sent in ``unit``, or the problem (index -1)."""
        known = METRICS.get(metric)
        if known is None:
            return RecordProblem(-1, RejectReason.UNKNOWN_METRIC, f"metric {metric!r}")
        conv = unit_conversion(metric, unit)
        if conv is None:
            return RecordProblem(
                -1,
                RejectReason.UNKNOWN_UNIT,
                f"{unit!r} is not a unit of {metric} "
                f"(accepted: {', '.join(accepted_units(metric))})",
            )
        rule = (known.id, conv[0], conv[1], known.low, known.high)
        if len(self._rules) < 10000:  # bounded: units and metric names come from devices
            self._rules[(metric, unit)] = rule
        return rule

    def _parse_topic(self, topic: str) -> TopicParts:
        parts = parse_topic(topic, self._root)  # raises for a bad topic: nothing kept
        if len(self._topics) >= _TOPICS_MAX:
            self._topics.clear()
        self._topics[topic] = parts
        return parts

    def _reject(
        self,
        out: Outcome,
        topic: str,
        payload: bytes,
        received_at: float,
        site: str | None,
        device: str | None,
        reason: RejectReason,
        detail: str,
    ) -> None:
        cut = payload[: self.limits.max_payload_bytes]
        out.rejections.append(
            Rejection(received_at, topic, site, device, reason, detail, cut, len(payload))
        )

    def process(self, topic: str, payload: bytes, received_at: float) -> Outcome:
        """Validate one message received at ``received_at`` [s since epoch]."""
        out = Outcome()
        site = device = None
        try:
            parts = self._topics.get(topic) or self._parse_topic(topic)
            site, device = parts.site, parts.device
            if parts.channel != "up":
                raise RejectError(RejectReason.INVALID_TOPIC, "telemetry goes to the up channel")
            if len(payload) > self.limits.max_payload_bytes:
                raise RejectError(
                    RejectReason.TOO_LARGE,
                    f"{len(payload)} bytes > max_payload_bytes {self.limits.max_payload_bytes}",
                )
            device_id = self.lookup(site, device)
            if device_id is None:
                raise RejectError(
                    RejectReason.UNKNOWN_DEVICE,
                    f"device {device!r} of site {site!r} is not in the inventory",
                )
            records, problems = decode(payload, device, received_at)
            if len(records) + len(problems) > self.limits.max_records:
                raise RejectError(
                    RejectReason.TOO_LARGE,
                    f"{len(records) + len(problems)} records > max_records "
                    f"{self.limits.max_records}",
                )
        except RejectError as exc:
            self._reject(out, topic, payload, received_at, site, device, exc.reason, exc.detail)
            return out
        self.check_records(
            out, topic, payload, received_at, parts.site, parts.device, device_id, records, problems
        )
        return out

    def check_records(
        self,
        out: Outcome,
        topic: str,
        payload: bytes,
        received_at: float,
        site: str,
        device: str,
        device_id: int,
        records: list[RawRecord],
        problems: list[RecordProblem],
        where: str | None = None,
    ) -> None:
        """Normalise and validate decoded records of a registered device into ``out``.

        Also used by ``sobriety import readings`` with records read from CSV; ``where`` then
        replaces the record number in rejection details (``line 12``).
        """
        lo = received_at - self.limits.past_window_s
        hi = received_at + self.limits.future_window_s
        rules = self._rules
        rows = out.rows
        newest = 0.0
        for index, (metric, raw, unit, when) in enumerate(records):
            rule = rules.get((metric, unit)) or self._rule(metric, unit)
            if isinstance(rule, RecordProblem):
                problems.append(RecordProblem(index, rule.reason, rule.detail))
                continue
            metric_id, scale, offset, low, high = rule
            value = raw * scale + offset
            if not math.isfinite(value):
                problems.append(RecordProblem(index, RejectReason.INVALID_VALUE, "not finite"))
                continue
            if not low <= value <= high:
                problems.append(
                    RecordProblem(
                        index,
                        RejectReason.OUT_OF_RANGE,
                        f"{metric} = {value:g} {METRICS[metric].unit} outside [{low:g}, {high:g}]",
                    )
                )
                continue
            if not lo <= when <= hi:
                problems.append(
                    RecordProblem(
                        index,
                        RejectReason.TIMESTAMP_OUT_OF_WINDOW,
                        f"time {when:.3f} is {received_at - when:+.0f} s from reception "
                        f"(window -{self.limits.past_window_s:g} s .. "
                        f"+{self.limits.future_window_s:g} s)",
                    )
                )
                continue
            if when > newest:
                newest = when
            rows.append((round(when * 1e6), device_id, metric_id, value))
        out.newest = max(out.newest, newest)
        if problems:
            by_reason: dict[RejectReason, list[str]] = {}
            for problem in problems:
                by_reason.setdefault(problem.reason, []).append(
                    f"{where or f'record {problem.index}'}: {problem.detail}"
                )
            for reason, details in by_reason.items():
                detail = "; ".join(details[:_MAX_DETAILS])
                if len(details) > _MAX_DETAILS:
                    detail += f"; and {len(details) - _MAX_DETAILS} more"
                self._reject(out, topic, payload, received_at, site, device, reason, detail)
