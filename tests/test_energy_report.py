"""``sobriety energy report``: the month of a commune, every printed figure against the SQL truth
computed here from the stage's own tables (never from the report's views), the completeness of
every section stated, the CSV, JSON and PNG forms, the English labels, the errors; once over
rows written with known values (a month with a gap in every section), once over two days of the
simulated town through the ingest, the rollup and the energy stage."""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
import struct
import subprocess
import time
import uuid
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from app import energy_report_render as render
from app.cli import main
from app.energy_report import Extra, Service, month_report
from core.db import upgrade
from tests.fix_db import register

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parent.parent
PARIS = ZoneInfo("Europe/Paris")
MARCH = date(2025, 3, 1)  # 31 nights, the change to summer time in the night of the 29th
NNBSP = "\u202f"


def _fr(value: float, digits: int) -> str:
    """A number as the French table writes it (narrow no-break space, decimal comma)."""
    return f"{value:,.{digits}f}".replace(",", NNBSP).replace(".", ",")


def _fill(conn: psycopg.Connection, site: str, first: date, *, tariff: bool = True,
          cabinets: bool = True, street: bool = True) -> None:  # fmt: skip
    """A site with three luminaires in two groups, a pump, a server room, one month of figures
    in the stage's tables (and a night or day on either side, outside the month), with a gap in
    every section: luminaire 3 absent on the 5th night, luminaire 1 incomplete on the 10th
    (1.5 h missing), the IT meter absent on the 20th, the pump's volume missing 2 h on the 7th.
    CO₂e pinned to the seeded ADEME factor, a tariff of 0.2 €/kWh pinned (``tariff``). Group a
    has 0.4 km of street (``street``). Two cabinets (``cabinets``): cab-1 feeds luminaires 1
    and 2 (one of them without its night on the 3rd), its energy incomplete on the 15th (2 h
    missing); cab-2 feeds three luminaires with no meter of their own (the baseline from the
    program), absent on the 12th night."""
    conn.execute("INSERT INTO sites (site, name) VALUES (%s, 'Test-sur-Mer')", (site,))
    ids = register(conn, site, ("lum-1", "luminaire"), ("lum-2", "luminaire"),
                   ("lum-3", "luminaire"), ("pump-1", "pump_meter"),
                   ("fac-1", "facility_meter"), ("it-1", "it_meter"))  # fmt: skip
    for device, group, watts in (("lum-1", "a", 50), ("lum-2", "a", 50), ("lum-3", "b", 70)):
        conn.execute(
            "UPDATE devices SET lighting_group = %s, nominal_power_w = %s WHERE id = %s",
            (group, watts, ids[device]),
        )
    if street:
        conn.execute(
            "UPDATE devices SET properties = properties || '{\"street_km\": 0.4}' "
            "WHERE site = %s AND lighting_group = 'a'",
            (site,),
        )
    cabs = register(conn, site, ("cab-1", "cabinet_meter"), ("cab-2", "cabinet_meter")) if (
        cabinets
    ) else {}  # fmt: skip
    days = (_next(first) - first).days
    for offset in range(-1, days + 1):
        day = first + timedelta(days=offset)
        n = offset + 1  # the day of the month (0 and days + 1 outside it)
        for i, (device, watts) in enumerate((("lum-1", 50), ("lum-2", 50), ("lum-3", 70)), 1):
            if device == "lum-3" and n == 5:
                continue
            kwh = 0.25 + 0.01 * n + 0.03 * i
            done = not (device == "lum-1" and n == 10)
            conn.execute(
                "INSERT INTO luminaire_nights (device_id, night, kwh, lit_hours, baseline_kwh, "
                "complete) VALUES (%s, %s, %s, 12, %s, %s)",
                (ids[device], day, kwh, watts * 12 / 1000, done),
            )
            _day(conn, ids[device], day, kwh * 1.01, 0.0 if done else 1.5)
        if cabinets:
            _cabinet_nights(conn, cabs, day, n)
        _day(conn, ids["pump-1"], day, 40 + n, 0.0)
        conn.execute(
            "INSERT INTO pumping_volume_daily (device_id, day, m3, complete, missing_hours) "
            "VALUES (%s, %s, %s, %s, %s)",
            (ids["pump-1"], day, 100.0 + 3 * n, n != 7, 2.0 if n == 7 else 0.0),
        )
        _day(conn, ids["fac-1"], day, 30 + 0.5 * n, 0.0)
        if n != 20:
            _day(conn, ids["it-1"], day, 20 + 0.2 * n, 0.0)
        conn.execute(
            "INSERT INTO device_reporting_daily (device_id, day, messages, readings) "
            "VALUES (%s, %s, 100, 1000)",
            (ids["lum-1"], day),
        )
    conn.execute(
        "INSERT INTO service_energy_daily (day, host, role, processes, cpu_s, machine_busy_s, "
        "kwh, seconds, rapl_seconds, min_w_per_core, max_w_per_core, coefficient_source, "
        "timezone, complete) SELECT d::date, %s, 'run', 1, 60, 600, 0.05, 86400, 0, 2, 15, "
        "'test', 'Europe/Paris', true FROM generate_series(%s::date, %s::date, '1 day') d",
        (f"host-{site}", first, _next(first) - timedelta(days=1)),
    )
    factor = conn.execute(
        "SELECT id FROM energy_factors WHERE kind = 'co2e' AND site IS NULL ORDER BY id LIMIT 1"
    ).fetchone()
    assert factor is not None
    pins = [(factor[0], "co2e")]
    if tariff:
        row = conn.execute(
            "INSERT INTO energy_factors (kind, site, valid_from, value, unit, source) VALUES "
            "('tariff', %s, '2020-01-01', 0.2, 'EUR/kWh', 'contrat test') RETURNING id",
            (site,),
        ).fetchone()
        assert row is not None
        pins.append((row[0], "tariff"))
    for factor_id, kind in pins:
        conn.execute(
            "INSERT INTO energy_day_factors (site, day, kind, factor_id) SELECT %s, d::date, %s, "
            "%s FROM generate_series(%s::date, %s::date, '1 day') d",
            (site, kind, factor_id, first - timedelta(days=1), _next(first)),
        )


