"""``sobriety db roles`` on the real PostgreSQL, with real roles: a database owned by a
non-superuser owner with CREATEROLE (as in docker compose), migrated, the roles made by the
command with passwords from files; then each role connects (trust on 127.0.0.1) and does its
real work — the ingest's store path, the services' rollup refresh, energy recompute and
anomaly scan, Grafana's reads of every api view — and is refused everything else.

Role names are cluster-wide: every name carries this run's uuid, and every role is dropped at
the end (DROP OWNED + DROP ROLE)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from anomaly.config import AnomalyConfig
from anomaly.service import Scanner
from app.cli import main
from core import rollup
from core.db import upgrade, with_database
from core.inventory import import_inventory, write_inventory_csv
from core.roles import KINDS, PLAN, apply_roles, unclassified_tables
from energy.config import EnergyConfig
from energy.own_store import save_samples
from energy.own_use import OwnSample
from energy.service import recompute
from ingest.inventory_cache import InventoryCache
from ingest.pipeline import Pipeline, Uplinks
from ingest.rejected import replay
from ingest.store import Store
from simulators.history import HistoryTruth, write_history
from simulators.history_scenario import FixedLeak, HistoryScenario

pytestmark = pytest.mark.services

Denied = psycopg.errors.InsufficientPrivilege
PARIS = ZoneInfo("Europe/Paris")
SCENARIO = HistoryScenario(
    name="roles",
    site="roles-water",
    start=date(2026, 2, 2),
    days=28,
    dmas=1,
    customers=(30, 40),
    outlet_share=0.0,
    school_holidays=[],
    large_consumers=0,
    customer_leaks=0,
    high_consumers=0,
    silent_meter_days=0.0,
    frozen_meter_days=0.0,
    leaks={"per_dma": 0.0},
    fixed_leaks=[FixedLeak(dma=0, kind="burst", start_day=21.4, size_fraction=0.5)],
)


@dataclass(frozen=True)
class Setup:
    """The database of this module and who may connect to it."""

    server: str
    db: str
    prefix: str
    owner: str
    passwords: Path
    truth: HistoryTruth

    def url(self, role: str) -> str:
        """The URL of the database as ``role`` (trust auth: no password needed)."""
        return with_database(f"postgresql://{role}@127.0.0.1:5432/postgres", self.db)

    @property
    def owner_url(self) -> str:
        return self.url(self.owner)

    def role(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"


def _drop_roles(server: str, db: str, roles: list[str]) -> None:
    """DROP OWNED in the database, then the database, then DROP ROLE (idempotent)."""
    with psycopg.connect(server, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
        if exists:
            with psycopg.connect(with_database(server, db), autocommit=True) as inside:
                for role in roles:
                    if inside.execute(
                        "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
                    ).fetchone():
                        inside.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        for role in roles:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def setup(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A database owned by ``{prefix}_owner`` (LOGIN CREATEROLE, not a superuser), migrated by
    it, holding a water history and an energy meter; the roles made by it, passwords from
    files."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    owner = f"{prefix}_owner"
    db = f"sobriety_test_roles_{prefix}"
    roles = [f"{prefix}_{k}" for k in KINDS] + [owner]
    passwords = tmp_path_factory.mktemp("secrets")
    for kind in KINDS:
        (passwords / f"{prefix}_{kind}_password").write_text(f"pw-{kind}-{uuid.uuid4().hex}\n")
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner)))
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(owner)
                )
            )
        made = Setup(server_url, db, prefix, owner, passwords, None)  # type: ignore[arg-type]
        with psycopg.connect(made.owner_url) as conn:
            upgrade(conn)
            conn.commit()
            truth = write_history(conn, SCENARIO, 3, tmp_path_factory.mktemp("inventory"))
            conn.commit()
            _energy_meter(conn, tmp_path_factory.mktemp("energy"))
            conn.commit()
        made = Setup(server_url, db, prefix, owner, passwords, truth)
        code = main(["--db-url", made.owner_url, "db", "roles", "--prefix", prefix,
                     "--passwords", str(passwords)])  # fmt: skip
        assert code == 0
        yield made
    finally:
        _drop_roles(server_url, db, roles)


ENERGY_SITE = "roles-energy"
ENERGY_DAY = datetime(2026, 11, 10, tzinfo=PARIS)


def _energy_meter(conn: psycopg.Connection, directory: Path) -> None:
    """A cabinet meter drawing 1 kW for three local days around ENERGY_DAY (counter in Wh)."""
    write_inventory_csv(
        directory / "sites.csv", [{"site": ENERGY_SITE, "timezone": "Europe/Paris"}],
        ("site", "timezone"),
    )  # fmt: skip
    write_inventory_csv(
        directory / "devices.csv",
        [{"site": ENERGY_SITE, "device": "cab-1", "kind": "cabinet_meter"}],
        ("site", "device", "kind"),
    )
    import_inventory(conn, directory / "sites.csv")
    import_inventory(conn, directory / "devices.csv")
    row = conn.execute(
        "SELECT d.id, m.id FROM devices d, metrics m "
        "WHERE d.site = %s AND d.device = 'cab-1' AND m.name = 'energy'",
        (ENERGY_SITE,),
    ).fetchone()
    assert row is not None
    start = ENERGY_DAY - timedelta(days=1)
    with (
        conn.cursor() as cur,
        cur.copy("COPY readings (device_id, metric_id, time, value) FROM STDIN") as copy,
    ):
        for n in range(3 * 24 * 6 + 1):
            copy.write_row((row[0], row[1], start + timedelta(minutes=10 * n), 1000.0 * n / 6))


def _as(setup: Setup, kind: str) -> psycopg.Connection:
    return psycopg.connect(setup.url(setup.role(kind)), autocommit=True)


def _owner_rows(setup: Setup, query: str, params: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
    with psycopg.connect(setup.owner_url) as conn:
        return conn.execute(query, params).fetchall()


def _relations(setup: Setup) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """api views, (view, is_insertable_into), public base tables."""
    views = [
        (str(r[0]), str(r[1]))
        for r in _owner_rows(
            setup,
            "SELECT table_name, is_insertable_into FROM information_schema.views "
            "WHERE table_schema = 'api' ORDER BY 1",
        )
    ]
    tables = [
        str(r[0])
        for r in _owner_rows(
            setup,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
        )
    ]
    return [v for v, _ in views], views, tables


def _first_column(setup: Setup, schema: str, table: str) -> str:
    rows = _owner_rows(
        setup,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND is_identity = 'NO' "
        "AND is_generated = 'NEVER' ORDER BY column_name = 'id', ordinal_position LIMIT 1",
        (schema, table),
    )
    return str(rows[0][0])


def _refused(conn: psycopg.Connection, statement: sql.Composable | str) -> bool:
    """Whether ``statement`` fails for lack of privilege."""
    try:
        conn.execute(statement)  # type: ignore[arg-type]
    except Denied:
        return True
    return False


# --- the roles themselves ---------------------------------------------------------------------


def test_roles_are_login_only_with_scram_passwords_and_own_nothing(setup: Setup) -> None:
    roles = [setup.role(k) for k in KINDS]
    with psycopg.connect(setup.server) as admin:
        rows = admin.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
            "rolbypassrls, rolpassword IS NOT NULL, rolpassword LIKE 'SCRAM-SHA-256$%%' "
            "FROM pg_authid WHERE rolname = ANY(%s) ORDER BY 1",
            (roles,),
        ).fetchall()
        members = admin.execute(
            "SELECT count(*) FROM pg_auth_members WHERE member = ANY(%s::regrole[])", (roles,)
        ).fetchone()
    assert sorted(r[0] for r in rows) == sorted(roles)
    for row in rows:
        assert row[1:] == (True, False, False, False, False, False, True, True), row[0]
    assert members == (0,)
    owned = _owner_rows(
        setup,
        "SELECT count(*) FROM pg_class WHERE pg_get_userbyid(relowner) = ANY(%s)",
        (roles,),
    )
    assert owned == [(0,)]


def test_every_table_of_the_migrations_is_given_to_some_role_or_kept_by_the_owner(
    setup: Setup,
) -> None:
    """A migration that adds a table must say in core/roles.py who may use it."""
    with psycopg.connect(setup.owner_url) as conn:
        assert unclassified_tables(conn) == []


def test_the_command_is_idempotent_and_never_prints_a_password(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--db-url", setup.owner_url, "db", "roles", "--prefix", setup.prefix]
    assert main([*args, "--passwords", str(setup.passwords), "--format", "json"]) == 0
    out = capsys.readouterr()
    for file in setup.passwords.iterdir():
        secret = file.read_text().strip()
        assert secret not in out.out
        assert secret not in out.err
    report = json.loads(out.out)
    assert report["owner"] == setup.owner
    by_kind = {r["kind"]: r for r in report["roles"]}
    assert set(by_kind) == set(KINDS)
    for kind, role in by_kind.items():
        # Passwords set again (a new salt), grants exactly as before: nothing granted/revoked.
        assert (role["status"], role["auth"]) == ("unchanged", "password set"), kind
        assert (role["granted"], role["revoked"]) == ([], []), kind
        tables = {rel.removeprefix("public."): privs for rel, privs in role["grants"].items()
                  if rel.startswith("public.")}  # fmt: skip
        assert tables == {t: sorted(p) for t, p in PLAN[kind].items()}, kind
    assert by_kind["grafana"]["grants"] == {f"api.{v}": ["SELECT"] for v in _relations(setup)[0]}
    # Without --passwords: the passwords stay, and the text says so.
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "password not changed by this run" in text
    assert f"{setup.role('grafana')}: unchanged" in text


def test_a_missing_password_file_is_named_and_changes_nothing(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / f"{setup.role('ingest')}_password").write_text("only-this-one\n")
    code = main(["--db-url", setup.owner_url, "db", "roles", "--prefix", setup.prefix,
                 "--passwords", str(tmp_path)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / f"{setup.role('services')}_password") in err
    assert "only-this-one" not in err
    with psycopg.connect(setup.server) as admin:
        row = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (setup.role("ingest"),)
        ).fetchone()
        assert row is not None
        check = admin.pgconn.encrypt_password(b"only-this-one", setup.role("ingest").encode())
    assert row[0] != check.decode()  # (a SCRAM verifier is salted: compare the stored one)
    assert main(["--db-url", setup.owner_url, "db", "roles", "--prefix", "Bad-Prefix"]) == 2
    assert "--prefix 'Bad-Prefix'" in capsys.readouterr().err


# --- grafana -----------------------------------------------------------------------------------


def test_grafana_reads_every_api_view(setup: Setup) -> None:
    views, _, _ = _relations(setup)
    assert len(views) >= 20
    with _as(setup, "grafana") as conn:
        for view in views:
            conn.execute(sql.SQL("SELECT * FROM api.{} LIMIT 1").format(sql.Identifier(view)))
        rows = conn.execute("SELECT count(*) FROM api.readings").fetchone()
    assert rows is not None
    assert rows[0] > 0


def test_grafana_reads_no_base_table(setup: Setup) -> None:
    _, _, tables = _relations(setup)
    assert "readings" in tables
    assert "schema_migrations" in tables
    with _as(setup, "grafana") as conn:
        query = sql.SQL("SELECT 1 FROM public.{} LIMIT 1")
        readable = [t for t in tables if not _refused(conn, query.format(sql.Identifier(t)))]
    assert readable == []


def test_grafana_writes_nothing_and_creates_nothing(setup: Setup) -> None:
    _, views, tables = _relations(setup)
    with _as(setup, "grafana") as conn:
        for table in tables:
            name = sql.Identifier(table)
            column = sql.Identifier(_first_column(setup, "public", table))
            for statement in (
                sql.SQL("INSERT INTO public.{} DEFAULT VALUES").format(name),
                sql.SQL("UPDATE public.{} SET {} = {} WHERE false").format(name, column, column),
                sql.SQL("DELETE FROM public.{} WHERE false").format(name),
                sql.SQL("TRUNCATE public.{}").format(name),
            ):
                assert _refused(conn, statement), statement.as_string(conn)
        for view, insertable in views:
            name = sql.Identifier(view)
            column = sql.Identifier(_first_column(setup, "api", view))
            for statement in (
                sql.SQL("INSERT INTO api.{} DEFAULT VALUES").format(name),
                sql.SQL("UPDATE api.{} SET {} = DEFAULT WHERE false").format(name, column),
                sql.SQL("DELETE FROM api.{} WHERE false").format(name),
            ):
                if insertable == "YES":  # an updatable view: the privilege is what refuses
                    assert _refused(conn, statement), statement.as_string(conn)
                else:
                    with pytest.raises(psycopg.Error):
                        conn.execute(statement)
        for statement in (
            "CREATE TABLE public.grafana_was_here (x int)",
            "CREATE VIEW api.grafana_was_here AS SELECT 1 AS x",
            "CREATE FUNCTION public.grafana_was_here() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE SCHEMA grafana_was_here",
        ):
            assert _refused(conn, statement), statement


# --- the ingest --------------------------------------------------------------------------------


def test_the_ingest_runs_its_real_store_path(setup: Setup, tmp_path: Path) -> None:
    """Inventory lookup, a batch of readings with its messages counted and its spool frame
    recorded, a rejection, the rejected-message replay, the process's own CPU sample."""
    url = setup.url(setup.role("ingest"))
    cache = InventoryCache(url, 60.0, tmp_path / "inventory.json")
    assert cache.load() is True
    device = cache.lookup(ENERGY_SITE, "cab-1")
    assert device is not None
    pipeline = Pipeline(cache.lookup, "sobriety/v1")
    now = datetime.now(UTC).timestamp()
    good = pipeline.process(
        f"sobriety/v1/{ENERGY_SITE}/cab-1/up",
        json.dumps(
            [
                {"bn": "cab-1:", "bt": now - 60, "n": "power", "u": "W", "v": 812.5},
                {"n": "power", "u": "W", "v": 813.0, "t": 30},
            ]
        ).encode(),
        now,
    )
    bad = pipeline.process(f"sobriety/v1/{ENERGY_SITE}/cab-1/up", b'{"power": "x"}', now)
    assert len(good.rows) == 2
    assert not good.rejections
    assert bad.rejections
    assert not bad.rows
    uplinks = Uplinks()
    uplinks.add(good.rows)
    store = Store(url)
    try:
        result = store.write(good.rows, bad.rejections, uplinks=uplinks, frame_id=os.urandom(16))
        assert (result.stored, result.rejected) == (2, 1)
        again = store.write(good.rows, [], uplinks=uplinks)  # a redelivery: deduplicated
        assert (again.stored, again.duplicates) == (0, 2)
        with psycopg.connect(url) as conn:
            report = replay(conn, store, pipeline)
            assert report.stored == 0  # still invalid: stays rejected
            save_samples(conn, [OwnSample("host", "ingest", 1, now - 10, now, 0.5, 1.0, 2.0)])
            conn.commit()
    finally:
        store.close()
    counts = _owner_rows(
        setup,
        """SELECT (SELECT count(*) FROM readings WHERE device_id = %(d)s
                     AND time > now() - interval '10 minutes'),
                  (SELECT count(*) FROM readings_hourly_pending WHERE device_id = %(d)s),
                  (SELECT sum(messages) FROM device_reporting_daily WHERE device_id = %(d)s),
                  (SELECT count(*) FROM device_status WHERE device_id = %(d)s),
                  (SELECT count(*) FROM rejected_messages WHERE site = %(s)s),
                  (SELECT count(*) FROM ingest_replayed_frames),
                  (SELECT count(*) FROM service_cpu_samples WHERE role = 'ingest')""",
        {"d": device, "s": ENERGY_SITE},  # type: ignore[arg-type]
    )
    # The trigger on readings (run with the ingest's rights) logged the hours to refresh.
    assert counts == [(2, counts[0][1], 2, 1, 1, 1, 1)]
    assert counts[0][1] >= 1


