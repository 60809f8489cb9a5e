"""``sobriety site add|remove|list`` on a real PostgreSQL and a real Mosquitto: a commune
onboarded in one command can log in to the database and see its own rows only, its gateway can
publish its own telemetry through a broker that reads the written password and ACL files (and
another site's is refused), its Grafana files name its own datasource and role; removed, its
gateway is refused after the broker's reload, its role is gone, and its data are kept or
exported then deleted from every table while the other commune's stay whole.

Role names are cluster-wide: this module's prefix carries a uuid, and its roles are dropped."""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from app.cli import main
from app.site_broker import hash_password
from app.site_grafana import COMMUNE_DASHBOARDS, site_hash
from core.contract import build_topic
from core.db import upgrade, with_database
from core.roles import site_reader_name
from core.sites import site_counts
from simulators.history import write_history
from simulators.history_scenario import HistoryScenario
from tests.fix_broker_auth import ACCEPTED, NOT_AUTHORIZED, Client, auth_broker

pytestmark = pytest.mark.services

ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl"
OWN, OTHER = "lyon-3e", "villeurbanne"
SCENARIO = HistoryScenario(
    name="sites", site=OWN, start=date(2026, 2, 2), days=3, dmas=1, customers=(12, 12),
    outlet_share=0.0, school_holidays=[], large_consumers=0, customer_leaks=0,
    high_consumers=0, silent_meter_days=0.0, frozen_meter_days=0.0, leaks={"per_dma": 0.0},
)  # fmt: skip


