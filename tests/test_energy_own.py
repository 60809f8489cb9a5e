"""api.service_energy_daily: the pure math against closed forms and edge cases (a restart, a
RAPL wrap, a day with no samples, samples across midnight), then the sampler and the view on
the real database."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from numpy.testing import assert_allclose

from app.config import load_config
from app.own_meter import OwnMeter, machine_cpu_s, read_rapl, start_own_meter
from app.services import serve_stage
from core.db import upgrade
from energy.config import CCF_SOURCE, EnergyConfig
from energy.integrate import day_edges
from energy.own_store import refresh_service_energy, save_samples
from energy.own_use import (
    Coefficients,
    OwnSample,
    days_of,
    rapl_delta_uj,
    series_days,
)
from tests.fix_db import register

CCF = Coefficients(0.74, 3.5)
D0 = date(2024, 3, 4)
E = day_edges(D0, 3, ZoneInfo("UTC"))  # three UTC days
T0 = float(E[0])
MAX_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def series(
    times: list[float],
    cpu_rate: float,
    busy_rate: float,
    total_rate: float,
    *,
    pid: int = 100,
    cpu0: float = 0.0,
    rapl: list[tuple[int, ...] | None] | None = None,
    rapl_max: tuple[int, ...] = (MAX_UJ,),
    final: bool = False,
) -> list[OwnSample]:
    """Samples of one process with constant rates [s of CPU per s]."""
    out = []
    for k, t in enumerate(times):
        dt = t - times[0]
        zones = None if rapl is None else rapl[k]
        out.append(
            OwnSample(
                host="h", role="r", pid=pid, started_at=times[0] - 1, sampled_at=t,
                cpu_s=cpu0 + cpu_rate * dt, machine_busy_s=1e5 + busy_rate * (t - T0),
                machine_total_s=1e6 + total_rate * (t - T0), rapl_uj=zones,
                rapl_max_uj=None if zones is None else rapl_max[: len(zones)],
                final=final and k == len(times) - 1,
            )
        )  # fmt: skip
    return out


# -- the pure math -------------------------------------------------------------------------------


def test_samples_across_midnight_split_in_proportion_to_time_and_a_day_without_samples() -> None:
    # every 700 s from 22:05 on day 0 to 01:58:20 on day 1: one interval straddles midnight
    times = [T0 + 79500 + 700 * k for k in range(21)]
    cpu, busy, total = 0.1, 0.4, 2.0  # two cores, the service a quarter of the busy time
    got = series_days(series(times, cpu, busy, total, final=True), E, CCF)
    seconds = np.array([86400 - 79500, 93500 - 86400, 0.0])
    assert_allclose(got.seconds, seconds)
    assert_allclose(got.cpu_s, cpu * seconds)
    assert_allclose(got.machine_busy_s, busy * seconds)
    watts = (cpu / busy) * (total * CCF.min_w + busy * (CCF.max_w - CCF.min_w))
    assert_allclose(got.energy_j, watts * seconds)
    assert_allclose(got.kwh, watts * seconds / 3.6e6)
    assert got.processes.tolist() == [1, 1, 0]
    assert got.complete.tolist() == [True, True, True]  # day 1: the process stopped cleanly
    assert got.rapl_seconds.tolist() == [0, 0, 0]


def test_cpu_time_is_the_work_plus_the_share_of_the_idle_draw() -> None:
    times = [T0 + 600 * k for k in range(11)]
    got = series_days(series(times, 0.05, 0.5, 2.0), E, CCF)
    cpu_s = 0.05 * 6000
    # share x machine = dC (max - min) + dC x dT / dB x min
    assert_allclose(got.energy_j[0], cpu_s * (3.5 - 0.74) + cpu_s * (2.0 / 0.5) * 0.74)


def test_a_restart_is_a_new_series_and_nothing_is_counted_across_it() -> None:
    first = series([T0 + 1000 * k for k in range(1, 5)], 0.01, 0.5, 2.0, pid=7, cpu0=3.0)
    # the process restarted at 5000: its CPU time starts again near zero
    second = series([T0 + 5500 + 1000 * k for k in range(4)], 0.01, 0.5, 2.0, pid=7, cpu0=2.0)
    got = days_of([*reversed(first), *second], E, CCF)[("h", "r")]
    assert_allclose(got.cpu_s[0], 0.01 * 3000 * 2)
    assert_allclose(got.seconds[0], 6000)
    assert got.processes[0] == 2
    assert got.discarded == 0
    assert not got.complete[0]  # the first one was killed: its last minutes are unknown


def test_rapl_delta_wraps_at_the_max_range() -> None:
    assert rapl_delta_uj([100], [250], [1000]) == 150
    assert rapl_delta_uj([900, 10], [50, 20], [1000, 1000]) == 150 + 10


def test_rapl_energy_is_attributed_by_the_share_of_busy_cpu_time_across_a_wrap() -> None:
    times = [T0 + 60 * k for k in range(11)]
    start = MAX_UJ - 5_000_000_000  # package 0 wraps after 250 s at 20 W
    zones = [((start + 20_000_000 * 60 * k) % MAX_UJ, 7 + 10_000_000 * 60 * k) for k in range(11)]
    samples = series(times, 0.1, 0.4, 2.0, rapl=list(zones), rapl_max=(MAX_UJ, MAX_UJ))
    got = series_days(samples, E, CCF)
    assert_allclose(got.energy_j[0], 0.25 * (20 + 10) * 600)
    assert_allclose(got.rapl_seconds[0], 600)


def test_rapl_is_not_trusted_where_it_could_have_wrapped_twice_or_its_zones_changed() -> None:
    times = [T0, T0 + 60, T0 + 120]
    small = (1_000_000_000,)  # 1 kJ: two wraps in 60 s at 500 W cannot be ruled out
    got = series_days(series(times, 0.1, 0.4, 2.0, rapl=[(0,), (10,), (20,)], rapl_max=small),
                      E, CCF)  # fmt: skip
    assert got.rapl_seconds[0] == 0
    assert_allclose(got.energy_j[0], 0.25 * (2.0 * 0.74 + 0.4 * 2.76) * 120)
    changed = series(times, 0.1, 0.4, 2.0, rapl=[(0,), (0, 0), (60_000_000, 0)],
                     rapl_max=(MAX_UJ, MAX_UJ))  # fmt: skip
    got = series_days(changed, E, CCF)
    assert_allclose(got.rapl_seconds[0], 60)  # the second interval only
    assert_allclose(got.energy_j[0], 0.25 * ((2.0 * 0.74 + 0.4 * 2.76) * 60 + 60))


def test_counters_that_go_backwards_count_nothing_and_leave_the_day_incomplete() -> None:
    samples = series([T0 + 100, T0 + 200, T0 + 300], 0.1, 0.4, 2.0, final=True)
    broken = [samples[0], samples[1], dataclasses.replace(samples[2], cpu_s=1.0)]
    got = series_days(broken, E, CCF)
    assert got.discarded == 1
    assert_allclose(got.cpu_s[0], 10.0)
    assert got.complete.tolist() == [False, True, True]


def test_a_day_is_complete_only_when_the_process_is_known_past_its_end() -> None:
    running = series([T0 + 80000, T0 + 90000], 0.1, 0.4, 2.0)
    assert series_days(running, E, CCF).complete.tolist() == [True, False, True]
    lone = series([T0 + 100], 0.1, 0.4, 2.0)
    got = series_days(lone, E, CCF)
    assert got.processes.tolist() == [1, 0, 0]
    assert got.cpu_s.tolist() == [0, 0, 0]
    assert got.complete.tolist() == [False, True, True]


def test_config_states_the_source_of_changed_coefficients() -> None:
    config = EnergyConfig()
    assert (config.own_min_watts_per_core, config.own_max_watts_per_core) == (0.74, 3.5)
    assert config.own_watts_source == CCF_SOURCE
    with pytest.raises(ValueError, match="own_watts_source"):
        EnergyConfig(own_max_watts_per_core=10.0)
    EnergyConfig(own_max_watts_per_core=10.0, own_watts_source="measured at the wall, 2024")
    with pytest.raises(ValueError, match="above"):
        EnergyConfig(own_min_watts_per_core=4.0, own_max_watts_per_core=3.0,
                     own_watts_source="x")  # fmt: skip
    with pytest.raises(ValueError, match="IANA"):
        EnergyConfig(own_timezone="Mars/Olympus")


# -- the readers ---------------------------------------------------------------------------------


def fake_rapl(root: Path, package_uj: list[int], max_uj: int = MAX_UJ) -> Path:
    """A powercap tree: packages, a core subzone and a psys zone (neither to be counted)."""
    for i, energy in enumerate(package_uj):
        zone = root / f"intel-rapl:{i}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text(f"package-{i}\n")
        (zone / "energy_uj").write_text(f"{energy}\n")
        (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    core = root / "intel-rapl:0:0"
    core.mkdir(exist_ok=True)
    (core / "name").write_text("core\n")
    (core / "energy_uj").write_text("5\n")
    (core / "max_energy_range_uj").write_text(f"{max_uj}\n")
    psys = root / f"intel-rapl:{len(package_uj)}"
    psys.mkdir(exist_ok=True)
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("999\n")
    (psys / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def test_read_rapl_takes_the_packages_only(tmp_path: Path) -> None:
    assert read_rapl(fake_rapl(tmp_path, [10, 20])) == ((10, 20), (MAX_UJ, MAX_UJ))
    assert read_rapl(tmp_path / "missing") is None
    (tmp_path / "intel-rapl:0" / "energy_uj").chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        assert read_rapl(tmp_path) is None  # root-only since CVE-2020-8694


def test_machine_cpu_time_reads_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  {ticks} 0 {ticks} {8 * ticks} {ticks} 0 0 {ticks} 5 0\ncpu0 1\n")
    assert machine_cpu_s(stat) == (3.0, 12.0)  # guest time (5) is inside user already
    busy, total = machine_cpu_s()
    assert 0 <= busy <= total


# -- on the database -----------------------------------------------------------------------------


@pytest.fixture
def own_db(fresh_db_url: str) -> str:
    """A migrated database of the test's own (refresh_service_energy replaces whole days)."""
    with psycopg.connect(fresh_db_url) as conn:
        upgrade(conn)
    return fresh_db_url


