"""Least-privilege database roles: the ingest, the services (anomaly, policies, energy, and the
rollup refresh they run) and Grafana, each with the rights on exactly the tables it needs.

The owner of the schema — the role that ran ``db upgrade`` — keeps everything; the roles made
here never own anything. :func:`apply_roles` is idempotent: in one transaction it creates or
updates the roles, revokes what they hold on the tables and views of ``public`` and ``api``, and
grants :data:`PLAN` again, so a rerun after ``db upgrade`` gives the new tables and views their
rights and takes away what the plan no longer lists. Default privileges of the owner in schema
``api`` also give the reading roles the views that later migrations create, before the rerun.

Triggers run with the rights of the statement's user: the ingest's inserts into ``readings``
fire ``readings_hourly_mark()``, which inserts into ``readings_hourly_pending`` — so the ingest
holds INSERT there (and nothing else). Identity columns need no sequence privilege (PostgreSQL
checks INSERT on the table). Views read their base tables with their owner's rights, so
Grafana's SELECT on the ``api`` views is all it needs.

Tenancy (migration 0019): the ``api`` views show a role the sites of ``site_readers`` for it,
or every site when it is an operator (``site_operators``, the tables' owner, a superuser).
:func:`apply_roles` makes the services and Grafana operators; :func:`apply_site_reader` makes a
commune's role ``{prefix}_site_{site}``, which reads its own site's rows of every api view.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from core.errors import SobrietyError, UsageError

__all__ = [
    "API_READERS",
    "KINDS",
    "OPERATORS",
    "OWNER_ONLY",
    "PLAN",
    "RoleReport",
    "RolesError",
    "RolesReport",
    "apply_roles",
    "apply_site_reader",
    "role_names",
    "site_reader_name",
    "unclassified_tables",
]

KINDS = ("ingest", "services", "grafana")
"""The roles, named ``{prefix}_{kind}``."""

_S, _SI, _SIU = ("SELECT",), ("SELECT", "INSERT"), ("SELECT", "INSERT", "UPDATE")
_RW = ("SELECT", "INSERT", "UPDATE", "DELETE")
_INVENTORY: dict[str, tuple[str, ...]] = {"sites": _S, "dmas": _S, "devices": _S, "metrics": _S}

PLAN: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "ingest": {
        **_INVENTORY,  # inventory_cache.py: device ids; store.py: the sites' time zones
        "readings": _SI,  # store.py: INSERT ... ON CONFLICT DO NOTHING RETURNING (SELECT)
        "readings_hourly_pending": ("INSERT",),  # the trigger readings_hourly_mark()
        "device_status": _SIU,  # store.py: upsert of the last reading time
        "device_reporting_daily": _SIU,  # store.py: messages and readings per local day
        "ingest_replayed_frames": ("SELECT", "INSERT", "DELETE"),  # store.py: spool replays
        "rejected_messages": _SIU,  # store.py upsert; rejected.py replay marks replayed_at
        "service_cpu_samples": ("INSERT",),  # app/own_meter.py: each process meters itself
    },
    "services": {
        **_INVENTORY,
        # the rollup refresh; energy/store.py raw counter readings; DELETE: core/retention.py
        "readings": ("SELECT", "DELETE"),
        # core/rollup.py and core/rollup_changes.py: the refresh the services run
        "readings_hourly": _RW,
        "readings_hourly_pending": ("SELECT", "DELETE"),
        "readings_hourly_changes": ("SELECT", "INSERT", "DELETE"),
        "readings_hourly_followers": _RW,
        # anomaly (alerts also: energy's luminaire faults, policies reads them)
        "alerts": _RW,
        "dma_nights": _RW,
        "water_balance_days": _RW,  # anomaly/balance_store.py, at every scan
        # policies
        "device_configs": _RW,
        "device_states": _RW,
        "lighting_overrides": _RW,
        "reporting_baseline": ("SELECT", "UPDATE"),
        "rejected_messages": _SIU,  # policies/store.py: unreadable state messages (upsert)
        # energy
        "energy_daily": _RW,
        "energy_settings": ("SELECT", "UPDATE"),
        "energy_factors": _RW,
        "energy_day_factors": _RW,
        "pumping_volume_daily": _RW,
        "luminaire_nights": _RW,
        "lighting_group_nights": _RW,  # the triggers on luminaire_nights
        "cabinet_nights": _RW,
        "service_cpu_samples": ("SELECT", "INSERT", "DELETE"),
        "service_energy_daily": _RW,
    },
    "grafana": {},
}
"""Privileges per role on the tables of schema ``public``, from what each stage's stores read
and write (the ``api`` views are granted apart: :data:`API_READERS`). A table a migration adds
must be listed here (or in :data:`OWNER_ONLY`); :func:`unclassified_tables` finds those that
are not."""

API_READERS = ("services", "grafana")
"""The roles with USAGE on schema ``api`` and SELECT on every view in it."""

OWNER_ONLY = frozenset({"schema_migrations", "site_readers", "site_operators"})
"""Tables no role but the owner touches (who reads which site: written by ``db roles``, read
through the api views with their owner's rights)."""

OPERATORS = ("services", "grafana")
"""The roles that read every site of the api views (rows in ``site_operators``)."""

_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_DANGEROUS = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")


class RolesError(SobrietyError):
    """The roles cannot be created or granted; the message says which role and why."""


@dataclass(slots=True)
class RoleReport:
    """What :func:`apply_roles` did to one role."""

    kind: str
    role: str
    status: str = "unchanged"  # created | updated | unchanged
    auth: str = "unchanged"  # "password set" | "no password" | "unchanged" (its own kept)
    grants: dict[str, list[str]] = field(default_factory=dict)  # relation -> privileges
    granted: list[str] = field(default_factory=list)  # "PRIV relation" added by this run
    revoked: list[str] = field(default_factory=list)  # "PRIV relation" removed by this run

    def as_dict(self) -> dict[str, object]:
        """The report as plain data (``--format json``)."""
        return {
            "kind": self.kind, "role": self.role, "status": self.status,
            "auth": self.auth, "grants": self.grants,
            "granted": self.granted, "revoked": self.revoked,
        }  # fmt: skip


@dataclass(slots=True)
class RolesReport:
    """What :func:`apply_roles` did: the owner, each role, and the tables no plan covers."""

    owner: str
    roles: list[RoleReport]
    unclassified: list[str]
    absent: list[str]  # tables of the plan that this database does not have (TimescaleDB)


def role_names(prefix: str) -> dict[str, str]:
    """``{kind: role}`` for ``prefix``; :class:`UsageError` for a prefix that is not a plain
    lower-case SQL name."""
    if not _PREFIX.match(prefix):
        raise UsageError(
            f"--prefix {prefix!r}: expected a lower-case name of letters, digits and _ "
            "(starting with a letter or _, at most 41 characters)"
        )
    return {kind: f"{prefix}_{kind}" for kind in KINDS}


def _public_tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
    ).fetchall()
    return {str(r[0]) for r in rows}


