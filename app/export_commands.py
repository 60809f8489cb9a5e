"""``sobriety export readings|alerts|energy``: reversibility, everything a commune needs to
leave the product, streamed (COPY or a server-side cursor). Customer meters (personal data)
leave under their keyed pseudonym (:mod:`core.privacy`, key ``[privacy] hmac_key_file``);
``--no-pseudonymise`` keeps their ids, for the commune's own export, with a warning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import psycopg

from core.config import Config
from core.db import connect
from core.exports import customer_meters, export_alerts, export_energy, load_pseudonyms
from ingest.export import export_readings

__all__ = ["add_export_parsers", "cmd_export"]

_NO_PSEUDONYMISE = (
    "keep the customer meters' ids (the commune's own reversibility export: the file then "
    "holds personal data); default: replace them by their keyed pseudonym ([privacy] "
    "hmac_key_file)"
)


def add_export_parsers(
    exp_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    readings: argparse.ArgumentParser,
    period: Callable[..., None],
    site: Callable[[argparse.ArgumentParser], None],
    fmt: Callable[..., None],
) -> None:
    """``export alerts`` and ``export energy`` beside ``export readings`` (given, to which
    ``--no-pseudonymise`` is added)."""
    readings.add_argument("--no-pseudonymise", action="store_true", help=_NO_PSEUDONYMISE)
    alerts = exp_sub.add_parser(
        "alerts",
        help="alerts as CSV or JSON on standard output",
        description="Alerts active in a period (opened before --until, not closed before "
        "--since; default: all), oldest first, with the columns of api.alerts; times in UTC.",
    )
    period(alerts, required_since=False)
    energy = exp_sub.add_parser(
        "energy",
        help="daily energy (api.energy_daily) as CSV or JSON on standard output",
        description="The rows of api.energy_daily for the local days that begin in the period: "
        "site, device, kind, day, kwh, source, complete, missing_hours, the flags of the day "
        "(resets, rollovers, replacements, flagged, glitches), kg_co2e, eur and the factors' ids.",
    )
    period(energy)
    for cmd in (alerts, energy):
        site(cmd)
        fmt(cmd, ("csv", "json"))
        cmd.add_argument("--no-pseudonymise", action="store_true", help=_NO_PSEUDONYMISE)


def _key(args: argparse.Namespace, config: Config, conn: psycopg.Connection) -> bytes | None:
    """The pseudonymisation key the export needs: none when its scope holds no customer meter
    or with ``--no-pseudonymise`` (warned); else ``[privacy] hmac_key_file``'s (a
    :class:`ConfigError` before anything is written when it is not configured)."""
    meters = customer_meters(conn, args.site)
    if not meters:
        return None
    if args.no_pseudonymise:
        print(
            f"sobriety: warning: --no-pseudonymise: this export holds the ids of {len(meters)} "
            "customer meters, personal data (RGPD): keep it within the commune, do not publish it",
            file=sys.stderr,
        )
        return None
    return config.privacy_key()


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """Write the export to standard output."""
    out = sys.stdout.buffer
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        key = _key(args, config, conn)
        if args.export_command == "readings":
            export_readings(conn, out, args.since, args.until, args.site, key)
        else:
            load_pseudonyms(conn, key, args.site)
            if args.export_command == "alerts":
                export_alerts(conn, out, args.format, args.until, args.since, args.site)
            else:
                export_energy(conn, out, args.format, args.since, args.until, args.site)
    out.flush()
    return 0
