"""The ``[ingest]`` section: batching, the durable spool and the validation windows of
``sobriety ingest`` (every key with its default in ``sobriety.sample.toml``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from core.config import Section


class IngestConfig(Section):
    """Batching, the durable spool and validation windows of ``sobriety ingest``."""

    SECTION: ClassVar[str] = "ingest"
    ENV: ClassVar[Mapping[str, str]] = {"SOBRIETY_SPOOL_DIR": "spool_dir"}

    batch_rows: int = Field(10000, ge=1)
    batch_ms: int = Field(200, ge=1)
    batch_idle_ms: int = Field(20, ge=0)
    spool_dir: Path = Path("var/spool")
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)
    max_payload_bytes: int = Field(65536, ge=256)
    max_records: int = Field(1000, ge=1)
    past_window_s: float = Field(7 * 86400.0, gt=0)
    future_window_s: float = Field(600.0, gt=0)
    inventory_refresh_s: float = Field(5.0, ge=0)
    db_retry_max_s: float = Field(30.0, gt=0)
    workers: int = Field(1, ge=1, le=64)
    mqtt_client: Literal["lean", "paho"] = "lean"
    direct_copy: bool = True
