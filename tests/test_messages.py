"""The device contract: typed config/cmd/state payloads, and the JSON Schemas of the four
channels that device integrators get from ``sobriety contract schema`` — checked against what the
decoder and the models really accept, and against the README's examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.cli import main
from core.contract import METRICS, accepted_units
from core.messages import (
    Command,
    DeviceConfig,
    DeviceState,
    LightingProgram,
    MessageError,
    Reporting,
    decode_command,
    decode_config,
    encode,
)
from core.payloads import decode, encode_senml
from core.schema import contract_schema

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "tests" / "golden").glob("*.json"))
SCHEMAS = contract_schema()


def _valid(channel: str, document: object) -> bool:
    validator = jsonschema.Draft202012Validator(SCHEMAS[channel])
    return validator.is_valid(document)


def test_every_schema_is_a_valid_json_schema() -> None:
    assert set(SCHEMAS) == {"up", "config", "cmd", "state"}
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_contract_schema_command_prints_one_object_keyed_by_channel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["contract", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(SCHEMAS))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_up_schema_accepts_exactly_the_golden_payloads_read_whole(path: Path) -> None:
    case = json.loads(path.read_text())
    _records, problems = decode(case["payload"].encode(), case["device"], case["received_at"])
    assert _valid("up", json.loads(case["payload"])) == (not problems)


@pytest.mark.parametrize(
    "payload",
    [
        b"42",
        b"[]",
        b"{}",
        b'{"units": 3, "power": 1}',
        b'[{"n": "power", "vs": "on"}]',
        b'[{"n": "power", "v": 1, "u": "furlong"}]',
        b'{"power": "high"}',
        b'{"colour": 3}',
    ],
)
def test_up_schema_refuses_what_the_ingest_rejects(payload: bytes) -> None:
    assert not _valid("up", json.loads(payload))


_METRIC = st.sampled_from(sorted(METRICS))


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[str, float, str | None, float]]:
    out = []
    for _ in range(draw(st.integers(1, 8))):
        metric = draw(_METRIC)
        unit = draw(st.sampled_from([None, *accepted_units(metric)]))
        value = draw(st.floats(0.0, 10.0, allow_nan=False))
        out.append((metric, value, unit, draw(st.floats(1.7e9, 1.8e9))))
    return out


@given(_records())
def test_packs_the_schema_accepts_decode_without_problems(
    records: list[tuple[str, float, str | None, float]],
) -> None:
    payload = encode_senml("lum-1", records)
    assert _valid("up", orjson.loads(payload))
    decoded, problems = decode(payload, "lum-1", 1.75e9)
    assert problems == []
    assert [r.metric for r in decoded] == [m for m, *_ in records]


def test_models_round_trip_through_their_payloads() -> None:
    config = DeviceConfig(
        version=3,
        reporting=Reporting(interval_s=120, batch=6, deadband={"power": 0.5}),
        lighting=LightingProgram(steps=(("22:00", 70.0), ("01:00", 0.0))),
    )
    assert decode_config(encode(config)) == config
    assert _valid("config", orjson.loads(encode(config)))
    command = Command(dim=100, duration_s=600)
    assert decode_command(encode(command)) == command
    assert orjson.loads(encode(DeviceState(online=True, config_version=3))) == {
        "online": True,
        "config_version": 3,
    }


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"reporting": {}}', "version"),
        (b'{"version": 1, "reporting": {"interval_s": 0}}', "reporting.interval_s"),
        (b'{"version": 1, "reporting": {"deadband": {"watts": 1}}}', "watts"),
        (b'{"version": 1, "lighting": {"steps": [["25:00", 50]]}}', "pattern"),
        (b'{"version": 1, "lighting": {"steps": [["5:30", 50]]}}', "pattern"),
        (b'{"version": 1, "lighting": {"steps": [["05:30", 150]]}}', "less than or equal"),
        (b'{"version": 1, "colour": "red"}', "colour"),
    ],
)
def test_bad_config_payloads_are_refused_with_the_reason(payload: bytes, why: str) -> None:
    with pytest.raises(MessageError, match=re.escape(why)):
        decode_config(payload)
    try:
        document = json.loads(payload)
    except ValueError:
        return
    assert not _valid("config", document)


@pytest.mark.parametrize("payload", [b'{"dim": 120}', b'{"duration_s": 60}', b'{"dim": "x"}'])
def test_bad_commands_are_refused(payload: bytes) -> None:
    with pytest.raises(MessageError):
        decode_command(payload)
    assert not _valid("cmd", json.loads(payload))


def _readme_examples() -> dict[str, list[object]]:
    """The JSON examples of the README's MQTT contract, by the channel their block names."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## MQTT contract", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[object]] = {}
    for channel, body in re.findall(r"<!-- (\w+) -->\s*```json\n(.*?)```", section, re.S):
        found.setdefault(channel, []).append(json.loads(body))
    return found


def test_the_readme_examples_are_valid_payloads() -> None:
    examples = _readme_examples()
    assert set(examples) == {"up", "config", "cmd", "state"}
    for channel, documents in examples.items():
        for document in documents:
            assert _valid(channel, document), (channel, document)
    for document in examples["config"]:
        decode_config(orjson.dumps(document))
    for document in examples["cmd"]:
        decode_command(orjson.dumps(document))
    for document in examples["up"]:
        _records, problems = decode(orjson.dumps(document), "lum-0001", 1.77e9)
        assert problems == []