def _cabinet_nights(conn: psycopg.Connection, cabs: dict[str, int], day: date, n: int) -> None:
    """The nights of the two cabinets of :func:`_fill` (``n``: the day of the month)."""
    lum = [0.25 + 0.01 * n + 0.03 * i for i in (1, 2)]  # luminaires 1 and 2, as _fill writes
    measured = lum[:1] if n == 3 else lum
    rows = [(cabs["cab-1"], 1.06 * sum(lum) + 0.02, n != 15, 2, len(measured), sum(measured),
             n != 10, 2 * 0.05 * 12, 2, 0)]  # fmt: skip
    if n != 12:
        rows.append((cabs["cab-2"], 1.5 + 0.01 * n, True, 3, 0, None, False, 3 * 0.1 * 12, 0, 3))
    for row in rows:
        conn.execute(
            "INSERT INTO cabinet_nights (device_id, night, kwh, complete, luminaires, measured, "
            "luminaires_kwh, luminaires_complete, baseline_kwh, baseline_telemetry, "
            "baseline_program) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (row[0], day, *row[1:]),
        )
        _day(conn, row[0], day, row[1], 2.0 if n == 15 and row[0] == cabs["cab-1"] else 0.0)


def _day(conn: psycopg.Connection, device_id: int, day: date, kwh: float, missing: float) -> None:
    conn.execute(
        "INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours) "
        "VALUES (%s, %s, %s, 'counter', %s, %s)",
        (device_id, day, kwh, missing == 0, missing),
    )


