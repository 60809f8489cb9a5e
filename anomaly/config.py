"""The ``[anomaly]`` section: leak detection (``sobriety anomaly``). The meaning of each key is
in anomaly/README.md; every key with its default in ``sobriety.sample.toml``."""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import Field, model_validator

from core.config import Section


class AnomalyConfig(Section):
    """Leak detection (``sobriety anomaly``); see anomaly/README.md for the meaning of each."""

    SECTION: ClassVar[str] = "anomaly"
    # A commune may set every key of detection for itself ([sites.SITE.anomaly]); when the
    # service scans, and over what, is the install's.
    SITE_KEYS: ClassVar[frozenset[str]] = frozenset()  # set below, from the fields

    interval_s: float = Field(900.0, ge=10)
    rescan_days: float = Field(2.0, gt=0)
    lookback_days: float = Field(35.0, ge=7)
    night_start_h: int = Field(2, ge=0, le=23)
    night_end_h: int = Field(4, ge=1, le=24)
    min_meter_coverage: float = Field(0.5, ge=0, le=1)
    min_leak_fraction: float = Field(0.05, gt=0, lt=1)
    min_leak_m3h: float = Field(0.01, ge=0)
    false_alarm_nights: float = Field(1000.0, gt=10)
    baseline_nights: int = Field(28, ge=7)
    min_baseline_nights: int = Field(7, ge=3)
    close_nights: int = Field(2, ge=1)
    confirm_nights: int = Field(2, ge=1)
    max_drift_fraction_per_week: float = Field(0.02, ge=0, lt=1)
    drift_nights: int = Field(7, ge=2)
    min_burst_fraction: float = Field(0.2, gt=0)
    min_burst_m3h: float = Field(0.05, ge=0)
    false_alarm_days: float = Field(2000.0, gt=1)
    continuous_min_m3h: float = Field(0.001, gt=0)
    continuous_min_days: int = Field(2, ge=1)
    high_consumption_ratio: float = Field(2.0, gt=1)
    high_consumption_window_days: int = Field(7, ge=1)
    high_consumption_history_days: int = Field(56, ge=7)
    holidays: tuple[tuple[date, date], ...] = ()

    @model_validator(mode="after")
    def _window(self) -> AnomalyConfig:
        if self.night_end_h <= self.night_start_h:
            raise ValueError("night_end_h after night_start_h (a window within one local date)")
        return self


AnomalyConfig.SITE_KEYS = frozenset(AnomalyConfig.model_fields) - {"interval_s", "rescan_days"}
