"""Readings of a history as numpy arrays, encoded for PostgreSQL's binary ``COPY`` in one go
(no Python object per reading: a day of a large network is a few hundred thousand rows)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.arrays import FloatArray

PG_EPOCH = 946684800.0
"""2000-01-01T00:00:00Z [s since the Unix epoch], the origin of PostgreSQL timestamps."""

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_TUPLE = np.dtype(
    [
        ("fields", ">i2"),
        ("time_len", ">i4"),
        ("time", ">i8"),  # µs since 2000-01-01 UTC
        ("device_len", ">i4"),
        ("device", ">i4"),
        ("metric_len", ">i4"),
        ("metric", ">i2"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
COPY_SQL = "COPY readings (time, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
"""The statement that :meth:`Rows.encode` feeds."""


class Rows:
    """Readings gathered as arrays: time [s since epoch], device id, metric id, value."""

    def __init__(self) -> None:
        self._parts: list[tuple[FloatArray, npt.NDArray[np.int32], int, FloatArray]] = []
        self.count = 0

    def add(self, times: FloatArray, device: int, metric: int, values: FloatArray,
            decimals: int) -> None:  # fmt: skip
        """Readings of one device and metric, values rounded to ``decimals``."""
        times = np.asarray(times, dtype=np.float64).ravel()
        values = np.round(np.asarray(values, dtype=np.float64).ravel(), decimals)
        if len(times) != len(values):
            raise ValueError(f"{len(times)} times for {len(values)} values")
        if len(times):
            self._parts.append((times, np.full(len(times), device, np.int32), metric, values))
            self.count += len(times)

    def add_many(self, times: FloatArray, devices: npt.NDArray[np.integer], metric: int,
                 values: FloatArray, decimals: int | None) -> None:  # fmt: skip
        """Readings of several devices at once (arrays of the same shape), values rounded to
        ``decimals`` (None: stored as given, already rounded as a device sends them)."""
        if times.size:
            flat = values.ravel()
            rounded = np.asarray(flat if decimals is None else np.round(flat, decimals),
                                 dtype=np.float64)  # fmt: skip
            self._parts.append(
                (
                    times.ravel().astype(np.float64),
                    devices.ravel().astype(np.int32),
                    metric,
                    rounded,
                )
            )
            self.count += times.size

    def select(self, device: int, metric: int) -> tuple[FloatArray, FloatArray]:
        """Times and values gathered for one device and metric, by time (tests, notes)."""
        times = [t[d == device] for t, d, m, _ in self._parts if m == metric]
        values = [v[d == device] for _, d, m, v in self._parts if m == metric]
        if not times:
            return np.zeros(0), np.zeros(0)
        t, v = np.concatenate(times), np.concatenate(values)
        order = np.argsort(t, kind="stable")
        return t[order], v[order]

    def encode(self) -> bytes:
        """The whole binary ``COPY`` stream: signature, tuples, trailer."""
        out = np.empty(self.count, dtype=_TUPLE)
        out["fields"], out["time_len"], out["device_len"] = 4, 8, 4
        out["metric_len"], out["value_len"] = 2, 8
        at = 0
        for times, devices, metric, values in self._parts:
            part = out[at : at + len(times)]
            part["time"] = np.round((times - PG_EPOCH) * 1e6).astype(np.int64)
            part["device"] = devices
            part["metric"] = metric
            part["value"] = values
            at += len(times)
        return _SIGNATURE + out.tobytes() + _TRAILER