def _next(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def _truth(conn: psycopg.Connection, site: str, first: date) -> dict[str, Any]:
    """The month's figures from the stage's tables and the factors pinned, by SQL of its own."""
    args = {"site": site, "first": first, "end": _next(first)}
    pin = """LEFT JOIN energy_day_factors p{k} ON p{k}.site = d.site AND p{k}.day = {when}
             AND p{k}.kind = '{kind}' LEFT JOIN energy_factors f{k} ON f{k}.id = p{k}.factor_id
    """
    lighting = conn.execute(
        "SELECT sum(n.kwh), sum(n.baseline_kwh), count(*), sum(n.kwh * fc.value), "
        "sum((n.baseline_kwh - n.kwh) * fc.value), sum(n.kwh * ft.value), "
        "sum((n.baseline_kwh - n.kwh) * ft.value), count(DISTINCT n.night) "
        "FROM luminaire_nights n JOIN devices d ON d.id = n.device_id "
        + pin.format(k="c", when="n.night", kind="co2e")
        + pin.format(k="t", when="n.night", kind="tariff")
        + " WHERE d.site = %(site)s AND n.night >= %(first)s AND n.night < %(end)s",
        args,
    ).fetchone()
    energy = conn.execute(
        "SELECT sum(e.kwh) FILTER (WHERE d.kind = 'pump_meter'), "
        "sum(e.kwh) FILTER (WHERE d.kind = 'facility_meter'), "
        "sum(e.kwh) FILTER (WHERE d.kind = 'it_meter'), "
        "sum(e.missing_hours) FILTER (WHERE d.kind = 'luminaire'), "
        "sum(e.kwh * ft.value) FILTER (WHERE d.kind = 'pump_meter') "
        "FROM energy_daily e JOIN devices d ON d.id = e.device_id "
        + pin.format(k="t", when="e.day", kind="tariff")
        + " WHERE d.site = %(site)s AND e.day >= %(first)s AND e.day < %(end)s",
        args,
    ).fetchone()
    volume = conn.execute(
        "SELECT sum(v.m3), sum(v.missing_hours) FROM pumping_volume_daily v "
        "JOIN devices d ON d.id = v.device_id "
        "WHERE d.site = %(site)s AND v.day >= %(first)s AND v.day < %(end)s",
        args,
    ).fetchone()
    paired = conn.execute(  # the month's PUE: over the days with both energies (0017)
        "SELECT sum(f.kwh), sum(i.kwh) FROM energy_daily f "
        "JOIN devices df ON df.id = f.device_id AND df.kind = 'facility_meter' "
        "JOIN energy_daily i ON i.day = f.day AND i.kwh > 0 "
        "JOIN devices di ON di.id = i.device_id AND di.kind = 'it_meter' AND di.site = df.site "
        "WHERE df.site = %(site)s AND f.day >= %(first)s AND f.day < %(end)s",
        args,
    ).fetchone()
    service = conn.execute(
        "SELECT (SELECT sum(kwh) FROM service_energy_daily WHERE day >= %(first)s "
        "AND day < %(end)s), (SELECT sum(readings)::float8 FROM device_reporting_daily "
        "WHERE day >= %(first)s AND day < %(end)s)",
        args,
    ).fetchone()
    assert lighting is not None
    assert energy is not None
    assert volume is not None
    assert service is not None
    assert paired is not None
    kwh, baseline, nights = lighting[0], lighting[1], lighting[2]
    pump_kwh, fac, it = energy[0], energy[1], energy[2]
    return {
        "kwh": kwh, "baseline_kwh": baseline, "saved_kwh": baseline - kwh,
        "saved_fraction": 1 - kwh / baseline, "kwh_per_luminaire_night": kwh / nights,
        "luminaire_nights": nights, "kg_co2e": lighting[3], "saved_kg_co2e": lighting[4],
        "eur": lighting[5], "saved_eur": lighting[6], "nights": lighting[7],
        "missing_hours": energy[3], "pump_kwh": pump_kwh, "m3": volume[0],
        "kwh_per_m3": pump_kwh / volume[0], "pump_eur": energy[4],
        "volume_missing_hours": volume[1], "facility_kwh": fac, "it_kwh": it,
        "pue": paired[0] / paired[1],
        "service_kwh": service[0], "readings": service[1],
        "kwh_per_1000_readings": service[0] / service[1] * 1000 if service[0] else None,
    }  # fmt: skip


def _cabinet_truth(conn: psycopg.Connection, site: str, first: date) -> dict[str, Any]:
    """The month of the cabinets and the kWh per km of street, counted here in Python over the
    rows :func:`_fill` wrote (cabinet_nights, luminaire_nights, the devices' street_km)."""
    rows = conn.execute(
        "SELECT d.device, c.kwh, c.complete, c.luminaires, c.measured, c.luminaires_kwh, "
        "c.baseline_kwh, c.baseline_telemetry, c.baseline_program FROM cabinet_nights c "
        "JOIN devices d ON d.id = c.device_id WHERE d.site = %s AND c.night >= %s "
        "AND c.night < %s",
        (site, first, _next(first)),
    ).fetchall()
    compared = [r for r in rows if r[3] and r[4] == r[3]]  # every luminaire fed has its night
    program = [r for r in rows if r[3] and r[8] == r[3] and r[7] == 0]  # all from the program
    lum = conn.execute(
        "SELECT n.kwh, d.lighting_group, d.properties ->> 'street_km' FROM luminaire_nights n "
        "JOIN devices d ON d.id = n.device_id WHERE d.site = %s AND n.night >= %s "
        "AND n.night < %s",
        (site, first, _next(first)),
    ).fetchall()
    km = {group: float(length) for _, group, length in lum if length is not None}
    difference = math.fsum(r[1] - r[5] for r in compared)
    saved = math.fsum(r[6] - r[1] for r in program)
    baseline = math.fsum(r[6] for r in program)
    return {
        "cabinets": len({r[0] for r in rows}), "cabinet_nights": len(rows),
        "complete": sum(bool(r[2]) for r in rows), "kwh": math.fsum(r[1] for r in rows),
        "luminaire_nights": sum(r[3] for r in rows), "measured": sum(r[4] for r in rows),
        "luminaires_kwh": math.fsum(r[5] for r in rows if r[5] is not None),
        "compared": len(compared), "difference_kwh": difference,
        "difference_fraction": difference / math.fsum(r[1] for r in compared),
        "program_nights": len(program), "program_baseline_kwh": baseline,
        "program_saved_kwh": saved, "program_saved_fraction": saved / baseline,
        "groups": len({group for _, group, _ in lum}), "km_groups": len(km),
        "street_km": math.fsum(km.values()),
        "kwh_per_km": math.fsum(k for k, group, _ in lum if group in km) / math.fsum(km.values())
        if km else None,
    }  # fmt: skip


def _report(db_url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--db-url", db_url, "energy", "report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _section(table: str, title: str) -> dict[str, str]:
    """The label → value lines of one section of the table."""
    block = table.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]
    return {line[2:30].strip(): line[31:] for line in block.splitlines()}


def test_the_month_in_a_table_is_the_sql_truth_and_states_every_gap(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH)
    truth = _truth(conn, site, MARCH)
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", capsys=capsys)
    assert code == 0
    assert out.startswith(f"Énergie de la commune {site} (Test-sur-Mer) — mars 2025")
    light = _section(out, "Éclairage public (nuits dont la soirée tombe dans le mois)")
    assert light["énergie"] == f"{_fr(truth['kwh'], 1)} kWh"
    assert light["référence sans gradation"] == f"{_fr(truth['baseline_kwh'], 1)} kWh"
    assert light["économie"] == f"{_fr(truth['saved_kwh'], 1)} kWh"
    assert light["économie relative"] == f"{_fr(100 * truth['saved_fraction'], 1)} %"
    assert light["économie en euros"] == f"{_fr(truth['saved_eur'], 2)} €"
    assert light["émissions évitées"] == f"{_fr(truth['saved_kg_co2e'], 1)} kg CO₂e"
    assert light["kWh par luminaire-nuit"] == f"{_fr(truth['kwh_per_luminaire_night'], 3)} kWh"
    assert light["luminaires-nuits"] == str(truth["luminaire_nights"])
    # The gaps: the 5th night lacks a luminaire, the 10th has one incomplete (1.5 h missing).
    assert light["complétude"] == (
        "INCOMPLET : nuits complètes 29/31 (31 avec données) ; heures manquantes 1,5 h ; "
        "luminaires-nuits absents : 1"
    )
    pump = _section(out, "Pompage")
    assert pump["kWh par m³"] == f"{_fr(truth['kwh_per_m3'], 3)} kWh/m³"
    assert pump["volume pompé"] == f"{_fr(truth['m3'], 1)} m³"
    assert pump["coût"] == f"{_fr(truth['pump_eur'], 2)} €"
    assert pump["heures manquantes (volume)"] == "2,0 h"
    assert pump["complétude"].startswith("INCOMPLET : jours complets 30/31 (31 avec données)")
    pue = _section(out, "Salle serveurs (PUE, ISO/IEC 30134-2)")
    assert pue["PUE du mois"] == _fr(truth["pue"], 2)
    assert pue["catégorie"] == "PUE1 (informatique mesurée en sortie d'onduleur)"
    assert pue["statut"] == "provisoire (2 mois sur 12)"  # February's last day, and March
    assert pue["complétude"].startswith("INCOMPLET : jours complets 30/31 (31 avec données)")
    assert pue["complétude"].endswith("jours-compteur absents : 1")
    service = _section(out, "Énergie du service de supervision (toute l'installation)")
    assert service["kWh pour 1 000 mesures"] == (f"{_fr(truth['kwh_per_1000_readings'], 4)} kWh")
    assert service["méthode"] == "cpu_time"
    factors = out.split("\nFacteurs utilisés (versions)\n", 1)[1]
    ids = dict(conn.execute(
        "SELECT DISTINCT p.kind, p.factor_id FROM energy_day_factors p WHERE p.site = %s",
        (site,),
    ).fetchall())  # fmt: skip
    assert f"n° {ids['co2e']} : CO₂e, 0,052 kgCO2e/kWh, depuis 2022-01-01 — ADEME" in factors
    assert f"n° {ids['tariff']} : tarif, {site}, 0,2 EUR/kWh, depuis 2020-01-01 — contrat test" in (
        factors
    )


def test_json_and_csv_carry_the_exact_figures_and_their_completeness(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH)
    truth = _truth(conn, site, MARCH)
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "json",
                           capsys=capsys)  # fmt: skip
    assert code == 0
    data = orjson.loads(out)
    assert {"site", "month", "days", "lighting", "pumping", "pue", "service", "factors",
            "has_data", "in_progress"} <= set(data)  # fmt: skip
    assert data["month"] == "2025-03-01"
    assert data["has_data"] is True
    assert data["in_progress"] is False
    li, pu, pue, sv = data["lighting"], data["pumping"], data["pue"], data["service"]
    for key in ("kwh", "baseline_kwh", "saved_kwh", "saved_fraction", "kwh_per_luminaire_night"):
        assert li[key] == pytest.approx(truth[key], rel=1e-12), key
    for key in ("kg_co2e", "saved_kg_co2e", "eur", "saved_eur"):
        assert li[key] == {"value": pytest.approx(truth[key], rel=1e-12), "status": "ok"}, key
    assert li["coverage"] == {"periods": 31, "elapsed": 31, "with_data": 31, "complete": 29,
                              "missing_hours": 1.5, "absent": 1, "whole": False}  # fmt: skip
    assert len(li["nights"]) == 31
    assert sum(n["kwh"] for n in li["nights"]) == pytest.approx(truth["kwh"])
    assert pu["kwh"] == pytest.approx(truth["pump_kwh"])
    assert pu["kwh_per_m3"] == pytest.approx(truth["kwh_per_m3"])
    assert pu["eur_per_m3"] == pytest.approx(truth["pump_eur"] / truth["m3"])
    assert pue["pue"] == pytest.approx(truth["pue"])
    assert (pue["category"], pue["interim"], pue["months"]) == ("PUE1", True, 2)
    assert pue["coverage"]["complete"] == 30
    assert sv["kwh_per_1000_readings"] == pytest.approx(truth["kwh_per_1000_readings"])
    assert {f["kind"] for f in data["factors"]} == {"co2e", "tariff"}

    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "csv",
                           capsys=capsys)  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == ("section", "figure", "value", "of", "unit", "status", "label")
    by = {(r["section"], r["figure"]): r for r in rows}
    assert float(by["lighting", "kwh"]["value"]) == pytest.approx(truth["kwh"], rel=1e-12)
    assert by["lighting", "kwh"]["status"] == "incomplete"  # the month has gaps
    assert by["lighting", "kwh"]["label"] == "énergie"
    assert (by["lighting", "complete"]["value"], by["lighting", "complete"]["of"]) == ("29", "31")
    assert float(by["pumping", "kwh_per_m3"]["value"]) == pytest.approx(truth["kwh_per_m3"])
    assert float(by["pue", "pue_value"]["value"]) == pytest.approx(truth["pue"])
    assert by["pue", "interim"]["value"] == "True"
    assert float(by["service", "kwh_per_1000_readings"]["value"]) == pytest.approx(
        truth["kwh_per_1000_readings"]
    )
    assert {r["figure"] for r in rows if r["section"] == "factors"} == {"co2e", "tariff"}


