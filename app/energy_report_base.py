"""What every section of ``sobriety energy report`` is built from: the month of a site to query
(:class:`MonthScope`), a section's :class:`Coverage` and an optional figure (:class:`Extra`).
Shared by :mod:`app.energy_report` and :mod:`app.energy_report_lighting`; SQL aggregates of the
``api`` views only."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql

__all__ = ["Coverage", "Extra", "MonthScope", "Status", "api_columns", "fsum", "next_month",
           "ratio"]  # fmt: skip

Status = Literal["ok", "partial", "none", "unavailable", "no_data"]
"""Of an optional figure (CO₂e, cost): every row has it, some, none (no factor or no tariff
pinned), the database has no such column (its migration is not applied), or no row at all."""


def next_month(first: date) -> date:
    """The first day of the month after the one ``first`` is in."""
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def fsum(values: Iterable[float | None]) -> float | None:
    """The sum of the values present, ``None`` when there is none (never 0 for "nothing")."""
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, ``None`` where either is missing or the denominator is 0."""
    return num / den if num is not None and den else None


def api_columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    """The columns of every ``api`` view: what the applied migrations provide."""
    found: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'api'"
    ):
        found.setdefault(str(table), set()).add(str(column))
    return found


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the month a section's figures stand on. ``periods``: the month's nights or
    days; ``elapsed``: those already over at the time of the report; ``with_data`` / ``complete``:
    periods with figures / whose figures are complete (every registered device there, each
    complete); ``missing_hours``: hours without readings within the stored device-days [h];
    ``absent``: device-days (luminaire-nights, cabinet-nights) of the elapsed periods with no
    figure at all."""

    periods: int
    elapsed: int
    with_data: int
    complete: int
    missing_hours: float
    absent: int

    @property
    def whole(self) -> bool:
        """Every period of the month complete, nothing missing."""
        return self.complete == self.periods and self.missing_hours < 1e-3 and self.absent == 0


@dataclass(frozen=True, slots=True)
class Extra:
    """An optional figure summed over the month, with its :data:`Status`."""

    value: float | None
    status: Status


@dataclass(frozen=True, slots=True)
class MonthScope:
    """What every section's query needs: the site, the month's days [first, end), the end of
    the days already over, the columns of the ``api`` views."""

    conn: psycopg.Connection
    site: str
    first: date
    end: date
    today: date  # of the site: the days before it are over
    cols: dict[str, set[str]]

    @property
    def elapsed_end(self) -> date:
        return min(self.end, self.today)

    @property
    def nights_over_end(self) -> date:
        """A night is over at the noon after it: those before yesterday surely are."""
        return min(self.end, self.today - timedelta(days=1))

    @property
    def args(self) -> dict[str, Any]:
        return {"site": self.site, "first": self.first, "end": self.end}

    def coverage(self, done: Sequence[bool], missing_h: float, devices: int, stored: int,
                 elapsed_end: date | None = None) -> Coverage:  # fmt: skip
        """The coverage of periods ``done`` (one flag per period with data): ``devices`` × the
        periods over, less the ``stored`` device-periods, are absent."""
        elapsed = max(0, ((elapsed_end or self.elapsed_end) - self.first).days)
        return Coverage((self.end - self.first).days, elapsed, len(done), sum(done), missing_h,
                        max(0, devices * elapsed - stored))  # fmt: skip

    def optional_sums(self, view: str, names: Sequence[str]) -> sql.Composable:
        """``sum(c), count(c)`` of each optional column, ``NULL, 0`` where the view lacks it."""
        have = self.cols.get(view, set())
        return sql.SQL(", ").join(
            sql.SQL("sum({0}), count({0})").format(sql.Identifier(c))
            if c in have
            else sql.SQL("NULL::float8, 0")
            for c in names
        )

    def extras(self, view: str, names: Sequence[str], rows: list[Any], at: int) -> list[Extra]:
        """The sums of :meth:`optional_sums` from column ``at`` of the rows on (the rows of the
        view each stands for in column 1), with their :data:`Status`."""
        out = []
        total_rows = sum(int(r[1]) for r in rows)
        for i, name in enumerate(names):
            counted = sum(int(r[at + 2 * i + 1]) for r in rows)
            if name not in self.cols.get(view, set()):
                out.append(Extra(None, "unavailable"))
            elif not rows:
                out.append(Extra(None, "no_data"))
            elif not counted:
                out.append(Extra(None, "none"))
            else:
                total = fsum(r[at + 2 * i] for r in rows)
                out.append(Extra(total, "ok" if counted == total_rows else "partial"))
        return out

    def device_days(self, kinds: Sequence[str]) -> tuple[int, float, int]:
        """Registered devices of ``kinds``, their missing hours in the month's stored days and
        their device-days stored for the days already over (``energy_daily``)."""
        row = self.conn.execute(
            """SELECT count(DISTINCT d.id), coalesce(sum(e.missing_hours), 0),
                      count(e.day) FILTER (WHERE e.day < %(elapsed)s)
               FROM devices d
               LEFT JOIN energy_daily e ON e.device_id = d.id AND e.day >= %(first)s
                    AND e.day < %(end)s
               WHERE d.site = %(site)s AND d.kind = ANY(%(kinds)s)""",
            {**self.args, "kinds": list(kinds), "elapsed": self.elapsed_end},
        ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1]), int(row[2])
