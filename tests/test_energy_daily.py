"""api.energy_daily from a real database: counters (a reset, a spurious zero, a rollover, a meter
replaced in the inventory) and power samples with a gap, each with its closed-form day figure and
its flags; the rollup read, raw readings only for the hours it cannot tell."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from app.cli import main
from core import rollup
from core.db import is_continuous_aggregate, upgrade, with_database
from core.inventory import import_inventory, write_inventory_csv
from energy.config import EnergyConfig
from energy.service import recompute
from tests.fix_db import TIMESCALE_URL, needs_timescale

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")
DAY = datetime(2026, 11, 10, tzinfo=PARIS)  # a 24-hour local day
STEP_S = 600.0
POWER_W = 1000.0
MAX_WH = 999_999_900.0
WH_PER_STEP = POWER_W * STEP_S / 3600.0


def _instants() -> list[float]:
    """Every 10 minutes from the local day before DAY to the end of the day after."""
    start = (DAY - timedelta(days=1)).timestamp()
    end = (DAY + timedelta(days=2)).timestamp()
    count = int((end - start) / STEP_S)
    return [start + n * STEP_S for n in range(count)]


def _at(hour: float) -> float:
    """An instant of DAY [s], ``hour`` local hours after its midnight."""
    return DAY.timestamp() + hour * 3600.0


def _counter(fault: str) -> list[tuple[float, float]]:
    """A 1 kW load's counter readings, with one fault on DAY."""
    out = []
    for t in _instants():
        true = POWER_W * (t - _instants()[0]) / 3600.0 + 5_000.0
        value = true
        if fault == "reset" and t >= _at(12.0):  # reset 5 min before the 12:00 reading
            value = POWER_W * (t - (_at(12.0) - 300.0)) / 3600.0
        elif fault == "zero" and t == _at(15.0):
            value = 0.0
        elif fault == "rollover":
            value = (MAX_WH - POWER_W * 30 + true - 5_000.0) % MAX_WH  # wraps on DAY at 06:00
        elif fault == "replaced" and t >= _at(9.0) + 300.0:  # new meter at 09:05
            value = 2_000_000.0 + POWER_W * (t - (_at(9.0) + 300.0)) / 3600.0
        out.append((t, value))
    return out


def _power_gap() -> list[tuple[float, float]]:
    """A 50 W luminaire's power every 10 minutes, silent on DAY from 01:50 to 05:00."""
    return [(t, 50.0) for t in _instants() if not _at(1.9) < t < _at(5.0)]


@pytest.fixture
def town(conn: psycopg.Connection, site: str, tmp_path: Path) -> dict[str, int]:
    return _fill_town(conn, site, tmp_path)


def _fill_town(conn: psycopg.Connection, site: str, tmp_path: Path) -> dict[str, int]:
    """The inventory and the readings of the faulty meters and the gappy luminaire."""
    write_inventory_csv(
        tmp_path / "sites.csv", [{"site": site, "timezone": "Europe/Paris"}], ("site", "timezone")
    )
    devices: list[dict[str, Any]] = [
        {"site": site, "device": name, "kind": "cabinet_meter", "max_power_w": 1500}
        for name in ("plain", "reset", "zero", "rollover")
    ]
    devices[3]["counter_max_wh"] = MAX_WH
    devices.append(
        {"site": site, "device": "replaced", "kind": "cabinet_meter",
         "replaced_at": datetime.fromtimestamp(_at(9.0) + 300.0, PARIS).isoformat()}
    )  # fmt: skip
    devices.append({"site": site, "device": "lamp", "kind": "luminaire", "nominal_power_w": 60})
    write_inventory_csv(
        tmp_path / "devices.csv",
        devices,
        ("site", "device", "kind", "max_power_w", "counter_max_wh", "replaced_at",
         "nominal_power_w"),
    )  # fmt: skip
    import_inventory(conn, tmp_path / "sites.csv")
    import_inventory(conn, tmp_path / "devices.csv")
    ids = dict(conn.execute("SELECT device, id FROM devices WHERE site = %s", (site,)).fetchall())
    metric = dict(conn.execute("SELECT name, id FROM metrics").fetchall())
    rows = [
        (ids[name], metric["energy"], t, v)
        for name in ("plain", "reset", "zero", "rollover", "replaced")
        for t, v in _counter(name)
    ] + [(ids["lamp"], metric["power"], t, v) for t, v in _power_gap()]
    with (
        conn.cursor() as cur,
        cur.copy("COPY readings (device_id, metric_id, time, value) FROM STDIN") as copy,
    ):
        for device_id, metric_id, t, v in rows:
            copy.write_row((device_id, metric_id, datetime.fromtimestamp(t, PARIS), v))
    return ids