def test_the_ingest_writes_no_analytics_no_inventory_and_erases_nothing(setup: Setup) -> None:
    """A compromised ingest (it faces the broker) cannot forge or read alerts, re-point devices,
    erase history, nor read the analytics."""
    with _as(setup, "ingest") as conn:
        for statement in (
            "INSERT INTO alerts (kind, site, subject_type, subject, opened_at, updated_at) "
            "VALUES ('leak', 'x', 'dma', 'x', now(), now())",
            "SELECT * FROM alerts LIMIT 1",
            "SELECT * FROM energy_daily LIMIT 1",
            "UPDATE devices SET site = site WHERE false",
            "INSERT INTO sites (site) VALUES ('forged')",
            "DELETE FROM readings WHERE false",
            "UPDATE readings SET value = value WHERE false",
            "TRUNCATE readings",
            "DELETE FROM rejected_messages WHERE false",
            "SELECT * FROM readings_hourly_pending LIMIT 1",
            "SELECT * FROM api.readings LIMIT 1",
            "SELECT * FROM schema_migrations",
            "CREATE TABLE public.ingest_was_here (x int)",
        ):
            assert _refused(conn, statement), statement


# --- the services ------------------------------------------------------------------------------


def test_the_services_refresh_the_rollup_scan_for_leaks_and_recompute_energy(
    setup: Setup,
) -> None:
    truth = setup.truth
    with psycopg.connect(setup.url(setup.role("services")), autocommit=True) as conn:
        refreshed = rollup.refresh(conn)
    assert refreshed.written > 0
    with psycopg.connect(setup.url(setup.role("services"))) as conn:
        scan = Scanner(AnomalyConfig()).scan(conn, truth.start, truth.end)
        conn.commit()
        energy = recompute(
            conn, EnergyConfig(), ENERGY_DAY.timestamp(), ENERGY_DAY.timestamp(), ENERGY_SITE
        )
        conn.commit()
    assert scan.opened.get("leak", 0) == 1
    assert energy.devices == 1
    leaks = _owner_rows(
        setup, "SELECT subject FROM alerts WHERE kind = 'leak' AND site = %s", (SCENARIO.site,)
    )
    assert leaks == [("dma-01",)]
    nights = _owner_rows(setup, "SELECT count(*) FROM dma_nights")
    assert nights[0][0] >= 20
    kwh = _owner_rows(
        setup,
        "SELECT kwh FROM api.energy_daily WHERE site = %s AND day = %s",
        (ENERGY_SITE, ENERGY_DAY.date()),
    )
    assert kwh == [(pytest.approx(24.0),)]


