"""Personal data (RGPD): the customer meters' keyed pseudonyms in every export, and the
retention per class of data, whose deletions leave the hourly rollup of what they delete
intact (real PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from app.cli import main
from app.privacy_commands import RetentionService
from core import rollup
from core.config import PrivacyConfig, load_config
from core.db import upgrade
from core.errors import ConfigError
from core.privacy import PREFIX, pseudonym
from tests.fix_db import register

KEY = b"0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


# -- the pseudonym -------------------------------------------------------------------------------


def test_the_pseudonym_is_stable_keyed_and_not_the_id() -> None:
    one = pseudonym(KEY, "lyon", "wm-0001")
    assert one == pseudonym(KEY, "lyon", "wm-0001")
    assert one.startswith(PREFIX)
    assert len(one) == len(PREFIX) + 16
    assert "0001" not in one.removeprefix(PREFIX) or one != "wm-0001"
    assert one != pseudonym(b"another key of 32 bytes, at least", "lyon", "wm-0001")
    assert one != pseudonym(KEY, "villeurbanne", "wm-0001")  # the site is part of the input
    ids = [f"wm-{i:05d}" for i in range(10_000)]
    aliases = {pseudonym(KEY, "lyon", d) for d in ids}
    assert len(aliases) == 10_000
    assert not aliases & set(ids)
    with pytest.raises(ValueError, match="16 bytes"):
        pseudonym(b"short", "lyon", "wm-0001")


def test_the_key_comes_from_its_file_and_its_absence_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[privacy\] hmac_key_file"):
        load_config(env={}).privacy_key()
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    config = load_config(env={"SOBRIETY_PRIVACY_HMAC_KEY_FILE": str(path)})
    assert config.privacy_key() == KEY
    path.write_text("short")
    with pytest.raises(ConfigError, match="5 bytes; expected 16"):
        config.privacy_key()


def test_aggregates_are_never_kept_less_than_the_raw_readings() -> None:
    with pytest.raises(ConfigError, match="aggregates must be kept at least as long"):
        load_config(env={}, overrides={"privacy": {"aggregates_days": 100}})
    ok = load_config(
        env={},
        overrides={"privacy": {"aggregates_days": 500, "customer_raw_days": 400, "raw_days": 90}},
    )
    assert ok.privacy.aggregates_days == 500


# -- exports -------------------------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    path = tmp_path / "privacy.key"
    path.write_bytes(KEY)
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    monkeypatch.setenv("SOBRIETY_PRIVACY_HMAC_KEY_FILE", str(path))
    return path


def _town(conn: psycopg.Connection, site: str) -> dict[str, int]:
    ids = register(
        conn, site, ("wm-a", "water_meter"), ("wm-b", "water_meter"), ("fm-1", "flow_meter")
    )
    for n, device in enumerate(("wm-a", "wm-b", "fm-1")):
        conn.execute(
            "INSERT INTO readings (device_id, metric_id, time, value) "
            "SELECT %s, 1, %s + i * interval '15 minutes', %s + i FROM generate_series(0, 3) i",
            (ids[device], T0, float(n)),
        )
    return ids


def _export(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PERIOD = ["--since", "2026-02-28T00:00:00Z", "--until", "2026-03-02T00:00:00Z"]


def test_export_readings_pseudonymises_customer_meters_only(
    conn: psycopg.Connection, site: str, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _town(conn, site)
    code, out, _ = _export(["export", "readings", *PERIOD, "--site", site], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12
    assert "wm-a," not in out
    assert "wm-b," not in out
    devices = {r["device"] for r in rows}
    assert devices == {pseudonym(KEY, site, "wm-a"), pseudonym(KEY, site, "wm-b"), "fm-1"}
    by_device = {d: [r["value"] for r in rows if r["device"] == d] for d in devices}
    assert by_device[pseudonym(KEY, site, "wm-b")] == ["1", "2", "3", "4"]  # rows kept, id only


def test_export_without_a_key_is_refused_before_writing_anything(
    conn: psycopg.Connection,
    site: str,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _town(conn, site)
    monkeypatch.delenv("SOBRIETY_PRIVACY_HMAC_KEY_FILE")
    for what in ("readings", "alerts", "energy"):
        code, out, err = _export(["export", what, *PERIOD, "--site", site], capsys)
        assert code == 2, what
        assert out == ""
        assert "[privacy] hmac_key_file" in err
        assert "--no-pseudonymise" in err


def test_no_pseudonymise_keeps_the_ids_and_warns(
    conn: psycopg.Connection,
    site: str,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _town(conn, site)
    monkeypatch.delenv("SOBRIETY_PRIVACY_HMAC_KEY_FILE")
    argv = ["export", "readings", *PERIOD, "--site", site, "--no-pseudonymise"]
    code, out, err = _export(argv, capsys)
    assert code == 0
    assert {r["device"] for r in csv.DictReader(io.StringIO(out))} == {"wm-a", "wm-b", "fm-1"}
    assert "warning" in err
    assert "personal data" in err
    assert "2 customer meters" in err


def test_export_alerts_pseudonymises_customer_meter_subjects(
    conn: psycopg.Connection, site: str, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _town(conn, site)
    for kind, subject_type, subject in (
        ("continuous_flow", "device", "wm-a"),
        ("high_consumption", "device", "wm-b"),
        ("leak", "dma", "dma-1"),
        ("data_gap", "device", "fm-1"),
    ):
        conn.execute(
            "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (kind, site, subject_type, subject, T0, T0),
        )
    code, out, _ = _export(["export", "alerts", "--site", site, "--format", "json"], capsys)
    assert code == 0
    subjects = {a["kind"]: a["subject"] for a in orjson.loads(out)}
    assert subjects == {
        "continuous_flow": pseudonym(KEY, site, "wm-a"),
        "high_consumption": pseudonym(KEY, site, "wm-b"),
        "leak": "dma-1",
        "data_gap": "fm-1",
    }


# -- retention -----------------------------------------------------------------------------------


@pytest.fixture
def own_db(fresh_db_url: str) -> str:
    """A database of this test's own: retention deletes across every site."""
    with psycopg.connect(fresh_db_url) as conn:
        upgrade(conn)
    return fresh_db_url