@pytest.mark.services
def test_view_gives_the_closed_form_from_samples_with_a_fake_rapl_tree(
    own_db: str, tmp_path: Path
) -> None:
    day = date(2024, 5, 6)
    t0 = datetime(2024, 5, 6, tzinfo=UTC).timestamp()
    root = fake_rapl(tmp_path, [0])
    config = EnergyConfig(rapl_path=str(root))
    meter = OwnMeter(own_db, config, "test", pid=4242, started_at=t0 + 3590)
    # from 01:00 on day 0 to 00:30 on day 1, every 5 min; the package at 40 W (its counter
    # wraps every 109 min); the service a tenth of the machine's busy CPU time (0.05 of 0.5)
    times = [t0 + 3600 + 300 * k for k in range(283)]
    for t in times:
        (root / "intel-rapl:0" / "energy_uj").write_text(f"{int(40e6 * (t - t0)) % MAX_UJ}\n")
        assert meter.sample(t, cpu_s=0.05 * (t - t0 - 3600) + 1.5,
                            machine=(1e4 + 0.5 * (t - t0), 1e5 + 2.0 * (t - t0)),
                            final=t == times[-1]) is not None  # fmt: skip
    assert meter.flush() == len(times)
    meter.close()
    with psycopg.connect(own_db, autocommit=True) as conn:
        ids = register(conn, "s1", ("a", "luminaire"), ("b", "water_meter"))
        conn.execute(
            "INSERT INTO device_reporting_daily (device_id, day, messages, readings) "
            "VALUES (%s, %s, 10, 3000), (%s, %s, 10, 2000)",
            (ids["a"], day, ids["b"], day),
        )
    with psycopg.connect(own_db) as conn:
        written = refresh_service_energy(conn, config, t0, t0 + 86400, now=t0 + 3 * 86400)
        assert written == 2
        again = refresh_service_energy(conn, config, t0, t0 + 86400, now=t0 + 3 * 86400)
        assert again == 2  # idempotent
        rows = conn.execute(
            """SELECT day, readings_stored, cpu_seconds, kwh, kwh_per_1000_readings, method,
                      cpu_share, watts_per_busy_core, min_w_per_core, coefficient_source,
                      processes, hosts, timezone, complete
               FROM api.service_energy_daily ORDER BY day"""
        ).fetchall()
    seconds = (82800.0, 1800.0)
    (d0, r0, cpu0, kwh0, per0, m0, share0, w0, min0, src0, p0, h0, tz0, c0) = rows[0]
    assert (d0, r0, m0, min0, p0, h0, tz0, c0) == (day, 5000, "rapl", None, 1, 1, "UTC", True)
    assert src0.startswith("RAPL package energy")
    assert_allclose([cpu0, kwh0, per0, share0, w0],
                    [0.05 * seconds[0], 4.0 * seconds[0] / 3.6e6, 4.0 * seconds[0] / 3.6e6 / 5,
                     0.1, 80.0])  # fmt: skip
    assert rows[1][1] == 0  # no readings that day
    assert rows[1][4] is None
    assert_allclose(rows[1][3], 4.0 * seconds[1] / 3.6e6)
    assert rows[1][13] is True  # the process stopped cleanly


