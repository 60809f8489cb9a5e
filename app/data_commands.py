"""Commands over the stored data: ``db upgrade``, ``inventory import``, ``import readings``,
``export readings``, ``rejected`` and ``contract schema``. Each returns the exit code."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from core.config import Config
from ingest.config import IngestConfig

log = logging.getLogger("sobriety.db")


def write_json(items: Iterable[Any]) -> None:
    """A JSON array on standard output, one item per line, streamed."""
    out = sys.stdout
    out.write("[")
    for n, item in enumerate(items):
        out.write(("," if n else "") + "\n  " + orjson.dumps(item).decode())
    out.write("\n]\n")


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    from core.db import connect, ensure_database, is_hypertable, upgrade

    conninfo = config.db_conninfo()
    timeout_s = config.database.connect_timeout_s
    created = _wait_for(
        lambda: ensure_database(conninfo, timeout_s), float(getattr(args, "wait", 0.0))
    )
    if created:
        print("database created")
    with connect(conninfo, timeout_s=config.database.connect_timeout_s) as conn:
        applied = upgrade(conn, config.storage)
        hyper = is_hypertable(conn)
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    print("readings storage: " + ("TimescaleDB hypertable" if hyper else "plain PostgreSQL"))
    return 0


def _wait_for(attempt: Callable[[], bool], wait_s: float) -> bool:
    """``attempt()``, retried while the server cannot be reached for up to ``wait_s`` seconds
    (0.5 s, then doubling up to 5 s, between attempts; each failure logged); the last
    :class:`core.db.DatabaseError` once the time is up."""
    from core.db import DatabaseError

    deadline = time.monotonic() + wait_s
    pause, tries = 0.5, 1
    while True:
        try:
            return attempt()
        except DatabaseError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if wait_s > 0:
                    raise DatabaseError(
                        f"{exc} (gave up after {tries} attempts, {wait_s:g} s)"
                    ) from None
                raise
            log.info("database not reachable yet (attempt %d): %s; retrying", tries, exc)
            time.sleep(min(pause, left))
            pause, tries = min(pause * 2, 5.0), tries + 1


def cmd_inventory(args: argparse.Namespace, config: Config) -> int:
    from core.db import connect
    from core.inventory import import_inventory

    with connect(config.db_conninfo()) as conn:
        result = import_inventory(conn, args.file)
    print(
        f"{args.file}: {result.table}: {result.inserted} new, {result.updated} updated, "
        f"{result.unchanged} unchanged"
        + (f"; new sites: {', '.join(result.sites_created)}" if result.sites_created else "")
    )
    return 0


def _pipeline(config: Config, history: bool) -> Any:
    from core.db import connect
    from ingest.importer import history_limits
    from ingest.pipeline import Limits, Pipeline

    with connect(config.db_conninfo()) as conn:
        ids = {(s, d): i for s, d, i in conn.execute("SELECT site, device, id FROM devices")}
    icfg = config.section(IngestConfig)
    limits = (
        history_limits(icfg.future_window_s)
        if history
        else Limits(
            icfg.max_payload_bytes, icfg.max_records, icfg.past_window_s, icfg.future_window_s
        )
    )
    return Pipeline(lambda site, device: ids.get((site, device)), config.mqtt.root, limits)


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from ingest.importer import import_readings
    from ingest.store import Store

    store = Store(config.db_conninfo())
    try:
        report = import_readings(args.file, store, _pipeline(config, history=True), time.time())
    finally:
        store.close()
    rejected = sum(report.rejected.values())
    print(
        f"{args.file}: {report.lines} lines, {report.stored} readings stored, "
        f"{report.duplicates} already present, {rejected} rejected"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in sorted(report.rejected.items()))})"
            if rejected
            else ""
        )
    )
    if rejected:
        print("see: sobriety rejected --reason REASON --format json", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    """``export readings|alerts|energy`` (app/export_commands.py: pseudonymised, streamed)."""
    from app.export_commands import cmd_export as export

    return export(args, config)


def cmd_rejected(args: argparse.Namespace, config: Config) -> int:
    from core.db import connect
    from ingest.rejected import iter_rejected, replay
    from ingest.store import Store

    with connect(config.db_conninfo()) as conn:
        if args.replay:
            store = Store(config.db_conninfo())
            try:
                report = replay(
                    conn,
                    store,
                    _pipeline(config, history=False),
                    args.since,
                    args.reason,
                    args.site,
                )
            finally:
                store.close()
            still = ", ".join(f"{k}: {v}" for k, v in sorted(report.still_rejected.items()))
            print(
                f"replayed {report.resolved} messages, {report.stored} readings stored; "
                f"still rejected: {still or 'none'}"
            )
            return 0
        items = iter_rejected(conn, args.since, args.reason, args.site, args.pending)
        out = sys.stdout
        if args.format == "json":
            write_json(items)
        else:
            shown = 0
            for item in items:
                shown += 1
                out.write(
                    f"{item['received_at']}  {item['reason']:<24} {item['topic']}  "
                    f"{item['detail']}\n"
                )
            if not shown:
                out.write("no rejected message\n")
    return 0


def cmd_contract(args: argparse.Namespace, config: Config) -> int:
    """``sobriety contract schema``: the JSON Schemas of the four channels, keyed by channel."""
    from core.schema import contract_schema

    del args, config
    print(orjson.dumps(contract_schema(), option=orjson.OPT_INDENT_2).decode())
    return 0