NOW = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)
OLD = datetime(2025, 1, 1, tzinfo=UTC)  # 516 days before NOW: past customer_raw_days = 400
RECENT = datetime(2026, 5, 1, tzinfo=UTC)


def _hourly(conn: psycopg.Connection, before: datetime) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT device_id, metric_id, hour, count, sum, min, max, first, first_time, last, "
        "last_time FROM readings_hourly WHERE hour < %s ORDER BY 1, 2, 3",
        (before,),
    ).fetchall()


def test_retention_deletes_old_customer_readings_in_batches_and_keeps_their_rollup(
    own_db: str,
) -> None:
    with psycopg.connect(own_db, autocommit=True) as conn:
        ids = register(conn, "lyon", ("wm-a", "water_meter"), ("wm-b", "water_meter"))
        ids |= register(conn, "lyon", ("fm-1", "flow_meter"))
        for device in ("wm-a", "wm-b"):  # 2 x 500 old readings, 17 hours, and 10 recent ones
            conn.execute(
                "INSERT INTO readings (device_id, metric_id, time, value) "
                "SELECT %s, 2, %s + i * interval '2 minutes', i * 0.01 "
                "FROM generate_series(0, 499) i",
                (ids[device], OLD),
            )
            conn.execute(
                "INSERT INTO readings (device_id, metric_id, time, value) "
                "SELECT %s, 2, %s + i * interval '15 minutes', i FROM generate_series(0, 9) i",
                (ids[device], RECENT),
            )
        conn.execute(
            "INSERT INTO readings (device_id, metric_id, time, value) "
            "SELECT %s, 1, %s + i * interval '15 minutes', i FROM generate_series(0, 99) i",
            (ids["fm-1"], OLD),
        )
        rollup.refresh(conn)
        cut = datetime(2025, 4, 27, tzinfo=UTC)  # NOW - 400 days, floored to the hour
        before = _hourly(conn, cut)
        assert len(before) == 2 * 17 + 25
        # Every transaction that deletes readings, as the database saw it.
        conn.execute("CREATE TABLE deleting_xacts (xact xid8)")
        conn.execute(
            "CREATE FUNCTION log_xact() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO deleting_xacts VALUES (pg_current_xact_id()); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER log_delete AFTER DELETE ON readings "
            "FOR EACH STATEMENT EXECUTE FUNCTION log_xact()"
        )

        registry = CollectorRegistry()
        config = PrivacyConfig(batch_rows=100)
        service = RetentionService(own_db, config, registry)
        report = service.run_pass(NOW)
        assert report is not None
        assert report.cuts["customer_raw"] == cut
        assert report.cuts["raw"] is None
        assert report.deleted == {"customer_raw": 1000, "raw": 0, "aggregates": 0}
        assert report.transactions == 10
        assert report.complete
        xacts = conn.execute("SELECT count(DISTINCT xact) FROM deleting_xacts").fetchone()
        assert xacts == (10,)
        metric = "sobriety_privacy_deleted_rows_total"
        assert registry.get_sample_value(metric, {"data_class": "customer_raw"}) == 1000
        assert registry.get_sample_value(metric, {"data_class": "raw"}) == 0

        left = dict(
            conn.execute(
                "SELECT d.device, count(*) FROM readings r JOIN devices d ON d.id = r.device_id "
                "GROUP BY 1"
            ).fetchall()
        )
        assert left == {"wm-a": 10, "wm-b": 10, "fm-1": 100}  # recent ones and other devices
        pending = conn.execute("SELECT count(*) FROM readings_hourly_pending").fetchone()
        assert pending == (0,)  # the retention left no mark for the refresh to act on
        refreshed = rollup.refresh(conn)
        assert refreshed.deleted == 0
        assert _hourly(conn, cut) == before  # the hourly aggregates of the deleted hours

        # The hazard it avoids: a plain DELETE leaves its marks, and the refresh drops the hours.
        conn.execute("DROP TRIGGER log_delete ON readings")
        conn.execute("DELETE FROM readings WHERE device_id = %s", (ids["fm-1"],))
        assert rollup.refresh(conn).deleted == 25

        again = service.run_pass(NOW)
        assert again is not None
        assert again.deleted["customer_raw"] == 0
        assert again.transactions == 0


