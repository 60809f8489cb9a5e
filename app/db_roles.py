"""``sobriety db roles [--prefix sobriety] [--passwords DIR] [--format json]``: the
least-privilege database roles (core/roles.py) — the ingest, the services and Grafana — created
or brought up to date; run it again after every ``db upgrade``.

Passwords come from the files ``DIR/{role}_password`` (Docker secrets: ``/run/secrets``), read
here and never printed nor logged; without ``--passwords`` a new role gets none (trust or peer
authentication) and the output says so.

``--commune SITE`` (repeatable) makes, instead, the role of a commune, ``{prefix}_site_{site}``
(``-`` and ``.`` of the site id made ``_``): LOGIN, SELECT on every api view, which shows it
that site's rows only (tenancy, migration 0019); its password from ``DIR/{role}_password``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from core.config import Config
from core.errors import UsageError
from core.roles import (
    RoleReport,
    RolesReport,
    apply_roles,
    apply_site_reader,
    role_names,
    site_reader_name,
)

__all__ = ["add_db_roles_parser", "cmd_db_roles", "read_passwords"]


def add_db_roles_parser(db_sub: Any) -> None:
    """Add ``roles`` to the actions of ``sobriety db``."""
    roles = db_sub.add_parser(
        "roles",
        help="create or update the least-privilege roles (ingest, services, grafana)",
        description="Create or update the roles PREFIX_ingest (writes readings and rejections, "
        "reads the inventory), PREFIX_services (anomaly, policies, energy and the rollup "
        "refresh: their own tables) and PREFIX_grafana (SELECT on the api views, nothing else), "
        "each LOGIN and nothing more; the connecting user stays the owner. Idempotent, in one "
        "transaction: run it again after each `db upgrade` (new tables and views get their "
        "rights). Needs CREATEROLE.",
    )
    roles.add_argument(
        "--prefix", default="sobriety", help="role names PREFIX_ingest, ... (default sobriety)"
    )
    roles.add_argument(
        "--passwords",
        type=Path,
        metavar="DIR",
        help="set each role's password from the file DIR/ROLE_password (e.g. /run/secrets); "
        "without it, new roles have no password (trust or peer authentication)",
    )
    roles.add_argument(
        "--commune",
        action="append",
        metavar="SITE",
        help="instead, create or update the role PREFIX_site_SITE of this commune (repeatable): "
        "SELECT on the api views, which show it the rows of SITE only",
    )
    roles.add_argument(
        "--format", choices=("text", "json"), default="text", help="output (text, json)"
    )


def read_passwords(directory: Path, roles: list[str]) -> dict[str, str]:
    """``{role: password}`` from ``directory/{role}_password`` (trailing newline dropped);
    :class:`UsageError` naming the first file that is missing, unreadable or empty."""
    if not directory.is_dir():
        raise UsageError(f"--passwords {str(directory)!r}: not a directory")
    found: dict[str, str] = {}
    for role in roles:
        path = directory / f"{role}_password"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise UsageError(f"--passwords: {path} is missing (the password of {role})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--passwords: cannot read {path}: {exc}") from None
        if not text:
            raise UsageError(f"--passwords: {path} is empty (the password of {role})")
        found[role] = text
    return found


def cmd_db_roles(args: argparse.Namespace, config: Config) -> int:
    """Apply the roles and print what was done."""
    from core.db import connect

    if args.commune:
        return _cmd_communes(args, config)
    names = role_names(args.prefix)
    passwords = None
    if args.passwords is not None:
        passwords = read_passwords(args.passwords, list(names.values()))
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        report = apply_roles(conn, args.prefix, passwords)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(_as_dict(report), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(_as_text(report))
    return 0


def _cmd_communes(args: argparse.Namespace, config: Config) -> int:
    """``--commune SITE ...``: the communes' roles, one transaction each."""
    from core.db import connect

    roles = {site: site_reader_name(args.prefix, site) for site in args.commune}
    passwords: dict[str, str] = {}
    if args.passwords is not None:
        passwords = read_passwords(args.passwords, list(roles.values()))
    reports: list[RoleReport] = []
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        for site, role in roles.items():
            reports.append(apply_site_reader(conn, args.prefix, site, passwords.get(role)))
    if args.format == "json":
        out = {
            "communes": [{"site": s, **r.as_dict()} for s, r in zip(roles, reports, strict=True)]
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        for site, report in zip(roles, reports, strict=True):
            auth = {
                "password set": "password set from its file",
                "no password": "no password: trust or peer authentication only",
                "unchanged": "password not changed by this run",
            }[report.auth]
            print(f"{report.role}: {report.status}, LOGIN; {auth}; reads site {site} only")
            print(f"  SELECT: {len(report.grants)} api views")
    return 0


def _as_dict(report: RolesReport) -> dict[str, object]:
    return {
        "owner": report.owner,
        "roles": [r.as_dict() for r in report.roles],
        "unclassified_tables": report.unclassified,
        "absent_tables": report.absent,
    }


def _as_text(report: RolesReport) -> str:
    lines = [f"owner (migrations, everything): {report.owner}"]
    for role in report.roles:
        auth = {
            "password set": "password set from its file",
            "no password": "no password: trust or peer authentication only (see --passwords)",
            "unchanged": "password not changed by this run",
        }[role.auth]
        lines.append(f"{role.role}: {role.status}, LOGIN; {auth}")
        by_privileges: dict[str, list[str]] = {}
        for relation, privileges in role.grants.items():
            by_privileges.setdefault(", ".join(privileges), []).append(relation)
        for held, relations in sorted(by_privileges.items()):
            lines.append(f"  {held}: {', '.join(relations)}")
        if not role.grants:
            lines.append("  (no table)")
        if role.granted or role.revoked:
            lines.append(f"  this run: {len(role.granted)} granted, {len(role.revoked)} revoked")
    if report.unclassified:
        lines.append(
            "warning: tables no role gets (add them to core/roles.py PLAN or OWNER_ONLY): "
            + ", ".join(report.unclassified)
        )
    return "\n".join(lines)
