"""The direct-``COPY`` fast path's data, pure: a batch's binary ``COPY`` stream for ``readings``
and its sums per device and UTC quarter hour, made in one pass over the rows.

:mod:`ingest.store` first copies a batch straight into ``readings``; when that succeeds every
row is new, so what the staging merge would learn from its ``RETURNING`` — readings and metrics
per device and quarter hour, the last reading of each device — is known here already, without
a second pass over the rows in SQL. No psycopg: numbers in, bytes and lists out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.pipeline import Row, Uplinks

QUARTER_US = 900_000_000
"""15 minutes [µs]: every UTC offset in use today is a multiple of it (see ``_MERGE_COUNTED``)."""
PG_EPOCH_US = 946_684_800_000_000
"""From 1970-01-01 to 2000-01-01 [µs]: a binary ``timestamptz`` counts from 2000."""

_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
_TRAILER = b"\xff\xff"
_TUPLE = struct.Struct(">hiqiiihid")
"""One binary ``COPY`` tuple of (time, device_id, metric_id, value): 4 fields, each its length
then its big-endian value (timestamptz: µs since 2000, int4, int2, float8). Packing it whole is
faster than psycopg's ``write_row`` with a ``timestamptz`` dumper (3.5 against 10.8 ms of client
CPU for 10,000 rows, measured; 19 ms with a ``datetime`` per row)."""


@dataclass(frozen=True, slots=True)
class DirectBatch:
    """A batch ready for the direct path.

    ``payload``: the whole binary ``COPY`` stream (signature, tuples, trailer). Parallel lists,
    one entry per (device, UTC quarter hour) with a reading or a message: ``device_ids``,
    ``quarters`` [quarter hours since the epoch], ``messages``, ``readings``, ``metric_masks``
    (bit m per metric id m). ``status_ids``/``status_last_us``: each device's latest reading
    [µs since the epoch], for ``device_status``.
    """

    payload: bytes
    device_ids: list[int]
    quarters: list[int]
    messages: list[int]
    readings: list[int]
    metric_masks: list[int]
    status_ids: list[int]
    status_last_us: list[int]


def encode_direct(rows: Sequence[Row], uplinks: Uplinks | None) -> DirectBatch:
    """The binary ``COPY`` stream of ``rows`` and their sums, in one pass (about 7 ms of CPU for
    10,000 rows, half of it the packing). ``uplinks`` (None: not counted) are summed per device
    and the quarter hour of their earliest reading. Raises ``struct.error`` for a value out of
    its column's range (the caller then leaves it to the staging path and its errors)."""
    pack = _TUPLE.pack
    epoch = PG_EPOCH_US
    parts = [_HEADER]
    append = parts.append
    sums: dict[tuple[int, int], list[int]] = {}  # (device, quarter) -> [readings, mask, last]
    for t_us, device_id, metric_id, value in rows:
        append(pack(4, 8, t_us - epoch, 4, device_id, 2, metric_id, 8, value))
        key = (device_id, t_us // QUARTER_US)
        acc = sums.get(key)
        if acc is None:
            sums[key] = [1, 1 << metric_id, t_us]
        else:
            acc[0] += 1
            acc[1] |= 1 << metric_id
            if t_us > acc[2]:
                acc[2] = t_us
    append(_TRAILER)
    last: dict[int, int] = {}
    for (device_id, _quarter), acc in sums.items():
        if acc[2] > last.get(device_id, acc[2] - 1):
            last[device_id] = acc[2]
    counted: dict[tuple[int, int], int] = {}
    if uplinks is not None:
        for device_id, t_us in zip(uplinks.device_ids, uplinks.t_us, strict=True):
            key = (device_id, t_us // QUARTER_US)
            counted[key] = counted.get(key, 0) + 1
    keys = list(sums.keys() | counted.keys()) if counted else list(sums)
    return DirectBatch(
        payload=b"".join(parts),
        device_ids=[k[0] for k in keys],
        quarters=[k[1] for k in keys],
        messages=[counted.get(k, 0) for k in keys],
        readings=[sums[k][0] if k in sums else 0 for k in keys],
        metric_masks=[sums[k][1] if k in sums else 0 for k in keys],
        status_ids=list(last),
        status_last_us=list(last.values()),
    )
