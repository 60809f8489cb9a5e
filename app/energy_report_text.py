"""The words of ``sobriety energy report``: its labels in French (the default) and English,
and the few helpers that write a number, a month, the title or a section's completeness in
them; shared by :mod:`app.energy_report_render` (table, CSV) and :mod:`app.energy_report_png`.
A label is found by figure (``kwh``) or, where a section words it its own way, by
``section.figure`` (``cabinets.kwh``); table labels fit in 28 characters."""

from __future__ import annotations

from datetime import date
from typing import Literal

from app.energy_report import MonthReport
from app.energy_report_base import Coverage

__all__ = ["LABELS", "MONTHS", "Lang", "coverage_line", "label", "month_name", "num", "title"]

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
        "cabinets": "Armoires d'éclairage (compteur de l'armoire, ses luminaires)",
        "cabinets.cabinets": "armoires", "cabinet_nights": "armoires-nuits",
        "cabinet_nights_complete": "armoires-nuits complètes",
        "cabinets.kwh": "énergie des armoires",
        "luminaires_kwh": "énergie de leurs luminaires", "measured": "luminaires mesurés",
        "compared": "armoires-nuits comparées", "difference_kwh": "pertes et charges inconnues",
        "difference_fraction": "part pertes et inconnues",
        "program_nights": "nuits à réf. des programmes",
        "program_baseline_kwh": "référence des programmes",
        "program_saved_kwh": "économie (réf. programmes)",
        "program_saved_fraction": "économie relative (progr.)",
        "cabinet_nights_absent": "armoires-nuits",
        "none_cabinets": "aucune armoire sur ce site",
        "none_cabinet_nights": "aucune nuit d'armoire ce mois-ci",
        "none_program": "aucune (pas d'armoire sans luminaire mesuré)",
        "kwh_per_km": "kWh par km de rue", "km_groups": "groupes avec longueur de rue",
        "street_km": "longueur de rue", "none_km": "aucune (pas de groupe avec longueur de rue)",
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
        "cabinets": "Lighting cabinets (the cabinet meter beside its luminaires)",
        "cabinets.cabinets": "cabinets", "cabinet_nights": "cabinet-nights",
        "cabinet_nights_complete": "cabinet-nights complete", "cabinets.kwh": "cabinet energy",
        "luminaires_kwh": "their luminaires' energy", "measured": "luminaires measured",
        "compared": "cabinet-nights compared", "difference_kwh": "losses and unknown loads",
        "difference_fraction": "share lost or unknown",
        "program_nights": "nights on program baseline",
        "program_baseline_kwh": "program baseline",
        "program_saved_kwh": "saved (program baseline)",
        "program_saved_fraction": "saved fraction (program)",
        "cabinet_nights_absent": "cabinet-nights",
        "none_cabinets": "none: no lighting cabinet at this site",
        "none_cabinet_nights": "none: no cabinet night this month",
        "none_program": "none (no cabinet without measured luminaires)",
        "kwh_per_km": "kWh per km of street", "km_groups": "groups with a street length",
        "street_km": "street length", "none_km": "none (no group has a street length)",
    },
}  # fmt: skip

MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
}  # fmt: skip


def num(value: float, digits: int, lang: Lang) -> str:
    text = f"{value:,.{digits}f}"
    if lang == "fr":
        text = text.replace(",", "\u202f").replace(".", ",")  # narrow no-break space
    return text


def coverage_line(cov: Coverage, unit: str, absent_unit: str, lang: Lang) -> str:
    lab = LABELS[lang]
    state = lab["whole"] if cov.whole else lab["incomplete"]
    text = lab["coverage_line"].format(
        complete=cov.complete, periods=cov.periods, with_data=cov.with_data, unit=lab[unit],
        done=lab[f"done_{unit}"],
        missing=num(cov.missing_hours, 1, lang), absent=cov.absent, absent_unit=lab[absent_unit],
    )  # fmt: skip
    return f"{state} : {text}" if lang == "fr" else f"{state}: {text}"


def month_name(month: date, lang: Lang) -> str:
    return f"{MONTHS[lang][month.month - 1]} {month.year}"


def title(report: MonthReport, lang: Lang) -> str:
    name = f" ({report.name})" if report.name else ""
    month = month_name(report.month, lang)
    return LABELS[lang]["title"].format(
        site=report.site, name=name, month=month, tz=report.timezone
    )


def label(lang: Lang, section: str, figure: str) -> str:
    """The label of ``figure`` in ``section`` (its own wording first), ``""`` for none."""
    lab = LABELS[lang]
    return lab.get(f"{section}.{figure}", lab.get(figure, ""))
