"""Lighting-schedule benchmark: every luminaire's schedule for one night (core.lighting).

    .venv/bin/python bench/schedule_bench.py [--luminaires 100000] [--sites 100] [--runs 3]

100,000 luminaires spread over 100 sites (random latitude and longitude in metropolitan France,
Europe/Paris) and 5 programs (the default, a part-night switch-off, an exception with a floor
during part-night, offsets, a step at 02:30), on the night starting 2026-03-28 (spring forward:
02:30 does not exist). In the same run:

1. sobriety: the sun once per site and night (``SunCache``), the schedule once per (site,
   program) (``night_schedule``), then every luminaire's on, off and levels at two instants
   mapped by numpy (``levels_at``);
2. naive baseline: a loop over the luminaires calling astral and building the schedule for
   each one. It is timed on a sample of 2,000 luminaires and scaled linearly to the whole
   fleet (the loop does the same work per luminaire), and its results on the sample are
   checked equal to sobriety's.

Prints each run, the median, the ratio naive/sobriety with its spread (min-max over the runs)
and the target (sobriety <= 1 s for 100,000 luminaires). Pure CPU: no broker, no database.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

ROOT_DIR = Path(__file__).resolve().parent.parent
if str(ROOT_DIR) not in sys.path:
    sys.path.insert(0, str(ROOT_DIR))

from core.arrays import FloatArray  # noqa: E402
from core.lighting import NightSchedule, SunCache, levels_at, night_schedule, sun_times  # noqa: E402
from core.messages import LightingProgram  # noqa: E402

TZ = ZoneInfo("Europe/Paris")
NIGHT = date(2026, 3, 28)
SAMPLE = 2000
TARGET_S = 1.0
PROGRAMS = (
    LightingProgram(),
    LightingProgram(part_night=("01:00", "05:00")),
    LightingProgram(part_night=("01:00", "05:00"), part_night_level=20.0),
    LightingProgram(on_offset_min=-15, off_offset_min=10, steps=(("21:30", 60.0),)),
    LightingProgram(steps=(("22:00", 70.0), ("02:30", 30.0), ("05:30", 70.0))),
)
INSTANTS = (
    datetime(2026, 3, 28, 23, 45, tzinfo=TZ).timestamp(),
    datetime(2026, 3, 29, 3, 30, tzinfo=TZ).timestamp(),
)

Result = tuple[FloatArray, FloatArray, FloatArray]
"""Per luminaire: on, off [s since the epoch] and the levels at INSTANTS [%] (one row each)."""


def fleet(
    n: int, sites: int, seed: int = 1
) -> tuple[FloatArray, FloatArray, np.ndarray, np.ndarray]:
    """Site latitudes and longitudes [°], and each luminaire's site and program."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(42.5, 51.0, sites)
    lon = rng.uniform(-4.5, 8.0, sites)
    site_of = rng.integers(0, sites, n)
    program_of = rng.integers(0, len(PROGRAMS), n)
    return lat, lon, site_of, program_of


def sobriety(
    lat: FloatArray, lon: FloatArray, site_of: np.ndarray, program_of: np.ndarray
) -> Result:
    """The project's way: sun per site, schedule per (site, program), numpy per luminaire."""
    cache = SunCache()
    schedules: list[NightSchedule] = []
    for s in range(len(lat)):
        sun = cache.get(float(lat[s]), float(lon[s]), NIGHT, TZ)
        schedules.extend(night_schedule(p, NIGHT, TZ, sun) for p in PROGRAMS)
    index = site_of * len(PROGRAMS) + program_of
    on = np.array([np.nan if s.on is None else s.on for s in schedules])[index]
    off = np.array([np.nan if s.off is None else s.off for s in schedules])[index]
    levels = np.vstack([levels_at(schedules, index, t) for t in INSTANTS])
    return on, off, levels


def naive(lat: FloatArray, lon: FloatArray, site_of: np.ndarray, program_of: np.ndarray) -> Result:
    """Per luminaire: astral, then the schedule, then its levels."""
    on, off, levels = [], [], []
    for s, p in zip(site_of.tolist(), program_of.tolist(), strict=True):
        sun = sun_times(float(lat[s]), float(lon[s]), NIGHT, TZ)
        schedule = night_schedule(PROGRAMS[p], NIGHT, TZ, sun)
        on.append(np.nan if schedule.on is None else schedule.on)
        off.append(np.nan if schedule.off is None else schedule.off)
        levels.append([schedule.level_at(t) for t in INSTANTS])
    return np.array(on), np.array(off), np.array(levels).T


def _spread(values: list[float], digits: int = 3) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"(runs {min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--luminaires", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.luminaires
    lat, lon, site_of, program_of = fleet(n, args.sites)
    sample = min(SAMPLE, n)
    print(
        f"{n:,} luminaires, {args.sites} sites, {len(PROGRAMS)} programs, night of {NIGHT} "
        f"(Europe/Paris, spring forward); naive loop timed on {sample:,} luminaires and scaled "
        f"x{n / sample:.0f} (linear)"
    )
    ours, theirs = [], []
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        result = sobriety(lat, lon, site_of, program_of)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        check = naive(lat, lon, site_of[:sample], program_of[:sample])
        theirs.append((time.perf_counter() - start) * n / sample)
        for got, want in zip(result, check, strict=True):
            np.testing.assert_array_equal(got[..., :sample], want)
        print(
            f"  run {run}: sobriety {ours[-1]:.3f} s, naive {theirs[-1]:.1f} s (scaled), "
            f"ratio {theirs[-1] / ours[-1]:,.0f}x"
        )
    ratios = [b / a for a, b in zip(ours, theirs, strict=True)]
    print(f"sobriety: {_spread(ours)} s for {n:,} luminaires")
    print(f"naive:    {_spread(theirs, 1)} s (scaled from {sample:,})")
    print(f"ratio naive/sobriety: {_spread(ratios, 0)}")
    median = statistics.median(ours)
    verdict = "met" if median <= TARGET_S * n / 100_000 else "MISSED"
    print(f"target: sobriety <= {TARGET_S:.1f} s per 100,000 luminaires -> {verdict}")


if __name__ == "__main__":
    main()
