"""``sobriety inventory import FILE``: register sites, devices or DMAs from CSV or GeoJSON.

The columns tell which file it is: a ``device`` column makes a devices file; ``dma`` without
``device`` makes a DMAs file; ``site`` without ``device`` or ``dma`` makes a sites file
(``site, name, timezone, lat, lon``: the time zone an IANA name, the coordinates those of the
astronomical clock; the sites table has no properties, so any other column is an error).
GeoJSON features carry the same properties, and a Point geometry gives ``lon``/``lat``. Sites
are created as they appear in a devices or DMAs file; a sites file updates only the columns it
has (an empty ``timezone`` cell is the default, Europe/Paris). Importing the same file twice changes
nothing (rows are compared, not rewritten). A devices file's other columns go to
``devices.properties`` as text; six of them are checked first: the luminaire properties the
compliance report reads, ``cct_k`` (colour temperature [K], 1000-10000), ``usage``
(:data:`LUMINAIRE_USAGES`) and ``closing_time`` (local ``HH:MM``, the end of a park's opening),
and the meter properties energy accounting reads, ``counter_max_wh`` (where the energy register
wraps [Wh]), ``max_power_w`` (the most the device draws [W]) and ``replaced_at`` (when its
meter was replaced, ISO 8601 with an offset; stored in UTC), and ``cabinet`` of a luminaire
(the ``cabinet_meter`` device of the same site whose meter feeds it: in the file or already
registered).
Every error names the file, the line (the feature number for GeoJSON) and the column; nothing
is written unless the whole file is valid.
:func:`write_inventory_csv` writes the files this import reads (the simulators use it).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.types.json import Jsonb

from core.contract import DEVICE_KINDS, FLOW_METER_ROLES, valid_segment
from core.errors import InventoryError

_MAX_ERRORS = 20

# column -> (parser, database column)
_Parser = Callable[[str], Any]


def _text(value: str) -> str:
    return value


def _number(low: float, high: float) -> _Parser:
    expected = f"a number from {low:g} to {high:g}"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(expected) from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(expected)
        return number

    return parse


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("a whole number >= 0") from None
    if number < 0:
        raise ValueError("a whole number >= 0")
    return number


def _timezone(value: str) -> str:
    expected = "an IANA time zone such as Europe/Paris"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(expected) from None
    return value


DEFAULT_TIMEZONE = "Europe/Paris"
"""The time zone of a site that names none (the default of ``sites.timezone``)."""

LUMINAIRE_USAGES = ("road", "parking", "pedestrian", "park", "heritage", "sports", "other")
"""What a luminaire lights (devices column ``usage``): a road (``road``), an open-air car park
(``parking``), a footpath or square (``pedestrian``), a park or garden (``park``), heritage or
buildings put in light (``heritage``), open-air sports grounds (``sports``), anything else
(``other``) — the categories of the arrêté of 27 December 2018 on light pollution."""

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _cct(value: str) -> str:
    return f"{_number(1000, 10000)(value):g}"


def _usage(value: str) -> str:
    usage = value.strip().lower()
    if usage not in LUMINAIRE_USAGES:
        raise ValueError(f"one of {', '.join(LUMINAIRE_USAGES)}")
    return usage


def _local_time(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError('a local time "HH:MM" from 00:00 to 23:59')
    return value


def _wh(value: str) -> str:
    return f"{_number(1, 1e15)(value):.15g}"


def _watts(value: str) -> str:
    return f"{_number(0, 1e8)(value):.15g}"


def _device_ref(value: str) -> str:
    if not valid_segment(value):
        raise ValueError("a device id (1-64 of A-Za-z0-9_.-)")
    return value


def _instant(value: str) -> str:
    expected = "an instant in ISO 8601 with a UTC offset, e.g. 2026-11-03T10:00:00+01:00"
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(expected) from None
    if when.tzinfo is None:
        raise ValueError(expected)
    return when.astimezone(UTC).isoformat()


_DEVICE_PROPERTIES: dict[str, _Parser] = {
    "cct_k": _cct,  # colour temperature [K]
    "usage": _usage,
    "closing_time": _local_time,  # end of the park's opening or activity, local time
    "counter_max_wh": _wh,  # where the energy register wraps [Wh]
    "max_power_w": _watts,  # the most the device can draw [W]: a larger counter step is absurd
    "replaced_at": _instant,  # when its meter was replaced (stored in UTC)
    "cabinet": _device_ref,  # the cabinet_meter of the same site that feeds a luminaire
}
"""Typed properties of a devices file: validated like the typed columns, but stored (as their
canonical text) in ``devices.properties`` like any other extra column."""


def device_property(name: str, value: str) -> str:
    """The canonical text of the typed property ``name`` (``cct_k``, ``usage``,
    ``closing_time``, ``counter_max_wh``, ``max_power_w``, ``replaced_at``) of a device, as the
    import stores it (``"3000"``, ``"park"``, ``"20:00"``); any other name is returned as it
    is. :class:`ValueError` saying what was expected for an invalid one (a property stored by
    an older import)."""
    parser = _DEVICE_PROPERTIES.get(name)
    return value if parser is None else str(parser(value))


_DEVICE_COLUMNS: dict[str, tuple[_Parser, str]] = {
    "dma": (_text, "dma"),
    "role": (_text, "role"),
    "lat": (_number(-90, 90), "lat"),
    "lon": (_number(-180, 180), "lon"),
    "group": (_text, "lighting_group"),
    "lighting_class": (_text, "lighting_class"),
    "nominal_power_w": (_number(0, 1e8), "nominal_power_w"),
}
_DMA_COLUMNS: dict[str, tuple[_Parser, str]] = {
    "name": (_text, "name"),
    "mains_km": (_number(0, 1e6), "mains_km"),
    "connections": (_count, "connections"),
    "private_km": (_number(0, 1e6), "private_km"),
    "avg_pressure_m": (_number(0, 1e4), "avg_pressure_m"),
}

_SITE_COLUMNS: dict[str, tuple[_Parser, str]] = {
    "name": (_text, "name"),
    "timezone": (_timezone, "timezone"),
    "lat": (_number(-90, 90), "lat"),
    "lon": (_number(-180, 180), "lon"),
}


DEVICE_FILE_COLUMNS = (
    "site", "device", "kind", "dma", "role", "lat", "lon", "group", "lighting_class",
    "nominal_power_w",
)  # fmt: skip
"""Columns of a devices file, in the order :func:`write_inventory_csv` writes them."""
DMA_FILE_COLUMNS = (
    "site", "dma", "name", "mains_km", "connections", "private_km", "avg_pressure_m",
)  # fmt: skip
"""Columns of a DMAs file."""
SITE_FILE_COLUMNS = ("site", "name", "timezone", "lat", "lon")
"""Columns of a sites file."""


def write_inventory_csv(
    path: Path, rows: Iterable[Mapping[str, object]], columns: Sequence[str]
) -> Path:
    """Write an inventory CSV file with the header ``columns`` (a missing or None value is an
    empty cell); the directory is created. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(columns)
        for row in rows:
            out.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return path