def unclassified_tables(conn: psycopg.Connection) -> list[str]:
    """Base tables of ``public`` that neither :data:`PLAN` nor :data:`OWNER_ONLY` lists."""
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
    ).fetchall()
    listed = {t for grants in PLAN.values() for t in grants} | OWNER_ONLY
    return [str(r[0]) for r in rows if r[0] not in listed]


def _owner(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = 'schema_migrations'"
    ).fetchone()
    api = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'api'").fetchone()
    if row is None or api is None:
        raise RolesError("the database is not migrated: run `sobriety db upgrade` first")
    return str(row[0])


def _privileges(conn: psycopg.Connection, role: str) -> dict[str, list[str]]:
    """What ``role`` holds itself (not through PUBLIC) on the relations of public and api."""
    rows = conn.execute(
        """SELECT n.nspname || '.' || c.relname, a.privilege_type
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN LATERAL aclexplode(c.relacl) a
           WHERE n.nspname IN ('public', 'api') AND a.grantee = %s::regrole
           ORDER BY 1, 2""",
        (role,),
    ).fetchall()
    held: dict[str, list[str]] = {}
    for relation, privilege in rows:
        held.setdefault(str(relation), []).append(str(privilege))
    return held


def _flat(held: Mapping[str, list[str]]) -> set[str]:
    return {f"{p} {rel}" for rel, privs in held.items() for p in privs}