@pytest.fixture
def town(server_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A database with two communes' histories (water network, customer meters), this test's
    role prefix; the database and every role of the prefix dropped at the end."""
    name = f"sobriety_test_sites_{uuid.uuid4().hex[:10]}"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    with psycopg.connect(url) as conn:
        upgrade(conn)
        conn.commit()
        for site in (OWN, OTHER):
            write_history(conn, SCENARIO.model_copy(update={"site": site}), 3, tmp_path / site)
            conn.commit()
    try:
        yield url, prefix
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))  # fmt: skip
            for (role,) in admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{prefix}\\_%",)
            ).fetchall():
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A compose directory: the repository's ACL, no password file yet."""
    root = tmp_path / "deploy-root"
    (root / "deploy" / "mosquitto").mkdir(parents=True)
    shutil.copy(ACL, root / "deploy" / "mosquitto" / "acl")
    return root


def _add(url: str, prefix: str, root: Path, *extra: str) -> int:
    return main([
        "--db-url", url, "site", "add", "--site", OWN, "--name", "Lyon 3e", "--timezone",
        "Europe/Paris", "--lat", "45.76", "--lon", "4.85", "--prefix", prefix, "--deploy-dir",
        str(root), *extra,
    ])  # fmt: skip


def _as_role(url: str, role: str, password: str) -> psycopg.Connection:
    base = with_database(f"postgresql://{role}@127.0.0.1:5432/postgres", psycopg.conninfo
                         .conninfo_to_dict(url)["dbname"])  # fmt: skip
    return psycopg.connect(base, password=password)


def test_add_then_remove_keeping_the_data(
    town: tuple[str, str], deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, prefix = town
    role = site_reader_name(prefix, OWN)
    capsys.readouterr()
    assert _add(url, prefix, deploy, "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    secrets = deploy / "secrets" / "communes"
    db_password = (secrets / f"{role}_password").read_text().strip()
    mqtt_password = (secrets / f"{OWN}_mqtt_password").read_text().strip()
    assert len(db_password) >= 40
    assert (secrets / f"{role}_password").stat().st_mode & 0o777 == 0o600
    printed = json.dumps(report)
    assert db_password not in printed
    assert mqtt_password not in printed
    assert report["secrets"] == {}
    assert any("docker compose kill -s SIGHUP mosquitto" in line for line in report["apply"])

    # The database: the commune's role logs in with its password and reads its own rows only.
    with _as_role(url, role, db_password) as conn:
        assert [r[0] for r in conn.execute("SELECT site FROM api.sites")] == [OWN]
        sites = {r[0] for r in conn.execute("SELECT DISTINCT site FROM api.readings")}
        assert sites == {OWN}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM readings")

    # The broker: the written files, read by a real Mosquitto.
    passwd = deploy / "deploy" / "mosquitto" / "passwd"
    acl = deploy / "deploy" / "mosquitto" / "acl"
    assert passwd.read_text().startswith(f"{OWN}:$7$")
    assert f"user {OWN}\ntopic write sobriety/v1/{OWN}/+/up" in acl.read_text()
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    with auth_broker(broker_dir, passwd, acl) as broker:
        gateway = Client(broker, OWN, mqtt_password)
        try:
            assert gateway.connected() == 0
            up = build_topic(OWN, "fm-1", "up")
            assert gateway.publish(up, b"[]") in ACCEPTED
            assert gateway.publish(build_topic(OTHER, "fm-1", "up"), b"[]") == NOT_AUTHORIZED
        finally:
            gateway.close()
        wrong = Client(broker, OWN, "not-the-password")
        try:
            assert wrong.connected() != 0
        finally:
            wrong.close()

        # Grafana: its own datasource as its role, its dashboards on it alone.
        h = site_hash(OWN)
        grafana = deploy / "dashboards"
        ds = yaml.safe_load((grafana / "provisioning/datasources/sobriety-site-lyon-3e.yaml")
                            .read_text())["datasources"][0]  # fmt: skip
        assert (ds["uid"], ds["user"]) == (f"sobriety-postgres-{h}", role)
        assert (
            ds["secureJsonData"]["password"] == f"$__file{{/run/secrets/communes/{role}_password}}"
        )
        providers = yaml.safe_load(
            (grafana / "provisioning/dashboards/sobriety-site-lyon-3e.yaml").read_text()
        )["providers"]
        assert [p["folder"] for p in providers] == ["Lyon 3e", "Lyon 3e (English)"]
        for lang in ("fr", "en"):
            for board in COMMUNE_DASHBOARDS:
                text = (grafana / "json/sites" / OWN / lang / f"{board}.json").read_text()
                data = json.loads(text)
                assert len(data["uid"]) <= 40
                assert data["title"].endswith("— Lyon 3e")
                assert '"sobriety-postgres"' not in text  # the operator's datasource
                assert f"sobriety-postgres-{h}" in text

        # Again: idempotent, the passwords kept.
        assert _add(url, prefix, deploy) == 0
        assert (secrets / f"{role}_password").read_text().strip() == db_password
        assert passwd.read_text().count(f"{OWN}:") == 1
        assert acl.read_text().count(f"user {OWN}\n") == 1

        # Removed, its data kept: the gateway is refused once the broker rereads its files.
        capsys.readouterr()
        assert main(["--db-url", url, "site", "remove", "--site", OWN, "--keep-data",
                     "--prefix", prefix, "--deploy-dir", str(deploy)]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert f"database role {role}: dropped" in out
        broker.reload()
        after = Client(broker, OWN, mqtt_password)
        try:
            assert after.connected() != 0
        finally:
            after.close()
    assert OWN not in passwd.read_text()
    assert f"user {OWN}" not in acl.read_text()
    assert not (grafana / "json/sites" / OWN).exists()
    assert not (secrets / f"{role}_password").exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        assert site_counts(conn, OWN)["readings"] > 0  # kept


def test_remove_exports_then_deletes_every_row_of_the_commune_only(
    town: tuple[str, str], deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, prefix = town
    assert _add(url, prefix, deploy) == 0
    with psycopg.connect(url) as conn:
        own_before = site_counts(conn, OWN)
        other_before = site_counts(conn, OTHER)
        meters = [
            r[0]
            for r in conn.execute(
                "SELECT device FROM devices WHERE site = %s AND kind = 'water_meter'", (OWN,)
            )
        ]
    assert own_before["readings"] > 1000
    assert meters
    key = tmp_path / "key"
    key.write_text("k" * 40)
    config = tmp_path / "s.toml"
    config.write_text(f'[database]\nurl = "{url}"\n\n[privacy]\nhmac_key_file = "{key}"\n')
    out_dir = tmp_path / "export"
    capsys.readouterr()
    assert main(["--config", str(config), "site", "remove", "--site", OWN, "--delete-data",
                 "--export", str(out_dir), "--prefix", prefix, "--deploy-dir", str(deploy),
                 "--format", "json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    with (out_dir / "readings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == own_before["readings"]  # every raw reading, before the deletion
    assert {r["site"] for r in rows} == {OWN}
    exported = (out_dir / "devices.csv").read_text() + (out_dir / "readings.csv").read_text()
    assert not [m for m in meters if f",{m}," in exported]  # customer meters pseudonymised
    assert (out_dir / "energy.csv").exists()
    assert (out_dir / "alerts.csv").exists()
    assert report["deleted_rows"]["readings"] == own_before["readings"]
    with psycopg.connect(url) as conn:
        assert site_counts(conn, OWN) == {}
        assert site_counts(conn, OTHER) == other_before
        assert conn.execute("SELECT 1 FROM sites WHERE site = %s", (OWN,)).fetchone() is None


def test_bad_input_is_named_and_changes_nothing(
    town: tuple[str, str], deploy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, prefix = town
    base = ["--db-url", url, "site", "add", "--name", "X", "--lat", "45", "--lon", "4",
            "--prefix", prefix, "--deploy-dir", str(deploy)]  # fmt: skip
    cases = {
        ("--site", "Lyon"): "--site 'Lyon': a role can be made only for a site id of lower-case",
        ("--site", "sobriety-ingest"): "the name of a platform broker user",
        ("--site", "x", "--timezone", "Paris"): "--timezone 'Paris': expected an IANA time zone",
        ("--site", "x", "--lat", "95"): "--lat 95.0: expected a latitude in [-90, 90]",
    }
    for extra, message in cases.items():
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    with psycopg.connect(url) as conn:
        assert {r[0] for r in conn.execute("SELECT site FROM sites")} == {OWN, OTHER}
    assert not (deploy / "deploy" / "mosquitto" / "passwd").exists()
    assert main(["--db-url", url, "site", "remove", "--site", "nowhere", "--keep-data",
                 "--prefix", prefix]) == 2  # fmt: skip
    assert "--site 'nowhere': no such site" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage error
        main(["--db-url", url, "site", "remove", "--site", OWN, "--prefix", prefix])
    assert stopped.value.code == 2
    assert "one of the arguments --keep-data --delete-data is required" in capsys.readouterr().err


def test_list_and_the_lines_to_apply_without_a_broker_directory(
    town: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, prefix = town
    bare = tmp_path / "bare"  # no deploy/mosquitto: the lines are printed, not written
    capsys.readouterr()
    assert _add(url, prefix, bare, "--show-secrets") == 0
    out = capsys.readouterr().out
    mqtt_password = (bare / "secrets" / "communes" / f"{OWN}_mqtt_password").read_text().strip()
    assert f"password of mqtt {OWN}: {mqtt_password}" in out  # asked for
    assert f"  {OWN}:$7$20000$" in out
    assert f"  topic write sobriety/v1/{OWN}/+/up" in out
    assert not (bare / "deploy").exists()
    config = tmp_path / "s.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n[sites.{OWN}.energy]\nfaults_min_hours = 3\n\n'
        "[sites.lyon-3.anomaly]\nmin_leak_m3h = 1.0\n"
    )
    assert main(["--config", str(config), "site", "list", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "[sites.lyon-3] of the configuration name no registered site" in captured.err
    listed = {s["site"]: s for s in json.loads(captured.out)}
    assert listed[OWN]["own_config"] == ["energy"]
    assert listed[OWN]["roles"] == [site_reader_name(prefix, OWN)]
    assert listed[OTHER]["roles"] == []
    assert listed[OWN]["devices"] > 0


def test_the_password_line_is_mosquittos_format() -> None:
    line = hash_password("secret", salt=b"0123456789ab", iterations=101)
    assert line.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert len(line.split("$")[-1]) == 88  # 64 bytes in base64