CABINETS_FR = "Armoires d'éclairage (compteur de l'armoire, ses luminaires)"
CABINETS_EN = "Lighting cabinets (the cabinet meter beside its luminaires)"
LIGHTING_FR = "Éclairage public (nuits dont la soirée tombe dans le mois)"
LIGHTING_EN = "Public lighting (nights whose evening falls in the month)"


def test_cabinets_beside_their_luminaires_and_kwh_per_km_in_table_csv_and_json(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH)
    t = _cabinet_truth(conn, site, MARCH)
    # The rows _fill wrote: two cabinets, cab-2 absent on the 12th, cab-1 measured by halves on
    # the 3rd (not compared) and cab-2 never (its baseline the program's).
    assert (t["cabinets"], t["cabinet_nights"], t["complete"]) == (2, 61, 60)
    assert (t["compared"], t["program_nights"], t["km_groups"], t["groups"]) == (30, 30, 1, 2)
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", capsys=capsys)
    assert code == 0
    assert out.index(LIGHTING_FR) < out.index(CABINETS_FR) < out.index("\nPompage\n")
    cab = _section(out, CABINETS_FR)
    assert cab["complétude"] == (
        "INCOMPLET : nuits complètes 29/31 (31 avec données) ; heures manquantes 2,0 h ; "
        "armoires-nuits absents : 1"
    )
    assert cab["armoires"] == "2"
    assert cab["armoires-nuits"] == "61"
    assert cab["armoires-nuits complètes"] == "60 / 61"
    assert cab["énergie des armoires"] == f"{_fr(t['kwh'], 1)} kWh"
    assert cab["énergie de leurs luminaires"] == f"{_fr(t['luminaires_kwh'], 1)} kWh (partiel)"
    assert cab["luminaires mesurés"] == f"{t['measured']} / {t['luminaire_nights']}"
    assert cab["pertes et charges inconnues"] == f"{_fr(t['difference_kwh'], 1)} kWh (partiel)"
    assert cab["part pertes et inconnues"] == (
        f"{_fr(100 * t['difference_fraction'], 1)} % (partiel)"
    )
    assert cab["armoires-nuits comparées"] == "30 / 61"
    assert cab["nuits à réf. des programmes"] == "30 / 61"
    assert cab["référence des programmes"] == f"{_fr(t['program_baseline_kwh'], 1)} kWh"
    assert cab["économie (réf. programmes)"] == f"{_fr(t['program_saved_kwh'], 1)} kWh"
    assert cab["économie relative (progr.)"] == (f"{_fr(100 * t['program_saved_fraction'], 1)} %")
    light = _section(out, LIGHTING_FR)
    assert light["kWh par km de rue"] == f"{_fr(t['kwh_per_km'], 1)} kWh/km"
    assert light["groupes avec longueur de rue"] == "1 / 2"
    assert light["longueur de rue"] == "0,40 km"

    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "csv",
                           capsys=capsys)  # fmt: skip
    by = {(r["section"], r["figure"]): r for r in csv.DictReader(io.StringIO(out))}
    row = by["cabinets", "kwh"]
    assert float(row["value"]) == pytest.approx(t["kwh"], rel=1e-12)
    assert (row["unit"], row["status"], row["label"]) == ("kWh", "incomplete",
                                                          "énergie des armoires")  # fmt: skip
    for key in ("luminaires_kwh", "difference_kwh", "program_saved_kwh", "program_baseline_kwh"):
        assert float(by["cabinets", key]["value"]) == pytest.approx(t[key], rel=1e-12), key
    assert by["cabinets", "difference_kwh"]["status"] == "partial"
    assert float(by["cabinets", "difference_fraction"]["value"]) == pytest.approx(
        100 * t["difference_fraction"], rel=1e-12
    )
    assert (by["cabinets", "cabinet_nights_complete"]["value"],
            by["cabinets", "cabinet_nights_complete"]["of"]) == ("60", "61")  # fmt: skip
    assert (by["cabinets", "complete"]["value"], by["cabinets", "complete"]["of"]) == ("29", "31")
    assert by["cabinets", "missing_hours"]["value"] == "2.0"
    row = by["lighting", "kwh_per_km"]
    assert float(row["value"]) == pytest.approx(t["kwh_per_km"], rel=1e-12)
    assert (row["unit"], row["label"]) == ("kWh/km", "kWh par km de rue")
    assert (by["lighting", "km_groups"]["value"], by["lighting", "km_groups"]["of"]) == ("1", "2")

    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "json",
                           capsys=capsys)  # fmt: skip
    data = orjson.loads(out)
    ca, li = data["cabinets"], data["lighting"]
    assert ca["status"] == "ok"
    for key in ("kwh", "luminaires_kwh", "difference_kwh", "difference_fraction",
                "program_baseline_kwh", "program_saved_kwh", "program_saved_fraction"):  # fmt: skip
        assert ca[key] == pytest.approx(t[key], rel=1e-12), key
    for key in ("cabinet_nights", "complete", "luminaire_nights", "measured", "compared",
                "program_nights"):  # fmt: skip
        assert ca[key] == t[key], key
    assert (ca["cabinets"], ca["cabinets_with_data"]) == (2, t["cabinets"])
    assert ca["coverage"] == {"periods": 31, "elapsed": 31, "with_data": 31, "complete": 29,
                              "missing_hours": 2.0, "absent": 1, "whole": False}  # fmt: skip
    assert sum(n["kwh"] for n in ca["nights"]) == pytest.approx(t["kwh"])
    # A night's difference only where every cabinet is compared: the 12th, cab-2 absent.
    assert [n["night"] for n in ca["nights"] if n["difference_kwh"] is not None] == ["2025-03-12"]
    assert li["kwh_per_km"] == pytest.approx(t["kwh_per_km"], rel=1e-12)
    assert (li["km_groups"], li["groups"]) == (1, 2)
    assert li["street_km"] == pytest.approx(t["street_km"])

    # Cabinets registered and no night of theirs in the month: a gap, stated; no figure, not 0.
    code, out, _ = _report(db_url, "--site", site, "--month", "2024-01", capsys=capsys)
    cab = _section(out, CABINETS_FR)
    assert cab == {
        "complétude": "INCOMPLET : nuits complètes 0/31 (0 avec données) ; heures manquantes "
        "0,0 h ; armoires-nuits absents : 62",
        "armoires": "2",
        "armoires-nuits": "aucune nuit d'armoire ce mois-ci",
    }
    assert _section(out, LIGHTING_FR)["kWh par km de rue"] == "pas de données"


