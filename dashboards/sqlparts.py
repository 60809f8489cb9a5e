"""SQL fragments the dashboards repeat (as Grafana expands them: see :mod:`dashboards.macros`).

The daily and nightly views carry a local date (``day``, ``night``: the site's own calendar);
a panel plots it at the local midnight that starts it (a ``timestamptz``) and keeps the dates
whose local day meets the dashboard's range — the macros themselves work in UTC.
"""

from __future__ import annotations

SITES = "IN (${site:sqlstring})"
"""The ``site`` variable, multi-value or All: ``site IN ('a','b')``."""

LUMINAIRE_FAULTS = "('lamp_failure', 'day_burner', 'power_off_curve')"
"""The alert kinds of a luminaire (subject_type 'device', subject the luminaire)."""

WATER_KINDS = "('leak', 'data_gap', 'continuous_flow', 'high_consumption')"
"""The alert kinds of the water network (anomaly stage)."""

CUSTOMER_KINDS = "('continuous_flow', 'high_consumption')"
"""The alert kinds of a customer meter."""


def local_midnight(date: str, tz: str) -> str:
    """The ``timestamptz`` that starts the local date ``date`` in the zone ``tz``."""
    return f"{date}::timestamp AT TIME ZONE {tz}"


def dates_in_range(date: str, tz: str) -> str:
    """``date`` (a local date in zone ``tz``) lies in the dashboard's range."""
    return (
        f"{date} >= ($__timeFrom()::timestamptz AT TIME ZONE {tz})::date\n"
        f"  AND {date} <= ($__timeTo()::timestamptz AT TIME ZONE {tz})::date"
    )


def dates_near_range(date: str) -> str:
    """``date`` lies within a day of the range's UTC dates: a bound made of constants, which
    PostgreSQL pushes into a view (any zone is less than a day from UTC), where
    :func:`dates_in_range` compares with each row's own zone after the view is computed."""
    return (
        f"{date} BETWEEN ($__timeFrom()::timestamptz AT TIME ZONE 'UTC')::date - 1\n"
        f"      AND ($__timeTo()::timestamptz AT TIME ZONE 'UTC')::date + 1"
    )


def months_in_range(month: str, tz: str) -> str:
    """The local calendar month starting on the date ``month`` (zone ``tz``) meets the range."""
    return (
        f"{month} <= ($__timeTo()::timestamptz AT TIME ZONE {tz})::date\n"
        f"  AND {month} + interval '1 month' > ($__timeFrom()::timestamptz AT TIME ZONE {tz})::date"
    )


def overlaps_range(start: str, end: str) -> str:
    """The interval [``start``, ``end``] (``end`` NULL: still open) meets the range."""
    return (
        f"{start} <= $__timeTo()::timestamptz\n"
        f"  AND ({end} IS NULL OR {end} >= $__timeFrom()::timestamptz)"
    )


def kind_label(column: str, labels: dict[str, str]) -> str:
    """A ``CASE`` giving each alert kind its label in the dashboard's language."""
    cases = " ".join(f"WHEN '{k}' THEN {quote(v)}" for k, v in labels.items())
    return f"CASE {column} {cases} ELSE {column} END"


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
