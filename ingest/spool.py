"""A bounded, durable local spool for batches the database could not take.

Segments are files ``NNNNNNNNNNNN.spool`` in one directory, each a sequence of frames::

    magic b"SPL1" | body length (u32 LE) | CRC-32 of body (u32 LE) | body

and a body (:func:`encode_frame`) is::

    b"\xffSPLv2\x00\x00" | frame id (16 random bytes) | row count n (u64 LE) | n rows (<qihd) |
    message count k (u64 LE) | k device ids (i32 LE) | k earliest reading times [µs] (i64 LE) |
    rejections (JSON)

Bodies written before the message counts (``n | rows | rejections``, no tag: a row count never
has its top byte set) still decode, with ``uplinks`` None: their messages are not counted. The
frame id lets the store count a frame's messages once when a segment is replayed again (a drain
interrupted by the database going away again replays the segment from its first frame).

:meth:`Spool.append` returns only once the frame is written and ``fsync``-ed: only then may the
ingest acknowledge the MQTT messages of the batch. A torn frame at the end of a segment (a crash
during the write) fails its CRC and is skipped: it was never acknowledged, so the broker delivers
those messages again. Frames are replayed oldest first and a segment is deleted once all its
frames are in the database; replaying a frame twice is harmless (readings are deduplicated).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.errors import RejectReason, SobrietyError
from ingest.pipeline import Rejection, Row, Uplinks

log = logging.getLogger(__name__)

_MAGIC = b"SPL1"
_HEADER = struct.Struct("<4sII")
_SEGMENT_BYTES = 16 << 20


class SpoolFullError(SobrietyError):
    """The spool has reached its configured size; the batch was not written."""


_ROW = struct.Struct("<qihd")
_TAG_V2 = b"\xffSPLv2\x00\x00"
"""First 8 bytes of a body with message counts; as a u64 LE row count it would be > 2^63."""


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """What a frame holds: the rows, the rejections and the messages that gave rows of one
    batch (None for a frame of the format before message counts)."""

    rows: list[Row]
    rejections: list[Rejection]
    uplinks: Uplinks | None = None
    frame_id: bytes | None = None


def encode_frame(
    rows: Sequence[Row], rejections: Sequence[Rejection], uplinks: Uplinks | None = None
) -> bytes:
    """The body of a frame: tag, row count, packed rows, message count, their device ids and
    times, rejections as JSON."""
    rej = orjson.dumps(
        [
            [
                r.received_at,
                r.topic,
                r.site,
                r.device,
                r.reason.value,
                r.detail,
                r.payload.hex(),
                r.payload_bytes,
            ]
            for r in rejections
        ]
    )
    pack = _ROW.pack
    ids, times = (uplinks.device_ids, uplinks.t_us) if uplinks is not None else ([], [])
    k = len(ids)
    return b"".join(
        (
            _TAG_V2,
            os.urandom(16),
            struct.pack("<Q", len(rows)),
            b"".join(pack(*row) for row in rows),
            struct.pack(f"<Q{k}i{k}q", k, *ids, *times),
            rej,
        )
    )


def decode_frame(body: bytes) -> SpooledBatch:
    """Inverse of :func:`encode_frame`; also reads the bodies of the format before message
    counts (``uplinks`` None)."""
    tagged = body[:8] == _TAG_V2
    frame_id = body[8:24] if tagged else None
    offset = 24 if tagged else 0
    (n_rows,) = struct.unpack_from("<Q", body, offset)
    start = offset + 8 + n_rows * _ROW.size
    rows: list[Row] = list(_ROW.iter_unpack(body[offset + 8 : start]))
    uplinks = None
    if tagged:
        (k,) = struct.unpack_from("<Q", body, start)
        ids = struct.unpack_from(f"<{k}i", body, start + 8)
        times = struct.unpack_from(f"<{k}q", body, start + 8 + 4 * k)
        uplinks = Uplinks(list(ids), list(times))
        start += 8 + 12 * k
    rejections = [
        Rejection(t, topic, site, device, RejectReason(reason), detail, bytes.fromhex(p), n)
        for t, topic, site, device, reason, detail, p, n in orjson.loads(body[start:])
    ]
    return SpooledBatch(rows, rejections, uplinks, frame_id)


class Spool:
    """Append-only segments under ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._size = sum(p.stat().st_size for p in self._segments())
        self._current: Path | None = None

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool"))

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in all segments."""
        return self._size

    def __len__(self) -> int:
        return len(self._segments())

    def append(self, body: bytes) -> None:
        """Write one frame durably (written and fsync-ed before returning)."""
        frame_len = _HEADER.size + len(body)
        if self._size + frame_len > self.max_bytes:
            raise SpoolFullError(
                f"spool {self.directory} holds {self._size} bytes; max_bytes {self.max_bytes}"
            )
        if self._current is None or self._current.stat().st_size >= _SEGMENT_BYTES:
            existing = self._segments()
            seq = int(existing[-1].stem) + 1 if existing else 1
            self._current = self.directory / f"{seq:012d}.spool"
        header = _HEADER.pack(_MAGIC, len(body), zlib.crc32(body))
        fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, header + body)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._size += frame_len
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def oldest(self) -> tuple[Path, list[bytes]] | None:
        """The oldest segment that is not being written, with its intact frame bodies.

        The segment being appended to is closed first (the next append starts a new one).
        """
        segments = self._segments()
        if not segments:
            return None
        path = segments[0]
        if path == self._current:
            self._current = None
        return path, list(_read_frames(path))

    def remove(self, path: Path) -> None:
        """Delete a segment whose frames are all in the database."""
        size = path.stat().st_size
        path.unlink()
        self._size -= size
        self._fsync_directory()

    def quarantine(self, path: Path) -> Path:
        """Move a segment the database refuses (not a connection problem) aside, keeping it."""
        target = self.directory / "failed" / path.name
        target.parent.mkdir(exist_ok=True)
        size = path.stat().st_size
        path.rename(target)
        self._size -= size
        return target


def _read_frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    offset = 0
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        body = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
            log.warning("spool %s: torn or corrupt frame at byte %d skipped", path, offset)
            return
        yield body
        offset += _HEADER.size + length
    if offset != len(data):
        log.warning("spool %s: %d trailing bytes of a torn frame skipped", path, len(data) - offset)
