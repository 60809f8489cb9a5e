"""``sobriety publish --site S --out DIR [--month YYYY-MM | --since YYYY-MM [--until YYYY-MM]]``:
the open data of a commune (:mod:`app.publish`) written into DIR (:mod:`app.publish_files`):
whole months in the site's local time, by default the last twelve."""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from app.energy_report import parse_month
from app.energy_report_base import next_month
from app.publish import gather, months_between, site_info
from app.publish_files import write_publication
from core.config import Config
from core.db import connect
from core.errors import UsageError

__all__ = ["MAX_MONTHS", "add_publish_parser", "cmd_publish", "period"]

MAX_MONTHS = 120
"""The longest publication: ten years of months."""


def add_publish_parser(sub: Any) -> None:
    """Add ``publish`` to the ``sobriety`` subcommands."""
    cmd = sub.add_parser(
        "publish",
        help="open data: indicators as CSV + Table Schema + a static French HTML page",
        description="The indicators a commune publishes, per whole month in its local time: "
        "lighting kWh and what dimming saved (kWh, EUR, kg CO2e where known), kWh per "
        "luminaire-night; the PUE with its ISO/IEC 30134-2 category; the yield and ILI of each "
        "DMA (the anomaly stage's water balance); the messages adaptive reporting saved. One "
        "CSV each with its Table Schema, a datapackage.json (Licence Ouverte 2.0, etalab-2.0) "
        "and index.html that draws them. Aggregates only: no device id, no household's figure. "
        "Default period: the last 12 whole months.",
    )
    cmd.add_argument("--site", required=True, help="the site (commune) id")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write (created)")
    when = cmd.add_mutually_exclusive_group()
    when.add_argument("--month", type=parse_month, help="one month, YYYY-MM")
    when.add_argument(
        "--since", dest="since_month", type=parse_month, metavar="YYYY-MM",
        help="first month, YYYY-MM",
    )  # fmt: skip
    cmd.add_argument(
        "--until", dest="until_month", type=parse_month, metavar="YYYY-MM",
        help="last month, YYYY-MM, included (with --since; default: the last whole month)",
    )  # fmt: skip


def period(
    month: date | None, since: date | None, until: date | None, today: date
) -> tuple[date, date]:
    """The whole months [first, end) to publish as of the site's local ``today``;
    :class:`UsageError` for a bad period."""
    current = today.replace(day=1)
    if until is not None and since is None:
        raise UsageError("--until needs --since (or use --month YYYY-MM for one month)")
    if month is not None:
        first, end = month, next_month(month)
    elif since is not None:
        first = since
        end = next_month(until) if until is not None else current
        if end <= first:
            last = until or date.fromordinal(current.toordinal() - 1)
            raise UsageError(
                f"bad period: --since {first:%Y-%m} is after "
                + (f"--until {last:%Y-%m}" if until else f"the last whole month {last:%Y-%m}")
            )
    else:
        first, end = _months_before(current, 12), current
    if end > current:
        raise UsageError(
            f"bad period: {date.fromordinal(end.toordinal() - 1):%Y-%m} is not over yet; only "
            f"whole months are published (the last one is {_months_before(current, 1):%Y-%m})"
        )
    if len(months_between(first, end)) > MAX_MONTHS:
        raise UsageError(f"bad period: at most {MAX_MONTHS} months at once")
    return first, end


def _months_before(first: date, n: int) -> date:
    index = first.year * 12 + first.month - 1 - n
    return date(index // 12, index % 12 + 1, 1)


def _writable(out: Path) -> None:
    """Create ``out`` if needed and make sure files can be written there."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: not writable ({exc.strerror or exc})") from None


def cmd_publish(args: argparse.Namespace, config: Config) -> int:
    """Gather the indicators, write the files, print what was written."""
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        _name, zone = site_info(conn, args.site)
        today = datetime.now(ZoneInfo(zone)).date()
        first, end = period(args.month, args.since_month, args.until_month, today)
        _writable(args.out)
        pub = gather(conn, args.site, first, end)
    written = write_publication(pub, args.out, datetime.now(UTC))
    last = pub.months[-1]
    print(f"open data of {pub.name} ({pub.site}), {first:%Y-%m} to {last:%Y-%m}:")
    for w in written:
        print(f"  {w.path}" + (f"  ({w.rows} rows)" if w.rows is not None else ""))
    return 0
