"""Typed errors. A rejection reason is a metric label and a column of ``rejected_messages``."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why a message (or some records of it) was not stored. Stable names: part of the contract."""

    INVALID_TOPIC = "invalid_topic"
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_MISMATCH = "device_mismatch"
    UNKNOWN_METRIC = "unknown_metric"
    UNKNOWN_UNIT = "unknown_unit"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    INTERNAL_ERROR = "internal_error"


class SobrietyError(Exception):
    """Base of the errors this project raises on purpose."""


class RejectError(SobrietyError):
    """A whole message is rejected, with a named reason and a human-readable detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class TopicError(RejectError):
    """The topic does not follow ``{root}/{site}/{device}/{channel}``."""


class PayloadError(RejectError):
    """The payload cannot be decoded as SenML or flat JSON."""


class UsageError(SobrietyError):
    """A command was called with arguments that cannot work (a reversed period, an unknown
    site); the message says which and what is accepted."""


class ConfigError(SobrietyError):
    """A configuration file or variable is wrong; the message names the source, key and value."""


class InventoryError(SobrietyError):
    """An inventory file is wrong; the message names the file, line and column."""