def _figures(conn: psycopg.Connection, site: str) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        """SELECT device, kwh, source, complete, missing_hours, resets, rollovers,
                  replacements, flagged, glitches
           FROM api.energy_daily WHERE site = %s AND day = %s""",
        (site, DAY.date()),
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_energy_per_local_day_with_every_counter_fault_and_a_power_gap(
    conn: psycopg.Connection, db_url: str, site: str, town: dict[str, int]
) -> None:
    with psycopg.connect(db_url, autocommit=True) as work:
        rollup.refresh(work)
    with psycopg.connect(db_url) as work:
        report = recompute(work, EnergyConfig(), _at(12.0), _at(12.0), site)
    assert (report.devices, report.by_source) == (6, {"counter": 5, "power": 1})
    found = _figures(conn, site)
    day_kwh = POWER_W * 24 / 1000.0
    kwh = {name: row[0] for name, row in found.items()}
    assert kwh["plain"] == pytest.approx(day_kwh, abs=1e-9)
    # Reset 5 min before a reading: the 5 min after it counted from zero, the 5 min before it
    # unknown (a lower bound); nothing negative, nothing flagged.
    assert kwh["reset"] == pytest.approx(day_kwh - WH_PER_STEP / 2 / 1000.0, abs=1e-9)
    assert found["reset"][4:] == (1, 0, 0, 0, 0)
    assert found["reset"][2] is True
    # A spurious zero: skipped, nothing counted twice.
    assert kwh["zero"] == pytest.approx(day_kwh, abs=1e-9)
    assert found["zero"][2] is True
    assert found["zero"][8] >= 1
    # The register wrapped at its declared maximum.
    assert kwh["rollover"] == pytest.approx(day_kwh, abs=1e-6)
    assert found["rollover"][4:8] == (0, 1, 0, 0)
    # The meter replaced at 09:05 (inventory): the 10 minutes across it counted as nothing.
    assert kwh["replaced"] == pytest.approx(day_kwh - WH_PER_STEP / 1000.0, abs=1e-9)
    assert found["replaced"][2:8] == (False, pytest.approx(STEP_S / 3600.0), 0, 0, 1, 1)
    # Power: 50 W, each sample held until the next (10 min) or, without a published config,
    # energy.default_hold_s (15 min): silent from 01:50 + 15 min to 05:00.
    missing_h = 5.0 - (1 + 50 / 60) - EnergyConfig().default_hold_s / 3600.0
    assert found["lamp"][1] == "power"
    assert kwh["lamp"] == pytest.approx(50.0 * (24 - missing_h) / 1000.0, abs=1e-9)
    assert found["lamp"][2:4] == (False, pytest.approx(missing_h))
    assert found["lamp"][7] == 1  # the gap, flagged
    assert {name: row[1] for name, row in found.items() if name != "lamp"} == dict.fromkeys(
        ("plain", "reset", "zero", "rollover", "replaced"), "counter"
    )
    # Idempotent: the same data, the same rows.
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), _at(12.0), _at(12.0), site)
    assert _figures(conn, site) == found


