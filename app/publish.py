"""The open data of a commune (``sobriety publish``): the indicators it publishes, month by month
in its local time, gathered from the ``api`` views and the anomaly stage's water balance into
:class:`Indicator` tables that :mod:`app.publish_files` writes as CSV with their Table Schema and
:mod:`app.publish_page` shows to citizens.

**No personal data.** Only aggregates of a site, a lighting group or a DMA are read; no device id
is ever written. The water balance of a DMA with fewer than :data:`MIN_CUSTOMER_METERS` customer
meters would come close to a household's consumption: its consumption and everything derived
from it (losses, yield, ILC, ILP, ILI, the decree's threshold) are withheld, and the row says so.

A figure that is not known is ``None`` (an empty cell), never 0: a month without data is a row
with empty figures, a sum over incomplete data is published with ``complete`` false, a CO₂e or
cost figure only where every night of the month has its factor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg

from anomaly.report import balances
from app.energy_report_base import next_month, ratio
from core.errors import UsageError

__all__ = ["INDICATORS", "MIN_CUSTOMER_METERS", "Field", "Indicator", "Publication", "Spec",
           "gather", "site_info"]  # fmt: skip

MIN_CUSTOMER_METERS = 10
"""Statistical secrecy: the consumption of a DMA with fewer customer meters is withheld."""

Row = dict[str, Any]
FieldType = Literal["yearmonth", "integer", "number", "boolean", "string"]


@dataclass(frozen=True, slots=True)
class Field:
    """A column: its stable English ``name``, Table Schema ``type``, French ``title`` and
    ``description``, ``unit``; ``digits`` written in the CSV, ``shown`` on the page."""

    name: str
    type: FieldType
    title: str
    description: str
    unit: str | None = None
    digits: int = 3
    shown: int = 1


@dataclass(frozen=True, slots=True)
class Spec:
    """An indicator's table: resource ``name`` (the file's stem), French title and description,
    columns, primary key; on the page the ``chart`` column (bars, or lines of ``series`` when
    set) and the columns of its latest figures."""

    name: str
    title: str
    description: str
    fields: tuple[Field, ...]
    primary_key: tuple[str, ...]
    chart: str
    latest: tuple[str, ...]
    series: str | None = None


@dataclass(frozen=True, slots=True)
class Indicator:
    spec: Spec
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Publication:
    """What ``sobriety publish`` writes for a site over whole months [first, end)."""

    site: str
    name: str
    timezone: str
    first: date
    end: date
    indicators: tuple[Indicator, ...]

    @property
    def months(self) -> list[date]:
        return months_between(self.first, self.end)


_MONTH = Field(
    "month", "yearmonth", "Mois", "Mois civil, à l'heure locale de la commune (AAAA-MM)."
)
_COMPLETE = "Vrai quand chaque jour (ou nuit) du mois a ses données complètes de tous les compteurs"

LIGHTING = Spec(
    "lighting_monthly", "Éclairage public",
    "Énergie de l'éclairage public par mois (les nuits comptées dans le mois de leur soirée) et "
    "ce que l'abaissement nocturne a économisé par rapport à un éclairage à pleine puissance.",
    (
        _MONTH,
        Field("nights", "integer", "Nuits avec données", "Nuits du mois ayant des mesures.",
              "nuit", 0, 0),
        Field("luminaire_nights", "integer", "Nuits-luminaires",
              "Somme, sur les nuits du mois, des luminaires mesurés.", None, 0, 0),
        Field("kwh", "number", "Consommation", "Énergie consommée par l'éclairage public.",
              "kWh", 3, 1),
        Field("baseline_kwh", "number", "Consommation sans abaissement",
              "Référence : la même durée d'allumage à pleine puissance (vide si un groupe n'en "
              "a pas).", "kWh", 3, 1),
        Field("saved_kwh", "number", "Économie due à l'abaissement",
              "Référence moins consommation.", "kWh", 3, 1),
        Field("saved_percent", "number", "Part économisée",
              "Économie rapportée à la référence.", "%", 1, 1),
        Field("kwh_per_luminaire_night", "number", "Consommation par luminaire et par nuit",
              "Consommation divisée par le nombre de nuits-luminaires.", "kWh", 4, 3),
        Field("kg_co2e", "number", "Émissions", "Émissions de gaz à effet de serre de la "
              "consommation (facteur d'émission en vigueur chaque nuit).", "kg CO2e", 3, 1),
        Field("saved_kg_co2e", "number", "Émissions évitées",
              "Émissions de l'économie due à l'abaissement.", "kg CO2e", 3, 1),
        Field("eur", "number", "Coût", "Coût de la consommation au tarif en vigueur.",
              "EUR", 2, 2),
        Field("saved_eur", "number", "Économie en euros",
              "Coût de l'économie due à l'abaissement.", "EUR", 2, 2),
        Field("complete", "boolean", "Mois complet",
              _COMPLETE + " (chaque luminaire, chaque nuit)."),
    ),
    ("month",), "kwh", ("kwh", "saved_kwh", "saved_percent", "kwh_per_luminaire_night"),
)  # fmt: skip

PUE = Spec(
    "pue_monthly", "Efficacité énergétique de la salle informatique (PUE)",
    "PUE (Power Usage Effectiveness) : énergie totale de la salle informatique divisée par "
    "l'énergie de ses équipements informatiques, sur les jours où les deux sont mesurées ; 1 "
    "serait l'idéal.",
    (
        _MONTH,
        Field("facility_kwh", "number", "Énergie totale de la salle",
              "Énergie de toute la salle (climatisation, onduleurs, équipements).", "kWh", 3, 1),
        Field("it_kwh", "number", "Énergie des équipements informatiques",
              "Énergie mesurée à l'endroit que dit la catégorie.", "kWh", 3, 1),
        Field("pue", "number", "PUE", "Énergie totale divisée par l'énergie informatique.",
              None, 3, 2),
        Field("category", "string", "Catégorie ISO/IEC 30134-2",
              "Où l'énergie informatique est mesurée : PUE1 sortie des onduleurs, PUE2 sortie "
              "des PDU, PUE3 entrée des équipements."),
        Field("interim", "boolean", "Provisoire",
              "Vrai tant que la commune a moins de douze mois de PUE : la norme le définit sur "
              "une année."),
        Field("days_paired", "integer", "Jours mesurés",
              "Jours du mois ayant les deux énergies.", "jour", 0, 0),
        Field("complete", "boolean", "Mois complet", _COMPLETE + "."),
    ),
    ("month",), "pue", ("pue", "category", "interim"),
)  # fmt: skip

WATER = Spec(
    "water_balance_monthly", "Eau potable : rendement et fuites par secteur",
    "Bilan d'eau de chaque secteur de distribution par mois : volumes introduit, exporté et "
    "consommé, pertes, rendement du réseau et seuil du décret 2012-97, indice de fuites "
    "structurelles (ILI). Consommation et indices masqués (secret statistique) pour un secteur "
    f"de moins de {MIN_CUSTOMER_METERS} compteurs d'abonnés.",
    (
        _MONTH,
        Field("dma", "string", "Secteur", "Identifiant du secteur de distribution."),
        Field("dma_name", "string", "Nom du secteur", "Nom du secteur, s'il en a un."),
        Field("customer_meters", "integer", "Compteurs d'abonnés",
              "Compteurs d'abonnés du secteur.", None, 0, 0),
        Field("inflow_m3", "number", "Volume introduit", "Eau entrée dans le secteur.", "m3",
              3, 1),
        Field("outflow_m3", "number", "Volume exporté", "Eau sortie vers un autre secteur.",
              "m3", 3, 1),
        Field("consumption_m3", "number", "Volume consommé comptabilisé",
              "Somme des compteurs d'abonnés du secteur.", "m3", 3, 1),
        Field("losses_m3", "number", "Pertes", "Introduit moins exporté moins consommé.", "m3",
              3, 1),
        Field("yield_percent", "number", "Rendement du réseau",
              "(Consommé + exporté) / introduit.", "%", 1, 1),
        Field("threshold_percent", "number", "Seuil du décret 2012-97",
              "Rendement minimal : 85 %, ou 65 + ILC/5.", "%", 1, 1),
        Field("compliant", "boolean", "Seuil atteint", "Rendement au moins égal au seuil."),
        Field("ilc_m3_km_day", "number", "Indice linéaire de consommation",
              "Volume consommé par km de réseau et par jour.", "m3/km/j", 3, 2),
        Field("ilp_m3_km_day", "number", "Indice linéaire de pertes",
              "Pertes par km de réseau et par jour.", "m3/km/j", 3, 2),
        Field("ili", "number", "Indice de fuites structurelles (ILI)",
              "Pertes réelles divisées par les pertes inévitables (formule de Lambert) ; "
              "majorant : les pertes apparentes ne sont pas séparées.", None, 2, 2),
        Field("complete", "boolean", "Mois complet",
              "Vrai quand chaque compteur du secteur a des mesures dans le mois."),
        Field("withheld", "boolean", "Masqué (secret statistique)",
              f"Vrai quand le secteur a moins de {MIN_CUSTOMER_METERS} compteurs d'abonnés : "
              "consommation et indices ne sont pas publiés."),
    ),
    ("month", "dma"), "yield_percent", ("yield_percent", "ili", "losses_m3"), series="dma",
)  # fmt: skip

REPORTING = Spec(
    "reporting_monthly", "Messages des capteurs économisés",
    "Messages radio envoyés par les capteurs et ceux que l'adaptation de leur fréquence "
    "d'émission a évités, par rapport à une émission fixe toutes les 15 minutes.",
    (
        _MONTH,
        Field("days", "integer", "Jours avec données", "Jours du mois ayant des comptages.",
              "jour", 0, 0),
        Field("messages", "integer", "Messages envoyés", "Messages reçus des capteurs.", None,
              0, 0),
        Field("baseline_messages", "integer", "Messages sans adaptation",
              "Référence : chaque mesure envoyée toutes les 15 minutes.", None, 0, 0),
        Field("saved_messages", "integer", "Messages économisés",
              "Référence moins messages envoyés.", None, 0, 0),
        Field("saved_percent", "number", "Part économisée",
              "Messages économisés rapportés à la référence.", "%", 1, 1),
        Field("radio_energy_wh", "number", "Énergie radio",
              "Énergie des émissions radio des capteurs (estimation).", "Wh", 3, 1),
        Field("saved_radio_energy_wh", "number", "Énergie radio économisée",
              "Énergie des émissions évitées (estimation).", "Wh", 3, 1),
    ),
    ("month",), "saved_messages", ("saved_messages", "saved_percent"),
)  # fmt: skip

INDICATORS = (LIGHTING, PUE, WATER, REPORTING)


def months_between(first: date, end: date) -> list[date]:
    """The first days of the months in [first, end)."""
    out = []
    while first < end:
        out.append(first)
        first = next_month(first)
    return out


def site_info(conn: psycopg.Connection, site: str) -> tuple[str, str]:
    """(name, time zone) of a site, the name defaulting to its id; :class:`UsageError` listing
    the known sites for an unknown one."""
    row = conn.execute("SELECT name, timezone FROM api.sites WHERE site = %s", (site,)).fetchone()
    if row is None:
        known = [str(r[0]) for r in conn.execute("SELECT site FROM api.sites ORDER BY 1")]
        raise UsageError(
            f"--site {site!r}: no such site; known sites: {', '.join(known) or 'none yet'}"
        )
    return str(row[0] or site), str(row[1])


def _by_month(rows: list[Any]) -> dict[date, Any]:
    return {r[0]: r for r in rows}


def _lighting(conn: psycopg.Connection, args: dict[str, Any], months: list[date]) -> list[Row]:
    found = _by_month(conn.execute(
        """WITH n AS (SELECT *, sum(luminaires) OVER (PARTITION BY night) AS night_luminaires
                      FROM api.lighting_nights
                      WHERE site = %(site)s AND night >= %(first)s AND night < %(end)s)
           SELECT date_trunc('month', night)::date, count(DISTINCT night), sum(luminaires),
                  sum(kwh), count(*), count(baseline_kwh), sum(baseline_kwh), sum(saved_kwh),
                  bool_and(complete), min(night_luminaires),
                  sum(kg_co2e), count(kg_co2e), sum(saved_kg_co2e), count(saved_kg_co2e),
                  sum(eur), count(eur), sum(saved_eur), count(saved_eur)
           FROM n GROUP BY 1""",
        args,
    ).fetchall())  # fmt: skip
    registered = _count_devices(conn, args["site"], "luminaire")
    out = []
    for month in months:
        r = found.get(month)
        row: dict[str, Any] = {"month": month, "nights": 0, "complete": False}
        if r is not None:
            rows, whole = int(r[4]), int(r[5]) == int(r[4])
            baseline, saved = (r[6], r[7]) if whole else (None, None)
            row |= {
                "nights": int(r[1]), "luminaire_nights": int(r[2]), "kwh": r[3],
                "baseline_kwh": baseline,
                "saved_kwh": saved, "saved_percent": _percent(ratio(saved, baseline)),
                "kwh_per_luminaire_night": ratio(r[3], int(r[2])),
                "complete": bool(r[8]) and int(r[1]) == _days(month)
                and int(r[9]) >= registered,
            }  # fmt: skip
            for i, name in enumerate(("kg_co2e", "saved_kg_co2e", "eur", "saved_eur")):
                row[name] = r[10 + 2 * i] if int(r[11 + 2 * i]) == rows else None
        out.append(row)
    return out


def _pue(conn: psycopg.Connection, args: dict[str, Any], months: list[date]) -> list[Row]:
    found = _by_month(conn.execute(
        """SELECT month, facility_kwh, it_kwh, pue, category, interim, days_paired, complete
           FROM api.pue_monthly
           WHERE site = %(site)s AND month >= %(first)s AND month < %(end)s""",
        args,
    ).fetchall())  # fmt: skip
    out = []
    for month in months:
        r = found.get(month)
        row: dict[str, Any] = {"month": month}
        if r is not None:
            names = ("facility_kwh", "it_kwh", "pue", "category", "interim", "days_paired",
                     "complete")  # fmt: skip
            row |= dict(zip(names, r[1:], strict=True))
        out.append(row)
    return out


def _reporting(conn: psycopg.Connection, args: dict[str, Any], months: list[date]) -> list[Row]:
    found = _by_month(conn.execute(
        """SELECT date_trunc('month', day)::date, count(DISTINCT day), sum(messages),
                  sum(baseline_messages), sum(radio_energy_wh),
                  sum(baseline_radio_energy_wh) - sum(radio_energy_wh)
           FROM api.reporting_daily
           WHERE site = %(site)s AND day >= %(first)s AND day < %(end)s GROUP BY 1""",
        args,
    ).fetchall())  # fmt: skip
    out = []
    for month in months:
        r = found.get(month)
        row: dict[str, Any] = {"month": month, "days": 0 if r is None else int(r[1])}
        if r is not None:
            baseline = None if r[3] is None else round(float(r[3]))
            messages = int(r[2])
            row |= {
                "messages": messages, "baseline_messages": baseline,
                "saved_messages": None if baseline is None else baseline - messages,
                "saved_percent": _percent(
                    ratio(None if baseline is None else baseline - messages, baseline)),
                "radio_energy_wh": r[4], "saved_radio_energy_wh": r[5],
            }  # fmt: skip
        out.append(row)
    return out


def _water(conn: psycopg.Connection, site: str, zone: str, months: list[date]) -> list[Row]:
    """A month of the anomaly stage's balance (:func:`anomaly.report.balances`) per DMA: from
    the local midnight of the month's first day to that of the next month's (in UTC, so that
    the balance's days are the month's real length: 30 days and 23 hours in March)."""
    info = {
        str(r[0]): (r[1], int(r[2]))
        for r in conn.execute(
            """SELECT m.dma, m.name, count(d.device) FILTER (WHERE d.kind = 'water_meter')
               FROM api.dmas m LEFT JOIN api.devices d ON d.site = m.site AND d.dma = m.dma
               WHERE m.site = %s GROUP BY 1, 2""",
            (site,),
        )
    }
    tz = ZoneInfo(zone)
    out = []
    for month in months:
        since = datetime(month.year, month.month, month.day, tzinfo=tz).astimezone(UTC)
        end = next_month(month)
        until = datetime(end.year, end.month, end.day, tzinfo=tz).astimezone(UTC)
        for b in sorted(balances(conn, since, until, site), key=lambda b: str(b["dma"])):
            name, customers = info.get(str(b["dma"]), (None, 0))
            out.append(_water_row(month, b, name, customers))
    return out


def _water_row(month: date, b: dict[str, Any], name: str | None, customers: int) -> dict[str, Any]:
    """One DMA's month: a role whose meters all lack data has no volume (not 0); a DMA below
    the secrecy threshold publishes its volumes in and out only."""
    meters = b["meters"]

    def known(role: str) -> bool:
        return bool(meters[role]["reporting"] > 0 or meters[role]["meters"] == 0)

    withheld = customers < MIN_CUSTOMER_METERS
    inflow = b["inflow_m3"] if meters["inlet"]["reporting"] > 0 else None
    outflow = b["outflow_m3"] if known("outlet") else None
    consumption = b["consumption_m3"] if known("customers") and not withheld else None
    row: dict[str, Any] = {
        "month": month, "dma": b["dma"], "dma_name": name, "customer_meters": customers,
        "inflow_m3": inflow, "outflow_m3": outflow, "consumption_m3": consumption,
        "complete": not b["incomplete"], "withheld": withheld,
    }  # fmt: skip
    if inflow is not None and outflow is not None and consumption is not None:
        for key in ("losses_m3", "yield_percent", "threshold_percent", "compliant",
                    "ilc_m3_km_day", "ilp_m3_km_day", "ili"):  # fmt: skip
            row[key] = b[key]
    elif consumption is not None:
        row["ilc_m3_km_day"] = b["ilc_m3_km_day"]
    return row


def _count_devices(conn: psycopg.Connection, site: str, kind: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM api.devices WHERE site = %s AND kind = %s", (site, kind)
    ).fetchone()
    return int(row[0]) if row else 0


def _days(month: date) -> int:
    return (next_month(month) - month).days


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None or math.isnan(fraction) else 100.0 * fraction


def gather(conn: psycopg.Connection, site: str, first: date, end: date) -> Publication:
    """The indicators of ``site`` over the whole months [first, end) (first days)."""
    name, zone = site_info(conn, site)
    months = months_between(first, end)
    args = {"site": site, "first": first, "end": end}
    tables = (
        (LIGHTING, _lighting(conn, args, months)),
        (PUE, _pue(conn, args, months)),
        (WATER, _water(conn, site, zone, months)),
        (REPORTING, _reporting(conn, args, months)),
    )
    return Publication(
        site, name, zone, first, end, tuple(Indicator(s, tuple(r)) for s, r in tables)
    )
