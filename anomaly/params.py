"""The detectors' parameters from ``[anomaly]`` (a site's own, ``[sites.SITE.anomaly]``, when it
has some): the night-flow step detector's and the burst detector's. Pure."""

from __future__ import annotations

from anomaly.bursts import BurstParams
from anomaly.config import AnomalyConfig
from anomaly.detect import StepParams

__all__ = ["burst_params", "step_params"]


def step_params(cfg: AnomalyConfig) -> StepParams:
    """Night-flow detector parameters from the configuration."""
    return StepParams(
        min_leak_fraction=cfg.min_leak_fraction,
        min_leak_m3h=cfg.min_leak_m3h,
        false_alarm_nights=cfg.false_alarm_nights,
        baseline_nights=cfg.baseline_nights,
        min_baseline_nights=cfg.min_baseline_nights,
        close_nights=cfg.close_nights,
        confirm_nights=cfg.confirm_nights,
        max_drift_fraction_per_week=cfg.max_drift_fraction_per_week,
        drift_nights=cfg.drift_nights,
    )


def burst_params(cfg: AnomalyConfig) -> BurstParams:
    """Burst detector parameters from the configuration."""
    return BurstParams(
        min_burst_fraction=cfg.min_burst_fraction,
        min_burst_m3h=cfg.min_burst_m3h,
        false_alarm_hours=cfg.false_alarm_days * 24.0,
        min_profile_days=cfg.min_baseline_nights,
    )