def test_cabinets_and_kwh_per_km_in_english(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH)
    t = _cabinet_truth(conn, site, MARCH)
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--lang", "en",
                           capsys=capsys)  # fmt: skip
    assert code == 0
    assert "Armoires" not in out
    cab = _section(out, CABINETS_EN)
    assert cab["completeness"] == (
        "INCOMPLETE: complete nights 29/31 (31 with data); missing hours 2.0 h; "
        "absent cabinet-nights: 1"
    )
    assert cab["cabinets"] == "2"
    assert cab["cabinet-nights complete"] == "60 / 61"
    assert cab["cabinet energy"] == f"{t['kwh']:,.1f} kWh"
    assert cab["their luminaires' energy"] == f"{t['luminaires_kwh']:,.1f} kWh (partial)"
    assert cab["losses and unknown loads"] == f"{t['difference_kwh']:,.1f} kWh (partial)"
    assert cab["share lost or unknown"] == f"{100 * t['difference_fraction']:,.1f} % (partial)"
    assert cab["saved (program baseline)"] == f"{t['program_saved_kwh']:,.1f} kWh"
    light = _section(out, LIGHTING_EN)
    assert light["kWh per km of street"] == f"{t['kwh_per_km']:,.1f} kWh/km"
    assert light["groups with a street length"] == "1 / 2"
    assert light["street length"] == "0.40 km"
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--lang", "en",
                           "--format", "csv", capsys=capsys)  # fmt: skip
    by = {(r["section"], r["figure"]): r for r in csv.DictReader(io.StringIO(out))}
    assert by["cabinets", "kwh"]["label"] == "cabinet energy"
    assert by["cabinets", "difference_kwh"]["label"] == "losses and unknown loads"
    assert float(by["cabinets", "program_saved_kwh"]["value"]) == pytest.approx(
        t["program_saved_kwh"], rel=1e-12
    )
    assert by["lighting", "kwh_per_km"]["label"] == "kWh per km of street"


