"""Payload codecs of the ``up`` channel: SenML JSON (RFC 8428) and flat JSON.

:func:`decode` turns the bytes of one message into :class:`RawRecord` values (metric name as sent,
value and unit as sent, absolute time in seconds since the Unix epoch) plus the problems of the
records that could not be read. It neither converts units nor checks ranges: that is the ingest's
normalisation step. A message that cannot be read at all raises :class:`PayloadError`.

SenML rules applied (RFC 8428 section 4): base fields (``bn``, ``bt``, ``bu``, ``bv``) apply to
the records that follow until redefined; the name of a record is ``bn + n``; its part after the
last ``:`` or ``/`` is the metric and the part before it, if any, must name the topic's device;
a time below 2**28 s is relative to the reception time; ``v`` is the only value field accepted
(``vs``, ``vb``, ``vd`` and ``s``-only records are ``invalid_value``).

Flat JSON: ``{"ts": 1767225600, "power": 21.4, "units": {"power": "W"}}``; ``ts`` is seconds
since the epoch (milliseconds when above 10**11) or an ISO 8601 string with an offset, and
defaults to the reception time; ``units`` is optional (canonical units otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from core.errors import PayloadError, RejectReason

RELATIVE_TIME_LIMIT_S = 2**28
"""SenML: times below this many seconds are relative to now (RFC 8428 section 4.5.3)."""
_MS_THRESHOLD = 1e11
_FLAT_RESERVED = frozenset({"ts", "units", "device"})


class RawRecord(NamedTuple):
    """One decoded measurement: metric name and unit as sent, ``time`` in s since the epoch."""

    metric: str
    value: float
    unit: str | None
    time: float


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """A record that could not be read: its index in the message, the reason and a detail."""

    index: int
    reason: RejectReason
    detail: str


def decode(
    payload: bytes, device: str, received_at: float
) -> tuple[list[RawRecord], list[RecordProblem]]:
    """Decode a SenML pack (JSON array) or a flat JSON object sent by ``device``.

    ``received_at`` (s since the epoch) resolves relative SenML times and missing ``ts``.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(RejectReason.INVALID_JSON, str(exc)) from None
    if isinstance(doc, list):
        return _decode_senml(doc, device, received_at)
    if isinstance(doc, dict):
        return _decode_flat(doc, device, received_at)
    raise PayloadError(RejectReason.INVALID_PAYLOAD, "expected a SenML array or a flat JSON object")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def split_name(name: str) -> tuple[str, str]:
    """Split a SenML full name into (device prefix, metric) at the last ``:`` or ``/``."""
    cut = max(name.rfind(":"), name.rfind("/"))
    if cut < 0:
        return "", name
    return name[:cut].rstrip(":/"), name[cut + 1 :]


def names_device(prefix: str, device: str) -> bool:
    """Whether a SenML name prefix (``lum-1``, ``urn:dev:lum-1``, ``town/lum-1``) is ``device``."""
    if prefix == device:
        return True
    return prefix.endswith(device) and prefix[-len(device) - 1] in ":/"


_MISSING = object()
# (full SenML name, topic device) -> metric, or None when the name is another device's.
_NAMES: dict[tuple[str, str], str | None] = {}
_NAMES_MAX = 200_000


def _decode_senml(
    records: list[Any], device: str, received_at: float
) -> tuple[list[RawRecord], list[RecordProblem]]:
    # The hot path of the ingest: written for speed (type() checks, one dict lookup per field,
    # metric names cached per full name).
    if not records:
        raise PayloadError(RejectReason.INVALID_PAYLOAD, "empty SenML pack")
    out: list[RawRecord] = []
    problems: list[RecordProblem] = []
    bn = ""
    bt = 0.0
    bu: str | None = None
    bv = 0.0
    cache = _NAMES
    if len(cache) > _NAMES_MAX:
        cache.clear()
    for index, rec in enumerate(records):
        if type(rec) is not dict:
            problems.append(
                RecordProblem(index, RejectReason.INVALID_PAYLOAD, "record is not an object")
            )
            continue
        if "bn" in rec or "bt" in rec or "bu" in rec or "bv" in rec:
            bad = _apply_base(rec)
            if bad:
                problems.append(RecordProblem(index, RejectReason.INVALID_PAYLOAD, bad))
                continue
            bn = rec.get("bn", bn)
            bt = float(rec.get("bt", bt))
            bu = rec.get("bu", bu)
            bv = float(rec.get("bv", bv))
        value = rec.get("v", _MISSING)
        kind = type(value)
        if kind is not float and kind is not int:
            if value is _MISSING and "n" not in rec and rec.keys() <= _BASE_ONLY:
                continue  # a record that only sets base fields
            detail = (
                "no numeric value 'v' (vs/vb/vd/s unused)"
                if value is _MISSING
                else f"v is not a number: {value!r}"
            )
            problems.append(RecordProblem(index, RejectReason.INVALID_VALUE, detail))
            continue
        name = rec.get("n", "")
        if type(name) is not str:
            problems.append(RecordProblem(index, RejectReason.INVALID_PAYLOAD, "n not text"))
            continue
        full = bn + name
        key = (full, device)
        if key in cache:
            metric = cache[key]
        else:
            prefix, metric = split_name(full)
            if prefix and not names_device(prefix, device):
                metric = None
            cache[key] = metric
        if metric is None:
            problems.append(
                RecordProblem(
                    index,
                    RejectReason.DEVICE_MISMATCH,
                    f"name {full!r} names another device than the topic's {device!r}",
                )
            )
            continue
        t = rec.get("t", 0.0)
        kind = type(t)
        if kind is not float and kind is not int:
            problems.append(RecordProblem(index, RejectReason.INVALID_PAYLOAD, "t not a number"))
            continue
        when = bt + t
        if -RELATIVE_TIME_LIMIT_S < when < RELATIVE_TIME_LIMIT_S:
            when += received_at
        unit = rec.get("u", bu)
        if unit is not None and type(unit) is not str:
            problems.append(RecordProblem(index, RejectReason.INVALID_PAYLOAD, "u not text"))
            continue
        out.append(RawRecord(metric, value + bv, unit, when))
    return out, problems


