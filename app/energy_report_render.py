"""The month of a commune in energy, written for people (``sobriety energy report``): a table,
CSV, JSON or a PNG of two charts (each night's lighting energy against its no-dimming baseline,
each day's PUE), French by default, English with ``--lang en``. Pure: a
:class:`app.energy_report.MonthReport` in, text or a file out; no database.

Every figure goes with its completeness (a section's periods complete out of the month's, hours
missing, device-days absent): an incomplete month says so in the table, in each CSV row's
``status``, in the JSON's ``coverage`` and in the charts' titles; a figure that cannot be given
says why (no data, no tariff, not available)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson

from app.energy_report import Coverage, Extra, Factor, MonthReport

__all__ = ["LABELS", "Chart", "Figure", "as_dict", "figures", "render_csv", "render_json",
           "render_png", "render_table"]  # fmt: skip

Lang = Literal["fr", "en"]

LABELS: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Énergie de la commune {site}{name} — {month} (heure locale : {tz})",
        "in_progress": "Mois en cours : chiffres provisoires jusqu'à sa fin.",
        "no_data": "Aucune donnée d'énergie pour ce site ce mois-ci.",
        "lighting": "Éclairage public (nuits dont la soirée tombe dans le mois)",
        "pumping": "Pompage",
        "pue": "Salle serveurs (PUE, ISO/IEC 30134-2)",
        "service": "Énergie du service de supervision (toute l'installation)",
        "factors": "Facteurs utilisés (versions)",
        "kwh": "énergie", "baseline_kwh": "référence sans gradation", "saved_kwh": "économie",
        "saved_fraction": "économie relative", "saved_eur": "économie en euros",
        "saved_kg_co2e": "émissions évitées", "eur": "coût", "kg_co2e": "émissions",
        "kwh_per_luminaire_night": "kWh par luminaire-nuit", "luminaires": "luminaires",
        "luminaire_nights": "luminaires-nuits", "m3": "volume pompé", "kwh_per_m3": "kWh par m³",
        "eur_per_m3": "coût par m³", "pumps": "pompes", "pue_value": "PUE du mois",
        "category": "catégorie", "interim": "statut", "months": "mois de PUE",
        "facility_kwh": "énergie totale de la salle", "it_kwh": "énergie informatique",
        "readings": "mesures enregistrées", "kwh_per_1000_readings": "kWh pour 1 000 mesures",
        "methods": "méthode", "periods": "périodes du mois", "with_data": "avec données",
        "complete": "complètes", "missing_hours": "heures manquantes",
        "volume_missing_hours": "heures manquantes (volume)", "absent": "absents",
        "coverage": "complétude", "nights": "nuits", "days": "jours",
        "coverage_line": "{unit} {done} {complete}/{periods} ({with_data} avec données) ; "
        "heures manquantes {missing} h ; {absent_unit} absents : {absent}",
        "done_nights": "complètes", "done_days": "complets",
        "incomplete": "INCOMPLET", "whole": "complet", "none_eur": "pas de tarif",
        "none_co2e": "pas de facteur CO₂e", "unavailable": "non disponible",
        "partial": "partiel", "n/a": "—", "no_figure": "pas de données", "interim_yes":
        "provisoire ({months} mois sur 12)", "interim_no": "sur douze mois",
        "device_days": "jours-compteur", "luminaire_nights_absent": "luminaires-nuits",
        "since": "depuis", "factor_id": "n° {id} :", "co2e": "CO₂e", "tariff": "tarif",
        "PUE1": "informatique mesurée en sortie d'onduleur",
        "PUE2": "informatique mesurée en sortie de PDU",
        "PUE3": "informatique mesurée à l'entrée des équipements",
        "none_factor": "aucun facteur enregistré pour ce mois",
        "chart_lighting": "Éclairage public : énergie par nuit",
        "chart_measured": "mesurée", "chart_baseline": "sans gradation (référence)",
        "chart_incomplete": "nuit incomplète", "chart_pue": "PUE par jour",
        "chart_pue_incomplete": "jour incomplet", "chart_night": "nuit (date de la soirée)",
        "chart_day": "jour",
    },
    "en": {
        "title": "Energy of the commune {site}{name} — {month} (local time: {tz})",
        "in_progress": "Month in progress: figures are provisional until it ends.",
        "no_data": "No energy data for this site in this month.",
        "lighting": "Public lighting (nights whose evening falls in the month)",
        "pumping": "Pumping",
        "pue": "Server room (PUE, ISO/IEC 30134-2)",
        "service": "Energy of the supervision service (the whole install)",
        "factors": "Factors used (versions)",
        "kwh": "energy", "baseline_kwh": "no-dimming baseline", "saved_kwh": "saved",
        "saved_fraction": "saved fraction", "saved_eur": "saved in euros",
        "saved_kg_co2e": "emissions avoided", "eur": "cost", "kg_co2e": "emissions",
        "kwh_per_luminaire_night": "kWh per luminaire-night", "luminaires": "luminaires",
        "luminaire_nights": "luminaire-nights", "m3": "volume pumped", "kwh_per_m3": "kWh per m³",
        "eur_per_m3": "cost per m³", "pumps": "pumps", "pue_value": "PUE of the month",
        "category": "category", "interim": "status", "months": "months of PUE",
        "facility_kwh": "facility energy", "it_kwh": "IT energy",
        "readings": "readings stored", "kwh_per_1000_readings": "kWh per 1,000 readings",
        "methods": "method", "periods": "periods of the month", "with_data": "with data",
        "complete": "complete", "missing_hours": "missing hours",
        "volume_missing_hours": "missing hours (volume)", "absent": "absent",
        "coverage": "completeness", "nights": "nights", "days": "days",
        "coverage_line": "{done} {unit} {complete}/{periods} ({with_data} with data); "
        "missing hours {missing} h; absent {absent_unit}: {absent}",
        "done_nights": "complete", "done_days": "complete",
        "incomplete": "INCOMPLETE", "whole": "complete", "none_eur": "no tariff",
        "none_co2e": "no CO₂e factor", "unavailable": "not available",
        "partial": "partial", "n/a": "—", "no_figure": "no data", "interim_yes":
        "interim ({months} of 12 months)", "interim_no": "over twelve months",
        "device_days": "meter-days", "luminaire_nights_absent": "luminaire-nights",
        "since": "since", "factor_id": "#{id}:", "co2e": "CO₂e", "tariff": "tariff",
        "PUE1": "IT measured at the UPS output", "PUE2": "IT measured at the PDU output",
        "PUE3": "IT measured at the IT equipment's input",
        "none_factor": "no factor recorded for this month",
        "chart_lighting": "Public lighting: energy per night",
        "chart_measured": "measured", "chart_baseline": "without dimming (baseline)",
        "chart_incomplete": "incomplete night", "chart_pue": "PUE per day",
        "chart_pue_incomplete": "incomplete day", "chart_night": "night (date of the evening)",
        "chart_day": "day",
    },
}  # fmt: skip

MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
}  # fmt: skip

CSV_COLUMNS = ("section", "figure", "value", "of", "unit", "status", "label")


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of the report: ``value`` (``of`` its denominator for a count of periods), its
    ``unit`` and ``status``: ``ok``, ``incomplete`` (its section's month is not whole),
    ``partial``, ``none`` (no tariff or factor), ``unavailable`` (not in this database),
    ``no_data``."""

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


