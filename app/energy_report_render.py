"""The month of a commune in energy, written for people (``sobriety energy report``): a table,
CSV, JSON or a PNG of two charts (:mod:`app.energy_report_png`), French by default, English with
``--lang en`` (the words: :mod:`app.energy_report_text`). Pure: a
:class:`app.energy_report.MonthReport` in, text or a file out; no database.

Every figure goes with its completeness (a section's periods complete out of the month's, hours
missing, device-days absent): an incomplete month says so in the table, in each CSV row's
``status``, in the JSON's ``coverage`` and in the charts' titles; a figure that cannot be given
says why (no data, no tariff, no cabinet, no street length, not available)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from app.energy_report import Cabinets, Coverage, Extra, Factor, Lighting, MonthReport
from app.energy_report_png import Chart, render_png
from app.energy_report_text import LABELS, Lang, coverage_line, label, num, title

__all__ = ["LABELS", "Chart", "Figure", "MonthReport", "as_dict", "figures", "render_csv",
           "render_json", "render_png", "render_table"]  # fmt: skip

CSV_COLUMNS = ("section", "figure", "value", "of", "unit", "status", "label")


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of the report: ``value`` (``of`` its denominator for a count of periods), its
    ``unit`` and ``status``: ``ok``, ``incomplete`` (its section's month is not whole),
    ``partial``, ``none`` (no tariff or factor, no cabinet, no street length),
    ``unavailable`` (not in this database), ``no_data``."""

    section: str
    figure: str
    value: float | int | str | bool | None
    unit: str
    status: str
    of: int | None = None


_COVERAGE_KEYS = ("periods", "with_data", "complete", "missing_hours", "absent")


def _coverage_figures(section: str, cov: Coverage, unit: str, absent_unit: str) -> list[Figure]:
    return [
        Figure(section, "periods", cov.periods, unit, "ok"),
        Figure(section, "with_data", cov.with_data, unit, "ok", cov.periods),
        Figure(section, "complete", cov.complete, unit, "ok", cov.periods),
        Figure(section, "missing_hours", cov.missing_hours, "h", "ok"),
        Figure(section, "absent", cov.absent, absent_unit, "ok"),
    ]


def _extra(section: str, name: str, extra: Extra, unit: str, base: str) -> Figure:
    status = base if extra.status == "ok" else extra.status
    return Figure(section, name, extra.value, unit, status)


def _given(section: str, name: str, value: Any, unit: str, base: str, of: int | None = None,
           *, partial: bool = False) -> Figure:  # fmt: skip
    """A figure with ``base`` status (``partial`` if so), ``no_data`` without a value."""
    status = "no_data" if value is None else "partial" if partial else base
    return Figure(section, name, value, unit, status, of)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _lighting_figures(li: Lighting) -> list[Figure]:
    base = "ok" if li.coverage.whole else "incomplete"
    out = [_given("lighting", name, value, unit, base) for name, value, unit in (
        ("kwh", li.kwh, "kWh"), ("baseline_kwh", li.baseline_kwh, "kWh"),
        ("saved_kwh", li.saved_kwh, "kWh"), ("saved_fraction", _percent(li.saved_fraction), "%"),
    )]  # fmt: skip
    out.append(_extra("lighting", "saved_eur", li.saved_eur, "EUR", base))
    out.append(_extra("lighting", "saved_kg_co2e", li.saved_kg_co2e, "kg CO2e", base))
    out.append(_extra("lighting", "eur", li.eur, "EUR", base))
    out.append(_extra("lighting", "kg_co2e", li.kg_co2e, "kg CO2e", base))
    out.append(_given("lighting", "kwh_per_luminaire_night", li.kwh_per_luminaire_night, "kWh",
                      base))  # fmt: skip
    if li.km_groups:
        out.append(_given("lighting", "kwh_per_km", li.kwh_per_km, "kWh/km", base))
        out.append(_given("lighting", "street_km", li.street_km, "km", "ok"))
    else:  # groups without a length: "none"; no night at all: no data
        status = "none" if li.groups else "no_data"
        out += [Figure("lighting", "kwh_per_km", None, "kWh/km", status),
                Figure("lighting", "street_km", None, "km", status)]  # fmt: skip
    out.append(Figure("lighting", "km_groups", li.km_groups, "", "ok", li.groups))
    out.append(Figure("lighting", "luminaires", li.luminaires, "", "ok"))
    out.append(Figure("lighting", "luminaire_nights", li.luminaire_nights, "", base))
    return out + _coverage_figures("lighting", li.coverage, "nights", "luminaire-nights")


