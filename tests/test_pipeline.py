"""Normalisation and validation of messages (no broker, no database)."""

from __future__ import annotations

import orjson
import pytest

from core.contract import METRICS
from core.errors import RejectReason
from ingest.pipeline import Limits, Pipeline

NOW = 1767225600.0
ROOT = "sobriety/v1"
DEVICES = {("lyon", "lum-1"): 11, ("lyon", "fm-1"): 12}


def pipeline(**limits: float) -> Pipeline:
    return Pipeline(lambda s, d: DEVICES.get((s, d)), ROOT, Limits(**limits))  # type: ignore[arg-type]


def rows(out_rows: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, float]]:
    return list(out_rows)


def senml(*records: dict[str, object]) -> bytes:
    return orjson.dumps(list(records))


def test_units_are_normalised_to_canonical() -> None:
    payload = senml(
        {"bn": "fm-1:", "bt": NOW, "n": "flow", "u": "l/s", "v": 2.0},
        {"n": "pressure", "u": "kPa", "v": 320},
        {"n": "volume", "u": "L", "v": 1500},
    )
    out = pipeline().process("sobriety/v1/lyon/fm-1/up", payload, NOW)
    assert out.rejections == []
    assert rows(out.rows) == [
        (int(NOW * 1e6), 12, 1, pytest.approx(7.2)),
        (int(NOW * 1e6), 12, 3, pytest.approx(3.2)),
        (int(NOW * 1e6), 12, 2, pytest.approx(1.5)),
    ]
    assert out.newest == NOW


def test_good_records_are_kept_when_others_are_rejected() -> None:
    payload = senml(
        {"bn": "lum-1:", "bt": NOW, "n": "power", "v": 40},
        {"n": "power", "u": "furlong", "v": 1},
        {"n": "dim", "v": 150},
        {"n": "colour", "v": 3},
        {"n": "dim", "v": 50, "t": 10 * 86400},
    )
    out = pipeline().process("sobriety/v1/lyon/lum-1/up", payload, NOW)
    assert rows(out.rows) == [(int(NOW * 1e6), 11, 5, 40.0)]
    reasons = {r.reason: r.detail for r in out.rejections}
    assert set(reasons) == {
        RejectReason.UNKNOWN_UNIT,
        RejectReason.OUT_OF_RANGE,
        RejectReason.UNKNOWN_METRIC,
        RejectReason.TIMESTAMP_OUT_OF_WINDOW,
    }
    assert "record 1" in reasons[RejectReason.UNKNOWN_UNIT]
    assert "accepted: " in reasons[RejectReason.UNKNOWN_UNIT]
    assert "record 2" in reasons[RejectReason.OUT_OF_RANGE]
    for rej in out.rejections:
        assert rej.payload == payload
        assert (rej.site, rej.device) == ("lyon", "lum-1")


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("sobriety/v1/lyon/lum-9/up", b'{"power": 1}', RejectReason.UNKNOWN_DEVICE),
        ("sobriety/v1/lyon/lum-1/state", b'{"power": 1}', RejectReason.INVALID_TOPIC),
        ("elsewhere/lyon/lum-1/up", b'{"power": 1}', RejectReason.INVALID_TOPIC),
        ("sobriety/v1/lyon/lum-1/up", b"{oops", RejectReason.INVALID_JSON),
        (
            "sobriety/v1/lyon/lum-1/up",
            b'[{"bn":"lum-2:","n":"power","v":1}]',
            RejectReason.DEVICE_MISMATCH,
        ),
        ("sobriety/v1/lyon/lum-1/up", b'{"power": 1e400}', RejectReason.INVALID_JSON),
        (
            "sobriety/v1/lyon/lum-1/up",
            b'[{"n":"power","v":1e308,"bv":1e308}]',
            RejectReason.INVALID_VALUE,
        ),
        ("sobriety/v1/lyon/lum-1/up", b'{"power": -5}', RejectReason.OUT_OF_RANGE),
        (
            "sobriety/v1/lyon/lum-1/up",
            b'{"ts": 1.0, "power": 5}',
            RejectReason.TIMESTAMP_OUT_OF_WINDOW,
        ),
    ],
)
def test_rejection_reasons(topic: str, payload: bytes, reason: RejectReason) -> None:
    out = pipeline().process(topic, payload, NOW)
    assert out.rows == []
    assert [r.reason for r in out.rejections] == [reason]
    assert out.rejections[0].topic == topic
    assert out.rejections[0].payload == payload


def test_too_large_payload_is_rejected_and_cut() -> None:
    payload = b'{"power": 1, "pad": "' + b"x" * 2000 + b'"}'
    out = pipeline(max_payload_bytes=1024).process("sobriety/v1/lyon/lum-1/up", payload, NOW)
    assert [r.reason for r in out.rejections] == [RejectReason.TOO_LARGE]
    assert len(out.rejections[0].payload) == 1024
    assert out.rejections[0].payload_bytes == len(payload)


def test_too_many_records_is_too_large() -> None:
    payload = senml(*({"n": "power", "v": i, "t": -i} for i in range(11)))
    out = pipeline(max_records=10).process("sobriety/v1/lyon/lum-1/up", payload, NOW)
    assert [r.reason for r in out.rejections] == [RejectReason.TOO_LARGE]
    assert out.rows == []


