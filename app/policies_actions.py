"""The ``policies`` actions that talk to devices: the service (``sobriety policies`` with no
action: passes every ``policies.service.interval_s`` until stopped), ``publish`` (one pass, then
exit), ``override`` (a manual level for a lighting group or a luminaire until an instant, sent as
``cmd`` and recorded) and ``overrides`` (those in force)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

import orjson
import psycopg

from core.config import Config
from core.db import connect
from core.errors import UsageError
from core.messages import Command, encode
from policies.config import PoliciesConfig

__all__ = ["DEVICE_ACTIONS", "add_device_actions", "cmd_device_action", "parse_until"]

DEVICE_ACTIONS = (None, "publish", "override", "overrides")
"""The ``policies`` actions of this module (``None``: no action, the service)."""

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

MAX_OVERRIDE_S = 7 * 86400
"""The longest override: a ``cmd`` holds at most seven days (:class:`core.messages.Command`)."""


def parse_until(text: str) -> datetime:
    """An ``--until``: ISO 8601, with an offset (``2026-12-24T02:00+01:00``) or without (the
    site's local time); naive results are resolved against the site later."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an instant YYYY-MM-DDTHH:MM, with a UTC offset (+01:00) or "
            "without (the site's local time)"
        ) from None


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a level from 0 to 100 [%]")
    return value


def add_device_actions(actions: Subcommands) -> None:
    """Add ``publish``, ``override`` and ``overrides`` to the ``policies`` actions."""
    publish = actions.add_parser(
        "publish",
        help="publish every device's desired config once, then exit",
        description="One pass of the policies service: compute every device's config from the "
        "inventory, the policies and the active leak alerts, publish (retained, QoS 1) those "
        "whose content changed with the next version, and record them once the broker "
        "acknowledged them. Unchanged configs are not republished.",
    )
    publish.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (table, json)"
    )
    override = actions.add_parser(
        "override",
        help="hold luminaires at a level until an instant (festival, roadworks, incident)",
        description="Send the luminaires of --group (or the one --device) of --site a command "
        "to stay at --level %% until --until (at most 7 days ahead), and record it with its "
        "--reason; the luminaires return to their program by themselves at the end.",
    )
    override.add_argument("--site", required=True, help="the site (commune) id")
    who = override.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", help="a lighting group of the site")
    who.add_argument("--device", help="one luminaire of the site")
    override.add_argument("--level", required=True, type=_level, help="light level [%%], 0-100")
    override.add_argument(
        "--until",
        required=True,
        type=parse_until,
        metavar="INSTANT",
        help="end, ISO 8601 (with an offset, or the site's local time)",
    )
    override.add_argument("--reason", required=True, help="why (shown in the list)")
    overrides = actions.add_parser(
        "overrides",
        help="the manual overrides in force",
        description="The lighting overrides in force now (expired ones are not listed).",
    )
    overrides.add_argument("--site", help="only this site")
    overrides.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (table, json)"
    )


def cmd_device_action(args: argparse.Namespace, config: Config) -> int:
    """Run ``policies`` (no action: the service), ``publish``, ``override`` or ``overrides``."""
    action = args.policies_command
    if action is None:
        return _run_service(args, config)
    if action == "publish":
        return _publish(args, config)
    if action == "override":
        return _override(args, config)
    return _list_overrides(args, config)


def _run_service(args: argparse.Namespace, config: Config) -> int:
    from app.services import serve_stage
    from policies.service import PoliciesService

    def build(registry: Any) -> tuple[Callable[[], None], Callable[[], None]]:
        service = PoliciesService(config, registry)
        return service.run, service.stopping.set

    return serve_stage(args, config, build)


def _publish(args: argparse.Namespace, config: Config) -> int:
    import time

    from policies.mqtt import Link
    from policies.service import publish_pass

    link = Link(config, client_id=f"{config.mqtt.client_id}-policies-publish")
    link.connect(config.section(PoliciesConfig).service.publish_timeout_s)
    try:
        with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
            report = publish_pass(conn, link, config.per_site(PoliciesConfig), time.time())
    finally:
        link.close()
    if args.format == "json":
        print(orjson.dumps(dataclasses.asdict(report)).decode())
        return 0
    programs = ", ".join(f"{name} {n}" for name, n in sorted(report.programs.items()))
    print(
        f"{report.devices} devices: {report.published} configs published (new version), "
        f"{report.unchanged} unchanged, {report.resent} sent again; {report.escalated} "
        f"escalated; luminaires per program: {programs or 'none'}"
    )
    return 0


