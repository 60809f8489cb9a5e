"""The files of ``sobriety publish``: one CSV per indicator (UTF-8, ``,`` separator, ISO months,
``.`` decimals, an empty cell for a figure not known), its Table Schema (frictionless: fields
with their stable English ``name``, ``type``, French ``title`` and ``description``, ``unit``),
a ``datapackage.json`` listing them under the Licence Ouverte 2.0 (``etalab-2.0``) with the
commune as source, and the page (:mod:`app.publish_page`)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from app.publish import Field, Indicator, Publication, Spec
from app.publish_page import render_page
from core import __version__

__all__ = ["LICENCE", "Written", "csv_text", "datapackage", "table_schema", "write_publication"]

LICENCE = {
    "name": "etalab-2.0",
    "title": "Licence Ouverte / Open Licence version 2.0",
    "path": "https://www.etalab.gouv.fr/licence-ouverte-open-licence",
}


@dataclass(frozen=True, slots=True)
class Written:
    """A file written: its path, and its rows for a CSV."""

    path: Path
    rows: int | None = None


def _cell(field: Field, value: Any) -> str:
    if value is None:
        return ""
    if field.type == "yearmonth":
        assert isinstance(value, date)
        return f"{value:%Y-%m}"
    if field.type == "boolean":
        return "true" if value else "false"
    if field.type == "integer":
        return str(round(float(value)))
    if field.type == "number":
        text = f"{float(value):.{field.digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def csv_text(indicator: Indicator) -> str:
    """The indicator's table as CSV: a header of the field names, one line per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    fields = indicator.spec.fields
    writer.writerow(f.name for f in fields)
    for row in indicator.rows:
        writer.writerow(_cell(f, row.get(f.name)) for f in fields)
    return out.getvalue()


def table_schema(spec: Spec) -> dict[str, Any]:
    """The Table Schema of an indicator's CSV."""
    fields = []
    for f in spec.fields:
        field: dict[str, Any] = {"name": f.name, "type": f.type, "title": f.title,
                                 "description": f.description}  # fmt: skip
        if f.unit:
            field["unit"] = f.unit
        if f.type == "number":
            field["decimalChar"] = "."
        if f.name in spec.primary_key:
            field["constraints"] = {"required": True}
        if f.name == "category":
            field["constraints"] = {"enum": ["PUE1", "PUE2", "PUE3"]}
        fields.append(field)
    return {
        "fields": fields,
        "primaryKey": list(spec.primary_key),
        "missingValues": [""],
    }


def _stem(spec: Spec) -> str:
    return spec.name


def datapackage(pub: Publication, created: datetime) -> dict[str, Any]:
    """The ``datapackage.json`` of a publication."""
    last = pub.months[-1] if pub.months else pub.first
    return {
        "name": f"sobriety-{pub.site}".lower().replace("_", "-"),
        "title": f"Éclairage public, eau potable et énergie — {pub.name}",
        "description": (
            f"Indicateurs publiés par {pub.name} de {pub.first:%Y-%m} à {last:%Y-%m} (mois "
            f"civils, heure locale {pub.timezone}) : agrégats par commune, groupe d'éclairage "
            "ou secteur de distribution d'eau, aucune donnée personnelle."
        ),
        "licenses": [LICENCE],
        "sources": [{"title": pub.name}],
        "contributors": [{"title": pub.name, "role": "publisher"}],
        "created": created.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "keywords": ["éclairage public", "eau potable", "rendement", "énergie", "PUE"],
        "version": __version__,
        "resources": [
            {
                "name": ind.spec.name,
                "title": ind.spec.title,
                "description": ind.spec.description,
                "path": f"{_stem(ind.spec)}.csv",
                "profile": "tabular-data-resource",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "dialect": {"delimiter": ",", "header": True},
                "schema": f"{_stem(ind.spec)}.schema.json",
                "licenses": [LICENCE],
                "sources": [{"title": pub.name}],
            }
            for ind in pub.indicators
        ],
    }


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a file beside it, so that a reader never sees half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(path)


def write_publication(pub: Publication, out: Path, created: datetime) -> list[Written]:
    """Write every file of ``pub`` into the directory ``out`` (which exists)."""
    written = []
    for ind in pub.indicators:
        path = out / f"{_stem(ind.spec)}.csv"
        _write(path, csv_text(ind))
        written.append(Written(path, len(ind.rows)))
        schema = out / f"{_stem(ind.spec)}.schema.json"
        _write(schema, json.dumps(table_schema(ind.spec), ensure_ascii=False, indent=2) + "\n")
        written.append(Written(schema))
    package = out / "datapackage.json"
    text = json.dumps(datapackage(pub, created), ensure_ascii=False, indent=2) + "\n"
    _write(package, text)
    written.append(Written(package))
    page = out / "index.html"
    _write(page, render_page(pub, created))
    written.append(Written(page))
    return written
