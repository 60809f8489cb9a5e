"""The durable spool: frames survive, torn frames are skipped, the size is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import RejectReason
from ingest.pipeline import Rejection
from ingest.spool import Spool, SpoolFullError, decode_frame, encode_frame


def rejection() -> Rejection:
    return Rejection(1.5, "a/b/c/d/up", "c", "d", RejectReason.INVALID_JSON, "bad", b"\xff{", 2)


def test_frames_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(encode_frame([(1, 2, 3, 4.5), (-5, 6, 7, 1e300)], [rejection()]))
    spool.append(encode_frame([], []))
    reopened = Spool(tmp_path, 1 << 20)
    assert reopened.size_bytes == spool.size_bytes > 0
    found = reopened.oldest()
    assert found is not None
    path, frames = found
    first = decode_frame(frames[0])
    assert first.rows == [(1, 2, 3, 4.5), (-5, 6, 7, 1e300)]
    assert first.rejections == [rejection()]
    assert decode_frame(frames[1]).rows == []
    reopened.remove(path)
    assert reopened.size_bytes == 0
    assert reopened.oldest() is None


def test_torn_frame_at_the_end_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(encode_frame([(1, 2, 3, 4.0)], []))
    segment = next(tmp_path.glob("*.spool"))
    with segment.open("ab") as fh:
        fh.write(b"SPL1\xff\x00\x00\x00garbage")  # a crash in the middle of a write
    found = Spool(tmp_path, 1 << 20).oldest()
    assert found is not None
    assert len(found[1]) == 1


def test_spool_is_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    body = encode_frame([(1, 2, 3, 4.0)] * 18_000, [])
    spool.append(body)
    spool.append(body)
    with pytest.raises(SpoolFullError):
        spool.append(body)
    assert spool.size_bytes < 1 << 20


def test_appends_after_taking_the_oldest_go_to_a_new_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(encode_frame([], []))
    found = spool.oldest()
    assert found is not None
    spool.append(encode_frame([], []))
    assert len(list(tmp_path.glob("*.spool"))) == 2
    spool.remove(found[0])
    assert len(spool) == 1


def test_quarantine_keeps_the_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(encode_frame([], []))
    found = spool.oldest()
    assert found is not None
    kept = spool.quarantine(found[0])
    assert kept.exists()
    assert spool.size_bytes == 0