def test_a_site_without_cabinets_or_street_lengths_says_none(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH, cabinets=False, street=False)
    for lang, section, light, words in (
        ("fr", CABINETS_FR, LIGHTING_FR, ("armoires", "aucune armoire sur ce site",
         "kWh par km de rue", "aucune (pas de groupe avec longueur de rue)",
         "groupes avec longueur de rue")),
        ("en", CABINETS_EN, LIGHTING_EN, ("cabinets", "none: no lighting cabinet at this site",
         "kWh per km of street", "none (no group has a street length)",
         "groups with a street length")),
    ):  # fmt: skip
        code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--lang", lang,
                               capsys=capsys)  # fmt: skip
        assert code == 0
        assert _section(out, section) == {words[0]: words[1]}  # no coverage, no 0 kWh
        lighting = _section(out, light)
        assert lighting[words[2]] == words[3]
        assert lighting[words[4]] == "0 / 2"
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "csv",
                           capsys=capsys)  # fmt: skip
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["section"] == "cabinets"]
    assert [(r["figure"], r["value"], r["status"]) for r in rows] == [("cabinets", "", "none")]
    by = {(r["section"], r["figure"]): r for r in csv.DictReader(io.StringIO(out))}
    assert (by["lighting", "kwh_per_km"]["value"], by["lighting", "kwh_per_km"]["status"]) == (
        "",
        "none",
    )
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "json",
                           capsys=capsys)  # fmt: skip
    data = orjson.loads(out)
    ca = data["cabinets"]
    assert (ca["status"], ca["cabinets"], ca["cabinet_nights"], ca["kwh"]) == ("none", 0, 0, None)
    assert (ca["difference_kwh"], ca["program_saved_kwh"], ca["nights"]) == (None, None, [])
    li = data["lighting"]
    assert (li["kwh_per_km"], li["street_km"], li["km_groups"], li["groups"]) == (None, None, 0, 2)


