"""JSON Schemas of the MQTT contract, one per channel, for device integrators
(``sobriety contract schema``).

``up`` describes the subset of SenML (RFC 8428) and flat JSON that the ingest accepts: a payload
valid against it is stored (given a registered device, a unit of its metric and a time within the
window — what a schema cannot know). ``config``, ``cmd`` and ``state`` are the schemas of the
typed models of :mod:`core.messages`, the very models the policy engine publishes with and the
simulated devices obey.
"""

from __future__ import annotations

from typing import Any

from core.contract import METRICS, accepted_units
from core.messages import Command, DeviceConfig, DeviceState

DRAFT = "https://json-schema.org/draft/2020-12/schema"
MAX_RECORDS = 1000  # the ingest's default ingest.max_records
MAX_PAYLOAD_BYTES = 65536  # the ingest's default ingest.max_payload_bytes


def _units() -> list[str]:
    return sorted({unit for metric in METRICS for unit in accepted_units(metric)})


def up_schema() -> dict[str, Any]:
    """The accepted ``up`` payloads: a SenML pack or a flat JSON object."""
    units = _units()
    measurement_keys = ("n", "u", "v", "t")
    record = {
        "type": "object",
        "description": (
            "A SenML record. Base fields (bn, bt, bu, bv) apply to the records that follow. "
            "The metric is the part of bn + n after the last ':' or '/', one of "
            + ", ".join(METRICS)
            + "; the part before it, if any, names the topic's device. A time below 2^28 s is "
            "relative to reception."
        ),
        "properties": {
            "bn": {"type": "string", "description": "base name, e.g. 'lum-0001:'"},
            "bt": {"type": "number", "description": "base time [s since the epoch]"},
            "bu": {"type": ["string", "null"], "enum": [*units, None]},
            "bv": {"type": "number", "description": "base value, added to v"},
            "bver": {"type": "integer"},
            "n": {"type": "string", "description": "name: the metric (after bn)"},
            "u": {"type": "string", "enum": units, "description": "unit (default: canonical)"},
            "v": {"type": "number", "description": "numeric value (the only value field read)"},
            "t": {"type": "number", "description": "time, relative to bt [s]"},
        },
        "additionalProperties": False,
        "anyOf": [
            {"required": ["v"]},
            {
                "description": "a record that only sets base fields",
                "minProperties": 1,
                "not": {"anyOf": [{"required": [key]} for key in measurement_keys]},
            },
        ],
    }
    senml = {
        "type": "array",
        "description": "SenML JSON pack (RFC 8428), one or more records",
        "minItems": 1,
        "maxItems": MAX_RECORDS,
        "items": {"$ref": "#/$defs/senml_record"},
    }
    flat = {
        "type": "object",
        "description": (
            "Flat JSON: metric names as keys with numeric values in their canonical unit, or in "
            "the unit given under 'units'."
        ),
        "properties": {
            "ts": {
                "description": "time: s since the epoch (ms above 1e11), or ISO 8601 with offset",
                "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
            },
            "units": {
                "type": "object",
                "propertyNames": {"enum": list(METRICS)},
                "additionalProperties": {"type": "string", "enum": units},
            },
            "device": {"type": "string", "description": "if given, the topic's device"},
            **{
                name: {"type": "number", "description": f"{m.description} [{m.unit}]"}
                for name, m in METRICS.items()
            },
        },
        "additionalProperties": False,
        "anyOf": [{"required": [name]} for name in METRICS],
    }
    return {
        "$schema": DRAFT,
        "title": "up: telemetry, device -> service (QoS 1)",
        "description": f"At most {MAX_PAYLOAD_BYTES} bytes.",
        "oneOf": [senml, flat],
        "$defs": {"senml_record": record},
    }


def contract_schema() -> dict[str, dict[str, Any]]:
    """One JSON Schema per channel: ``up``, ``config``, ``cmd``, ``state``."""
    schemas: dict[str, dict[str, Any]] = {"up": up_schema()}
    for channel, model, title in (
        ("config", DeviceConfig, "config: service -> device, retained, versioned"),
        ("cmd", Command, "cmd: service -> device, a momentary override"),
        ("state", DeviceState, "state: device -> service, retained (last will: online false)"),
    ):
        schema = model.model_json_schema()
        schemas[channel] = {"$schema": DRAFT, **schema, "title": title}
    return schemas
