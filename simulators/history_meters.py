"""One day of a DMA's customers (:mod:`simulators.history`): what each household (or holiday
home, or institution) draws hour by hour, and what the smart meters report of it.

Meter modes (:class:`~simulators.history_scenario.MeterGroup`): ``volume`` is the index [m³] at
the read time; ``flow`` is the mean flow [m³/h] since the previous read, stamped at the read
(the end of the interval); ``both`` sends the two. A meter reads every ``interval_s`` from a
phase of its own counted from local midnight — except daily meters, which read once per local
day at their own clock time (on a DST day the interval is 23 or 25 hours)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.arrays import FloatArray
from simulators import physics
from simulators.history_plan import DmaModel, meter_name
from simulators.history_rows import Rows
from simulators.history_scenario import HistoryScenario

FLOW, VOLUME = 1, 2
"""Metric ids: flow [m³/h], volume index [m³]."""


@dataclass(frozen=True)
class Day:
    """A local day: its UTC hours, what kind of day it is, the season."""

    t_day: float  # local midnight [s since epoch]
    t_next: float  # the next local midnight
    hours: FloatArray  # start of each UTC hour of the day (23, 24 or 25)
    local_hour: FloatArray  # local hour at the middle of each
    sunday_like: bool  # weekend or public holiday
    school_away: float  # share of households away (school holidays), 0 otherwise
    in_holidays: bool
    season: float  # background leakage factor
    pattern: FloatArray  # residential demand per hour (mean 1 over a day)


def customer_flows(d: DmaModel, day: Day, sc: HistoryScenario,
                   rng: np.random.Generator) -> FloatArray:  # fmt: skip
    """Flow of every customer in every hour of ``day`` [m³/h], shape (customers, hours):
    households at home use water in an hour with a probability that follows the pattern (most
    night hours draw nothing), a leak behind the meter adds a steady flow, a heavy user triples
    its use."""
    n = d.customers
    if d.pattern == "touristic":
        weekday, weekend, holidays = sc.touristic_occupancy
        occupied = holidays if day.in_holidays else (weekend if day.sunday_like else weekday)
        home = rng.random(n) < occupied
    else:
        home = rng.random(n) >= day.school_away
    day_factor = float(rng.lognormal(0.0, sc.day_to_day))
    pattern = day.pattern
    mean = d.base[:, None] * pattern[None, :] * day_factor
    p_use = np.clip(0.6 * pattern, 0.05, 0.95)[None, :]
    use = rng.random(mean.shape) < p_use
    flow = np.where(use, mean / p_use * rng.lognormal(-0.125, 0.5, mean.shape), 0.0)
    flow *= home[:, None]
    mid = day.hours[None, :] + 1800.0
    flow = flow * np.where(mid >= d.factor_from[:, None], 3.0, 1.0)
    return np.asarray(flow + np.where(mid >= d.extra_from[:, None], d.extra[:, None], 0.0))


def read_times(
    phase: FloatArray, interval_s: float, day: Day
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Read times [s since epoch] of meters with ``phase`` (share of the interval) and a mask
    of those that fall within the day, shape (meters, reads)."""
    if interval_s >= 86400:
        return day.t_day + phase[:, None] * (day.t_next - day.t_day), np.ones((len(phase), 1), bool)
    reads = math.ceil((day.t_next - day.t_day) / interval_s)
    times = day.t_day + (phase[:, None] + np.arange(reads)[None, :]) * interval_s
    return times, times < day.t_next


def write_customer_meters(d: DmaModel, day: Day, flow: FloatArray, sc: HistoryScenario,
                          ids: dict[str, int], rows: Rows) -> None:  # fmt: skip
    """The smart meters' readings of the day into ``rows``; advances every customer's index."""
    hours = len(day.hours)
    cum = np.concatenate([np.zeros((d.customers, 1)), np.cumsum(flow, axis=1)], axis=1)
    start_index = d.index
    d.index = start_index + cum[:, -1]
    if not d.smart:
        return
    devices = np.array([ids[meter_name(d, j)] for j in range(d.smart)], dtype=np.int32)
    for g, group in enumerate(d.groups):
        sel = np.flatnonzero(d.group == g)
        if not len(sel):
            continue
        times, mask = read_times(d.phase[sel], group.interval_s, day)
        pos = (times - day.t_day) / 3600.0
        k = np.minimum(pos.astype(np.int64), hours - 1)
        row = sel[:, None]
        index = start_index[row] + cum[row, k] + flow[row, k] * (pos - k)
        dev = np.broadcast_to(devices[sel][:, None], times.shape)
        if group.metrics != "flow":
            rows.add_many(times[mask], dev[mask], VOLUME, index[mask], 3)
        # Mean flow since the previous read (the last of yesterday for the first of today).
        prev = np.concatenate([d.last_read[sel][:, None], index[:, :-1]], axis=1)
        prev_t = np.concatenate([d.last_read_t[sel][:, None], times[:, :-1]], axis=1)
        if group.metrics != "volume":
            mean = (index - prev) / np.maximum((times - prev_t) / 3600.0, 1e-9)
            rows.add_many(times[mask], dev[mask], FLOW, mean[mask], 4)
        last = mask.sum(axis=1) - 1
        some = last >= 0
        at = np.maximum(last, 0)
        took = np.arange(len(sel))
        d.last_read[sel[some]] = index[took, at][some]
        d.last_read_t[sel[some]] = times[took, at][some]


def consumer_flows(d: DmaModel, day: Day, rng: np.random.Generator) -> list[FloatArray]:
    """Hourly flow [m³/h] of each large consumer or institution of the DMA (``d.consumers``)."""
    out = []
    for c in d.consumers:
        on = day.hours + 1800.0 >= c["start"]
        if c["kind"] == "institution":
            shape = physics.institution_pattern(day.local_hour, day.sunday_like)
            noise = rng.lognormal(0.0, 0.05, len(day.hours))
            out.append(np.where(on, c["flow_m3h"] * shape * noise, 0.0))
        else:
            out.append(np.where(on, c["flow_m3h"], 0.0))
    return out


def write_consumers(d: DmaModel, day: Day, flows: list[FloatArray], ids: dict[str, int],
                    rows: Rows) -> None:  # fmt: skip
    """Hourly index reads (ten minutes past each UTC hour) of the metered consumers."""
    for c, flow in zip(d.consumers, flows, strict=True):
        if not c["metered"]:
            continue
        cum = np.concatenate([[0.0], np.cumsum(flow)])
        values = c["index"] + cum[:-1] + flow / 6.0
        rows.add(day.hours + 600.0, ids[c["device"]], VOLUME, values, 3)
        c["index"] += float(cum[-1])


def night_user_flow(d: DmaModel, steps: FloatArray, local_hour: FloatArray) -> FloatArray:
    """Flow [m³/h] of the DMA's unmetered night users at each step."""
    total = np.zeros(len(steps))
    for u in d.night_users:
        first, last = u["hours"]
        on = (steps >= u["start"]) & (local_hour >= first) & (local_hour < last)
        total += np.where(on, u["flow_m3h"], 0.0)
    return total