def _ensure_role(conn: psycopg.Connection, report: RoleReport, encrypted: bytes | None) -> None:
    """Create the role (LOGIN, nothing else) or check the existing one; set its password."""
    ident = sql.Identifier(report.role)
    row = conn.execute(
        "SELECT rolcanlogin, " + ", ".join(_DANGEROUS) + " FROM pg_roles WHERE rolname = %s",
        (report.role,),
    ).fetchone()
    try:
        if row is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOINHERIT").format(ident))
            report.status = "created"
        else:
            bad = [name[3:].upper() for name, value in zip(_DANGEROUS, row[1:], strict=True)
                   if value]  # fmt: skip
            if bad:
                raise RolesError(
                    f"role {report.role} exists with {', '.join(bad)}: refusing to use it as a "
                    "least-privilege role (drop it, or remove these attributes)"
                )
            member = conn.execute(
                "SELECT string_agg(pg_get_userbyid(roleid), ', ') FROM pg_auth_members "
                "WHERE member = %s::regrole",
                (report.role,),
            ).fetchone()
            if member is not None and member[0]:
                raise RolesError(
                    f"role {report.role} is a member of {member[0]}: it would hold their "
                    "rights too (REVOKE the memberships, or drop the role)"
                )
            if not row[0]:
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(ident))
                report.status = "updated"
        if encrypted is not None:
            # The SCRAM verifier is computed here (libpq): the password itself never reaches
            # the server, its logs or pg_stat_statements.
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(encrypted.decode()))
            )
            report.auth = "password set"
        elif row is None:
            report.auth = "no password"
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RolesError(
            f"role {report.role}: {exc.diag.message_primary or exc} — the user running "
            "`db roles` needs CREATEROLE (ALTER ROLE ... CREATEROLE as an administrator), or "
            "run it with an administrator's URL"
        ) from None


def apply_roles(
    conn: psycopg.Connection, prefix: str = "sobriety", passwords: Mapping[str, str] | None = None
) -> RolesReport:
    """Create or update the roles of ``prefix`` and grant them :data:`PLAN`, in one transaction.

    ``passwords``: ``{role: password}`` to set (all roles, or none: without, a new role has no
    password — for trust or peer authentication — and an existing one keeps its own).
    """
    names = role_names(prefix)
    with conn.transaction():
        owner = _owner(conn)
        present = _public_tables(conn)
        database = sql.Identifier(str(conn.info.dbname))
        reports: list[RoleReport] = []
        for kind, role in names.items():
            report = RoleReport(kind, role)
            password = (passwords or {}).get(role)
            encrypted = None
            if password is not None:
                encrypted = conn.pgconn.encrypt_password(
                    password.encode(), role.encode(), b"scram-sha-256"
                )
            _ensure_role(conn, report, encrypted)
            before = _flat(_privileges(conn, role))
            _grant(conn, kind, role, owner, present, database)
            _check_granted(conn, kind, role, owner, present)
            report.grants = _privileges(conn, role)
            after = _flat(report.grants)
            report.granted = sorted(after - before)
            report.revoked = sorted(before - after)
            if report.status == "unchanged" and (report.granted or report.revoked):
                report.status = "updated"
            reports.append(report)
            if "site_operators" in present:
                _set_operator(conn, role, kind in OPERATORS)
        _check_no_create(conn, names.values())
    listed = {t for grants in PLAN.values() for t in grants}
    return RolesReport(owner, reports, unclassified_tables(conn), sorted(listed - present))


def _set_operator(conn: psycopg.Connection, role: str, operator: bool) -> None:
    """List ``role`` in ``site_operators`` (it reads every site) or take it out."""
    if operator:
        conn.execute(
            "INSERT INTO site_operators (role) VALUES (%s) ON CONFLICT DO NOTHING", (role,)
        )
    else:
        conn.execute("DELETE FROM site_operators WHERE role = %s", (role,))


def site_reader_name(prefix: str, site: str) -> str:
    """The role of a commune, ``{prefix}_site_{site}`` with ``-`` and ``.`` made ``_``;
    :class:`UsageError` for a site id that cannot make an identifier."""
    role_names(prefix)  # checks the prefix
    if not _SITE_ID.match(site):
        raise UsageError(
            f"--commune {site!r}: a role can be made only for a site id of lower-case letters, "
            "digits, '_', '-' and '.' (starting with a letter or digit)"
        )
    role = f"{prefix}_site_{re.sub(r'[.-]', '_', site)}"
    if len(role) > 63:
        raise UsageError(
            f"--commune {site!r}: the role {role} would be longer than 63 characters "
            "(PostgreSQL truncates names): use a shorter --prefix"
        )
    return role