def figures(report: MonthReport) -> list[Figure]:
    """Every figure of the report, in the order the table and the CSV give them."""
    out: list[Figure] = []
    li, pu, pue, sv = report.lighting, report.pumping, report.pue, report.service

    def add(section: str, name: str, value: Any, unit: str, base: str) -> None:
        out.append(Figure(section, name, value, unit, base if value is not None else "no_data"))

    base = "ok" if li.coverage.whole else "incomplete"
    for name, value, unit in (
        ("kwh", li.kwh, "kWh"), ("baseline_kwh", li.baseline_kwh, "kWh"),
        ("saved_kwh", li.saved_kwh, "kWh"),
        ("saved_fraction", None if li.saved_fraction is None else 100 * li.saved_fraction, "%"),
    ):  # fmt: skip
        add("lighting", name, value, unit, base)
    out.append(_extra("lighting", "saved_eur", li.saved_eur, "EUR", base))
    out.append(_extra("lighting", "saved_kg_co2e", li.saved_kg_co2e, "kg CO2e", base))
    out.append(_extra("lighting", "eur", li.eur, "EUR", base))
    out.append(_extra("lighting", "kg_co2e", li.kg_co2e, "kg CO2e", base))
    add("lighting", "kwh_per_luminaire_night", li.kwh_per_luminaire_night, "kWh", base)
    out.append(Figure("lighting", "luminaires", li.luminaires, "", "ok"))
    out.append(Figure("lighting", "luminaire_nights", li.luminaire_nights, "", base))
    out += _coverage_figures("lighting", li.coverage, "nights", "luminaire-nights")

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


