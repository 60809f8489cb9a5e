"""``sobriety export alerts`` and ``export energy``: the columns and rows of their api views,
as CSV and JSON, and the option errors of ``export readings`` (real PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest

from app.cli import main
from core.exports import ALERT_COLUMNS, ENERGY_COLUMNS
from tests.fix_db import register

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    monkeypatch.setenv("SOBRIETY_DB_URL", db_url)
    monkeypatch.setenv("SOBRIETY_PRIVACY_HMAC_KEY_FILE", str(key))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _view(conn: psycopg.Connection, view: str, site: str, order: str) -> list[dict[str, object]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT * FROM api.{view} WHERE site = %s ORDER BY {order}", (site,))
        return list(cur)


def _utc(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def test_export_alerts_rows_equal_the_view_in_csv_and_json(
    conn: psycopg.Connection, site: str, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    register(conn, site, ("fm-1", "flow_meter"))
    conn.execute(
        "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at, "
        "estimated_flow_m3h, details, state, closed_at, resolved_at, resolved_by) VALUES "
        "('leak', %(s)s, 'dma', 'dma-1', %(t)s, %(t)s, 1.5, '{\"a\": \"b,c\"}', 'resolved', "
        "%(t)s + interval '1 day', %(t)s + interval '1 day', 'team'), "
        "('data_gap', %(s)s, 'device', 'fm-1', %(t)s + interval '2 days', %(t)s, NULL, '{}', "
        "'open', NULL, NULL, NULL)",
        {"s": site, "t": T0},
    )
    view = _view(conn, "alerts", site, "opened_at, id")
    assert list(view[0]) == list(ALERT_COLUMNS)
    expected = [{c: _utc(row[c]) for c in ALERT_COLUMNS} for row in view]
    code, out, _ = _run(["export", "alerts", "--site", site, "--format", "json"], capsys)
    assert code == 0
    assert orjson.loads(out) == expected
    code, out, _ = _run(["export", "alerts", "--site", site], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(ALERT_COLUMNS)
    assert [r["subject"] for r in rows] == ["dma-1", "fm-1"]
    assert orjson.loads(rows[0]["details"]) == {"a": "b,c"}
    assert rows[0]["closed_at"] == "2026-03-02T00:00:00.000000Z"
    assert rows[1]["closed_at"] == ""
    # --since: only those still active then (the resolved one closed on 2 March).
    argv = ["export", "alerts", "--site", site, "--since", "2026-03-02T12:00:00Z"]
    code, out, _ = _run([*argv, "--format", "json"], capsys)
    assert [a["kind"] for a in orjson.loads(out)] == ["data_gap"]


def test_export_energy_rows_equal_the_view_in_csv_and_json(
    conn: psycopg.Connection, site: str, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = register(conn, site, ("cab-1", "cabinet_meter"), ("cab-2", "cabinet_meter"))
    for n, day in enumerate(("2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03")):
        for device in ("cab-1", "cab-2"):
            conn.execute(
                "INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours, "
                "flagged) VALUES (%s, %s, %s, 'counter', %s, %s, %s)",
                (ids[device], day, 10.5 + n, n % 2 == 0, n * 0.5, n),
            )
    view = [
        r
        for r in _view(conn, "energy_daily", site, "day, device")
        if "2026-03-01" <= str(r["day"]) < "2026-03-03"
    ]
    assert list(view[0]) == list(ENERGY_COLUMNS)
    # Local days (Europe/Paris) that begin in [since, until).
    argv = ["export", "energy", "--site", site, "--since", "2026-03-01T00:00:00+01:00"]
    argv += ["--until", "2026-03-03T00:00:00+01:00"]
    code, out, _ = _run([*argv, "--format", "json"], capsys)
    assert code == 0
    expected = [{c: str(r[c]) if c == "day" else r[c] for c in ENERGY_COLUMNS} for r in view]
    assert orjson.loads(out) == expected
    code, out, _ = _run(argv, capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["day"], r["device"], float(r["kwh"])) for r in rows] == [
        (str(r["day"]), r["device"], r["kwh"]) for r in view
    ]
    assert list(rows[0]) == list(ENERGY_COLUMNS)


@pytest.mark.parametrize("what", ["alerts", "energy"])
def test_export_errors_are_those_of_export_readings(
    conn: psycopg.Connection,
    site: str,
    env: None,
    what: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(conn, site, ("cab-1", "cabinet_meter"))
    period = ["--since", "2026-03-02T00:00:00Z", "--until", "2026-03-01T00:00:00Z"]
    code, out, err = _run(["export", what, *period], capsys)
    assert code == 2
    assert out == ""
    assert "--until must be after --since" in err
    code, out, err = _run(["export", what, "--since", "1d", "--site", "atlantis"], capsys)
    assert code == 2
    assert "no such site; known sites: " in err
    assert site in err
    with pytest.raises(SystemExit) as exit_:
        main(["export", what, "--since", "1d", "--format", "xml"])
    assert exit_.value.code == 2
    if what == "energy":
        with pytest.raises(SystemExit):
            main(["export", "energy", "--until", "now"])  # --since is required