def _cabinet_figures(ca: Cabinets) -> list[Figure]:
    """The cabinet section; without a cabinet night it says "none" (never 0), its coverage
    stated where the site has cabinets registered."""
    coverage = _coverage_figures("cabinets", ca.coverage, "nights", "cabinet-nights")
    if ca.status == "unavailable":
        return [Figure("cabinets", "cabinets", None, "", "unavailable")]
    if ca.status == "none":
        if not ca.cabinets:
            return [Figure("cabinets", "cabinets", None, "", "none")]
        return [Figure("cabinets", "cabinets", ca.cabinets, "", "ok"),
                Figure("cabinets", "cabinet_nights", None, "", "none"), *coverage]  # fmt: skip
    base = "ok" if ca.coverage.whole else "incomplete"
    nights, program = ca.cabinet_nights, "ok" if ca.program_nights else "none"
    return [
        Figure("cabinets", "cabinets", ca.cabinets, "", "ok"),
        Figure("cabinets", "cabinet_nights", nights, "", base),
        Figure("cabinets", "cabinet_nights_complete", ca.complete, "", base, nights),
        _given("cabinets", "kwh", ca.kwh, "kWh", base),
        _given("cabinets", "luminaires_kwh", ca.luminaires_kwh, "kWh", base,
               partial=ca.measured < ca.luminaire_nights),
        Figure("cabinets", "measured", ca.measured, "", base, ca.luminaire_nights),
        _given("cabinets", "difference_kwh", ca.difference_kwh, "kWh", base,
               partial=ca.compared < nights),
        _given("cabinets", "difference_fraction", _percent(ca.difference_fraction), "%", base,
               partial=ca.compared < nights),
        Figure("cabinets", "compared", ca.compared, "", base, nights),
        Figure("cabinets", "program_nights", ca.program_nights, "", base, nights),
        *(_given("cabinets", name, value, unit, base) if ca.program_nights
          else Figure("cabinets", name, None, unit, program) for name, value, unit in (
              ("program_baseline_kwh", ca.program_baseline_kwh, "kWh"),
              ("program_saved_kwh", ca.program_saved_kwh, "kWh"),
              ("program_saved_fraction", _percent(ca.program_saved_fraction), "%"))),
        *coverage,
    ]  # fmt: skip


def figures(report: MonthReport) -> list[Figure]:
    """Every figure of the report, in the order the table and the CSV give them."""
    out = _lighting_figures(report.lighting) + _cabinet_figures(report.cabinets)
    pu, pue, sv = report.pumping, report.pue, report.service

    def add(section: str, name: str, value: Any, unit: str, base: str) -> None:
        out.append(_given(section, name, value, unit, base))

    base = "ok" if pu.coverage.whole and pu.volume_missing_hours < 1e-3 else "incomplete"
    for name, value, unit in (("kwh", pu.kwh, "kWh"), ("m3", pu.m3, "m3"),
                              ("kwh_per_m3", pu.kwh_per_m3, "kWh/m3")):  # fmt: skip
        add("pumping", name, value, unit, base)
    out.append(_extra("pumping", "eur", pu.eur, "EUR", base))
    out.append(_extra("pumping", "kg_co2e", pu.kg_co2e, "kg CO2e", base))
    status = pu.eur.status if pu.eur.status != "ok" else base
    out.append(Figure("pumping", "eur_per_m3", pu.eur_per_m3, "EUR/m3", status))
    out.append(Figure("pumping", "pumps", pu.pumps, "", "ok"))
    out += _coverage_figures("pumping", pu.coverage, "days", "meter-days")
    out.append(Figure("pumping", "volume_missing_hours", pu.volume_missing_hours, "h", "ok"))

    base = "ok" if pue.coverage.whole else "incomplete"
    add("pue", "pue_value", pue.pue, "", base)
    add("pue", "category", pue.category, "", "ok")
    add("pue", "interim", pue.interim, "", "ok")
    out.append(Figure("pue", "months", pue.months, "months", "ok"))
    add("pue", "facility_kwh", pue.facility_kwh, "kWh", base)
    add("pue", "it_kwh", pue.it_kwh, "kWh", base)
    out += _coverage_figures("pue", pue.coverage, "days", "meter-days")

    if not sv.available:
        out += [Figure("service", n, None, u, "unavailable") for n, u in
                (("kwh", "kWh"), ("readings", ""), ("kwh_per_1000_readings", "kWh"))]  # fmt: skip
    else:
        base = "ok" if sv.days_with_data == report.days else "incomplete"
        add("service", "kwh", sv.kwh, "kWh", base)
        out.append(Figure("service", "readings", sv.readings, "", base))
        add("service", "kwh_per_1000_readings", sv.kwh_per_1000_readings, "kWh", base)
        out.append(Figure("service", "methods", ", ".join(sv.methods) or None, "", "ok"))
        out.append(Figure("service", "with_data", sv.days_with_data, "days", "ok", report.days))
    for f in report.factors:
        out.append(Figure("factors", f.kind, f.value, f.unit, "ok"))
    return out


_DIGITS = {"kWh": 1, "EUR": 2, "kg CO2e": 1, "%": 1, "m3": 1, "kWh/m3": 3, "EUR/m3": 3, "h": 1,
           "kWh/km": 1, "km": 2}  # fmt: skip
_PRECISE = {"kwh_per_luminaire_night": 3, "kwh_per_1000_readings": 4, "pue_value": 2}
_NONE = {"cabinets": "none_cabinets", "cabinet_nights": "none_cabinet_nights",
         "kwh_per_km": "none_km", "street_km": "none_km", "program_baseline_kwh": "none_program",
         "program_saved_kwh": "none_program", "program_saved_fraction": "none_program"}  # fmt: skip