def _num(value: float, digits: int, lang: Lang) -> str:
    text = f"{value:,.{digits}f}"
    if lang == "fr":
        text = text.replace(",", "\u202f").replace(".", ",")  # narrow no-break space
    return text


_DIGITS = {"kWh": 1, "EUR": 2, "kg CO2e": 1, "%": 1, "m3": 1, "kWh/m3": 3, "EUR/m3": 3, "h": 1}
_PRECISE = {"kwh_per_luminaire_night": 3, "kwh_per_1000_readings": 4, "pue_value": 2}


def _value(fig: Figure, lang: Lang, report: MonthReport) -> str:
    lab = LABELS[lang]
    if fig.value is None:
        if fig.status == "none":
            return lab["none_eur"] if "EUR" in fig.unit else lab["none_co2e"]
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
    text = _num(float(fig.value), digits, lang)
    if fig.of is not None:
        text += f" / {fig.of}"
    if fig.unit in ("luminaire-nights", "meter-days", "months"):
        unit = ""
    text = f"{text} {unit}".rstrip()
    if fig.status == "partial":
        text += f" ({lab['partial']})"
    return text


def _coverage_line(cov: Coverage, unit: str, absent_unit: str, lang: Lang) -> str:
    lab = LABELS[lang]
    state = lab["whole"] if cov.whole else lab["incomplete"]
    text = lab["coverage_line"].format(
        complete=cov.complete, periods=cov.periods, with_data=cov.with_data, unit=lab[unit],
        done=lab[f"done_{unit}"],
        missing=_num(cov.missing_hours, 1, lang), absent=cov.absent, absent_unit=lab[absent_unit],
    )  # fmt: skip
    return f"{state} : {text}" if lang == "fr" else f"{state}: {text}"


def month_name(month: date, lang: Lang) -> str:
    return f"{MONTHS[lang][month.month - 1]} {month.year}"


def _title(report: MonthReport, lang: Lang) -> str:
    name = f" ({report.name})" if report.name else ""
    month = month_name(report.month, lang)
    return LABELS[lang]["title"].format(
        site=report.site, name=name, month=month, tz=report.timezone
    )


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
    lines = [_title(report, lang)]
    if report.in_progress:
        lines.append(lab["in_progress"])
    if not report.has_data:
        lines.append(lab["no_data"])
    covers = {
        "lighting": (report.lighting.coverage, "nights", "luminaire_nights_absent"),
        "pumping": (report.pumping.coverage, "days", "device_days"),
        "pue": (report.pue.coverage, "days", "device_days"),
    }
    section = ""
    for fig in figures(report):
        if fig.section == "factors":
            continue
        if fig.section != section:
            section = fig.section
            lines += ["", lab[section]]
            if section in covers:
                line = _coverage_line(*covers[section], lang)
                lines.append(f"  {lab['coverage']:<28} {line}")
        if (fig.section in covers and fig.figure in _COVERAGE_KEYS) or fig.figure == "months":
            continue
        label = lab["coverage"] if fig.figure == "with_data" else lab[fig.figure]
        lines.append(f"  {label:<28} {_value(fig, lang, report)}")
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
    lab = LABELS[lang]
    factors = iter(report.factors)
    for fig in figures(report):
        label = lab.get(fig.figure, "")
        if fig.section == "factors":
            label = _factor_line(next(factors), lang)
        out.writerow((fig.section, fig.figure, "" if fig.value is None else fig.value,
                      "" if fig.of is None else fig.of, fig.unit, fig.status, label))  # fmt: skip
    return buf.getvalue()


def as_dict(report: MonthReport) -> dict[str, Any]:
    """The report as plain data, the derived figures (per luminaire-night, per m³, per 1,000
    readings, fractions, each coverage's ``whole``) included."""
    data = asdict(report)
    data["has_data"] = report.has_data
    for section in ("lighting", "pumping", "pue"):
        data[section]["coverage"]["whole"] = getattr(report, section).coverage.whole
    return data


