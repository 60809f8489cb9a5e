"""Payload codecs: golden files, edge cases and properties of the decoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import PayloadError, RejectReason
from core.payloads import RawRecord, decode, encode_senml, names_device, split_name

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_payloads(path: Path) -> None:
    case = json.loads(path.read_text())
    records, problems = decode(case["payload"].encode(), case["device"], case["received_at"])
    assert [[r.metric, r.value, r.unit, r.time] for r in records] == [
        [m, pytest.approx(v), u, pytest.approx(t, abs=1e-6)] for m, v, u, t in case["records"]
    ]
    assert [[p.index, p.reason.value] for p in problems] == case["problems"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", RejectReason.INVALID_JSON),
        (b"\xff\xfe", RejectReason.INVALID_JSON),
        (b"42", RejectReason.INVALID_PAYLOAD),
        (b"[]", RejectReason.INVALID_PAYLOAD),
        (b"{}", RejectReason.INVALID_PAYLOAD),
        (b'{"ts": "2026-01-01T00:00:00", "power": 1}', RejectReason.INVALID_PAYLOAD),
        (b'{"device": "other", "power": 1}', RejectReason.DEVICE_MISMATCH),
        (b'{"units": 3, "power": 1}', RejectReason.INVALID_PAYLOAD),
    ],
)
def test_whole_message_errors(payload: bytes, reason: RejectReason) -> None:
    with pytest.raises(PayloadError) as info:
        decode(payload, "lum-1", 1767225600.0)
    assert info.value.reason is reason


def test_base_value_and_base_unit_apply_to_following_records() -> None:
    payload = b'[{"bn":"wm-1:","bv":100,"bu":"L","n":"volume","v":1},{"n":"volume","v":2}]'
    records, problems = decode(payload, "wm-1", 1767225600.0)
    assert problems == []
    assert [(r.value, r.unit) for r in records] == [(101.0, "L"), (102.0, "L")]


def test_record_that_only_sets_base_fields_is_not_a_problem() -> None:
    payload = b'[{"bn":"lum-1:","bt":1767225600},{"n":"dim","v":30}]'
    records, problems = decode(payload, "lum-1", 1767229200.0)
    assert problems == []
    assert records == [RawRecord("dim", 30.0, None, 1767225600.0)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lum-1:power", ("lum-1", "power")),
        ("power", ("", "power")),
        ("town/lum-1/dim", ("town/lum-1", "dim")),
        ("urn:dev:lum-1:", ("urn:dev:lum-1", "")),
    ],
)
def test_split_name(name: str, expected: tuple[str, str]) -> None:
    assert split_name(name) == expected


def test_names_device_needs_a_separator_before_the_id() -> None:
    assert names_device("urn:dev:lum-1", "lum-1")
    assert names_device("lum-1", "lum-1")
    assert not names_device("xlum-1", "lum-1")
    assert not names_device("lum-11", "lum-1")


_records = st.lists(
    st.tuples(
        st.sampled_from(["power", "dim", "flow", "energy"]),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
        st.sampled_from([None, "W", "kW", "%"]),
        st.floats(min_value=1.7e9, max_value=1.9e9),
    ),
    min_size=1,
    max_size=20,
)


@given(_records)
def test_encode_then_decode_round_trips(
    records: list[tuple[str, float, str | None, float]],
) -> None:
    decoded, problems = decode(encode_senml("lum-1", records), "lum-1", 1.8e9)
    assert problems == []
    assert len(decoded) == len(records)
    for got, (metric, value, unit, when) in zip(decoded, records, strict=True):
        assert (got.metric, got.unit) == (metric, unit)
        assert got.value == value
        assert math.isclose(got.time, when, abs_tol=1e-5)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), _json.map(lambda doc: json.dumps(doc).encode())))
def test_decoder_only_ever_raises_payload_error(payload: bytes) -> None:
    try:
        records, problems = decode(payload, "dev-1", 1.8e9)
    except PayloadError as exc:
        reason = exc.reason
        assert isinstance(reason, RejectReason)
        return
    for rec in records:
        assert isinstance(rec.value, float)
        assert isinstance(rec.time, float)
    assert all(isinstance(p.reason, RejectReason) for p in problems)