"""What "none" means, by figure (else: no tariff, or no CO₂e factor)."""


def _value(fig: Figure, lang: Lang, report: MonthReport) -> str:
    lab = LABELS[lang]
    if fig.value is None:
        if fig.status == "none":
            return lab[_NONE.get(fig.figure, "none_eur" if "EUR" in fig.unit else "none_co2e")]
        return lab["unavailable"] if fig.status == "unavailable" else lab["no_figure"]
    if fig.figure == "interim":
        return lab["interim_yes" if fig.value else "interim_no"].format(months=report.pue.months)
    if fig.figure == "category" and isinstance(fig.value, str):
        return f"{fig.value} ({lab[fig.value]})" if fig.value in lab else fig.value
    if isinstance(fig.value, str):
        return fig.value
    digits = _PRECISE.get(fig.figure, _DIGITS.get(fig.unit, 0))
    unit = {"kg CO2e": "kg CO₂e", "m3": "m³", "kWh/m3": "kWh/m³", "EUR": "€", "EUR/m3": "€/m³",
            "nights": lab["nights"], "days": lab["days"]}.get(fig.unit, fig.unit)  # fmt: skip
    text = num(float(fig.value), digits, lang)
    if fig.of is not None:
        text += f" / {fig.of}"
    if fig.unit in ("luminaire-nights", "cabinet-nights", "meter-days", "months"):
        unit = ""
    text = f"{text} {unit}".rstrip()
    if fig.status == "partial":
        text += f" ({lab['partial']})"
    return text


def _factor_line(f: Factor, lang: Lang) -> str:
    where = f", {f.site}" if f.site else ""
    source = f" — {f.source}" if f.source else ""
    lab = LABELS[lang]
    head = lab["factor_id"].format(id=f.id)
    value = f"{f.value:g}".replace(".", "," if lang == "fr" else ".")
    kind = lab.get(f.kind, f.kind)
    return f"{head} {kind}{where}, {value} {f.unit}, {lab['since']} {f.valid_from}{source}"


def render_table(report: MonthReport, lang: Lang = "fr") -> str:
    """The report as aligned text: a title, then each section with its completeness first."""
    lab = LABELS[lang]
    lines = [title(report, lang)]
    if report.in_progress:
        lines.append(lab["in_progress"])
    if not report.has_data:
        lines.append(lab["no_data"])
    covers = {
        "lighting": (report.lighting.coverage, "nights", "luminaire_nights_absent"),
        "pumping": (report.pumping.coverage, "days", "device_days"),
        "pue": (report.pue.coverage, "days", "device_days"),
    }
    ca = report.cabinets
    if ca.status == "ok" or (ca.status == "none" and ca.cabinets):
        covers["cabinets"] = (ca.coverage, "nights", "cabinet_nights_absent")
    section = ""
    for fig in figures(report):
        if fig.section == "factors":
            continue
        if fig.section != section:
            section = fig.section
            lines += ["", lab[section]]
            if section in covers:
                line = coverage_line(*covers[section], lang)
                lines.append(f"  {lab['coverage']:<28} {line}")
        if (fig.section in covers and fig.figure in _COVERAGE_KEYS) or fig.figure == "months":
            continue
        name = lab["coverage"] if fig.figure == "with_data" else label(lang, section, fig.figure)
        lines.append(f"  {name:<28} {_value(fig, lang, report)}")
    lines += ["", lab["factors"]]
    lines += [f"  {_factor_line(f, lang)}" for f in report.factors] or [
        f"  {lab['none_factor'] if report.factors_available else lab['unavailable']}"
    ]
    return "\n".join(lines) + "\n"


def render_csv(report: MonthReport, lang: Lang = "fr") -> str:
    """One row per figure: ``section,figure,value,of,unit,status,label`` (values unformatted,
    ``label`` in ``lang``); the month's completeness in each section's own rows."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    factors = iter(report.factors)
    for fig in figures(report):
        name = label(lang, fig.section, fig.figure)
        if fig.section == "factors":
            name = _factor_line(next(factors), lang)
        out.writerow((fig.section, fig.figure, "" if fig.value is None else fig.value,
                      "" if fig.of is None else fig.of, fig.unit, fig.status, name))  # fmt: skip
    return buf.getvalue()


def as_dict(report: MonthReport) -> dict[str, Any]:
    """The report as plain data, the derived figures (per luminaire-night, per km, per m³, per
    1,000 readings, fractions, each coverage's ``whole``) included."""
    data = asdict(report)
    data["has_data"] = report.has_data
    for section in ("lighting", "cabinets", "pumping", "pue"):
        data[section]["coverage"]["whole"] = getattr(report, section).coverage.whole
    return data


def render_json(report: MonthReport) -> str:
    """The report as one JSON object (keys in English, dates ISO 8601)."""
    return orjson.dumps(as_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n"
