"""``sobriety publish``: the open data of a commune over rows written with known values (three
months: January whole, February with no lighting and no IT meter, March with a silent customer
meter and the change to summer time). Every CSV figure against the same figure computed here from
the rows written (never from the command's queries), every resource valid for frictionless, no
customer meter id anywhere; the page drawn by a real headless Chromium from the CSV files served
on 127.0.0.1, with its charts and its latest figures written in French; the errors."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import frictionless
import psycopg
import pytest

from app.cli import main
from core import rollup
from tests.fix_db import register

pytestmark = pytest.mark.services

PARIS = ZoneInfo("Europe/Paris")
MONTHS = (date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1))
NAME = "Sainte-Ondine-sur-Loire"
LUMINAIRES = (("lum-1", "a", 0.31), ("lum-2", "a", 0.29), ("lum-3", "b", 0.42))
NORD = {"mains_km": 12.0, "connections": 15, "private_km": 0.3, "avg_pressure_m": 40.0}
FILES = ("lighting_monthly", "pue_monthly", "water_balance_monthly", "reporting_monthly")
NBSP, NNBSP = "\u00a0", "\u202f"


def _next(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def _month_of(day: date) -> date:
    return day.replace(day=1)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=PARIS).astimezone(UTC)


class Town:
    """What :func:`_fill` wrote, to compute the expected figures from."""

    def __init__(self) -> None:
        self.nights: list[tuple[date, float, float]] = []  # (night, kwh, baseline_kwh)
        self.co2e: dict[date, float] = {}  # night → kg/kWh pinned
        self.facility: dict[date, float] = {}
        self.it: dict[date, float] = {}
        self.messages: dict[date, int] = {}  # day → messages of all devices
        self.metrics: dict[date, int] = {}  # day → sum over devices of their metrics
        self.indexes: dict[str, list[tuple[datetime, float]]] = {}  # device → readings
        self.roles: dict[str, tuple[str, str]] = {}  # device → (dma, inlet|customer)
        self.customer_ids: list[str] = []


def _fill(conn: psycopg.Connection, site: str) -> Town:
    town = Town()
    conn.execute(
        "INSERT INTO sites (site, name, timezone) VALUES (%s, %s, 'Europe/Paris')", (site, NAME)
    )
    ids = register(conn, site, *((d, "luminaire") for d, _, _ in LUMINAIRES),
                   ("fac-1", "facility_meter"), ("it-1", "it_meter"))  # fmt: skip
    for device, group, _ in LUMINAIRES:
        conn.execute(
            "UPDATE devices SET lighting_group = %s, nominal_power_w = 50 WHERE id = %s",
            (group, ids[device]),
        )
    factor = conn.execute(
        "SELECT id, value FROM energy_factors WHERE kind = 'co2e' AND site IS NULL "
        "ORDER BY id LIMIT 1"
    ).fetchone()
    assert factor is not None
    for day in _days(date(2024, 12, 31), date(2025, 4, 1)):
        n = day.toordinal() % 17
        if day.month != 2:  # no lighting in February
            for i, (device, _, base) in enumerate(LUMINAIRES):
                kwh, baseline = base + 0.01 * n + 0.003 * i, 0.6 + 0.1 * i
                conn.execute(
                    "INSERT INTO luminaire_nights (device_id, night, kwh, lit_hours, "
                    "baseline_kwh, complete) VALUES (%s, %s, %s, 12, %s, true)",
                    (ids[device], day, kwh, baseline),
                )
                town.nights.append((day, kwh, baseline))
        if day.month == 1:  # CO2e pinned in January only
            conn.execute(
                "INSERT INTO energy_day_factors (site, day, kind, factor_id) "
                "VALUES (%s, %s, 'co2e', %s)",
                (site, day, factor[0]),
            )
            town.co2e[day] = float(factor[1])
        town.facility[day] = 30.0 + 0.25 * n
        _energy_day(conn, ids["fac-1"], day, town.facility[day])
        if day.month != 2:  # the IT meter silent in February
            town.it[day] = 20.0 + 0.1 * n
            _energy_day(conn, ids["it-1"], day, town.it[day])
    _water(conn, site, town)
    _reporting(conn, site, town, ids["lum-1"])
    rollup.refresh(conn)
    return town


def _energy_day(conn: psycopg.Connection, device_id: int, day: date, kwh: float) -> None:
    conn.execute(
        "INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours) "
        "VALUES (%s, %s, %s, 'counter', true, 0)",
        (device_id, day, kwh),
    )


def _water(conn: psycopg.Connection, site: str, town: Town) -> None:
    """DMA nord (12 customer meters, one silent in March) and hameau (3: withheld), each with
    an inlet; volume indexes every 6 h UTC."""
    conn.execute(
        "INSERT INTO dmas (site, dma, name, mains_km, connections, private_km, avg_pressure_m) "
        "VALUES (%s, 'nord', 'Secteur Nord', %s, %s, %s, %s), (%s, 'hameau', NULL, 2, 3, 0.1, 30)",
        (site, *NORD.values(), site),
    )
    meters = [("in-nord", "nord", "inlet", 0.0), ("in-hameau", "hameau", "inlet", 0.0)]
    for dma, count in (("nord", 12), ("hameau", 3)):
        for i in range(count):
            name = f"abonne-{uuid.uuid4().hex[:10]}"
            meters.append((name, dma, "customer", 0.004 + 0.0007 * i))
            town.customer_ids.append(name)
    customers_rate = {"nord": 0.0, "hameau": 0.0}
    for _, dma, role, rate in meters:
        if role == "customer":
            customers_rate[dma] += rate
    silent = meters[2][0]  # a customer meter of nord, silent in March
    start = datetime(2024, 12, 31, tzinfo=UTC)
    for device, dma, role, rate in meters:
        kind, meter_role = ("flow_meter", "inlet") if role == "inlet" else ("water_meter", None)
        row = conn.execute(
            "INSERT INTO devices (site, device, kind, dma, role) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id",
            (site, device, kind, dma, meter_role),
        ).fetchone()
        assert row is not None
        if role == "inlet":  # the customers' water and 30 % more, lost
            rate = customers_rate[dma] * 1.3 + 0.02
        town.roles[device] = (dma, role)
        readings = []
        for k in range(4 * 92):
            when = start + timedelta(hours=6 * k)
            if device == silent and when >= datetime(2025, 2, 28, 23, tzinfo=UTC):
                break
            readings.append((when, 100.0 + rate * 6 * k + 0.001 * (k % 3)))
        with conn.cursor().copy(
            "COPY readings (time, device_id, metric_id, value) FROM STDIN"
        ) as copy:
            for when, value in readings:
                copy.write_row((when, row[0], 2, value))
        town.indexes[device] = readings


def _reporting(conn: psycopg.Connection, site: str, town: Town, lum: int) -> None:
    """Messages of a luminaire (power and energy: 2 metrics) and the inlet of nord (flow and
    volume) every day."""
    dev = conn.execute(
        "SELECT id FROM devices WHERE site = %s AND device = 'in-nord'", (site,)
    ).fetchone()
    assert dev is not None
    for day in _days(date(2024, 12, 31), date(2025, 4, 1)):
        total = 0
        for device_id, messages, mask in ((lum, 40 + day.day, 0b1100000), (dev[0], 60, 0b110)):
            conn.execute(
                "INSERT INTO device_reporting_daily (device_id, day, messages, readings, "
                "metric_mask) VALUES (%s, %s, %s, %s, %s)",
                (device_id, day, messages, 2 * messages, mask),
            )
            total += messages
        town.messages[day] = total
        town.metrics[day] = 4


def _expected_water(town: Town, month: date, dma: str) -> dict[str, Any]:
    since, until = _local_midnight(month), _local_midnight(_next(month))
    used: dict[str, float] = {"inlet": 0.0, "customer": 0.0}
    for device, (where, role) in town.roles.items():
        inside = [v for t, v in town.indexes[device] if since <= t < until and where == dma]
        if inside:
            used[role] += max(inside) - min(inside)
    days = (until - since).total_seconds() / 86400
    losses = used["inlet"] - used["customer"]
    uarl = (18 * NORD["mains_km"] + 0.8 * NORD["connections"] + 25 * NORD["private_km"]) * NORD[
        "avg_pressure_m"
    ] / 1000  # fmt: skip
    ilc = used["customer"] / days / NORD["mains_km"]
    return {
        "inflow_m3": used["inlet"],
        "consumption_m3": used["customer"],
        "losses_m3": losses,
        "yield_percent": 100 * used["customer"] / used["inlet"],
        "threshold_percent": min(85.0, 65 + ilc / 5),
        "ilc_m3_km_day": ilc,
        "ili": losses / days / uarl,
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _num(text: str) -> float:
    assert text != "", "a figure expected"
    return float(text)


@pytest.fixture
def published(db_url: str, conn: psycopg.Connection, site: str,
              tmp_path: Path) -> tuple[Path, Town]:  # fmt: skip
    town = _fill(conn, site)
    out = tmp_path / "opendata"
    code = main(["--db-url", db_url, "publish", "--site", site, "--out", str(out),
                 "--since", "2025-01", "--until", "2025-03"])  # fmt: skip
    assert code == 0
    return out, town


def test_csv_figures_match_the_rows_written(published: tuple[Path, Town]) -> None:
    out, town = published
    lighting = {r["month"]: r for r in _read_csv(out / "lighting_monthly.csv")}
    assert list(lighting) == ["2025-01", "2025-02", "2025-03"]
    for month in (MONTHS[0], MONTHS[2]):
        mine = [(k, b, n) for n, k, b in town.nights if _month_of(n) == month]
        kwh, baseline = sum(k for k, _, _ in mine), sum(b for _, b, _ in mine)
        row = lighting[f"{month:%Y-%m}"]
        assert int(row["nights"]) == (_next(month) - month).days
        assert int(row["luminaire_nights"]) == len(mine)
        assert _num(row["kwh"]) == pytest.approx(kwh, abs=1e-3)
        assert _num(row["saved_kwh"]) == pytest.approx(baseline - kwh, abs=1e-3)
        assert _num(row["saved_percent"]) == pytest.approx(100 * (1 - kwh / baseline), abs=0.05)
        assert _num(row["kwh_per_luminaire_night"]) == pytest.approx(kwh / len(mine), abs=1e-4)
        assert row["complete"] == "true"
    co2e = sum(k * town.co2e[n] for n, k, _ in town.nights if n in town.co2e)
    assert _num(lighting["2025-01"]["kg_co2e"]) == pytest.approx(co2e, abs=1e-3)
    assert lighting["2025-03"]["kg_co2e"] == ""  # no factor pinned: unknown, not 0
    assert lighting["2025-02"]["nights"] == "0"
    assert all(lighting["2025-02"][k] == "" for k in ("kwh", "saved_kwh", "kg_co2e"))
    assert lighting["2025-02"]["complete"] == "false"

    pue = {r["month"]: r for r in _read_csv(out / "pue_monthly.csv")}
    for month in (MONTHS[0], MONTHS[2]):
        days = [d for d in town.it if _month_of(d) == month]
        fac, it = sum(town.facility[d] for d in days), sum(town.it[d] for d in days)
        row = pue[f"{month:%Y-%m}"]
        assert _num(row["pue"]) == pytest.approx(fac / it, abs=1e-3)
        assert _num(row["facility_kwh"]) == pytest.approx(fac, abs=1e-3)
        assert (row["category"], row["interim"], row["days_paired"]) == (
            "PUE1",
            "true",
            str(len(days)),
        )
    assert pue["2025-02"]["pue"] == ""
    assert pue["2025-02"]["days_paired"] == "0"

    water = {(r["month"], r["dma"]): r for r in _read_csv(out / "water_balance_monthly.csv")}
    assert set(water) == {(f"{m:%Y-%m}", d) for m in MONTHS for d in ("nord", "hameau")}
    for month in MONTHS:
        row, truth = water[(f"{month:%Y-%m}", "nord")], _expected_water(town, month, "nord")
        for key, digits in (("inflow_m3", 3), ("consumption_m3", 3), ("losses_m3", 3),
                            ("yield_percent", 1), ("threshold_percent", 1), ("ili", 2),
                            ("ilc_m3_km_day", 3)):  # fmt: skip
            assert _num(row[key]) == pytest.approx(truth[key], abs=0.6 * 10**-digits), key
        assert row["withheld"] == "false"
        assert row["customer_meters"] == "12"
        assert row["complete"] == ("false" if month == MONTHS[2] else "true")
        assert row["dma_name"] == "Secteur Nord"
        hameau = water[(f"{month:%Y-%m}", "hameau")]
        assert hameau["withheld"] == "true"
        assert _num(hameau["inflow_m3"]) > 0
        for key in ("consumption_m3", "losses_m3", "yield_percent", "ili", "ilc_m3_km_day",
                    "threshold_percent", "compliant"):  # fmt: skip
            assert hameau[key] == "", key

    reporting = {r["month"]: r for r in _read_csv(out / "reporting_monthly.csv")}
    for month in MONTHS:
        days = [d for d in town.messages if _month_of(d) == month]
        sent = sum(town.messages[d] for d in days)
        seconds = [(_local_midnight(d + timedelta(days=1)) - _local_midnight(d)).total_seconds()
                   for d in days]  # fmt: skip
        baseline = round(sum(town.metrics[d] * s / 900 for d, s in zip(days, seconds, strict=True)))
        row = reporting[f"{month:%Y-%m}"]
        assert (int(row["messages"]), int(row["baseline_messages"])) == (sent, baseline)
        assert int(row["saved_messages"]) == baseline - sent
        assert int(row["days"]) == len(days)


def test_the_package_is_valid_open_data_without_personal_data(
    published: tuple[Path, Town],
) -> None:
    out, town = published
    report = frictionless.validate(str(out / "datapackage.json"))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
    assert report.stats["tasks"] == len(FILES)
    package = json.loads((out / "datapackage.json").read_text(encoding="utf-8"))
    assert package["licenses"][0]["name"] == "etalab-2.0"
    assert package["sources"] == [{"title": NAME}]
    assert [r["path"] for r in package["resources"]] == [f"{f}.csv" for f in FILES]
    for name in FILES:
        schema = json.loads((out / f"{name}.schema.json").read_text(encoding="utf-8"))
        for field in schema["fields"]:
            assert field["name"].isascii()
            assert field["title"]
            assert field["description"]
        units = {f["name"]: f.get("unit") for f in schema["fields"]}
        assert units.get("kwh", "kWh") == "kWh"
    written = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}
    assert {"index.html", "datapackage.json"} <= set(written)
    for device in town.customer_ids:
        for name, text in written.items():
            assert device not in text, f"customer meter {device} in {name}"


# --- the page, in a real browser ------------------------------------------------------------


def _fr(value: float, digits: int) -> str:
    """As ``Intl.NumberFormat('fr-FR')`` writes it: rounded half away from zero on the exact
    value, narrow no-break space between thousands, decimal comma."""
    exact = Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{exact:,.{digits}f}".replace(",", NNBSP).replace(".", ",")


class _Dom(HTMLParser):
    """Per section: the marks of its chart, its latest figures by (field, series)."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.svgs: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.latest: dict[tuple[str, str, str | None], str] = {}
        self._dd: tuple[str, str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif self.section and tag == "svg":
            self.svgs[self.section] = self.svgs.get(self.section, 0) + 1
        elif self.section and tag == "g" and "mark" in (a.get("class") or "").split():
            self.marks[self.section] = self.marks.get(self.section, 0) + 1
        elif self.section and tag == "dd" and a.get("data-field"):
            self._dd, self._text = (self.section, str(a["data-field"]), a.get("data-series")), ""

    def handle_data(self, data: str) -> None:
        if self._dd:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "dd" and self._dd:
            self.latest[self._dd] = self._text
            self._dd = None
        elif tag == "section":
            self.section = None


@pytest.fixture
def served(published: tuple[Path, Town]) -> Iterator[tuple[str, list[str], Path]]:
    out, _ = published
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests, out
    server.shutdown()
    server.server_close()


def test_the_page_draws_the_csv_files_in_french(
    served: tuple[str, list[str], Path], tmp_path: Path
) -> None:
    base, requests, out = served
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is missing: install Debian's chromium package (scripts/services "
                    "does: apt-get install chromium)")  # fmt: skip
    result = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", f"{base}/index.html"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'data-rendered="true"' in dom, dom[-3000:]
    assert '<html lang="fr">' in dom
    assert f"<h1>{NAME} :" in dom
    page = _Dom()
    page.feed(dom)
    for name in FILES:
        rows = _read_csv(out / f"{name}.csv")
        assert page.svgs.get(name) == 1, name
        assert page.marks.get(name) == len(rows), name
    assert "donnée indisponible" in dom  # February's lighting, PUE

    def figure(value: str, digits: int, unit: str | None) -> str:
        if value == "":
            return "donnée indisponible"
        return _fr(float(value), digits) + (f"{NBSP}{unit}" if unit else "")

    last = _read_csv(out / "lighting_monthly.csv")[-1]
    for field, digits, unit in (("kwh", 1, "kWh"), ("saved_kwh", 1, "kWh"),
                                ("saved_percent", 1, "%"), ("kwh_per_luminaire_night", 3,
                                                            "kWh")):  # fmt: skip
        expected = figure(last[field], digits, unit)
        assert page.latest[("lighting_monthly", field, None)] == expected, field
    last = _read_csv(out / "pue_monthly.csv")[-1]
    assert page.latest[("pue_monthly", "pue", None)] == figure(last["pue"], 2, None)
    assert page.latest[("pue_monthly", "interim", None)] == "oui"
    for row in _read_csv(out / "water_balance_monthly.csv")[-2:]:
        for field, digits, unit in (("yield_percent", 1, "%"), ("ili", 2, None),
                                    ("losses_m3", 1, "m³")):  # fmt: skip
            got = page.latest[("water_balance_monthly", field, row["dma"])]
            if row["withheld"] == "true":
                assert got == "non publié (secret statistique)"
            else:
                assert got == figure(row[field], digits, unit), field
    last = _read_csv(out / "reporting_monthly.csv")[-1]
    assert page.latest[("reporting_monthly", "saved_messages", None)] == figure(
        last["saved_messages"], 0, None
    )
    assert NNBSP in page.latest[("reporting_monthly", "saved_messages", None)]  # thousands

    # Nothing but the page's own files was asked for, and it names no other host.
    asked = {r.split()[1] for r in requests}
    own = {"/index.html"} | {f"/{n}.csv" for n in FILES}
    assert asked == own, requests
    html = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html), "the page names another host"


