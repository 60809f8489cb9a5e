"""The ``sobriety`` command line: its arguments, and the dispatch to the commands
(``app/data_commands.py``, ``app/water_commands.py``, ``app/policies_commands.py``,
``app/services.py``, ``app/simulation.py``). Exit codes: 0 done, 1 failed, 2 bad usage or
configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from app import (
    data_commands,
    energy_commands,
    policies_commands,
    privacy_commands,
    publish_commands,
    services,
    simulation,
    site_commands,
    water_commands,
)
from app.cli_parser import build_parser, parse_time
from app.config import load_config
from core.config import Config
from core.db import connect
from core.errors import ConfigError, SobrietyError, UsageError

__all__ = ["main", "parse_time"]


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": args.db_url},
        "mqtt": {
            "url": args.mqtt_url,
            "client_id": getattr(args, "client_id", None),
            "shared_group": getattr(args, "shared_group", None),
        },
        "ingest": {
            "spool_dir": getattr(args, "spool_dir", None),
            "workers": getattr(args, "workers", None),
        },
        "metrics": {"port": getattr(args, "metrics_port", None)},
    }
    return load_config(args.config, overrides=overrides)


def _cmd_db(args: argparse.Namespace, config: Config) -> int:
    """`sobriety db upgrade` (app/data_commands.py), `db rollup` or `db roles` (app/db_roles.py)."""
    if args.db_command == "rollup":
        return _cmd_db_rollup(args, config)
    if args.db_command == "roles":
        from app.db_roles import cmd_db_roles

        return cmd_db_roles(args, config)
    return data_commands.cmd_db(args, config)


def _cmd_db_rollup(args: argparse.Namespace, config: Config) -> int:
    """`sobriety db rollup`: one refresh of the hourly rollup, one line of what it did."""
    from core.rollup import refresh

    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        report = refresh(conn, batch_hours=args.batch_hours)
    print(report.summary())
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "db": _cmd_db,
    "inventory": data_commands.cmd_inventory,
    "import": data_commands.cmd_import,
    "export": data_commands.cmd_export,
    "rejected": data_commands.cmd_rejected,
    "contract": data_commands.cmd_contract,
    "ingest": services.cmd_ingest,
    "run": services.cmd_ingest,
    "anomaly": water_commands.cmd_anomaly,
    "alerts": water_commands.cmd_alerts,
    "policies": policies_commands.cmd_policies,
    "energy": energy_commands.cmd_energy,
    "publish": publish_commands.cmd_publish,
    "privacy": privacy_commands.cmd_privacy,
    "site": site_commands.cmd_site,
    "simulate": simulation.cmd_simulate,
    "demo": simulation.cmd_demo,
}


def _check_arguments(args: argparse.Namespace, config: Config) -> None:
    """A period runs forward; a site named must exist (an unknown one would give an empty
    result that looks like "nothing happened")."""
    if hasattr(args, "until") and hasattr(args, "since"):
        args.until = args.until or datetime.now(UTC)
        if args.since is not None and args.until <= args.since:
            raise UsageError(
                f"--until must be after --since (got --since {args.since.isoformat()} "
                f"--until {args.until.isoformat()})"
            )
    site = getattr(args, "site", None)
    if site:
        with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
            known = [str(r[0]) for r in conn.execute("SELECT site FROM sites ORDER BY 1")]
        if site not in known:
            raise UsageError(
                f"--site {site!r}: no such site; known sites: {', '.join(known) or 'none yet'}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sobriety`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"sobriety: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        _check_arguments(args, config)
        return _COMMANDS[args.command](args, config)
    except UsageError as exc:
        print(f"sobriety: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"sobriety: configuration error: {exc}", file=sys.stderr)
        return 2
    except SobrietyError as exc:
        print(f"sobriety: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