@dataclass
class ImportResult:
    """What an import did: rows inserted, updated and left unchanged, per table."""

    table: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    sites_created: list[str] = field(default_factory=list)


def _rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(location, properties as text) of each row or feature."""
    if path.suffix.lower() in {".geojson", ".json"}:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InventoryError(f"{path}: not readable GeoJSON ({exc})") from None
        features = doc.get("features") if isinstance(doc, dict) else None
        if not isinstance(features, list):
            raise InventoryError(f"{path}: expected a GeoJSON FeatureCollection with features")
        for number, feature in enumerate(features, start=1):
            where = f"{path}: feature {number}"
            props = feature.get("properties") if isinstance(feature, dict) else None
            if not isinstance(props, dict):
                raise InventoryError(f"{where}: no properties object")
            row = {k: "" if v is None else str(v) for k, v in props.items()}
            geometry = feature.get("geometry")
            if isinstance(geometry, dict) and geometry.get("type") == "Point":
                coords = geometry.get("coordinates")
                if not (isinstance(coords, list) and len(coords) >= 2):
                    raise InventoryError(f"{where}, column geometry: expected [lon, lat]")
                row.setdefault("lon", str(coords[0]))
                row.setdefault("lat", str(coords[1]))
            yield where, row
        return
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise InventoryError(f"{path}: empty file, expected a header line")
            for row in reader:
                if None in row:
                    raise InventoryError(
                        f"{path}: line {reader.line_num}: more values than header columns"
                    )
                yield (
                    f"{path}: line {reader.line_num}",
                    {k.strip(): (v or "").strip() for k, v in row.items()},
                )
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path}: not UTF-8 text ({exc})") from None


def _parse_row(
    where: str,
    row: dict[str, str],
    required: tuple[str, ...],
    columns: dict[str, tuple[_Parser, str]],
    properties: Mapping[str, _Parser] | None = None,
) -> dict[str, Any]:
    typed = properties or {}
    out: dict[str, Any] = {}
    for name in required:
        value = row.get(name, "")
        if not value:
            raise InventoryError(f"{where}, column {name}: missing value")
        if name in {"site", "device", "dma"} and not valid_segment(value):
            raise InventoryError(
                f"{where}, column {name}: {value!r} is not an id (1-64 of A-Za-z0-9_.-)"
            )
        out[name] = value
    extra: dict[str, str] = {}
    for name, value in row.items():
        if name in required:
            continue
        if name in columns:
            parser, target = columns[name]
            if value == "":
                out[target] = None
                continue
            try:
                out[target] = parser(value)
            except ValueError as exc:  # the parsers say what they expected
                raise InventoryError(f"{where}, column {name}: {value!r} is not {exc}") from None
        elif value != "":
            if name in typed:
                try:
                    value = typed[name](value)
                except ValueError as exc:
                    raise InventoryError(
                        f"{where}, column {name}: {value!r} is not {exc}"
                    ) from None
            extra[name] = value
    for _name, target in columns.values():
        out.setdefault(target, None)
    out["properties"] = extra
    return out


def _check_device(where: str, rec: dict[str, Any]) -> None:
    if rec["kind"] not in DEVICE_KINDS:
        raise InventoryError(
            f"{where}, column kind: {rec['kind']!r} is not one of {', '.join(sorted(DEVICE_KINDS))}"
        )
    if rec["dma"] is not None and not valid_segment(rec["dma"]):
        raise InventoryError(f"{where}, column dma: {rec['dma']!r} is not an id")
    if rec["kind"] == "flow_meter" and rec["dma"] and rec["role"] not in FLOW_METER_ROLES:
        raise InventoryError(
            f"{where}, column role: a flow_meter of a DMA needs role inlet or outlet, "
            f"got {rec['role']!r}"
        )


def import_inventory(conn: psycopg.Connection, path: Path) -> ImportResult:
    """Validate the whole file, then upsert it in one transaction."""
    rows = list(_rows(path))
    if not rows:
        raise InventoryError(f"{path}: no rows")
    header = set().union(*(row.keys() for _, row in rows))
    required: tuple[str, ...]
    if "device" in header:
        table, required, columns = "devices", ("site", "device", "kind"), _DEVICE_COLUMNS
        properties = _DEVICE_PROPERTIES
    elif "dma" in header:
        table, required, columns = "dmas", ("site", "dma"), _DMA_COLUMNS
        properties = {}
    elif "site" in header:
        _check_site_columns(path, header)
        return _import_sites(conn, rows, header)
    else:
        raise InventoryError(
            f"{path}: cannot tell the file: expected a 'device' column (devices: site, device, "
            "kind, ...), a 'dma' column without 'device' (DMAs: site, dma, ...) or a 'site' "
            "column without 'device' or 'dma' (sites: site, name, timezone, lat, lon)"
        )

    def parse(where: str, row: dict[str, str]) -> tuple[str, dict[str, Any]]:
        rec = _parse_row(where, row, required, columns, properties)
        if table == "devices":
            _check_device(where, rec)
        return f"{rec['site']}/{rec[required[1]]}", rec

    records = _validated(rows, parse)
    result = ImportResult(table)
    with conn.transaction():
        sites = sorted({rec["site"] for rec in records})
        for site in sites:
            cur = conn.execute(
                "INSERT INTO sites (site) VALUES (%s) ON CONFLICT DO NOTHING", (site,)
            )
            if cur.rowcount:
                result.sites_created.append(site)
        if table == "devices":
            _check_dmas_exist(conn, path, records, rows)
            _check_cabinets_exist(conn, records, rows)
            _upsert(conn, "devices", ("site", "device"), records, result)
        else:
            _upsert(conn, "dmas", ("site", "dma"), records, result)
        conn.execute("NOTIFY sobriety_inventory")
        # Planner statistics now: queries that join a fresh inventory to large tables would
        # otherwise plan for an empty table until autovacuum comes by (nested loops, minutes).
        conn.execute(f"ANALYZE {'devices' if table == 'devices' else 'dmas'}, sites")
    return result


def _validated(
    rows: list[tuple[str, dict[str, str]]],
    parse: Callable[[str, dict[str, str]], tuple[str, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Every row parsed by ``parse`` (location, row → the record's name, record), checked for
    names defined twice; the errors of the whole file (up to ``_MAX_ERRORS``) at once."""
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        try:
            name, rec = parse(where, row)
            if name in seen:
                raise InventoryError(f"{where}: {name} already defined at {seen[name]}")
            seen[name] = where
            records.append(rec)
        except InventoryError as exc:
            errors.append(str(exc))
            if len(errors) >= _MAX_ERRORS:
                break
    if errors:
        raise InventoryError("\n".join(errors))
    return records