def test_png_charts_the_nights_and_days_of_the_month(
    conn: psycopg.Connection, db_url: str, site: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _fill(conn, site, MARCH)
    path = tmp_path / "mars.png"
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--format", "png",
                           "--out", str(path), capsys=capsys)  # fmt: skip
    assert code == 0
    assert out == ""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (1100, 850)
    # What was drawn: the nights' sums and the days' PUE of the stage's tables.
    nights = conn.execute(
        "SELECT n.night, sum(n.kwh), sum(n.baseline_kwh) FROM luminaire_nights n JOIN devices d "
        "ON d.id = n.device_id WHERE d.site = %s AND n.night >= %s AND n.night < %s "
        "GROUP BY 1 ORDER BY 1",
        (site, MARCH, _next(MARCH)),
    ).fetchall()
    report = month_report(conn, site, MARCH)
    chart = render.render_png(report, tmp_path / "en.png", "en")
    assert chart.nights == [r[0] for r in nights]
    assert chart.kwh == pytest.approx([r[1] for r in nights])
    assert chart.baseline_kwh == pytest.approx([r[2] for r in nights])
    assert chart.night_complete.count(False) == 2
    assert len(chart.pue_days) == 31
    assert chart.pue[19] is None  # the 20th: no IT energy
    assert chart.size_px == (1100, 850)


def test_english_labels_and_a_month_without_data(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(conn, site, MARCH, tariff=False)
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", "--lang", "en",
                           capsys=capsys)  # fmt: skip
    assert code == 0
    assert out.startswith(f"Energy of the commune {site} (Test-sur-Mer) — March 2025")
    assert "Éclairage" not in out
    light = _section(out, "Public lighting (nights whose evening falls in the month)")
    assert light["saved in euros"] == "no tariff"
    assert light["completeness"].startswith("INCOMPLETE: complete nights 29/31 (31 with data)")
    code, out, _ = _report(db_url, "--site", site, "--month", "2025-03", capsys=capsys)
    assert (
        _section(out, "Éclairage public (nuits dont la soirée tombe dans le mois)")[
            "économie en euros"
        ]
        == "pas de tarif"
    )

    code, out, _ = _report(db_url, "--site", site, "--month", "2024-01", capsys=capsys)
    assert code == 0  # an empty month is an answer, not a failure
    assert "Aucune donnée d'énergie pour ce site ce mois-ci." in out
    assert "nuits complètes 0/31 (0 avec données)" in out
    assert "pas de tarif" not in out  # no rows: no data, not "no tariff"
    code, out, _ = _report(db_url, "--site", site, "--month", "2024-01", "--format", "json",
                           capsys=capsys)  # fmt: skip
    assert orjson.loads(out)["has_data"] is False


def test_a_month_in_progress_counts_absent_only_what_is_over(
    conn: psycopg.Connection, site: str
) -> None:
    _fill(conn, site, MARCH)
    conn.execute(
        "DELETE FROM luminaire_nights n USING devices d WHERE d.id = n.device_id AND "
        "d.site = %s AND n.night >= '2025-03-08'",
        (site,),
    )
    report = month_report(conn, site, MARCH, now=datetime(2025, 3, 11, 12, tzinfo=PARIS))
    assert report.in_progress
    cov = report.lighting.coverage
    # Nights 1 to 9 are over (the 9th ended at noon on the 10th): the 8th and 9th are absent.
    assert (cov.elapsed, cov.with_data, cov.absent) == (9, 7, 1 + 2 * 3)
    assert "Mois en cours : chiffres provisoires jusqu'à sa fin." in render.render_table(report)