def test_errors_are_named(db_url: str, conn: psycopg.Connection, site: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    conn.execute("INSERT INTO sites (site, name) VALUES (%s, 'Ailleurs')", (site,))
    out = tmp_path / "o"

    def run(*args: str) -> tuple[int, str]:
        code = main(["--db-url", db_url, "publish", *args])
        return code, capsys.readouterr().err

    code, err = run("--site", "nowhere-at-all", "--out", str(out))
    assert code == 2
    assert "no such site" in err
    assert site in err
    code, err = run("--site", site, "--out", str(out), "--since", "2025-05", "--until", "2025-03")
    assert code == 2
    assert "bad period" in err
    assert "2025-05" in err
    code, err = run("--site", site, "--out", str(out), "--month", "2999-01")
    assert code == 2
    assert "not over yet" in err
    code, err = run("--site", site, "--out", str(out), "--until", "2025-03")
    assert code == 2
    assert "--until needs --since" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = run("--site", site, "--out", str(blocker / "sub"), "--month", "2025-01")
    assert code == 2
    assert "not writable" in err
    assert str(blocker) in err
    code, err = run("--site", site, "--out", str(blocker), "--month", "2025-01")
    assert code == 2
    assert "not a directory" in err
    with pytest.raises(SystemExit):
        run("--site", site, "--out", str(out), "--month", "2025-1")
    assert not out.exists()


def test_default_period_is_the_last_twelve_whole_months(
    db_url: str, conn: psycopg.Connection, site: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    conn.execute("INSERT INTO sites (site) VALUES (%s)", (site,))
    assert main(["--db-url", db_url, "publish", "--site", site, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = _read_csv(tmp_path / "lighting_monthly.csv")
    current = datetime.now(PARIS).date().replace(day=1)
    months = []
    first = current
    for _ in range(12):
        first = (first - timedelta(days=1)).replace(day=1)
        months.append(f"{first:%Y-%m}")
    assert [r["month"] for r in rows] == sorted(months)
    assert all(r["kwh"] == "" for r in rows)  # nothing measured: unknown, never 0
    assert _read_csv(tmp_path / "water_balance_monthly.csv") == []
    for name in (*FILES, "datapackage", "index"):
        assert name in printed
    assert frictionless.validate(str(tmp_path / "datapackage.json")).valid