def test_time_window_edges() -> None:
    p = pipeline(past_window_s=3600, future_window_s=60)
    inside = p.process("sobriety/v1/lyon/lum-1/up", b'[{"n":"dim","v":1,"t":-3600}]', NOW)
    assert len(inside.rows) == 1
    assert not inside.rejections
    ahead = p.process("sobriety/v1/lyon/lum-1/up", b'[{"n":"dim","v":1,"t":61}]', NOW)
    assert [r.reason for r in ahead.rejections] == [RejectReason.TIMESTAMP_OUT_OF_WINDOW]


def test_rejection_fingerprint_depends_on_topic_reason_payload() -> None:
    a = pipeline().process("sobriety/v1/lyon/lum-1/up", b"{bad", NOW).rejections[0]
    b = pipeline().process("sobriety/v1/lyon/lum-1/up", b"{bad", NOW + 5).rejections[0]
    c = pipeline().process("sobriety/v1/lyon/fm-1/up", b"{bad", NOW).rejections[0]
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_many_problems_are_summarised() -> None:
    payload = senml(*({"n": "nope", "v": 1, "t": -i} for i in range(8)))
    out = pipeline().process("sobriety/v1/lyon/lum-1/up", payload, NOW)
    assert len(out.rejections) == 1
    assert out.rejections[0].detail.endswith("and 3 more")


def test_a_batch_closes_when_no_message_comes() -> None:
    """A broker that holds messages back until they are acknowledged sends nothing more: the
    batch must not wait for ``batch_ms``."""
    from ingest.batcher import Batcher
    from ingest.pipeline import Outcome

    batcher = Batcher(max_rows=1_000_000, max_ms=600_000, idle_ms=20)
    for mid in (1, 2, 3):
        batcher.add_many([(Outcome(), (0, mid, 1))])
    batch = batcher.take(timeout=30.0)  # due 20 ms after the third message, not in 10 minutes
    assert batch is not None
    assert batch.messages == 3
    assert [mid for _g, mid, _q in batch.acks] == [1, 2, 3]
    without_idle = Batcher(max_rows=1_000_000, max_ms=600_000, idle_ms=0)
    without_idle.add_many([(Outcome(), (0, 1, 1))])
    assert without_idle.take(timeout=0.2) is None  # only the size or the age closes it then


def test_a_full_batch_holds_the_receiver_until_the_writer_takes_it() -> None:
    """Backpressure: while the open batch is full, adding waits (the receiver stops reading
    its socket); taking the batch lets it go on; closing releases it without adding."""
    import threading

    from ingest.batcher import Batcher
    from ingest.pipeline import Outcome

    row = (0, 1, 1, 1.0)
    batcher = Batcher(max_rows=2, max_ms=600_000)
    assert batcher.add_many([(Outcome(rows=[row]), (0, 1, 1)), (Outcome(rows=[row]), (0, 2, 1))])
    added = threading.Event()
    results: list[bool] = []

    def receiver() -> None:
        results.append(batcher.add_many([(Outcome(rows=[row]), (0, 3, 1))]))
        added.set()

    thread = threading.Thread(target=receiver)
    thread.start()
    assert not added.wait(0.3), "added to a full batch"
    first = batcher.take(timeout=5.0)
    assert first is not None
    assert [mid for _g, mid, _q in first.acks] == [1, 2]
    assert added.wait(5.0)
    thread.join()
    assert results == [True]
    assert batcher.add_many([(Outcome(rows=[row]), (0, 4, 1))])  # full again: 3 and 4
    fifth = [(Outcome(), (0, 5, 1))]
    late = threading.Thread(target=lambda: results.append(batcher.add_many(fifth)))
    late.start()
    batcher.close()
    late.join(5.0)
    assert results == [True, False], "closed: message 5 not added (left unacknowledged)"
    last = batcher.take(timeout=1.0)
    assert last is not None
    assert [mid for _g, mid, _q in last.acks] == [3, 4]


def test_parsed_topics_are_kept_but_never_the_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Topics are parsed once (the cache is bounded); a bad topic is rejected every time, and a
    device registered later is found: the inventory is asked for every message."""
    import ingest.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_TOPICS_MAX", 2)
    known: dict[tuple[str, str], int] = {}
    pipe = Pipeline(lambda s, d: known.get((s, d)), ROOT)
    good, bad = "sobriety/v1/lyon/lum-1/up", "sobriety/v1/ly on/lum-1/up"
    first = pipe.process(good, b'{"power": 5}', NOW)
    assert [r.reason for r in first.rejections] == [RejectReason.UNKNOWN_DEVICE]
    known[("lyon", "lum-1")] = 11
    assert [row[1:] for row in pipe.process(good, b'{"power": 5}', NOW).rows] == [
        (11, METRICS["power"].id, 5.0)
    ]
    for _ in range(2):
        out = pipe.process(bad, b'{"power": 5}', NOW)
        assert [r.reason for r in out.rejections] == [RejectReason.INVALID_TOPIC]
    assert list(pipe._topics) == [good]
    for device in ("lum-2", "lum-3"):
        pipe.process(f"sobriety/v1/lyon/{device}/up", b'{"power": 5}', NOW)
    assert list(pipe._topics) == ["sobriety/v1/lyon/lum-3/up"], "emptied when full"