def test_unknown_site_bad_month_and_png_without_a_file_are_refused(
    conn: psycopg.Connection, db_url: str, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    register(conn, site)
    code, _, err = _report(db_url, "--site", "nowhere", "--month", "2025-03", capsys=capsys)
    assert code == 2
    assert "--site 'nowhere': no such site; known sites: " in err
    assert site in err
    for month in ("2025-3x", "2025-13", "2025-3", "march"):
        with pytest.raises(SystemExit) as exc:
            main(["--db-url", db_url, "energy", "report", "--site", site, "--month", month])
        assert exc.value.code == 2
        assert "expected a month YYYY-MM (2026-11)" in capsys.readouterr().err
    code, _, err = _report(db_url, "--site", site, "--month", "2025-03", "--format", "png",
                           capsys=capsys)  # fmt: skip
    assert code == 2
    assert "--format png needs --out FILE" in err


def test_figures_the_database_cannot_give_say_so() -> None:
    """Without migrations 0013 and 0014 (or a view's column): "not available", never 0."""
    report = _empty_report()
    text = render.render_table(report, "en")
    assert "no data" in text
    gone = Extra(None, "unavailable")
    report = replace(
        report,
        lighting=replace(report.lighting, eur=gone, kg_co2e=gone),
        service=Service(False, 0, None, 0, None, ()),
        factors_available=False,
    )
    text = render.render_table(report, "fr")
    assert (
        _section(text, "Éclairage public (nuits dont la soirée tombe dans le mois)")["coût"]
        == "non disponible"
    )
    assert (
        _section(text, "Énergie du service de supervision (toute l'installation)")[
            "kWh pour 1 000 mesures"
        ]
        == "non disponible"
    )
    rows = list(csv.DictReader(io.StringIO(render.render_csv(report))))
    assert {r["status"] for r in rows if r["section"] == "service"} == {"unavailable"}


def _empty_report() -> render.MonthReport:
    from app.energy_report import Cabinets, Coverage, Lighting, MonthReport, Pue, Pumping

    cov = Coverage(30, 30, 0, 0, 0.0, 0)
    none = Extra(None, "none")
    return MonthReport(
        site="s", name=None, timezone="Europe/Paris", month=date(2026, 11, 1), days=30,
        in_progress=False,
        lighting=Lighting(cov, 0, 0, None, None, None, None, None, none, none, none, none, (),
                          0, 0, None, None),
        cabinets=Cabinets("none", cov, 0, 0, 0, 0, None, 0, 0, None, 0, None, None, 0, None,
                          None, None, ()),
        pumping=Pumping(cov, 0, None, None, None, 0.0, none, none, None),
        pue=Pue(cov, None, None, None, None, None, 0, ()),
        service=Service(True, 0, None, 0, None, ()), factors=(), factors_available=True,
    )  # fmt: skip


def _readme_commands() -> list[str]:
    text = (ROOT / "energy" / "README.md").read_text()
    block = text.split("<!-- energy report -->\n```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_commands_work_as_written(fresh_db_url: str, tmp_path: Path) -> None:
    """The lines of the ``sobriety energy report`` section of energy/README.md, as written, on a
    database holding November 2026 of the site they name."""
    lines = _readme_commands()
    assert lines
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        upgrade(conn)
        _fill(conn, "lyon", date(2026, 11, 1))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SOBRIETY_")},
        "SOBRIETY_DB_URL": fresh_db_url,
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for line in lines:
        assert shlex.split(line)[:3] == ["sobriety", "energy", "report"]
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, (line, done.stderr)
        if "--out" not in line:
            assert "lyon" in done.stdout
    assert (tmp_path / "lyon-2026-11.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_days_of_the_simulated_town_report_the_stage_truth(
    conn: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    """The small town's two local days through the ingest's pipeline and store, the rollup
    and the energy stage (as tests/test_energy_truth.py runs them): the report's month equals
    the SQL truth over the stage's tables, and it says the month is far from complete."""
    from core import rollup
    from core.inventory import import_inventory
    from energy.config import EnergyConfig
    from energy.service import recompute
    from ingest.backfill import Backfill
    from ingest.pipeline import Pipeline
    from ingest.store import Store
    from simulators import Fleet, build_town, write_inventory, write_sites
    from tests.test_simulators import _QUIET, small_scenario

    root = f"r{uuid.uuid4().hex[:9]}/v1"
    scenario = small_scenario(root, **_QUIET)
    site = scenario.sites[0].site
    today = datetime.now(PARIS).date()
    start = datetime.combine(today - timedelta(days=3), datetime.min.time(), PARIS).timestamp()
    town = build_town(scenario, 4)
    fleet = Fleet(town, "mqtt://127.0.0.1:1", days=2.0, start=start)
    fleet.log = []
    fleet.run()
    directory = tmp_path / "inventory"
    import_inventory(conn, write_sites(town, directory))
    for path in write_inventory(town, directory, start=start, days=2.0):
        import_inventory(conn, path)
    ids = dict(conn.execute("SELECT device, id FROM devices WHERE site = %s", (site,)).fetchall())
    store = Store(db_url)
    backfill = Backfill(store, Pipeline(lambda s, d: ids.get(d) if s == site else None, root))
    received = time.time()
    for topic, payload in fleet.log:
        backfill.add(topic, payload, received)
    backfill.flush()
    store.close()
    with psycopg.connect(db_url, autocommit=True) as work:
        rollup.refresh(work)
    with psycopg.connect(db_url) as work:
        recompute(work, EnergyConfig(), start + 3600, start + 2 * 86400 - 3600, site)

    first = datetime.fromtimestamp(start, PARIS).date().replace(day=1)
    truth = _truth(conn, site, first)
    report = month_report(conn, site, first)
    li, pu, pue = report.lighting, report.pumping, report.pue
    assert li.kwh == pytest.approx(truth["kwh"], rel=1e-12)
    assert li.saved_kwh == pytest.approx(truth["saved_kwh"], rel=1e-9)
    assert li.kwh_per_luminaire_night == pytest.approx(truth["kwh_per_luminaire_night"])
    assert li.coverage.with_data == truth["nights"]
    assert li.luminaires == len([d for d in ids if d.startswith("lum-")])
    assert pu.kwh_per_m3 == pytest.approx(truth["kwh_per_m3"])
    assert pue.pue == pytest.approx(truth["pue"])
    assert pue.category == "PUE1"
    assert pue.interim is True
    assert not li.coverage.whole
    assert not pue.coverage.whole
    text = render.render_table(report)
    assert "INCOMPLET" in text
    assert (
        _section(text, "Éclairage public (nuits dont la soirée tombe dans le mois)")["énergie"]
        == f"{_fr(truth['kwh'], 1)} kWh"
    )
