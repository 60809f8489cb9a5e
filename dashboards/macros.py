"""Expand a panel's SQL the way Grafana's PostgreSQL datasource does, so that tests can run it
on a real database (the rules in /work/shared/GRAFANA.md, from grafana/grafana's
pkg/tsdb/grafana-postgresql-datasource/macros.go and the datasource frontend).

Order: template variables (``$var``, ``${var}``, ``${var:fmt}``, ``[[var]]``) and
``$__interval``/``$__interval_ms``/``$__from``/``$__to`` first (the browser), then the macros
``$__name(args)`` (the server). An unknown variable, format or macro is an error, as is
``$__`` inside an SQL comment (older Grafana versions expanded it there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["MacroError", "TimeRange", "expand", "format_interval", "parse_interval"]


class MacroError(ValueError):
    """SQL Grafana would refuse (or expand into something else than meant)."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The dashboard's range (aware datetimes), the panel's interval [ms], the variables'
    values (a multi-value or All variable: every value selected) and whether the datasource
    has ``timescaledb: true``."""

    start: datetime
    end: datetime
    interval_ms: int = 60_000
    variables: Mapping[str, Sequence[str]] = field(default_factory=dict)
    multi: frozenset[str] = frozenset()
    timescaledb: bool = False


_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_VARIABLE = re.compile(
    r"\$([_a-zA-Z0-9]+)(?!\()|\$\{([_a-zA-Z0-9]+)(?::([^}]+))?\}|\[\[([_a-zA-Z0-9]+)(?::([^\]]+))?\]\]"
)
_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def _rfc3339(t: datetime) -> str:
    if t.tzinfo is None:
        raise MacroError(f"{t!r}: an aware datetime is expected")
    stamp = t.astimezone(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_interval(text: str) -> float:
    """Seconds of a ``$__timeGroup`` interval: single quotes stripped, ``Nd``/``Nw`` fixed
    lengths, else a Go duration (``5m``, ``1h30m``); double quotes or a bare number are errors."""
    arg = text.strip().strip("'")
    if '"' in arg or re.fullmatch(r"\d+(\.\d+)?", arg):
        raise MacroError(f"invalid interval {text!r}: a duration such as '5m' is expected")
    fixed = re.fullmatch(r"(\d+)([dw])", arg)
    if fixed:
        return int(fixed[1]) * (86400 if fixed[2] == "d" else 7 * 86400)
    parts = _GO_DURATION.findall(arg)
    if not arg or "".join(n + u for n, u in parts) != arg:
        raise MacroError(f"invalid interval {text!r}")
    return sum(float(n) * _UNITS_MS[u] for n, u in parts) / 1000.0


def format_interval(ms: int) -> str:
    """``$__interval``: the largest whole unit, truncated (90 s gives ``1m``)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _sqlstring(values: Sequence[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _variables(sql: str, rng: TimeRange) -> str:
    builtins = {
        "__interval": format_interval(rng.interval_ms),
        "__interval_ms": str(rng.interval_ms),
        "__from": str(int(rng.start.timestamp() * 1000)),
        "__to": str(int(rng.end.timestamp() * 1000)),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[4]
        fmt = match[3] or match[5]
        if name in builtins and fmt is None:
            return builtins[name]
        if name.startswith("__"):
            return match[0]  # a macro name without parentheses is left to the server step
        if name not in rng.variables:
            raise MacroError(f"unknown template variable {name!r}")
        values = list(rng.variables[name])
        if fmt == "sqlstring":
            return _sqlstring(values)
        if fmt == "raw":
            return ",".join(values)
        if fmt == "csv":
            return ",".join(values)
        if fmt is not None:
            raise MacroError(f"format {fmt!r} of ${{{name}}} not supported here")
        # The SQL datasources quote multi-value (and All) variables; a single value stays raw.
        return _sqlstring(values) if name in rng.multi else ",".join(values)

    return _VARIABLE.sub(substitute, sql)


def _check_comments(sql: str) -> None:
    for comment in re.findall(r"--[^\n]*|/\*.*?\*/", re.sub(r"'(?:[^']|'')*'", "''", sql), re.S):
        if "$__" in comment:
            raise MacroError(f"a macro in an SQL comment: {comment!r}")


def _macro(name: str, args: list[str], rng: TimeRange) -> str:
    start, end = f"'{_rfc3339(rng.start)}'", f"'{_rfc3339(rng.end)}'"
    epoch_from, epoch_to = int(rng.start.timestamp()), int(rng.end.timestamp())

    def need(n: int) -> None:
        if len(args) < n or any(not a for a in args[:n]):
            raise MacroError(f"${name}: expected {n} argument(s), got {args!r}")

    if name == "__time":
        need(1)
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        need(1)
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        need(1)
        return f"{args[0]} BETWEEN {start} AND {end}"
    if name == "__timeFrom":
        return start
    if name == "__timeTo":
        return end
    if name in ("__timeGroup", "__timeGroupAlias"):
        need(2)
        seconds = parse_interval(args[1])
        if len(args) == 3 and not (
            args[2] in ("NULL", "previous") or re.fullmatch(r"-?\d+(\.\d+)?", args[2])
        ):
            raise MacroError(f"${name}: fill {args[2]!r} is not NULL, previous or a number")
        if rng.timescaledb:
            group = f"time_bucket('{seconds:.3f}s',{args[0]})"
        else:
            group = f"floor(extract(epoch from {args[0]})/{seconds:g})*{seconds:g}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        need(1)
        return f"{args[0]} >= {epoch_from} AND {args[0]} <= {epoch_to}"
    if name == "__unixEpochFrom":
        return str(epoch_from)
    if name == "__unixEpochTo":
        return str(epoch_to)
    if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
        need(2)
        seconds = parse_interval(args[1])
        group = f"floor(({args[0]})/{seconds:g})*{seconds:g}"
        return group + (' AS "time"' if name == "__unixEpochGroupAlias" else "")
    raise MacroError(f"unknown macro ${name}")


def expand(sql: str, rng: TimeRange) -> str:
    """``sql`` as the database receives it from Grafana."""
    _check_comments(sql)
    sql = _variables(sql, rng)
    original = sql

    def substitute(match: re.Match[str]) -> str:
        name = match[1]
        # Grafana: a $__timeGroup directly followed by ',' (looked up at the first place the
        # same text occurs) is taken for the alias form.
        index = original.find(match[0]) + len(match[0])
        if name == "__timeGroup" and index < len(original) and original[index] == ",":
            name = "__timeGroupAlias"
        args = [a.strip(" ") for a in match[2].split(",")]
        return _macro(name, args, rng)

    expanded = _MACRO.sub(substitute, sql)
    leftover = re.search(r"\$__[_a-zA-Z0-9]+", expanded)
    if leftover:
        raise MacroError(f"unexpanded {leftover[0]!r}")
    return expanded