def test_privacy_apply_once_reports_per_class(
    own_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(own_db, autocommit=True) as conn:
        ids = register(conn, "lyon", ("wm-a", "water_meter"), ("cab-1", "cabinet_meter"))
        for device_id in ids.values():
            for when in (OLD, RECENT):
                conn.execute(
                    "INSERT INTO readings (device_id, metric_id, time, value) "
                    "SELECT %s, 6, %s + i * interval '1 hour', i FROM generate_series(0, 3) i",
                    (device_id, when),
                )
    monkeypatch.setenv("SOBRIETY_DB_URL", own_db)
    assert main(["privacy", "apply", "--format", "json"]) == 0  # the defaults: 400 days
    done = orjson.loads(capsys.readouterr().out)
    assert done["deleted"] == {"customer_raw": 4, "raw": 0, "aggregates": 0}
    assert done["cuts"]["raw"] is None
    assert done["cuts"]["aggregates"] is None
    assert main(["privacy", "apply"]) == 0
    out = capsys.readouterr().out
    assert "customer_raw: 0 rows deleted, before " in out
    assert "raw: 0 rows deleted, none (kept forever)" in out
    with psycopg.connect(own_db) as conn:
        hourly = conn.execute("SELECT count(*) FROM readings_hourly").fetchone()
    assert hourly == (16,)  # the refresh ran first: the 4 deleted hours are summarised


@pytest.mark.parametrize("days", [(100, 100, 200)])
def test_aggregates_older_than_their_days_go_and_younger_ones_stay(
    own_db: str, days: tuple[int, int, int]
) -> None:
    customer, raw, aggregates = days
    with psycopg.connect(own_db, autocommit=True) as conn:
        ids = register(conn, "lyon", ("cab-1", "cabinet_meter"))
        very_old = NOW - timedelta(days=300)
        mid = NOW - timedelta(days=150)
        for when in (very_old, mid):
            conn.execute(
                "INSERT INTO readings (device_id, metric_id, time, value) "
                "SELECT %s, 6, %s + i * interval '1 hour', i FROM generate_series(0, 3) i",
                (ids["cab-1"], when),
            )
            conn.execute(
                "INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours)"
                " VALUES (%s, %s, 1.0, 'counter', true, 0)",
                (ids["cab-1"], when.date()),
            )
            conn.execute(
                "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at, "
                "closed_at, state, resolved_at) "
                "VALUES ('data_gap', 'lyon', 'device', 'cab-1', %s, %s, %s, 'resolved', %s)",
                (when, when, when, when),
            )
        rollup.refresh(conn)
        config = PrivacyConfig(customer_raw_days=customer, raw_days=raw, aggregates_days=aggregates)
        report = RetentionService(own_db, config, CollectorRegistry()).run_pass(NOW)
        assert report is not None
        assert report.deleted == {"customer_raw": 0, "raw": 8, "aggregates": 4 + 1 + 1}
        assert report.tables == {"readings": 8, "readings_hourly": 4, "energy_daily": 1,
                                 "alerts": 1}  # fmt: skip
        hours = conn.execute("SELECT min(hour), count(*) FROM readings_hourly").fetchone()
        assert hours == (mid.replace(minute=0), 4)  # the 150-day-old hours outlive their raw