def test_the_services_cannot_write_readings_nor_the_inventory(setup: Setup) -> None:
    with _as(setup, "services") as conn:
        for statement in (
            "INSERT INTO readings (time, device_id, metric_id, value) VALUES (now(), 1, 1, 1)",
            # (DELETE is granted: the retention of [privacy], core/retention.py)
            "UPDATE readings SET value = value WHERE false",
            "TRUNCATE readings",
            "UPDATE devices SET site = site WHERE false",
            "INSERT INTO sites (site) VALUES ('forged')",
            "INSERT INTO device_status (device_id, last_reading_at, last_received_at) "
            "VALUES (1, now(), now())",
            "UPDATE device_reporting_daily SET messages = 0 WHERE false",
            "DELETE FROM rejected_messages WHERE false",
            "SELECT * FROM schema_migrations",
            "CREATE TABLE public.services_was_here (x int)",
            "CREATE VIEW api.services_was_here AS SELECT 1 AS x",
        ):
            assert _refused(conn, statement), statement


# --- later migrations --------------------------------------------------------------------------


def test_a_rerun_after_an_upgrade_grants_the_new_view_and_takes_back_stray_grants(
    setup: Setup,
) -> None:
    """A view a later migration adds is readable by Grafana (the owner's default privileges,
    and the rerun); a grant nobody planned is revoked by the rerun; a new table no plan lists
    is reported, and given to nobody."""
    grafana = setup.role("grafana")
    try:
        with psycopg.connect(setup.owner_url, autocommit=True) as owner:
            owner.execute("CREATE VIEW api.roles_later AS SELECT site FROM sites")
            owner.execute("CREATE TABLE public.roles_later_table (x int)")
            # As if the view had been made before the roles' default privileges existed.
            owner.execute(sql.SQL("REVOKE SELECT ON api.roles_later FROM {}").format(
                sql.Identifier(grafana)))  # fmt: skip
            owner.execute(sql.SQL("GRANT SELECT ON public.readings TO {}").format(
                sql.Identifier(grafana)))  # fmt: skip
        with _as(setup, "grafana") as conn:
            assert _refused(conn, "SELECT * FROM api.roles_later")
            conn.execute("SELECT 1 FROM public.readings LIMIT 1")  # the stray grant works...
        with psycopg.connect(setup.owner_url) as owner:
            report = apply_roles(owner, setup.prefix)
        by_kind = {r.kind: r for r in report.roles}
        assert by_kind["grafana"].status == "updated"
        assert by_kind["grafana"].granted == ["SELECT api.roles_later"]
        assert by_kind["grafana"].revoked == ["SELECT public.readings"]
        # The services had it from the default privileges already: nothing to do for them.
        assert by_kind["services"].grants["api.roles_later"] == ["SELECT"]
        assert (by_kind["services"].granted, by_kind["services"].status) == ([], "unchanged")
        assert report.unclassified == ["roles_later_table"]
        with _as(setup, "grafana") as conn:
            assert conn.execute("SELECT count(*) FROM api.roles_later").fetchone() == (2,)
            assert _refused(conn, "SELECT 1 FROM public.readings LIMIT 1")  # ...not any more
            assert _refused(conn, "SELECT * FROM public.roles_later_table")
        with psycopg.connect(setup.owner_url, autocommit=True) as owner:
            owner.execute("CREATE VIEW api.roles_later_2 AS SELECT site FROM sites")
        with _as(setup, "grafana") as conn:  # default privileges: readable before any rerun
            conn.execute("SELECT * FROM api.roles_later_2")
    finally:
        with psycopg.connect(setup.owner_url, autocommit=True) as owner:
            owner.execute("DROP VIEW IF EXISTS api.roles_later, api.roles_later_2")
            owner.execute("DROP TABLE IF EXISTS public.roles_later_table")