_BASE_ONLY = frozenset({"bn", "bt", "bu", "bv", "bver"})


def _apply_base(rec: dict[str, Any]) -> str | None:
    """The problem with a record's base fields, or None when they are well-formed."""
    if "bn" in rec and type(rec["bn"]) is not str:
        return "bn not text"
    if "bu" in rec and rec["bu"] is not None and type(rec["bu"]) is not str:
        return "bu not text"
    for key in ("bt", "bv"):
        if key in rec and not _is_number(rec[key]):
            return f"{key} not a number"
    return None


def _flat_time(ts: object, received_at: float) -> float:
    if ts is None:
        return received_at
    if _is_number(ts):
        value = float(ts)  # type: ignore[arg-type]
        if not math.isfinite(value):
            raise PayloadError(RejectReason.INVALID_PAYLOAD, "ts is not finite")
        return value / 1000.0 if value > _MS_THRESHOLD else value
    if isinstance(ts, str):
        return parse_iso_time(ts)
    raise PayloadError(RejectReason.INVALID_PAYLOAD, "ts must be a number or an ISO 8601 string")


def parse_iso_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time that carries an offset (``Z`` or ``+01:00``)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(RejectReason.INVALID_PAYLOAD, f"time {text!r} is not ISO 8601") from None
    if when.tzinfo is None:
        raise PayloadError(
            RejectReason.INVALID_PAYLOAD, f"time {text!r} has no UTC offset (add Z or +01:00)"
        )
    return when.timestamp()


def _decode_flat(
    doc: dict[str, Any], device: str, received_at: float
) -> tuple[list[RawRecord], list[RecordProblem]]:
    when = _flat_time(doc.get("ts"), received_at)
    units = doc.get("units", {})
    if not isinstance(units, dict):
        raise PayloadError(RejectReason.INVALID_PAYLOAD, "units must be an object")
    named = doc.get("device")
    if named is not None and named != device:
        raise PayloadError(
            RejectReason.DEVICE_MISMATCH,
            f"device {named!r} is not the topic's device {device!r}",
        )
    out: list[RawRecord] = []
    problems: list[RecordProblem] = []
    for index, (key, value) in enumerate(doc.items()):
        if key in _FLAT_RESERVED:
            continue
        if not _is_number(value):
            problems.append(
                RecordProblem(index, RejectReason.INVALID_VALUE, f"{key} is not a number")
            )
            continue
        unit = units.get(key)
        out.append(RawRecord(key, float(value), unit if isinstance(unit, str) else None, when))
    if not out and not problems:
        raise PayloadError(RejectReason.INVALID_PAYLOAD, "no measurement in the object")
    return out, problems


def encode_senml(device: str, records: Iterable[tuple[str, float, str | None, float]]) -> bytes:
    """A SenML pack for ``device`` from ``(metric, value, unit, time_s)`` tuples.

    The first record carries ``bn`` (``{device}:``) and ``bt`` (its time); the others carry
    their time relative to it, as a compact batched report does.
    """
    pack: list[dict[str, object]] = []
    base: float | None = None
    for metric, value, unit, when in records:
        rec: dict[str, object] = {"n": metric, "v": value}
        if unit is not None:
            rec["u"] = unit
        if base is None:
            base = when
            rec["bn"] = f"{device}:"
            rec["bt"] = when
        elif when != base:
            rec["t"] = when - base
        pack.append(rec)
    return orjson.dumps(pack)
