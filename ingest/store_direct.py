"""The direct-``COPY`` fast path's data, pure: a batch's binary ``COPY`` stream for ``readings``
and its sums per device and UTC quarter hour, made in Python as the rows are packed.

:mod:`ingest.store` first copies a batch straight into ``readings``; when that succeeds every
row is new, so what the staging merge would learn from its ``RETURNING`` — readings and metrics
per device and quarter hour, the last reading of each device — is known here already, without
a second pass over the rows in SQL. No psycopg: numbers in, bytes and lists out.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import floordiv

from ingest.pipeline import Row, Uplinks

QUARTER_US = 900_000_000
"""15 minutes [µs]: every UTC offset in use today is a multiple of it (see ``_MERGE_COUNTED``)."""
PG_EPOCH_US = 946_684_800_000_000
"""From 1970-01-01 to 2000-01-01 [µs]: a binary ``timestamptz`` counts from 2000."""

_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
_TRAILER = b"\xff\xff"
_END = ((-(1 << 63), 0, 0, 0.0),)
"""A row before any ``timestamptz``: in no run, it ends the last one."""
_TUPLE = struct.Struct(">hiqiiihid")
"""One binary ``COPY`` tuple of (time, device_id, metric_id, value): 4 fields, each its length
then its big-endian value (timestamptz: µs since 2000, int4, int2, float8). Packing it whole is
faster than psycopg's ``write_row`` with a ``timestamptz`` dumper (3.5-4.5 against 10-11 ms of
client CPU for 10,000 rows, measured; 19-28 ms with a ``datetime`` per row)."""


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
    """The binary ``COPY`` stream of ``rows`` and their sums. ``uplinks`` (None: not counted)
    are summed per device and the quarter hour of their earliest reading. Raises
    ``struct.error`` for a value out of its column's range (the caller then leaves it to the
    staging path and its errors).

    Rows come message by message, a message's rows of one device and minutes apart: they are
    summed per run of rows of one device and quarter hour, and a run added to the sums once
    (any order gives the same sums; this one costs a dictionary lookup per run, not per row).
    Measured for 10,000 rows (1,000 10-record messages): 4.0 ms of CPU against 5.5 with a
    lookup per row, 7.5 packing and summing in one loop."""
    pack = _TUPLE.pack
    epoch = PG_EPOCH_US
    payload = (
        _HEADER + b"".join([pack(4, 8, t - epoch, 4, d, 2, m, 8, v) for t, d, m, v in rows])
    ) + _TRAILER
    sums: dict[tuple[int, int], list[int]] = {}  # (device, quarter) -> [readings, mask, last]
    span = QUARTER_US
    run_device, lo, hi, n, mask, last = 0, 0, -1, 0, 0, 0  # an empty run: no t in [0, -1)
    for t_us, device_id, metric_id, _value in chain(rows, _END):
        if device_id == run_device and lo <= t_us < hi:
            n += 1
            mask |= 1 << metric_id
            if t_us > last:
                last = t_us
            continue
        if n:  # the run ends: into the sums
            key = (run_device, lo // span)
            acc = sums.get(key)
            if acc is None:
                sums[key] = [n, mask, last]
            else:
                acc[0] += n
                acc[1] |= mask
                if last > acc[2]:
                    acc[2] = last
        run_device, lo = device_id, t_us - t_us % span
        hi, n, mask, last = lo + span, 1, 1 << metric_id, t_us

    counted: Counter[tuple[int, int]] = Counter()
    if uplinks is not None:
        counted.update(
            zip(uplinks.device_ids, map(floordiv, uplinks.t_us, repeat(span)), strict=True)
        )
        for key in counted.keys() - sums.keys():
            sums[key] = [0, 0, 0]  # messages only (not from these rows): no reading, no status
    keys = list(sums)
    values = list(sums.values())
    latest: dict[int, int] = {}
    for (device_id, _quarter), (n, _mask, last) in zip(keys, values, strict=True):
        if n and last > latest.get(device_id, last - 1):
            latest[device_id] = last
    return DirectBatch(
        payload,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [counted[k] for k in keys] if counted else [0] * len(keys),
        [v[0] for v in values],
        [v[1] for v in values],
        list(latest),
        list(latest.values()),
    )