def _override(args: argparse.Namespace, config: Config) -> int:
    from policies import store
    from policies.mqtt import Link

    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason: say why (it is recorded and listed)")
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        row = conn.execute("SELECT timezone FROM sites WHERE site = %s", (args.site,)).fetchone()
        if row is None:
            raise UsageError(f"--site {args.site}: no such site")
        zone = ZoneInfo(row[0])
        until = args.until if args.until.tzinfo else args.until.replace(tzinfo=zone)
        now = datetime.now(UTC)
        if until <= now:
            raise UsageError(
                f"--until {until.isoformat()}: already past (now {now:%Y-%m-%d %H:%M} UTC)"
            )
        if until - now > timedelta(seconds=MAX_OVERRIDE_S):
            raise UsageError(
                f"--until {until.isoformat()}: more than 7 days ahead (a cmd holds at most "
                "7 days; change the program or the calendar instead)"
            )
        luminaires = store.luminaires_of(conn, args.site, args.group, args.device)
        if not luminaires:
            raise UsageError(_nothing_to_override(conn, args))
        duration = (until - now).total_seconds()
        payload = encode(Command(dim=args.level, duration_s=duration))
        link = Link(config, client_id=f"{config.mqtt.client_id}-policies-override")
        link.connect(config.section(PoliciesConfig).service.publish_timeout_s)
        try:
            link.publish_all(
                ((link.topic(args.site, lum, "cmd"), payload, False) for lum in luminaires),
                config.section(PoliciesConfig).service.publish_timeout_s,
            )
        finally:
            link.close()
        ident = store.add_override(
            conn, args.site, args.group, args.device, args.level, now.timestamp(),
            until.timestamp(), reason, len(luminaires),
        )  # fmt: skip
        conn.commit()
    target = f"group {args.group}" if args.group else f"luminaire {args.device}"
    print(
        f"override {ident}: {len(luminaires)} luminaire(s) of {args.site} {target} at "
        f"{args.level:g} % until {until.astimezone(zone):%Y-%m-%d %H:%M %Z} ({reason})"
    )
    return 0


def _nothing_to_override(conn: psycopg.Connection, args: argparse.Namespace) -> str:
    if args.device:
        return f"--device {args.device}: no luminaire of that id at {args.site}"
    groups = [
        r[0]
        for r in conn.execute(
            """SELECT DISTINCT lighting_group FROM devices WHERE site = %s AND kind = 'luminaire'
               AND lighting_group IS NOT NULL ORDER BY 1""",
            (args.site,),
        )
    ]
    known = ", ".join(groups) or "none"
    return f"--group {args.group}: no such lighting group at {args.site} (one of {known})"


def _list_overrides(args: argparse.Namespace, config: Config) -> int:
    import time

    from policies import store

    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        items = store.active_overrides(conn, time.time(), args.site)
    if args.format == "json":
        print(
            orjson.dumps(
                [
                    {
                        **dataclasses.asdict(item),
                        "starts_at": datetime.fromtimestamp(item.starts_at, UTC).isoformat(),
                        "until": datetime.fromtimestamp(item.until, UTC).isoformat(),
                    }
                    for item in items
                ]
            ).decode()
        )
        return 0
    if not items:
        print("no override in force" + (f" at {args.site}" if args.site else ""))
    for item in items:
        target = (
            f"group {item.lighting_group}" if item.lighting_group else f"luminaire {item.device}"
        )
        until = datetime.fromtimestamp(item.until, UTC)
        print(
            f"{item.id:>5} {item.site} {target}: {item.level:g} % until {until:%Y-%m-%d %H:%M} "
            f"UTC, {item.luminaires} luminaire(s) — {item.reason} (by {item.created_by})"
        )
    return 0
