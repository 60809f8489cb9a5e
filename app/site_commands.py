"""``sobriety site add|remove|list``: a commune onboarded, or offboarded, in one command.

``site add --site S --name N --timezone TZ --lat LAT --lon LON`` makes, idempotently:

1. the site (``sites``);
2. its database role ``{prefix}_site_{S}`` (:func:`core.roles.apply_site_reader`: the api
   views show it S's rows only), its password generated into ``{secrets}/{role}_password``;
3. its gateway's broker user ``S`` (the ACL's user name is the site id): a line of
   ``{deploy}/deploy/mosquitto/passwd`` and a block of ``{deploy}/deploy/mosquitto/acl``
   (app/site_broker.py), its password generated into ``{secrets}/{S}_mqtt_password``; when
   there is no such directory, the lines are printed for the operator to apply instead;
4. its Grafana: a datasource logging in as its role and a folder of its dashboards under
   ``{deploy}/dashboards/`` (app/site_grafana.py).

Passwords are made with :mod:`secrets`, written to files of mode 0600, never printed unless
``--show-secrets``; a second run keeps them (``--rotate`` makes new ones). ``site remove`` takes
the role, the broker user, the Grafana files and the secrets away, after exporting the
commune's data when ``--export DIR`` is given; its data stay (``--keep-data``) or are deleted
(``--delete-data``): one of the two must be said.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.site_broker import (
    acl_block,
    check_user,
    hash_password,
    remove_acl_block,
    remove_password,
    set_acl_block,
    set_password,
)
from app.site_grafana import grafana_files, remove_grafana_files, site_hash
from core.commune_roles import drop_site_reader
from core.config import Config
from core.db import connect
from core.errors import UsageError
from core.roles import apply_site_reader, site_reader_name
from core.sites import SiteRecord, delete_site_data, register_site, site_counts

__all__ = ["add_site_parser", "cmd_site"]

SECRETS_MOUNT = "/run/secrets/communes"
"""Where docker-compose.yml mounts ``secrets/communes/`` in the Grafana container."""


def add_site_parser(sub: Any, fmt: Any) -> None:
    """Add ``site`` and its actions to the ``sobriety`` subcommands."""
    site = sub.add_parser(
        "site", help="onboard or offboard a commune (role, broker user, Grafana)",
        description="A commune onboarded in one command (its site, database role, gateway "
        "broker user and ACL, Grafana datasource and dashboards), or offboarded.",
    )  # fmt: skip
    actions = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")

    def common(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--site", dest="site_id", required=True, help="the commune's site id")
        cmd.add_argument("--prefix", default="sobriety", help="role prefix (default sobriety)")
        cmd.add_argument(
            "--deploy-dir", type=Path, default=Path(),
            help="the directory of docker-compose.yml: broker files in deploy/mosquitto/, "
            "Grafana files in dashboards/ (default: the current directory)",
        )  # fmt: skip
        cmd.add_argument(
            "--secrets", type=Path, default=None,
            help="where the commune's passwords are written (default DEPLOY_DIR/secrets/communes)",
        )  # fmt: skip
        fmt(cmd)

    add = actions.add_parser("add", help="onboard a commune", description="Onboard a commune.")
    common(add)
    add.add_argument("--name", required=True, help="the commune's name (Grafana folder)")
    add.add_argument("--timezone", default="Europe/Paris", help="IANA zone (Europe/Paris)")
    add.add_argument("--lat", type=float, required=True, help="latitude [°] (its sun)")
    add.add_argument("--lon", type=float, required=True, help="longitude [°]")
    add.add_argument("--grafana-org", type=int, default=1, help="Grafana organisation id (1)")
    add.add_argument("--rotate", action="store_true", help="new passwords for role and gateway")
    add.add_argument("--show-secrets", action="store_true", help="print the new passwords")
    remove = actions.add_parser(
        "remove", help="offboard a commune", description="Offboard a commune: its role, broker "
        "user, Grafana files and secrets taken away; its data kept or deleted, as asked.",
    )  # fmt: skip
    common(remove)
    what = remove.add_mutually_exclusive_group(required=True)
    what.add_argument("--keep-data", action="store_true", help="keep its data in the database")
    what.add_argument("--delete-data", action="store_true", help="delete every row of the site")
    remove.add_argument(
        "--export", type=Path, metavar="DIR",
        help="first export its inventory, readings, alerts and energy to DIR",
    )  # fmt: skip
    remove.add_argument(
        "--no-pseudonymise", action="store_true",
        help="the export keeps the customer meters' ids (the commune's own copy)",
    )  # fmt: skip
    listing = actions.add_parser("list", help="the communes", description="The communes.")
    fmt(listing)


@dataclass
class SiteReport:
    """What ``site add`` or ``site remove`` did, and what the operator must do next."""

    site: str
    actions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    apply: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    deleted_rows: dict[str, int] = field(default_factory=dict)


def _secret_dir(args: argparse.Namespace) -> Path:
    chosen: Path | None = args.secrets
    return chosen if chosen is not None else Path(args.deploy_dir) / "secrets" / "communes"


def _secret(path: Path, rotate: bool) -> tuple[str, bool]:
    """The password in ``path``, or a new one written there (0600): (password, new)."""
    if path.exists() and not rotate:
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text, False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n", encoding="utf-8")
    return value, True


def _role_name(args: argparse.Namespace) -> str:
    try:
        return site_reader_name(args.prefix, args.site_id)
    except UsageError as exc:
        raise UsageError(str(exc).replace("--commune", "--site")) from None


def _site_add(args: argparse.Namespace, config: Config) -> SiteReport:
    record = SiteRecord(args.site_id, args.name, args.timezone, args.lat, args.lon)
    record.check()
    check_user(args.site_id)
    role = _role_name(args)
    report = SiteReport(args.site_id)
    secret_dir = _secret_dir(args)
    db_file = secret_dir / f"{role}_password"
    mqtt_file = secret_dir / f"{args.site_id}_mqtt_password"
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        with conn.transaction():
            status = register_site(conn, record)
        report.actions.append(f"site {args.site_id} ({args.name}, {args.timezone}): {status}")
        db_password, new_db = _secret(db_file, args.rotate)
        role_report = apply_site_reader(conn, args.prefix, args.site_id, db_password)
    report.actions.append(
        f"database role {role}: {role_report.status}, reads {args.site_id} only; password "
        f"{'written to' if new_db else 'kept in'} {db_file}"
    )
    mqtt_password, new_mqtt = _secret(mqtt_file, args.rotate)
    broker = args.deploy_dir / "deploy" / "mosquitto"
    if broker.is_dir():
        done = set_password(broker / "passwd", args.site_id, mqtt_password)
        acl = set_acl_block(broker / "acl", args.site_id, config.mqtt.root)
        report.actions.append(
            f"broker user {args.site_id}: {done} in {broker / 'passwd'}, ACL block {acl} in "
            f"{broker / 'acl'}; password {'written to' if new_mqtt else 'kept in'} {mqtt_file}"
        )
        report.files += [str(broker / "passwd"), str(broker / "acl")]
        report.apply.append("docker compose kill -s SIGHUP mosquitto   # rereads passwd and acl")
    else:
        report.actions.append(
            f"broker user {args.site_id}: no {broker}; add to the broker's password_file the "
            f"line below and to its acl_file the block below (password in {mqtt_file})"
        )
        report.apply.append(f"{args.site_id}:{hash_password(mqtt_password)}")
        report.apply += acl_block(args.site_id, config.mqtt.root)
        report.apply.append("then make the broker reread them (Mosquitto: SIGHUP)")
    written = grafana_files(
        args.deploy_dir / "dashboards", args.site_id, args.name, role, SECRETS_MOUNT,
        args.grafana_org,
    )  # fmt: skip
    h = site_hash(args.site_id)
    report.actions.append(
        f"grafana: datasource sobriety-postgres-{h} (logs in as {role}), folders "
        f"{args.name!r} (sobriety-site-{h}-fr) and '{args.name} (English)' "
        f"(sobriety-site-{h}-en), {len(written) - 2} dashboards"
    )
    report.files += [str(p) for p in written]
    report.apply += [
        f"make {db_file} readable by Grafana (uid 472 in grafana/grafana): chown 472 {db_file}",
        "docker compose restart grafana   # reads the new datasource and folders",
        f"in Grafana, give the commune's users View on folders sobriety-site-{h}-fr and -en "
        "only (Dashboards > folder > Permissions), or one organisation per commune "
        "(--grafana-org)",
        f"give the gateway installer {mqtt_file}: user {args.site_id}, TLS port 8883",
    ]
    if args.show_secrets:
        report.secrets = {role: db_password, f"mqtt {args.site_id}": mqtt_password}
    return report


def _site_remove(args: argparse.Namespace, config: Config) -> SiteReport:
    from app.site_export import export_site

    role = _role_name(args)
    report = SiteReport(args.site_id)
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        known = conn.execute("SELECT 1 FROM sites WHERE site = %s", (args.site_id,)).fetchone()
        conn.commit()
        if known is None:
            raise UsageError(f"--site {args.site_id!r}: no such site")
        if args.export is not None:
            files = export_site(conn, config, args.site_id, args.export, args.no_pseudonymise)
            report.actions.append(f"exported to {args.export}: {', '.join(files)}")
            report.files += [str(args.export / f) for f in files]
        dropped = drop_site_reader(conn, args.prefix, args.site_id)
        report.actions.append(f"database role {role}: {dropped}")
        if args.delete_data:
            deleted = delete_site_data(conn, args.site_id)
            report.deleted_rows = dict(sorted(deleted.rows.items()))
            report.actions.append(f"site {args.site_id}: {deleted.total} rows deleted")
        else:
            kept = sum(n for table, n in site_counts(conn, args.site_id).items()
                       if table != "sites")  # fmt: skip
            report.actions.append(
                f"site {args.site_id}: kept with its {kept} rows of data (no commune role reads "
                "them; `site remove --delete-data` deletes them)"
            )
    broker = args.deploy_dir / "deploy" / "mosquitto"
    if broker.is_dir():
        user = remove_password(broker / "passwd", args.site_id)
        block = remove_acl_block(broker / "acl", args.site_id)
        report.actions.append(
            f"broker user {args.site_id}: {'removed' if user else 'absent'} from passwd, ACL "
            f"block {'removed' if block else 'absent'}"
        )
        report.apply.append("docker compose kill -s SIGHUP mosquitto   # the gateway is refused")
    else:
        report.apply.append(
            f"remove user {args.site_id} from the broker's password_file and acl_file, then "
            "make it reread them"
        )
    gone = remove_grafana_files(args.deploy_dir / "dashboards", args.site_id)
    report.actions.append(f"grafana: {len(gone)} files removed")
    report.apply.append("docker compose restart grafana   # the datasource and folders go")
    secret_dir = _secret_dir(args)
    for path in (secret_dir / f"{role}_password", secret_dir / f"{args.site_id}_mqtt_password"):
        if path.exists():
            path.unlink()
            report.actions.append(f"secret {path}: deleted")
    return report


def _site_list(config: Config) -> list[dict[str, Any]]:
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        rows = conn.execute(
            """SELECT s.site, s.name, s.timezone, s.lat, s.lon,
                      (SELECT count(*) FROM devices d WHERE d.site = s.site),
                      (SELECT string_agg(r.role, ',') FROM site_readers r WHERE r.site = s.site)
               FROM sites s ORDER BY 1"""
        ).fetchall()
    return [
        {
            "site": r[0], "name": r[1], "timezone": r[2], "lat": r[3], "lon": r[4],
            "devices": int(r[5]), "roles": (r[6] or "").split(",") if r[6] else [],
            "own_config": sorted(config.site_sections.get(r[0], {})),
        }
        for r in rows
    ]  # fmt: skip


def cmd_site(args: argparse.Namespace, config: Config) -> int:
    """Run a ``site`` action; its report as text or JSON."""
    if args.site_command == "list":
        found = _site_list(config)
        stray = sorted(set(config.site_sections) - {s["site"] for s in found})
        if args.format == "json":
            print(orjson.dumps(found).decode())
        for s in found if args.format != "json" else []:
            own = ", ".join(s["own_config"]) or "the operator's"
            print(f"{s['site']}\t{s['name'] or ''}\t{s['timezone']}\t{s['devices']} devices\t"
                  f"roles: {', '.join(s['roles']) or 'none'}\tconfig: {own}")  # fmt: skip
        if stray:  # a typo in [sites.X] would otherwise go unnoticed
            print(f"sobriety: warning: [sites.{'], [sites.'.join(stray)}] of the configuration "
                  "name no registered site", file=sys.stderr)  # fmt: skip
        return 0
    report = _site_add(args, config) if args.site_command == "add" else _site_remove(args, config)
    if args.format == "json":
        print(orjson.dumps(asdict(report)).decode())
        return 0
    for line in report.actions:
        print(line)
    for name, value in report.secrets.items():
        print(f"password of {name}: {value}")
    if report.apply:
        print("to apply:")
        for line in report.apply:
            print(f"  {line}")
    return 0
