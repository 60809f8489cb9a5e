"""The configuration of the whole application: the core's sections and every stage's, registered
in one place. ``load_config`` is :func:`core.config.load_config` over all of them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomaly.config import AnomalyConfig
from core.config import CORE_SECTIONS, Config, Section
from core.config import load_config as load_sections
from energy.config import EnergyConfig
from ingest.config import IngestConfig
from policies.config import PoliciesConfig

SECTIONS: tuple[type[Section], ...] = (
    *CORE_SECTIONS, IngestConfig, AnomalyConfig, PoliciesConfig, EnergyConfig,
)  # fmt: skip
"""Every section the ``sobriety`` command reads."""


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Flags > environment > TOML file > defaults, for every section of the application."""
    return load_sections(path, env, overrides, sections=SECTIONS)
