"""Tenancy (migration 0019, ``sobriety db roles --commune``) on the real PostgreSQL, with real
roles: a database filled by the demo (two communes, lyon-3e and villeurbanne) and by hand where
the demo leaves a view empty; the command makes the service roles and lyon-3e's role; then
lyon-3e's role reads every api view and sees its own rows only, reads no base table, and loses
a site at its next query when the site is taken from it; Grafana, an operator, sees both.

Role names are cluster-wide: every name carries this run's uuid, and every role is dropped at
the end (DROP OWNED + DROP ROLE)."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from app.cli import main
from app.config import load_config
from app.demo import run_demo
from core.db import upgrade, with_database
from core.errors import UsageError
from core.roles import KINDS, site_reader_name

pytestmark = pytest.mark.services

Denied = psycopg.errors.InsufficientPrivilege
OWN, OTHER = "lyon-3e", "villeurbanne"
SITE_LESS = {
    # the platform's own energy and the readings stored over all sites: operators only
    "service_energy_daily": "operators only",
}
"""api views without a site column, and what a commune sees of them."""
OPERATOR_ONLY = {
    # the communes compared with one another (migration 0021): a commune sees none of it
    "commune_benchmark_monthly": "operators only",
}
"""api views with a site column that show a commune's role no row at all, its own site's
included."""


@dataclass(frozen=True)
class Setup:
    """The database of this module and its roles."""

    server: str
    db: str
    prefix: str

    def url(self, role: str) -> str:
        return with_database(f"postgresql://{role}@127.0.0.1:5432/postgres", self.db)

    @property
    def owner_url(self) -> str:
        return with_database(self.server, self.db)

    @property
    def commune(self) -> str:
        return site_reader_name(self.prefix, OWN)

    @property
    def grafana(self) -> str:
        return f"{self.prefix}_grafana"


def _drop(server: str, db: str, prefix: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        roles = admin.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{prefix}\\_%",)
        ).fetchall()
        for (role,) in roles:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _fill_what_the_demo_leaves_empty(conn: psycopg.Connection) -> None:
    """Rows for both sites in the views the one-day demo leaves empty for one of them."""
    for site in (OWN, OTHER):
        conn.execute(
            "INSERT INTO lighting_overrides (site, lighting_group, level, starts_at, until, "
            "reason, luminaires) VALUES (%s, 'g-test', 50, now(), now() + interval '1 hour', "
            "'tenancy test', 1)",
            (site,),
        )
        conn.execute(
            "INSERT INTO energy_factors (kind, site, valid_from, value, unit, source) "
            "VALUES ('tariff', %s, DATE '2000-01-01', 0.25, 'EUR/kWh', 'tenancy test')",
            (site,),
        )
    # The PUE of villeurbanne: its own facility and IT meters, with lyon-3e's days.
    for kind, device in (("facility_meter", "facility-v"), ("it_meter", "it-v")):
        conn.execute(
            "INSERT INTO devices (site, device, kind) VALUES (%s, %s, %s)", (OTHER, device, kind)
        )
        conn.execute(
            "INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours) "
            "SELECT v.id, e.day, e.kwh, e.source, e.complete, e.missing_hours "
            "FROM energy_daily e JOIN devices d ON d.id = e.device_id "
            "CROSS JOIN devices v WHERE d.site = %s AND d.kind = %s AND v.site = %s "
            "AND v.device = %s",
            (OWN, kind, OTHER, device),
        )
    # A rejected message of no known site: operators only.
    conn.execute(
        "INSERT INTO rejected_messages (fingerprint, received_at, last_received_at, topic, "
        "site, reason, detail, payload, payload_bytes) VALUES ('\\x00'::bytea, now(), now(), "
        "'sobriety/v1/nowhere/x', 'nowhere', 'unknown_site', 'tenancy test', '\\x00'::bytea, 1)"
    )


@pytest.fixture(scope="module")
def setup(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    db = f"sobriety_test_tenancy_{prefix}"
    made = Setup(server_url, db, prefix)
    passwords = tmp_path_factory.mktemp("secrets")
    (passwords / f"{made.commune}_password").write_text(f"pw-{uuid.uuid4().hex}\n")
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        with psycopg.connect(made.owner_url) as conn:
            upgrade(conn)
        config = load_config(None, env={}, overrides={"metrics": {"port": 0}, "mqtt": {}})
        out = io.StringIO()
        report = run_demo(
            config, days=1, seed=4, embedded=True, configured_db=made.owner_url,
            configured_mqtt=None, workdir=tmp_path_factory.mktemp("tenancy-demo"),
            serve=False, stop=threading.Event(), out=out,
        )  # fmt: skip
        assert report.problems == [], out.getvalue()
        with psycopg.connect(made.owner_url) as conn:
            _fill_what_the_demo_leaves_empty(conn)
        assert main(["--db-url", made.owner_url, "db", "roles", "--prefix", prefix]) == 0
        code = main(["--db-url", made.owner_url, "db", "roles", "--prefix", prefix,
                     "--commune", OWN, "--passwords", str(passwords)])  # fmt: skip
        assert code == 0
        yield made
    finally:
        _drop(server_url, db, prefix)


def _views(setup: Setup) -> dict[str, bool]:
    """{api view: has a site column}."""
    with psycopg.connect(setup.owner_url) as conn:
        rows = conn.execute(
            "SELECT v.table_name, EXISTS (SELECT 1 FROM information_schema.columns c "
            "WHERE c.table_schema = 'api' AND c.table_name = v.table_name "
            "AND c.column_name = 'site') FROM information_schema.views v "
            "WHERE v.table_schema = 'api' ORDER BY 1"
        ).fetchall()
    return {str(name): bool(has_site) for name, has_site in rows}


def _sites(url: str, view: str) -> dict[str | None, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT site, count(*) FROM api.{} GROUP BY 1").format(sql.Identifier(view))
        ).fetchall()
    return {site: int(n) for site, n in rows}


def _count(url: str, view: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM api.{}").format(sql.Identifier(view))
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_owner_has_rows_of_both_sites_in_every_view_with_a_site(setup: Setup) -> None:
    """The ground for the tests below: nothing is proven by an empty view."""
    for view, has_site in _views(setup).items():
        if not has_site:
            assert view in SITE_LESS, f"api.{view} has no site column: say what a commune sees"
            continue
        sites = _sites(setup.owner_url, view)
        assert sites.get(OWN, 0) > 0, (view, sites)
        assert sites.get(OTHER, 0) > 0, (view, sites)


def test_a_commune_sees_its_own_rows_of_every_api_view_and_nothing_else(setup: Setup) -> None:
    for view, has_site in _views(setup).items():
        if not has_site:
            assert _count(setup.url(setup.commune), view) == 0, view  # operators only
            assert _count(setup.owner_url, view) > 0, view
            continue
        if view in OPERATOR_ONLY:
            assert _count(setup.url(setup.commune), view) == 0, view
            assert set(_sites(setup.owner_url, view)) >= {OWN, OTHER}, view
            continue
        sites = _sites(setup.url(setup.commune), view)
        allowed = {OWN, None} if view == "energy_factors" else {OWN}  # general factors: public
        assert set(sites) <= allowed, (view, sites)
        assert sites.get(OWN, 0) > 0, view
    with psycopg.connect(setup.url(setup.commune)) as conn:
        general = conn.execute("SELECT count(*) FROM api.energy_factors WHERE site IS NULL")
        assert general.fetchone() == (1,)  # the demo's general factor


def test_a_commune_reads_no_base_table_nor_the_tenancy_tables(setup: Setup) -> None:
    with psycopg.connect(setup.owner_url) as conn:
        relations = [str(r[0]) for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1"
        )]  # fmt: skip
    assert {"site_readers", "site_operators", "visible_sites", "readings"} <= set(relations)
    with psycopg.connect(setup.url(setup.commune), autocommit=True) as conn:
        for relation in relations:
            with pytest.raises(Denied):
                conn.execute(
                    sql.SQL("SELECT 1 FROM public.{} LIMIT 1").format(sql.Identifier(relation))
                )
        for statement in (
            "INSERT INTO site_readers VALUES (current_user, 'villeurbanne')",
            "INSERT INTO site_operators VALUES (current_user)",
            "CREATE VIEW api.mine AS SELECT 1 AS x",
            "DELETE FROM api.alerts",
        ):
            with pytest.raises(Denied):
                conn.execute(statement)


def test_grafana_and_the_owner_are_operators_and_see_both_sites(setup: Setup) -> None:
    for url in (setup.url(setup.grafana), setup.owner_url):
        for view, has_site in _views(setup).items():
            if has_site:
                assert set(_sites(url, view)) >= {OWN, OTHER}, (url, view)
            else:
                assert _count(url, view) > 0, (url, view)
        assert "nowhere" in _sites(url, "rejected_messages")
    with psycopg.connect(setup.owner_url) as conn:
        operators = {r[0] for r in conn.execute("SELECT role FROM site_operators")}
        readers = conn.execute("SELECT role, site FROM site_readers").fetchall()
    assert operators == {f"{setup.prefix}_services", f"{setup.prefix}_grafana"}
    assert readers == [(setup.commune, OWN)]


def test_a_site_taken_from_a_role_is_gone_at_its_next_query(setup: Setup) -> None:
    with psycopg.connect(setup.url(setup.commune), autocommit=True) as commune:
        assert commune.execute("SELECT count(*) FROM api.alerts").fetchone() != (0,)
        with psycopg.connect(setup.owner_url, autocommit=True) as owner:
            owner.execute("DELETE FROM site_readers WHERE role = %s", (setup.commune,))
            try:
                for view in _views(setup):
                    row = commune.execute(
                        sql.SQL("SELECT count(*) FROM api.{}").format(sql.Identifier(view))
                    ).fetchone()
                    expected = (1,) if view == "energy_factors" else (0,)  # the general one
                    assert row == expected, view
            finally:
                owner.execute("INSERT INTO site_readers VALUES (%s, %s)", (setup.commune, OWN))
        assert commune.execute("SELECT count(*) FROM api.alerts").fetchone() != (0,)


def test_a_one_device_query_of_a_commune_uses_the_rollups_index(setup: Setup) -> None:
    with psycopg.connect(setup.url(setup.commune)) as conn:
        row = conn.execute(
            "SELECT device FROM api.readings_hourly WHERE site = %s LIMIT 1", (OWN,)
        ).fetchone()
        assert row is not None
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN SELECT * FROM api.readings_hourly WHERE site = %s AND device = %s "
                "AND time >= now() - interval '30 days'",
                (OWN, row[0]),
            )
        )
    assert "readings_hourly_pkey" in plan, plan
    assert "Seq Scan on readings_hourly" not in plan, plan


def test_the_commune_role_name_is_a_plain_identifier_or_refused() -> None:
    assert site_reader_name("sobriety", "lyon-3e") == "sobriety_site_lyon_3e"
    assert site_reader_name("p", "a.b_c") == "p_site_a_b_c"
    for bad in ("Lyon", "lyon 3e", "", "-x", "lyon;drop", "é", "x" * 60):
        with pytest.raises(UsageError):
            site_reader_name("sobriety", bad)


def test_the_command_refuses_an_unknown_site_and_is_idempotent(setup: Setup) -> None:
    args = ["--db-url", setup.owner_url, "db", "roles", "--prefix", setup.prefix]
    assert main([*args, "--commune", "nowhere"]) != 0
    assert main([*args, "--commune", OWN, "--format", "json"]) == 0
    with psycopg.connect(setup.owner_url) as conn:
        assert conn.execute("SELECT count(*) FROM site_readers").fetchone() == (1,)
        login = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolinherit FROM pg_roles WHERE rolname = %s",
            (setup.commune,),
        ).fetchone()
    assert login == (True, False, False)
    assert KINDS == ("ingest", "services", "grafana")


def test_the_services_still_read_every_site_after_db_roles_again(setup: Setup) -> None:
    assert main(["--db-url", setup.owner_url, "db", "roles", "--prefix", setup.prefix]) == 0
    assert set(_sites(setup.url(f"{setup.prefix}_services"), "alerts")) >= {OWN, OTHER}
    assert set(_sites(setup.url(setup.commune), "alerts")) == {OWN}