@pytest.mark.timescale
@needs_timescale
def test_timescaledb_gives_the_same_days(
    conn: psycopg.Connection, db_url: str, site: str, town: dict[str, int], tmp_path: Path
) -> None:
    """The same town on a database where readings are a hypertable and the rollup a continuous
    aggregate: the same figures, flags included, as on plain PostgreSQL."""
    with psycopg.connect(db_url, autocommit=True) as work:
        rollup.refresh(work)
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), _at(12.0), _at(12.0), site)
    plain = _figures(conn, site)
    assert TIMESCALE_URL is not None
    name = f"sobriety_test_ts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(TIMESCALE_URL, name)
        with psycopg.connect(url, autocommit=True) as ts:
            assert "timescaledb" in upgrade(ts)
            assert is_continuous_aggregate(ts)
            (tmp_path / "ts").mkdir()
            _fill_town(ts, site, tmp_path / "ts")
            assert rollup.refresh(ts).continuous_aggregate
            with psycopg.connect(url) as work:
                recompute(work, EnergyConfig(), _at(12.0), _at(12.0), site)
            assert _figures(ts, site) == plain
    finally:
        with psycopg.connect(TIMESCALE_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_energy_recompute_command(
    conn: psycopg.Connection,
    db_url: str,
    site: str,
    town: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    since = datetime.fromtimestamp(_at(1.0), PARIS).isoformat()
    until = datetime.fromtimestamp(_at(23.0), PARIS).isoformat()
    argv = ["--db-url", db_url, "energy", "recompute", "--since", since, "--until", until]
    assert main([*argv, "--site", site]) == 0
    out = capsys.readouterr().out
    assert "1 sites, 6 metered devices (counter 5, power 1): 6 device-days written" in out
    assert _figures(conn, site)["plain"][0] == pytest.approx(24.0)
    assert main([*argv, "--site", "nowhere"]) == 2
    assert "--site" in capsys.readouterr().err


def _hours(rows: list[tuple[float, ...]]) -> Any:
    import numpy as np

    from energy.daily import CounterHours

    a = np.array(rows, dtype=float)
    return CounterHours(
        hour=a[:, 0], count=a[:, 1].astype(np.int64), first=a[:, 2], first_time=a[:, 3],
        last=a[:, 4], last_time=a[:, 5], min=a[:, 6], max=a[:, 7],
    )  # fmt: skip


def test_the_rollup_tells_the_hours_where_the_counter_only_rose() -> None:
    import numpy as np

    from energy.daily import CounterSettings, anomalous_hours, counter_series

    hours = _hours(
        [
            (0, 3, 100, 0, 120, 2400, 100, 120),  # rose: first and last tell
            (3600, 3, 130, 3600, 150, 6000, 0, 150),  # fell inside (a spurious zero)
            (7200, 2, 160, 7200, 900, 9000, 160, 900),  # rose more than 1 kW can draw
            (10800, 1, 910, 10800, 910, 10800, 910, 910),  # one reading
        ]
    )
    assert anomalous_hours(hours).tolist() == [False, True, False, False]
    settings = CounterSettings(max_power_w=1000.0, replaced_at=(11000.0,))
    assert anomalous_hours(hours, settings).tolist() == [False, True, True, True]
    raw = {
        3600.0: (np.array([3600.0, 4800.0, 6000.0]), np.array([130.0, 0.0, 150.0])),
        7200.0: (np.array([7200.0, 8100.0, 9000.0]), np.array([160.0, 165.0, 900.0])),
        10800.0: (np.array([10800.0]), np.array([910.0])),
    }
    t, wh = counter_series(hours, raw, settings)
    assert t.tolist() == [0, 2400, 3600, 4800, 6000, 7200, 8100, 9000, 10800]
    assert wh.tolist() == [100, 120, 130, 0, 150, 160, 165, 900, 910]
    t, wh = counter_series(hours, {3600.0: raw[3600.0]})  # no settings: the fall only
    assert t.tolist() == [0, 2400, 3600, 4800, 6000, 7200, 9000, 10800]
    with pytest.raises(KeyError):
        counter_series(hours, {}, settings)


def test_the_energy_service_keeps_the_recent_days(
    conn: psycopg.Connection, db_url: str, mqtt_url: str, tmp_path: Path, site: str, root: str
) -> None:
    """``sobriety energy``: the rollup refreshed and the last days recomputed at its first
    pass; its metrics on its endpoint; SIGTERM stops it."""
    from app.embedded.service_process import ServiceProcess
    from tests.fix_db import register
    from tests.fix_ingest import make_config

    ids = register(conn, site, ("cab-1", "cabinet_meter"))
    now = datetime.now(PARIS).replace(minute=0, second=0, microsecond=0)
    energy = conn.execute("SELECT id FROM metrics WHERE name = 'energy'").fetchone()
    assert energy is not None
    for n in range(6):  # 1 kWh an hour for the last five hours
        conn.execute(
            "INSERT INTO readings (device_id, metric_id, time, value) VALUES (%s, %s, %s, %s)",
            (ids["cab-1"], energy[0], now - timedelta(hours=5 - n), 1000.0 * n),
        )
    config = make_config(db_url, mqtt_url, tmp_path, root)
    service = ServiceProcess(
        config, tmp_path, command=("energy",), ready="sobriety_energy_pass_seconds_count",
        name="energy",
    )  # fmt: skip
    service.start()  # ready: its first pass done
    try:
        assert service.metric("sobriety_energy_days_written_total") >= 1
    finally:
        assert service.terminate() == 0
    total = conn.execute(
        "SELECT sum(kwh) FROM api.energy_daily WHERE site = %s AND device = 'cab-1'", (site,)
    ).fetchone()
    assert total is not None
    assert total[0] == pytest.approx(5.0)


def test_lit_hours_from_the_dim_rollup() -> None:
    import numpy as np

    from energy.lighting import dim_series, lit_hours, mixed_hours

    # 18:00 off (6 samples), 19:00 switching on at 19:30 (raw), 20:00-22:00 lit at 70 % then 40 %.
    base = 18 * 3600.0
    rows = [(base, 6, 0, base, 0, base + 3000, 0, 0)]
    rows.append((base + 3600, 6, 0, base + 3600, 70, base + 6600, 0, 70))
    for h in (2, 3):
        level = 70 if h == 2 else 40
        rows.append(
            (base + h * 3600, 6, level, base + h * 3600, level, base + h * 3600 + 3000, level,
             level)
        )  # fmt: skip
    hours = _hours(rows)
    assert mixed_hours(hours).tolist() == [False, True, False, False]
    raw_t = base + 3600 + np.arange(6) * 600.0
    raw = {base + 3600: (raw_t, np.array([0, 0, 0, 70, 70, 70], dtype=float))}
    t, level = dim_series(hours, raw)
    assert len(t) == 24
    assert np.all(np.diff(t) == 600.0)  # the uniform hours' samples evenly spaced
    found = lit_hours(t, level, 900.0, np.array([base, base + 4 * 3600]))
    # Lit from 19:30 (the first sample above 0) to the end of the bin at 22:00 (the last
    # sample, 21:50, holds 15 min: past the bin); off 18:00-19:30 counts nothing.
    assert found.wh[0] == pytest.approx(2.5)
    assert found.complete[0]
    shorter = lit_hours(t, level, 900.0, np.array([base, base + 4 * 3600 + 1800]))
    assert shorter.wh[0] == pytest.approx(2.5 + 5 / 60)  # the hold ends at 22:05
    assert not shorter.complete[0]  # 22:05-22:30 not covered
