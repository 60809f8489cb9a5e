"""Personal data (RGPD): ``sobriety privacy apply`` (the retention of ``[privacy]``, once) and
:class:`RetentionService`, the same pass every ``privacy.interval_s`` inside ``sobriety run``.
What is deleted, and why the hourly rollup survives it: :mod:`core.retention`."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from core.config import Config, PrivacyConfig
from core.db import connect
from core.retention import CLASSES, RetentionReport, apply

__all__ = ["RetentionService", "add_privacy_parser", "cmd_privacy"]

log = logging.getLogger("sobriety.privacy")


class RetentionService:
    """The retention pass every ``interval_s`` until :meth:`stop`; its metrics in
    ``registry``: ``sobriety_privacy_deleted_rows_total{data_class}``,
    ``sobriety_privacy_pass_failures_total``, ``sobriety_privacy_pass_seconds``."""

    def __init__(self, conninfo: str, config: PrivacyConfig, registry: CollectorRegistry) -> None:
        self._conninfo = conninfo
        self.config = config
        self.stopping = threading.Event()
        ns, sub = "sobriety", "privacy"
        self.deleted = Counter(
            "deleted_rows", "Rows deleted by the retention of [privacy], by class of data.",
            ["data_class"], namespace=ns, subsystem=sub, registry=registry,
        )  # fmt: skip
        for name in CLASSES:
            self.deleted.labels(data_class=name)
        self.failures = Counter(
            "pass_failures", "Retention passes that failed and were retried.",
            namespace=ns, subsystem=sub, registry=registry,
        )  # fmt: skip
        self.pass_seconds = Histogram(
            "pass_seconds", "Duration of one retention pass.", namespace=ns, subsystem=sub,
            registry=registry,
        )  # fmt: skip

    def run_pass(self, now: datetime | None = None) -> RetentionReport | None:
        """One pass; a failure is logged, counted and retried at the next."""
        started = time.monotonic()
        try:
            with connect(self._conninfo) as conn:
                report = apply(
                    conn, self.config, now or datetime.now(UTC),
                    on_delete=lambda name, rows: self.deleted.labels(data_class=name).inc(rows),
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the service keeps going
            log.warning("privacy: retention pass failed (%s); retrying", exc)
            self.failures.inc()
            return None
        self.pass_seconds.observe(time.monotonic() - started)
        if any(report.deleted.values()):
            log.info("privacy: %s", report.summary().replace("\n", "; "))
        return report

    def run(self) -> None:
        """Pass until stopped."""
        while not self.stopping.is_set():
            self.run_pass()
            self.stopping.wait(self.config.interval_s)

    def stop(self) -> None:
        """End :meth:`run` after its current pass."""
        self.stopping.set()


def add_privacy_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    fmt: Callable[..., None],
) -> None:
    """``sobriety privacy apply [--format text|json]``."""
    privacy = sub.add_parser("privacy", help="personal data (RGPD): retention")
    pr_sub = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    apply_cmd = pr_sub.add_parser(
        "apply",
        help="delete now what [privacy] no longer keeps (also done by `sobriety run`)",
        description="Delete the raw readings of customer meters older than "
        "privacy.customer_raw_days, of other devices older than privacy.raw_days, and the "
        "aggregates (hourly rollup, energy_daily, closed alerts) older than "
        "privacy.aggregates_days (0: kept forever), in batches of privacy.batch_rows rows per "
        "transaction; the hourly rollup of deleted readings is kept. Prints what was deleted "
        "per class.",
    )
    fmt(apply_cmd)


def cmd_privacy(args: argparse.Namespace, config: Config) -> int:
    """``sobriety privacy apply``: one retention pass, what it deleted per class."""
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        report = apply(conn, config.privacy, datetime.now(UTC))
    if args.format == "json":
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.summary())
    return 0