def apply_site_reader(
    conn: psycopg.Connection, prefix: str, site: str, password: str | None = None
) -> RoleReport:
    """Create or update the LOGIN role of commune ``site`` — USAGE on schema ``api``, SELECT on
    every view in it (rows of ``site`` only: ``site_readers``), nothing in ``public`` — in one
    transaction; idempotent. ``password`` set when given (else a new role has none)."""
    role = site_reader_name(prefix, site)
    with conn.transaction():
        owner = _owner(conn)
        if conn.execute("SELECT to_regclass('public.site_readers')").fetchone() in (None, (None,)):
            raise RolesError("the database has no site_readers: run `sobriety db upgrade` first")
        if conn.execute("SELECT 1 FROM sites WHERE site = %s", (site,)).fetchone() is None:
            raise UsageError(f"--commune {site!r}: no such site (import the inventory first)")
        other = conn.execute(
            "SELECT string_agg(site, ', ') FROM site_readers WHERE role = %s AND site <> %s",
            (role, site),
        ).fetchone()
        if other is not None and other[0]:
            raise RolesError(
                f"role {role} already reads site(s) {other[0]}: two site ids give the same "
                "role name (rename one site, or use another --prefix)"
            )
        report = RoleReport("commune", role)
        encrypted = None
        if password is not None:
            encrypted = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            )
        _ensure_role(conn, report, encrypted)
        before = _flat(_privileges(conn, role))
        ident, owner_ident = sql.Identifier(role), sql.Identifier(owner)
        run = conn.execute
        database = sql.Identifier(str(conn.info.dbname))
        run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, ident))
        for schema in ("public", "api"):
            name = sql.Identifier(schema)
            run(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(name, ident))
            run(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(name, ident))
            run(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(name, ident))
        run(sql.SQL("GRANT USAGE ON SCHEMA api TO {}").format(ident))
        run(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA api TO {}").format(ident))
        run(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA api GRANT SELECT ON TABLES TO {}"
            ).format(owner_ident, ident)
        )
        _set_operator(conn, role, False)
        run(
            "INSERT INTO site_readers (role, site) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (role, site),
        )
        _check_no_create(conn, [role])
        report.grants = _privileges(conn, role)
        after = _flat(report.grants)
        report.granted = sorted(after - before)
        report.revoked = sorted(before - after)
        if report.status == "unchanged" and (report.granted or report.revoked):
            report.status = "updated"
    return report


def _grant(
    conn: psycopg.Connection,
    kind: str,
    role: str,
    owner: str,
    present: set[str],
    database: sql.Identifier,
) -> None:
    """Revoke what ``role`` holds in public and api, then grant its plan."""
    ident, owner_ident = sql.Identifier(role), sql.Identifier(owner)
    run = conn.execute
    run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, ident))
    if kind != "grafana":  # the ingest and the anomaly stage stage their rows in temp tables
        run(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(database, ident))
    for schema in ("public", "api"):
        name = sql.Identifier(schema)
        run(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(name, ident))
        run(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(name, ident))
        run(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(name, ident))
        run(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} REVOKE ALL ON TABLES FROM {}"
            ).format(owner_ident, name, ident)
        )
    run(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    for table, privileges in PLAN[kind].items():
        if table not in present:
            continue  # e.g. readings_hourly_pending under TimescaleDB
        run(
            sql.SQL("GRANT {} ON TABLE public.{} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(table), ident
            )
        )
    if kind == "services" and conn.info.server_version >= 170000:
        run(sql.SQL("GRANT MAINTAIN ON TABLE public.readings_hourly TO {}").format(ident))
    if kind in API_READERS:
        run(sql.SQL("GRANT USAGE ON SCHEMA api TO {}").format(ident))
        run(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA api TO {}").format(ident))
        run(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA api GRANT SELECT ON TABLES TO {}"
            ).format(owner_ident, ident)
        )
    else:
        run(sql.SQL("REVOKE USAGE ON SCHEMA api FROM {}").format(ident))


def _check_granted(
    conn: psycopg.Connection, kind: str, role: str, owner: str, present: set[str]
) -> None:
    """A GRANT by a user without the right only warns: check that the plan holds."""
    for table, privileges in PLAN[kind].items():
        if table not in present:
            continue
        for privilege in privileges:
            row = conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (role, f"public.{table}", privilege)
            ).fetchone()
            if row is None or not row[0]:
                raise RolesError(
                    f"role {role}: {privilege} on {table} could not be granted by "
                    f"{conn.info.user} (run `db roles` as the tables' owner, {owner}, or an "
                    "administrator)"
                )


def _check_no_create(conn: psycopg.Connection, roles: Iterable[str]) -> None:
    """None of the roles may create objects in public or api (PostgreSQL < 15 grants CREATE on
    public to PUBLIC: revoke it there, or say who must)."""
    for role in roles:
        for schema in ("public", "api"):
            row = conn.execute(
                "SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, schema)
            ).fetchone()
            if row is not None and row[0]:
                try:
                    conn.execute(
                        sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(
                            sql.Identifier(schema)
                        )
                    )
                except psycopg.errors.InsufficientPrivilege:
                    raise RolesError(
                        f"role {role} may create objects in schema {schema} through PUBLIC, and "
                        f"this user cannot revoke it: run `REVOKE CREATE ON SCHEMA {schema} FROM "
                        "PUBLIC` as the schema's owner"
                    ) from None
