"""Leak detection on night flows: pure functions over numpy arrays, no I/O.

Vocabulary (units in brackets):

- *night window*: local hours ``[start_h, end_h)`` (default 02:00-04:00), when legitimate use is
  lowest and leakage dominates the inflow.
- *MNF* (minimum night flow) of a DMA [m³/h]: the mean net inflow (inlet meters minus outlet
  meters) over the night window.
- *metered night use* [m³/h]: the consumption of the DMA's customer meters over the same window.
- *net night flow* [m³/h]: MNF minus metered night use; what a leak raises and a new (metered)
  large consumer does not. Without customer meters it is the MNF itself.

The step detector is a one-sided CUSUM (Page, 1954) on the net night flow against a robust
baseline (median of the recent leak-free nights of the same day type, weekday or weekend). Its
parameters have a physical or statistical meaning: the smallest leak worth finding (a fraction of
the baseline MNF, and an absolute floor in m³/h), the mean number of leak-free nights between two
false alarms under Gaussian noise (the threshold follows from Siegmund's approximation), and the
number of nights back at baseline that closes an episode. Nights in alarm are never learnt into
the baseline.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from anomaly.pressure import PressureEvidence, PressureParams
from core.arrays import BoolArray, FloatArray

MAD_TO_SIGMA = 1.4826
"""Scale factor from the median absolute deviation to the standard deviation of a normal law."""


@dataclass(frozen=True, slots=True)
class StepParams:
    """Parameters of the night-flow step detector.

    - ``min_leak_fraction``: smallest leak to find, as a fraction of the baseline MNF (0.05).
    - ``min_leak_m3h``: absolute floor of that smallest leak [m³/h] (meter resolution).
    - ``false_alarm_nights``: mean leak-free nights between false alarms under Gaussian noise.
    - ``baseline_nights``: nights of history the baseline looks back over.
    - ``min_baseline_nights``: valid leak-free nights needed before detecting (warm-up).
    - ``min_sigma_fraction``: floor of the noise scale, as a fraction of the baseline (meter
      accuracy: a 1 % meter cannot see night-to-night changes below that).
    - ``close_nights``: consecutive nights back under the reference that end an episode.
    - ``confirm_nights``: consecutive nights above the reference an alarm needs (one when
      pressure confirms the rise is water leaving the pipes).
    - ``max_drift_fraction_per_week``: fastest change of the leak-free night flow the baseline
      follows, as a fraction of the MNF per week (seasonal background leakage, a population
      that slowly changes); anything faster is a change worth flagging.
    - ``trend_min_nights``: baseline nights needed to estimate that trend.
    - ``trend_horizon_nights``: nights a trend is extrapolated past the last learnt night.
    - ``drift_nights``: consecutive nights below the smallest leak worth finding that end an
      alert as a drift (its nights are then learnt).
    """

    min_leak_fraction: float = 0.05
    min_leak_m3h: float = 0.01
    false_alarm_nights: float = 1000.0
    baseline_nights: int = 28
    min_baseline_nights: int = 7
    min_sigma_fraction: float = 0.01
    close_nights: int = 2
    confirm_nights: int = 2
    max_drift_fraction_per_week: float = 0.02
    trend_min_nights: int = 14
    trend_horizon_nights: int = 7
    drift_nights: int = 7


@dataclass(slots=True)
class Episode:
    """A leak found by a detector.

    Times in seconds since the epoch: ``detected_at`` (end of the night window that crossed the
    threshold), ``start_after``/``start_before`` (bounds of the start: end of the last night
    at baseline, start of the first night above it) and ``started_at`` (their midpoint),
    ``ended_at`` (start of the first night back at baseline, None while it lasts).
    ``flow_m3h``: estimated leak flow (mean excess over baseline of the last nights) [m³/h].
    ``baseline_m3h`` and ``sigma_m3h``: the baseline and noise scale frozen at the change;
    ``end_reason`` why it ended; ``evidence`` what confirmed it (pressure figures).
    """

    detector: str
    detected_at: float
    start_after: float
    start_before: float
    flow_m3h: float
    baseline_m3h: float
    sigma_m3h: float
    ended_at: float | None = None
    excess: list[float] = field(default_factory=list)
    end_reason: str = ""
    evidence: dict[str, float | str] = field(default_factory=dict)
    onset_nights: int = 0  # nights of ``excess`` when the alarm was raised (0: unknown)

    @property
    def started_at(self) -> float:
        """Estimated start [s since epoch]: midpoint of the bounds."""
        return (self.start_after + self.start_before) / 2.0


DAY_TYPE_NIGHTS = 5
"""Nights of a day type (weekday / weekend) its own median needs; with fewer, all the pooled
nights share one (the median of 3 weekend nights is too rough a reference)."""

_EXP_MAX = 700.0  # math.exp overflows a float above ~709.78
_HUGE = 1e300


def cusum_threshold(k_sigma: float, arl0: float) -> float:
    """Like :func:`_cusum_threshold`, cached on ``k_sigma`` rounded to 0.01 σ (solving takes
    ~20 µs and the detectors ask once per sample)."""
    return _cusum_threshold(round(k_sigma, 2), arl0)


@functools.lru_cache(maxsize=4096)
def _cusum_threshold(k_sigma: float, arl0: float) -> float:
    """Decision threshold ``h`` [in σ] of a one-sided CUSUM with reference ``k_sigma`` [σ] whose
    in-control average run length is ``arl0`` samples, by Siegmund's approximation
    ``ARL0 = (exp(2kh') - 2kh' - 1) / (2k²)`` with ``h' = h + 1.166``."""
    if k_sigma <= 0 or arl0 <= 1:
        raise ValueError("k_sigma must be > 0 and arl0 > 1")

    def arl(h: float) -> float:
        b = 2.0 * k_sigma * (h + 1.166)
        if b > _EXP_MAX:  # exp(b) overflows: the run length is astronomically long
            return _HUGE
        return (math.exp(b) - b - 1.0) / (2.0 * k_sigma**2) - arl0

    if arl(0.0) >= 0:
        return 0.0
    hi = 1.0
    while arl(hi) < 0:
        hi *= 2.0
    return float(brentq(arl, 0.0, hi))


def robust_location_scale(values: FloatArray) -> tuple[float, float]:
    """Median and MAD-based standard deviation of ``values`` (NaN ignored)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    med = float(np.median(finite))
    return med, MAD_TO_SIGMA * float(np.median(np.abs(finite - med)))


@dataclass(frozen=True, slots=True)
class Reference:
    """The leak-free night flow expected at a time: ``level`` [m³/h] at ``anchor`` [s], moving
    by ``slope`` [m³/h per s] up to ``horizon`` [s] (then flat); ``sigma`` its noise scale
    and ``mnf`` the usual MNF [m³/h] that sizes the smallest leak."""

    level: float
    anchor: float
    slope: float
    horizon: float
    sigma: float
    mnf: float

    def at(self, t: float) -> float:
        """Expected net night flow at ``t`` [m³/h]."""
        return self.level + self.slope * (min(t, self.horizon) - self.anchor)

    def raised(self, by: float) -> Reference:
        """The same reference ``by`` m³/h higher (a new normal under an alert)."""
        return Reference(self.level + by, self.anchor, self.slope, self.horizon, self.sigma,
                         self.mnf)  # fmt: skip


def reference(
    t: FloatArray, values: FloatArray, weekend: BoolArray, scale: FloatArray, now: float,
    today_weekend: bool, params: StepParams,
) -> Reference:  # fmt: skip
    """The reference of a night at ``now`` from the pooled leak-free nights (times ``t`` [s],
    net flows ``values``, day types, MNFs ``scale``): the median of its day type (of all when
    it has fewer than ``DAY_TYPE_NIGHTS``), plus a robust trend (Theil-Sen: the median of the
    pairwise slopes of the residuals) when the pool holds ``trend_min_nights`` nights, capped at
    ``max_drift_fraction_per_week`` of the MNF per week and extrapolated at most
    ``trend_horizon_nights`` past the last pooled night. Noise scale of the detrended
    residuals (:func:`noise_scale`)."""
    overall = _median_1d(values)
    medians = {}
    for kind in (False, True):
        sel = values[weekend == kind]
        medians[kind] = _median_1d(sel) if len(sel) >= DAY_TYPE_NIGHTS else overall
    resid = values - np.where(weekend, medians[True], medians[False])
    mnf = max(_median_1d(scale), medians[today_weekend])
    slope = 0.0
    if len(values) >= params.trend_min_nights:
        dt = t[:, None] - t[None, :]
        upper = dt > 0
        slopes = (resid[:, None] - resid[None, :])[upper] / dt[upper]
        cap = params.max_drift_fraction_per_week * abs(mnf) / (7 * 86400.0)
        slope = float(np.clip(_median_1d(slopes), -cap, cap)) if slopes.size else 0.0
    horizon = float(t.max()) + params.trend_horizon_nights * 86400.0
    anchor = min(now, horizon)
    projected = resid - slope * (t - anchor)
    shift = _median_1d(projected)
    sigma = noise_scale(projected - shift)
    return Reference(medians[today_weekend] + shift, anchor, slope, horizon, sigma, mnf)


def detect_steps(
    window_start: FloatArray,
    window_end: FloatArray,
    net_flow: FloatArray,
    weekend: BoolArray,
    params: StepParams = StepParams(),
    resets: tuple[float, ...] = (),
    mnf: FloatArray | None = None,
    baseline_out: FloatArray | None = None,
    learn: BoolArray | None = None,
    pressure: PressureEvidence | None = None,
    pressure_params: PressureParams | None = None,
    holiday: BoolArray | None = None,
) -> list[Episode]:
    """Leaks as steps up of the net night flow.

    ``window_start``/``window_end``: night windows [s since epoch], increasing; ``net_flow``:
    net night flow per night [m³/h], NaN for a night not assessed (it neither raises nor clears
    an alarm); ``weekend``: day type of each night; ``resets``: times [s] at which a person
    accepted the current level (an alert resolved by hand): history before is forgotten;
    ``mnf``: the MNF per night [m³/h], which scales the smallest leak (defaults to
    ``net_flow``); ``baseline_out``: if given, receives the reference of each assessed night
    [m³/h]; ``learn``: False for nights that are tested but never learnt (school holidays:
    households away lower the night use for a while, and learning it would make their return a
    step); ``pressure``: evidence of the DMA's pressure sensors per night
    (:mod:`anomaly.pressure`), None without sensors; ``holiday``: nights of the configured
    holidays, a day type of their own — their reference is learnt from holiday nights only
    (households away lower the night use, holiday homes that fill up raise it, for weeks), and
    until ``min_baseline_nights`` holiday nights are learnt, holiday nights are tested against
    ordinary nights (a leak that starts with the holidays is not learnt with them).

    An episode ends when the flow is back under the reference for ``close_nights`` nights
    (``end_reason`` "returned to baseline"), when it stays below the smallest leak worth
    finding for ``drift_nights`` — below twice that when the flow already crept up over the
    nights before the alarm — (a slow drift, not a leak: its nights are learnt, "drift"), or
    when a further step rises on top of it (a second leak: the episode ends and a new one
    starts from the first one's level, "further rise").

    Returns the episodes in time order; the last one has ``ended_at`` None if still running.
    """
    n = len(net_flow)
    scale = net_flow if mnf is None else mnf
    rule = pressure_params or PressureParams()
    hol = np.zeros(n, dtype=bool) if holiday is None else holiday
    clean = np.zeros(n, dtype=bool)  # valid nights at baseline, usable for learning
    learnable = np.ones(n, dtype=bool) if learn is None else learn
    episodes: list[Episode] = []
    current: Episode | None = None
    nights_in: list[int] = []  # nights of the current episode
    s = 0.0
    run_start = -1  # first night of the current run of positive CUSUM
    below = above = low = 0
    last_clean_end = math.nan
    reset_queue = sorted(resets)
    forget_before = -math.inf
    frozen: Reference | None = None
    gradual = False  # the current episode's flow crept up before the alarm (no step)
    k = delta = math.nan

    for i in range(n):
        while reset_queue and reset_queue[0] <= window_start[i]:
            forget_before = reset_queue.pop(0)
            if current is not None:
                current.ended_at = forget_before
                current.end_reason = "resolved by a person"
                current = None
            s, run_start, below = 0.0, -1, 0
        x = net_flow[i]
        if not math.isfinite(x):
            continue
        if current is not None and frozen is not None:
            base = frozen.at(float(window_start[i]))
            if baseline_out is not None:
                baseline_out[i] = base
            excess = x - base
            current.excess.append(excess)
            nights_in.append(i)
            current.flow_m3h = max(float(np.mean(current.excess[-3:])), 0.0)
            # Back at baseline: under the reference, or under a quarter of the episode's own
            # level (a repaired leak leaves no more than noise, whatever its size).
            level = _median_1d(np.asarray(current.excess))
            below = below + 1 if excess < max(k, 0.25 * level) else 0
            # A drift: below the smallest leak worth finding — or, when the flow was already
            # creeping up before the alarm (no step), below twice that.
            low = low + 1 if excess < (2.0 if gradual else 1.0) * delta else 0
            ended = ""
            if below >= params.close_nights:
                ended, back = "returned to baseline", below
            elif low >= params.drift_nights:
                ended, back = "drift", low
                # A drift, not a leak: the nights of the episode become normal nights.
                clean[nights_in] = learnable[nights_in]
            if ended:
                current.ended_at = float(window_start[nights_in[-back]])
                current.end_reason = ended
                kept = current.excess[:-back] or current.excess
                # The estimate is the flow at its level, not the tail of a repair.
                while len(kept) > 1 and kept[-1] < 0.5 * level:
                    kept = kept[:-1]
                current.flow_m3h = max(float(np.mean(kept[-3:])), 0.0)
                current = None
                s, run_start, below, low = 0.0, -1, 0, 0
                continue
            rise = _further_rise(current.excess, max(delta, 3.0 * frozen.sigma), params,
                                 current.onset_nights)  # fmt: skip
            if rise is not None:
                first = nights_in[-params.confirm_nights]
                current.ended_at = float(window_start[first])
                current.end_reason = "further rise"
                level = rise
                on_top = [e - level for e in current.excess[-params.confirm_nights :]]
                current.excess = current.excess[: -params.confirm_nights]
                current.flow_m3h = max(float(np.mean(current.excess[-3:])), 0.0)
                frozen = frozen.raised(level)
                current = Episode(
                    detector="night_flow",
                    detected_at=float(window_end[i]),
                    start_after=float(window_end[nights_in[-params.confirm_nights - 1]]),
                    start_before=float(window_start[first]),
                    flow_m3h=max(float(np.mean(on_top)), 0.0),
                    baseline_m3h=frozen.at(float(window_start[i])),
                    sigma_m3h=frozen.sigma,
                    excess=on_top,
                )
                episodes.append(current)
                nights_in = nights_in[-params.confirm_nights :]
                below = low = 0
            continue
        # The last baseline_nights clean nights (holidays and alarms are skipped, so the pool
        # reaches further back after them), but none older than three times that.
        lo = window_start[i] - 3 * params.baseline_nights * 86400.0
        recent = clean[:i] & (window_start[:i] >= max(lo, forget_before))
        pool = _last(recent & (hol[:i] == hol[i]), params.baseline_nights)
        if hol[i] and pool.sum() < params.min_baseline_nights:
            # The first holiday nights are tested against ordinary nights (a leak that starts
            # with the holidays is not learnt with them) while they are learnt as holidays.
            pool = _last(recent & ~hol[:i], params.baseline_nights)
        if pool.sum() < params.min_baseline_nights:  # warm-up (of the day type): learn
            clean[i] = learnable[i]
            last_clean_end = float(window_end[i])
            continue
        ref = reference(
            window_start[:i][pool], net_flow[:i][pool], weekend[:i][pool], scale[:i][pool],
            float(window_start[i]), bool(weekend[i]), params,
        )  # fmt: skip
        base = ref.at(float(window_start[i]))
        if baseline_out is not None:
            baseline_out[i] = base
        sigma = max(ref.sigma, params.min_sigma_fraction * ref.mnf, 1e-6)
        delta = max(params.min_leak_fraction * ref.mnf, params.min_leak_m3h)
        k = max(delta / 2.0, 0.5 * sigma)
        h = cusum_threshold(k / sigma, params.false_alarm_nights) * sigma
        excess = x - base
        verdict = (
            pressure.verdict(i, ref.mnf, excess, rule)
            if pressure is not None and excess > k else "silent"
        )  # fmt: skip
        if verdict == "contradicted":
            # A rise the pressure would show and does not: the meter changed, not the water.
            excess = 0.0
        s_new = max(0.0, s + excess - k)
        # A step is "up and staying up": the alarm also needs confirm_nights nights in a row
        # above the reference, since single-night spikes (someone filling a pool at 3 am) are
        # far more frequent than Gaussian noise would have them — one night when the
        # pressure fell as much as that much more water through the pipes makes it fall.
        above = above + 1 if excess > k else 0
        if s_new > 0 and s == 0:
            run_start = i
        s = s_new
        # Learnt unless it ends up in an alarm: a night with some excess may be a day type
        # still unknown (the first weekends) or noise; the run of nights that leads to an alarm
        # is taken back below.
        clean[i] = learnable[i]
        if s == 0:
            last_clean_end = float(window_end[i])
            run_start = -1
            continue
        # One night suffices when the pressure confirms a rise of at least twice the smallest
        # leak: real water leaving the pipes, too large for the night-use spikes (a pool filled
        # at 3 am) that the two-night rule is there for — pressure cannot tell those apart.
        strong = verdict == "confirmed" and excess >= 2.0 * delta
        confirm = 1 if strong else params.confirm_nights
        if s > h and above >= confirm:
            first = run_start if run_start >= 0 else i
            lead = [float(net_flow[j]) - ref.at(float(window_start[j]))
                    for j in np.nonzero(pool)[0][-7:]]  # fmt: skip
            gradual = bool(lead) and _median_1d(np.asarray(lead)) > 0.5 * k
            clean[first : i + 1] = False
            nights_in = [j for j in range(first, i + 1) if math.isfinite(net_flow[j])]
            excesses = [float(net_flow[j]) - ref.at(float(window_start[j])) for j in nights_in]
            current = Episode(
                detector="night_flow",
                detected_at=float(window_end[i]),
                start_after=last_clean_end
                if math.isfinite(last_clean_end)
                else float(window_start[first]) - 86400.0,
                start_before=float(window_start[first]),
                flow_m3h=max(float(np.mean(excesses[-3:])), 0.0),
                baseline_m3h=base,
                sigma_m3h=sigma,
                excess=excesses,
                onset_nights=len(excesses),
            )
            if pressure is not None:
                current.evidence = {
                    "pressure": verdict,
                    "pressure_drop_z": round(float(pressure.drop_z[i]), 2),
                    "pressure_expected_z": round(
                        pressure.expected_z(i, ref.mnf, float(x - base)), 2),
                    "pressure_sensors": int(pressure.sensors[i]),
                }  # fmt: skip
            frozen = Reference(ref.level, ref.anchor, ref.slope, ref.horizon, sigma, ref.mnf)
            episodes.append(current)
            below = above = low = 0
    return episodes


def _last(pool: BoolArray, count: int) -> BoolArray:
    """``pool`` with only its last ``count`` True entries kept."""
    where = np.nonzero(pool)[0]
    if len(where) > count:
        pool = pool.copy()
        pool[: where[-count]] = False
    return pool


def _further_rise(
    excess: list[float], jump: float, params: StepParams, onset_nights: int = 0
) -> float | None:
    """The level [m³/h] of an episode's excess before its last ``confirm_nights`` nights if
    those all stand more than ``jump`` above it (a second leak on top of the first), else None.
    The level is the median of the 7 nights before, which must have held (their first and last
    three within half of ``jump``).

    A young episode (its ``onset_nights`` nights that raised the alarm, then fewer than 7)
    has no such level yet: its last nights rise on top of it when they all stand above the
    largest onset night by ``jump`` and by twice that night again — a leak that starts the
    night after a small alarm raised on noise is a leak of its own, not the noise's (a leak
    still growing from its onset, an incipient one, does not treble in a few nights). Its
    level is then 0: the onset did not hold, the new leak is measured from the reference."""
    m = params.confirm_nights
    if onset_nights > 0 and len(excess) - onset_nights < 7:
        after = excess[onset_nights:]
        if len(after) < m:
            return None
        onset = max(excess[:onset_nights])
        top = max(onset + jump, 3.0 * onset)
        rose = all(e > top for e in after[-m:]) and (len(after) == m or after[-m - 1] <= top)
        # The onset did not hold as a level: the new leak is measured from the reference.
        return 0.0 if rose else None
    before = np.asarray(excess[:-m][-7:])
    # A leak still growing (incipient, over days) is one leak: the level must have held (no
    # trend between the first and the last nights of the seven).
    if len(before) < 7 or abs(_median_1d(before[-3:]) - _median_1d(before[:3])) > jump / 2:
        return None
    level = _median_1d(before)
    return level if all(e > level + jump for e in excess[-m:]) else None


def _median_1d(values: FloatArray) -> float:
    """Median of a small 1-D array without NaN (a sort: ``np.median``'s checks cost more)."""
    srt = np.sort(values)
    n = len(srt)
    return float(srt[(n - 1) // 2] + srt[n // 2]) / 2.0


def noise_scale(residual: FloatArray) -> float:
    """Noise scale [same unit as ``residual``, finite values]: the larger of the MAD-based
    standard deviation and the 10-90 % inter-quantile range over 2.563 (both equal σ for
    Gaussian noise; the second grows with the heavy tails of night use, which the MAD
    ignores). Quantiles interpolate linearly, as ``np.quantile`` does."""
    srt = np.sort(residual)
    n = len(srt)
    med = float(srt[(n - 1) // 2] + srt[n // 2]) / 2.0
    mad = MAD_TO_SIGMA * _median_1d(np.abs(srt - med))

    def quantile(q: float) -> float:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return float(srt[lo] + (srt[hi] - srt[lo]) * (pos - lo))

    return max(mad, (quantile(0.9) - quantile(0.1)) / 2.563)