@pytest.mark.services
def test_method_follows_what_the_machine_exposes(own_db: str) -> None:
    config = EnergyConfig()
    meter = OwnMeter(own_db, config, "here")
    before = meter.sample()
    sum(math.sqrt(i) for i in range(300_000))  # some CPU time of our own
    after = meter.sample(final=True)
    assert before is not None
    assert after is not None
    assert after.cpu_s > before.cpu_s
    assert after.started_at == before.started_at
    assert meter.flush() == 2
    meter.close()
    expected = "cpu_time" if read_rapl(config.rapl_path) is None else "rapl"
    with psycopg.connect(own_db) as conn:
        refresh_service_energy(conn, config, after.sampled_at, after.sampled_at)
        row = conn.execute(
            "SELECT method, cpu_seconds, kwh, min_w_per_core, coefficient_source, complete "
            "FROM api.service_energy_daily"
        ).fetchone()
    assert row is not None
    assert row[0] == expected
    assert row[1] > 0
    assert row[2] > 0
    if expected == "cpu_time":  # this machine: no /sys/class/powercap
        assert (row[3], row[4]) == (0.74, CCF_SOURCE)
    assert row[5] is False  # today has not ended


def wait_rows(url: str, where: str, params: tuple[object, ...], count: int) -> int:
    """Rows of service_cpu_samples matching, once at least ``count`` (10 s at most)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                f"SELECT count(*) FROM service_cpu_samples WHERE {where}", params
            ).fetchone()
            assert row is not None
            if row[0] >= count or time.monotonic() > deadline:
                return int(row[0])
            threading.Event().wait(0.05)


@pytest.mark.services
def test_the_sampler_thread_writes_rows_and_a_final_one_at_stop(db_url: str) -> None:
    stop = start_own_meter(db_url, EnergyConfig(own_sample_s=1), "live-thread")
    try:
        where = "role = 'live-thread' AND pid = %s"
        assert wait_rows(db_url, where, (os.getpid(),), 2) >= 2
    finally:
        stop()
    final = "role = 'live-thread' AND pid = %s AND final"
    assert wait_rows(db_url, final, (os.getpid(),), 1) == 1


def test_the_sampler_never_raises_into_its_host() -> None:
    meter = OwnMeter("postgresql://postgres@127.0.0.1:1/none", EnergyConfig(), "unreachable")
    assert meter.sample() is not None
    assert meter.flush() == 0
    assert meter.errors == 1
    assert len(meter.pending) == 1  # kept for the next write
    meter.pid = 2**22 + 12345  # no such process: its start time cannot be read
    meter.started_at = None
    assert meter.sample() is None
    assert meter.errors == 2


@pytest.mark.services
def test_serve_stage_meters_the_stage(db_url: str) -> None:
    config = load_config(None, env={}, overrides={"database": {"url": db_url},
                                                  "metrics": {"port": 0}})  # fmt: skip
    args = argparse.Namespace(metrics_port=0, command="stage-under-test")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert serve_stage(args, config, lambda _registry: (lambda: None, lambda: None)) == 0
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    where = "role = 'stage-under-test' AND pid = %s AND final"
    assert wait_rows(db_url, where, (os.getpid(),), 1) == 1


@pytest.mark.services
def test_samples_older_than_own_keep_days_are_deleted_and_their_days_stay(own_db: str) -> None:
    config = EnergyConfig(own_keep_days=10)
    now = T0 + 40 * 86400.0
    old = series([T0 + 3600 + 600 * k for k in range(6)], 0.1, 0.4, 2.0, pid=1)
    recent = series([now - 3600 + 600 * k for k in range(6)], 0.1, 0.4, 2.0, pid=2)
    with psycopg.connect(own_db) as conn:
        assert save_samples(conn, [*old, *recent]) == 12
        conn.commit()
        refresh_service_energy(conn, config, T0, T0, now=now)  # the old day, then the prune
        left = conn.execute("SELECT pid, count(*) FROM service_cpu_samples GROUP BY pid")
        assert dict(left.fetchall()) == {2: 6}
        day = conn.execute(
            "SELECT cpu_seconds FROM api.service_energy_daily WHERE day = %s", (D0,)
        ).fetchone()
    assert day is not None
    assert_allclose(day[0], 0.1 * 3000)