def _check_site_columns(path: Path, header: set[str]) -> None:
    unknown = sorted(header - set(SITE_FILE_COLUMNS))
    if unknown:
        raise InventoryError(
            f"{path}, column {unknown[0]}: not a column of a sites file (expected "
            f"{', '.join(SITE_FILE_COLUMNS)}; sites have no other properties)"
            + (f"; also {', '.join(unknown[1:])}" if len(unknown) > 1 else "")
        )


def _import_sites(
    conn: psycopg.Connection, rows: list[tuple[str, dict[str, str]]], header: set[str]
) -> ImportResult:
    """A sites file: upsert the columns it has (the others of an existing site stay)."""
    present = [c for c in SITE_FILE_COLUMNS[1:] if c in header]

    def parse(where: str, row: dict[str, str]) -> tuple[str, dict[str, Any]]:
        rec = _parse_row(where, row, ("site",), _SITE_COLUMNS)
        if rec["timezone"] is None:
            rec["timezone"] = DEFAULT_TIMEZONE
        return f"site {rec['site']}", {"site": rec["site"], **{c: rec[c] for c in present}}

    records = _validated(rows, parse)
    result = ImportResult("sites")
    with conn.transaction():
        if present:
            _upsert(conn, "sites", ("site",), records, result, stamp=None)
        else:
            for rec in records:
                cur = conn.execute(
                    "INSERT INTO sites (site) VALUES (%s) ON CONFLICT DO NOTHING", (rec["site"],)
                )
                result.inserted += cur.rowcount
            result.unchanged = len(records) - result.inserted
        conn.execute("NOTIFY sobriety_inventory")
        conn.execute("ANALYZE sites")
    return result