def test_sobriety_run_connects_its_ingest_and_its_services_as_their_own_roles(
    setup: Setup, mqtt_url: str, root: str, tmp_path: Path
) -> None:
    """What compose runs: ``sobriety run`` with ``database.url`` the ingest's role and
    ``database.services_url`` the services' — a reading stored, a leak scan, a policies pass and
    an energy pass done, none failed for want of a privilege."""
    from app.embedded.service_process import ServiceProcess, private_ingest_config
    from tests.fix_mqtt import Publisher, wait_until

    site = f"run-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(setup.url(setup.owner), autocommit=True) as owner:
        owner.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
        owner.execute(
            "INSERT INTO devices (site, device, kind, nominal_power_w) "
            "VALUES (%s, 'lum-1', 'luminaire', 50)",
            (site,),
        )
    config = private_ingest_config(
        setup.url(setup.role("ingest")), mqtt_url, tmp_path, root,
        database={"services_url": setup.url(setup.role("services"))},
    )  # fmt: skip
    run = ServiceProcess(config, tmp_path, command=("run",), name="run-roles")
    run.start()
    try:
        pub = Publisher(mqtt_url)
        pub.wait_acked(pub.publish([(f"{root}/{site}/lum-1/up", b'{"power": 12.0}')]))
        pub.close()
        for metric in ("sobriety_anomaly_scan_seconds_count",
                       "sobriety_policies_pass_seconds_count",
                       "sobriety_energy_pass_seconds_count"):  # fmt: skip
            wait_until(lambda m=metric: run.metric(m) >= 1, 60, metric)  # type: ignore[misc]
        wait_until(lambda: run.metric("sobriety_ingest_readings_stored_total") == 1, 30, "stored")
        for failures in ("sobriety_anomaly_scan_failures_total",
                         "sobriety_policies_pass_failures_total",
                         "sobriety_energy_pass_failures_total"):  # fmt: skip
            assert run.metric(failures) == 0, failures
        configs = _owner_rows(
            setup, "SELECT count(*) FROM api.device_configs WHERE site = %s", (site,)
        )
        assert configs == [(1,)]  # the policies wrote it, as the services' role
    finally:
        assert run.terminate() == 0
        clear = Publisher(mqtt_url)  # the config the policies left retained on the broker
        clear.client.publish(f"{root}/{site}/lum-1/config", b"", qos=1, retain=True)
        clear.wait_acked(1)
        clear.close()