def render_json(report: MonthReport) -> str:
    """The report as one JSON object (keys in English, dates ISO 8601)."""
    return orjson.dumps(as_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n"


@dataclass(frozen=True, slots=True)
class Chart:
    """What :func:`render_png` drew: the nights and days on the x axes, and their values."""

    nights: list[date]
    kwh: list[float]
    baseline_kwh: list[float | None]
    night_complete: list[bool]
    pue_days: list[date]
    pue: list[float | None]
    size_px: tuple[int, int]


def render_png(report: MonthReport, path: Path, lang: Lang = "fr") -> Chart:
    """Two charts into ``path`` (PNG, Agg backend): each night's lighting energy (bars,
    incomplete nights grey and hatched) against its no-dimming baseline, and each day's PUE
    (incomplete days hollow); every title states its completeness, the x axes (the day of the
    month) span the whole month so a missing night or day shows as a gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lab, li, pue = LABELS[lang], report.lighting, report.pue
    dpi, size = 100, (11.0, 8.5)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=size, dpi=dpi, layout="constrained")
    fig.suptitle(_title(report, lang) + ("\n" + lab["in_progress"] if report.in_progress else ""))
    x = [n.night.day for n in li.nights]
    kwh, baseline = [n.kwh for n in li.nights], [n.baseline_kwh for n in li.nights]
    for n, bar in zip(li.nights, top.bar(x, kwh, width=0.8, color="#2b6cb0"), strict=True):
        if not n.complete:
            bar.set_facecolor("#a0aec0")
            bar.set_hatch("//")
    top.plot(x, [float("nan") if b is None else b for b in baseline], "o-", color="#dd6b20",
             markersize=3)  # fmt: skip
    handles = [Patch(color="#2b6cb0", label=lab["chart_measured"]),
               Patch(facecolor="#a0aec0", hatch="//", label=lab["chart_incomplete"]),
               Line2D([], [], marker="o", markersize=3, color="#dd6b20",
                          label=lab["chart_baseline"])]  # fmt: skip
    line = _coverage_line(li.coverage, "nights", "luminaire_nights_absent", lang)
    top.set_title(f"{lab['chart_lighting']} — {line}", fontsize=9)
    top.set(ylabel="kWh", xlabel=lab["chart_night"])
    tops = [v for v in (*kwh, *baseline) if v is not None]
    top.set_ylim(0, 1.3 * max(tops) if tops else 1)
    top.legend(handles=handles, fontsize=8, loc="upper left", ncols=3)
    days = [d.day.day for d in pue.days]
    values = [d.pue for d in pue.days]
    bottom.plot(days, [float("nan") if v is None else v for v in values], "-", color="#2f855a")
    for done, face, label in ((True, "#2f855a", "PUE"), (False, "white", "chart_pue_incomplete")):
        points = [(d.day.day, d.pue) for d in pue.days if d.complete is done and d.pue is not None]
        if points:
            bottom.plot(*zip(*points, strict=True), "o", color="#2f855a", mfc=face,
                        label=lab.get(label, label))  # fmt: skip
    status = ""
    if pue.category:
        interim = lab["interim_yes" if pue.interim else "interim_no"].format(months=pue.months)
        status = f" ({pue.category}, {interim})"
    line = _coverage_line(pue.coverage, "days", "device_days", lang)
    bottom.set_title(f"{lab['chart_pue']}{status} — {line}", fontsize=9)
    bottom.set(ylabel="PUE", xlabel=lab["chart_day"])
    if any(v is not None for v in values):
        bottom.legend(fontsize=8, loc="upper left")
    for ax, empty in ((top, not x), (bottom, all(v is None for v in values))):
        if empty:
            ax.text(0.5, 0.5, lab["no_figure"], transform=ax.transAxes, ha="center")
        ax.set_xlim(0.4, report.days + 0.6)
        ax.set_xticks(range(1, report.days + 1, 2))
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png", dpi=dpi)
    plt.close(fig)
    pixels = (round(size[0] * dpi), round(size[1] * dpi))
    nights, complete = [n.night for n in li.nights], [n.complete for n in li.nights]
    return Chart(nights, kwh, baseline, complete, [d.day for d in pue.days], values, pixels)