def _check_dmas_exist(
    conn: psycopg.Connection,
    path: Path,
    records: list[dict[str, Any]],
    rows: list[tuple[str, dict[str, str]]],
) -> None:
    known = set(conn.execute("SELECT site, dma FROM dmas").fetchall())
    for rec, (where, _row) in zip(records, rows, strict=True):
        if rec["dma"] is not None and (rec["site"], rec["dma"]) not in known:
            raise InventoryError(
                f"{where}, column dma: DMA {rec['dma']!r} of site {rec['site']!r} is not "
                "registered: import the DMA file first"
            )


def _check_cabinets_exist(
    conn: psycopg.Connection,
    records: list[dict[str, Any]],
    rows: list[tuple[str, dict[str, str]]],
) -> None:
    """A luminaire's ``cabinet`` names a ``cabinet_meter`` of its site, in the file or
    registered."""
    wanted = [(rec, where) for rec, (where, _r) in zip(records, rows, strict=True)
              if "cabinet" in rec["properties"]]  # fmt: skip
    if not wanted:
        return
    known = {(r["site"], r["device"]) for r in records if r["kind"] == "cabinet_meter"}
    known |= set(conn.execute("SELECT site, device FROM devices WHERE kind = 'cabinet_meter'"))
    for rec, where in wanted:
        if rec["kind"] != "luminaire":
            raise InventoryError(
                f"{where}, column cabinet: only a luminaire is fed by a cabinet, not a "
                f"{rec['kind']}"
            )
        cabinet = rec["properties"]["cabinet"]
        if (rec["site"], cabinet) not in known:
            raise InventoryError(
                f"{where}, column cabinet: {cabinet!r} is not a cabinet_meter of site "
                f"{rec['site']!r} (in this file or registered)"
            )


def _upsert(
    conn: psycopg.Connection,
    table: str,
    key: tuple[str, ...],
    records: list[dict[str, Any]],
    result: ImportResult,
    stamp: str | None = "updated_at",
) -> None:
    cols = list(records[0].keys())
    values = [[Jsonb(r[c]) if c == "properties" else r[c] for c in cols] for r in records]
    others = [c for c in cols if c not in key]
    col_list = ", ".join(cols)
    placeholders = ", ".join(["%s"] * len(cols))
    changed = " OR ".join(f"{table}.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in others)
    query = (
        f"INSERT INTO {table} ({col_list}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
        + (f", {stamp} = now() " if stamp else " ")
        + f"WHERE {changed} RETURNING (xmax = 0) AS inserted"
    )
    with conn.cursor() as cur:
        cur.executemany(query, values, returning=True)
        while True:
            row = cur.fetchone()
            if row is not None:
                if row[0]:
                    result.inserted += 1
                else:
                    result.updated += 1
            if not cur.nextset():
                break
    result.unchanged = len(records) - result.inserted - result.updated
