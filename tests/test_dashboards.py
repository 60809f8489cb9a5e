"""The Grafana dashboards (dashboards/): the committed JSON is what the generator gives, it
validates against Grafana's JSON Schemas, every SQL query (panels, annotations, variables)
expanded as Grafana expands it runs on a database filled by a simulated run and returns the
columns its panel needs, every PromQL expression names metrics the services really export,
and the provisioning names the dashboards' datasource uids."""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from anomaly.service import AnomalyMetrics
from app.config import load_config
from app.demo import run_demo
from app.site_grafana import COMMUNE_DASHBOARDS, commune_dashboard, site_hash
from core.commune_roles import drop_site_reader
from core.db import upgrade, with_database
from core.roles import apply_site_reader
from dashboards import macros
from dashboards.render import JSON_DIR, OPERATOR_ONLY, stale
from dashboards.sdk import POSTGRES_UID, PROMETHEUS_UID
from ingest.metrics import IngestMetrics
from policies.service import PoliciesMetrics
from simulators import Truth

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(JSON_DIR.glob("*/*.json"))

# Panels (dashboard slug, panel title in English) allowed to return no rows on the demo run,
# with the reason. Everything else must return rows.
MAY_BE_EMPTY: dict[tuple[str, str], str] = {}

_TIMESTAMPTZ, _DATE = 1184, 1082
_NUMERIC = {20, 21, 23, 700, 701, 1700}
_TEXT = {25, 1043, 19}
_BOOL = 16


def _schema_dir() -> Path | None:
    for candidate in (ROOT.parent / "shared" / "grafana-jsonschema",
                      Path("/work/shared/grafana-jsonschema")):  # fmt: skip
        if (candidate / "dashboard.jsonschema.json").exists():
            return candidate
    return None


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_the_committed_json_is_what_the_generator_gives() -> None:
    assert len(FILES) == 10, FILES  # five dashboards, French and English
    assert stale() == [], "run python -m dashboards"


def test_every_dashboard_has_the_site_variable_and_fixed_uids() -> None:
    for path in FILES:
        model = _load(path)
        (site,) = [v for v in model["templating"]["list"] if v["name"] == "site"]
        assert site["multi"]
        assert site["includeAll"]
        assert "allValue" not in site
        assert site["datasource"] == {"type": "grafana-postgresql-datasource", "uid": POSTGRES_UID}
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids))
        for panel in model["panels"]:
            pos = panel["gridPos"]
            assert 0 <= pos["x"] <= pos["x"] + pos["w"] <= 24, (path.name, panel["title"])
            for target in panel["targets"]:
                uid = target["datasource"]["uid"]
                assert uid in (POSTGRES_UID, PROMETHEUS_UID)
                if uid == POSTGRES_UID:
                    assert set(target) == {"refId", "datasource", "rawSql", "format",
                                           "rawQuery", "editorMode"}  # fmt: skip
                    assert (
                        "$site" not in target["rawSql"] or "${site:sqlstring}" in target["rawSql"]
                    )
                    assert (
                        "site" not in target["rawSql"]
                        or "IN (${site:sqlstring})" in target["rawSql"]
                        or "api.service_energy_daily" in target["rawSql"]
                    )


def test_the_dashboards_comparing_communes_are_the_operators_only() -> None:
    """A dashboard that reads the benchmark of communes (a view that shows a commune's role no
    row) is listed in OPERATOR_ONLY, tagged so, and provisioned in the operator's folders only:
    the two of provisioning/dashboards/sobriety.yaml, which Grafana reads as an operator."""
    reads = {
        path.stem
        for path in FILES
        if "api.commune_benchmark_monthly" in path.read_text(encoding="utf-8")
    }
    assert reads == set(OPERATOR_ONLY) == {"comparaison"}
    for lang, tag in (("fr", "exploitant"), ("en", "operator")):
        assert tag in _load(JSON_DIR / lang / "comparaison.json")["tags"]
    providers = yaml.safe_load(
        (ROOT / "dashboards/provisioning/dashboards/sobriety.yaml").read_text()
    )["providers"]
    assert {p["folderUid"] for p in providers} == {"sobriety-fr", "sobriety-en"}


def _known_false_rejection(error: jsonschema.ValidationError) -> bool:
    """The two documented false rejections (grafana-jsonschema/README.md), and only them."""
    path = list(error.absolute_path)
    if path[-2:] in (["view", "lat"], ["view", "lon"]) and error.validator == "type":
        return isinstance(error.instance, float)  # geomap view lat/lon typed as integers
    return (
        len(path) >= 4
        and path[:2] == ["templating", "list"]
        and path[-1] == "current"
        and error.validator == "required"
    )


def test_every_dashboard_validates_against_grafanas_schemas() -> None:
    folder = _schema_dir()
    if folder is None:
        pytest.skip("no grafana-jsonschema folder beside the repository nor /work/shared/")
    dashboard_schema = json.loads((folder / "dashboard.jsonschema.json").read_text())
    validator = jsonschema.Draft7Validator(dashboard_schema)
    for path in FILES:
        model = _load(path)
        errors = [e for e in validator.iter_errors(model) if not _known_false_rejection(e)]
        assert errors == [], f"{path}: {[e.message for e in errors][:5]}"
        for panel in model["panels"]:
            schema_file = folder / f"{panel['type']}.jsonschema.json"
            if not schema_file.exists():
                continue
            defs = json.loads(schema_file.read_text())["definitions"]
            parts = [("Options", panel.get("options", {}))]
            if "FieldConfig" in defs:
                parts.append(("FieldConfig", panel["fieldConfig"]["defaults"].get("custom", {})))
            for name, value in parts:
                schema = {"$ref": f"#/definitions/{name}", "definitions": defs}
                errors = [e for e in jsonschema.Draft7Validator(schema).iter_errors(value)
                          if not _known_false_rejection(e)]  # fmt: skip
                assert errors == [], f"{path} {panel['title']} {name}: {errors[0].message}"


def test_provisioning_names_the_dashboards_uids() -> None:
    sources = yaml.safe_load(
        (ROOT / "dashboards/provisioning/datasources/sobriety.yaml").read_text()
    )
    by_type = {d["type"]: d for d in sources["datasources"]}
    pg = by_type["grafana-postgresql-datasource"]
    assert pg["uid"] == POSTGRES_UID
    assert pg["jsonData"]["timescaledb"] is True
    assert pg["jsonData"]["database"].startswith("$")
    assert pg["user"].startswith("$")
    assert pg["secureJsonData"]["password"].startswith("$")
    assert "password" not in pg
    assert by_type["prometheus"]["uid"] == PROMETHEUS_UID
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (ROOT / "dashboards/provisioning/dashboards/sobriety.yaml").read_text()
    )["providers"]
    paths = {p["options"]["path"] for p in providers}
    assert paths == {"/var/lib/grafana/dashboards/fr", "/var/lib/grafana/dashboards/en"}


# -- PromQL ---------------------------------------------------------------------------------


def _exported_metrics() -> set[str]:
    """Every series name the services' registries can serve (counters with _total, histograms
    with _bucket/_sum/_count)."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    AnomalyMetrics(registry)
    PoliciesMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                 "offset", "and", "or", "unless", "le"}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are neither functions (followed
    by '('), label names (in {...} or by/without (...)), keywords nor Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?[_a-zA-Z0-9]+\}?", "", text)
    found = re.findall(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in found if name not in _PROMQL_WORDS}


def test_promql_names_only_exported_metrics() -> None:
    exported = _exported_metrics()
    assert "sobriety_ingest_messages_rejected_total" in exported
    seen = 0
    for path in FILES:
        for panel in _load(path)["panels"]:
            for target in panel["targets"]:
                if "expr" not in target:
                    continue
                names = promql_metric_names(target["expr"])
                assert names, target["expr"]
                assert names <= exported, f"{panel['title']}: {names - exported}"
                seen += 1
    assert seen > 0
    assert promql_metric_names('sum by (le) (rate(a_bucket{x="y"}[5m]))') == {"a_bucket"}


# -- SQL on a simulated run -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoRun:
    url: str
    start: datetime
    end: datetime


@pytest.fixture(scope="module")
def demo_run(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """Three simulated days (and the demo's 28 days of water history) into a fresh database, a
    tariff factor in place so that euros are figured (the energy stage raises the luminaire
    faults the simulator injected); then one luminaire that refused its config and a sensor
    that never reported."""
    name = f"sobriety_test_dash_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(url) as conn:
            upgrade(conn)
            conn.execute(
                "INSERT INTO energy_factors (kind, site, valid_from, value, unit, source) "
                "VALUES ('tariff', NULL, DATE '2000-01-01', 0.20, 'EUR/kWh', 'test tariff')"
            )
        workdir = tmp_path_factory.mktemp("dashboards-demo")
        config = load_config(None, env={}, overrides={"metrics": {"port": 0}, "mqtt": {}})
        out = io.StringIO()
        report = run_demo(
            config, days=3, seed=4, embedded=True, configured_db=url, configured_mqtt=None,
            workdir=workdir, serve=False, stop=threading.Event(), out=out,
        )  # fmt: skip
        assert report.problems == [], out.getvalue()
        # The energy stage found every luminaire fault injected: the fault panels have rows.
        assert report.luminaire_faults is not None
        assert report.luminaire_faults.faults
        assert all(f.opened_at is not None for f in report.luminaire_faults.faults)
        truth = Truth.read(workdir / "truth.json")
        with psycopg.connect(url) as conn:
            # A sensor installed and registered that never reported: a silent device.
            conn.execute(
                "INSERT INTO devices (site, device, kind, dma) "
                "VALUES ('lyon-3e', 'ps-never-heard', 'pressure_sensor', 'dma-0')"
            )
            conn.execute(
                "UPDATE device_states s SET config_version = s.config_version - 1, "
                "config_error = 'program rejected: too many steps' "
                "WHERE (s.site, s.device) = (SELECT d.site, d.device FROM devices d "
                "JOIN device_states t ON (t.site, t.device) = (d.site, d.device) "
                "WHERE d.kind = 'luminaire' ORDER BY d.site, d.device LIMIT 1)"
            )
        yield DemoRun(
            url,
            datetime.fromtimestamp(truth.start, UTC) - timedelta(days=29),
            # The dashboards' "now": after the simulated end (the rejections are stamped with
            # the wall-clock time they were received).
            max(datetime.fromtimestamp(truth.end, UTC), datetime.now(UTC)),
        )
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _queries(model: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(kind, title, format, rawSql) of every SQL query of a dashboard: panels (kind = panel
    type), annotations and variables."""
    for panel in model["panels"]:
        for target in panel["targets"]:
            if "rawSql" in target:
                yield panel["type"], panel["title"], target["format"], target["rawSql"]
    for annotation in model["annotations"].get("list", []):
        target = annotation.get("target", {})
        if "rawSql" in target:
            yield "annotation", annotation["name"], "table", target["rawSql"]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            yield "variable", variable["name"], "table", variable["query"]


def _check_columns(kind: str, fmt: str, sql: str, cur: psycopg.Cursor[Any]) -> list[str]:
    """What is wrong with the result for its panel kind (nothing: [])."""
    assert cur.description is not None
    types = {c.name: c.type_code for c in cur.description}
    rows = cur.fetchall()
    problems = []
    numeric = [n for n, t in types.items() if t in _NUMERIC]
    if fmt == "time_series":
        grouped_epoch = "$__timeGroup" in sql  # plain PostgreSQL: epoch seconds, Grafana's time
        if types.get("time") != _TIMESTAMPTZ and not (
            grouped_epoch and types.get("time") in _NUMERIC
        ):
            problems.append(f"no timestamptz column named time: {types}")
        index = list(types).index("time") if "time" in types else 0
        times = [r[index] for r in rows]
        if times != sorted(times):
            problems.append("rows not ordered by time")
        others = {n: t for n, t in types.items() if n != "time"}
        if not numeric or any(t not in _NUMERIC | _TEXT for t in others.values()):
            problems.append(f"time series columns must be text labels or numbers: {types}")
    if kind == "stat" and not numeric:
        problems.append(f"a stat needs a numeric column: {types}")
    if kind == "barchart" and not (numeric and any(t in _TEXT for t in types.values())):
        problems.append(f"a bar chart needs a text column (its bars) and a number: {types}")
    if kind == "geomap" and not {"lat", "lon"} <= set(numeric):
        problems.append(f"a geomap needs numeric lat and lon: {types}")
    if kind == "annotation" and (
        types.get("time") != _TIMESTAMPTZ or types.get("text") not in _TEXT
        or types.get("tags") not in _TEXT or types.get("timeend", _TIMESTAMPTZ) != _TIMESTAMPTZ
    ):  # fmt: skip
        problems.append(f"annotations need time, text, tags (timeend): {types}")
    if kind == "variable" and not {"__value", "__text"} <= {
        n for n, t in types.items() if t in _TEXT
    }:
        problems.append(f"the site variable needs text __value and __text: {types}")
    if not rows:
        problems.append("no rows")
    return problems


def test_every_query_runs_on_a_simulated_run_and_fits_its_panel(demo_run: DemoRun) -> None:
    with psycopg.connect(demo_run.url, autocommit=True) as conn:
        sites = [r[0] for r in conn.execute("SELECT site FROM api.sites ORDER BY 1")]
        assert len(sites) == 2
        rng = macros.TimeRange(
            demo_run.start, demo_run.end, interval_ms=3_600_000,
            variables={"site": sites}, multi=frozenset({"site"}),
        )  # fmt: skip
        failures: list[str] = []
        empty: set[tuple[str, str]] = set()
        checked = 0
        english = {p.stem: _load(p) for p in FILES if p.parent.name == "en"}
        for path in FILES:
            model = _load(path)
            titles = [p["title"] for p in english[path.stem]["panels"]]
            own = [p["title"] for p in model["panels"]]
            for kind, title, fmt, raw in _queries(model):
                sql = macros.expand(raw, rng)
                label = f"{path.parent.name}/{path.stem} {kind} {title!r}"
                try:
                    cur = conn.execute(sql.encode())
                except psycopg.Error as exc:
                    failures.append(f"{label}: {exc}\n{sql}")
                    continue
                problems = _check_columns(kind, fmt, raw, cur)
                en_title = titles[own.index(title)] if title in own else title
                if problems == ["no rows"] and (path.stem, en_title) in MAY_BE_EMPTY:
                    empty.add((path.stem, en_title))
                    problems = []
                failures += [f"{label}: {p}" for p in problems]
                checked += 1
        assert failures == [], "\n".join(failures)
        assert checked > 60
        # A panel allowed to be empty that returned rows is listed for nothing.
        assert empty == set(MAY_BE_EMPTY), "MAY_BE_EMPTY lists panels that returned rows"


def test_the_expander_follows_grafanas_rules() -> None:
    t0 = datetime(2024, 3, 10, 22, 0, 0, 123000, tzinfo=UTC)
    rng = macros.TimeRange(t0, t0 + timedelta(hours=2), interval_ms=90_000,
                           variables={"site": ["a", "b'c"]}, multi=frozenset({"site"}))  # fmt: skip
    assert macros.expand("IN (${site:sqlstring})", rng) == "IN ('a','b''c')"
    assert macros.expand("$__timeFilter(t)", rng) == (
        "t BETWEEN '2024-03-10T22:00:00.123Z' AND '2024-03-11T00:00:00.123Z'"
    )
    assert macros.expand("$__interval", rng) == "1m"
    assert macros.expand("$__timeGroup(t, '5m')", rng) == "floor(extract(epoch from t)/300)*300"
    ts = macros.TimeRange(t0, t0, timescaledb=True)
    assert macros.expand("$__timeGroupAlias(t,'5m')", ts) == "time_bucket('300.000s',t) AS \"time\""
    # The comma trap: the first occurrence decides, so GROUP BY gets the alias too.
    trap = macros.expand("SELECT $__timeGroup(t, '1h'), x GROUP BY $__timeGroup(t, '1h')", rng)
    assert trap.count('AS "time"') == 2
    assert macros.expand("$__unixEpochFrom()", rng) == str(int(t0.timestamp()))
    for bad in ("$__nope(x)", "$__timeGroup(t, \"5m\")", "$__timeGroup(t, 300)", "$unknown",
                "x -- $__timeFilter(t)"):  # fmt: skip
        with pytest.raises(macros.MacroError):
            macros.expand(bad, rng)


# Panels of a commune's dashboards (slug, French title) that show a commune nothing, by design.
COMMUNE_EMPTY: dict[tuple[str, str], str] = {}


def test_a_communes_dashboards_as_its_role_show_its_rows_only(
    demo_run: DemoRun, server_url: str
) -> None:
    """The dashboards `site add` writes for a commune, every query expanded with the commune's
    site variable as its own role resolves it, run as that role (its datasource's user): none
    fails, none shows another commune, and each returns rows where the owner's does."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(demo_run.url) as conn:
        sites = [r[0] for r in conn.execute("SELECT site FROM sites ORDER BY 1")]
        own, other = sites[0], sites[1]
        password = uuid.uuid4().hex
        role = apply_site_reader(conn, prefix, own, password).role
    dbname = psycopg.conninfo.conninfo_to_dict(demo_run.url)["dbname"]
    role_url = with_database(f"postgresql://{role}@127.0.0.1:5432/postgres", str(dbname))
    try:
        with (
            psycopg.connect(role_url, password=password, autocommit=True) as commune,
            psycopg.connect(demo_run.url, autocommit=True) as owner,
        ):
            shown = [r[0] for r in commune.execute("SELECT site FROM api.sites")]
            assert shown == [own]  # what the site variable's query gives the commune
            rng = macros.TimeRange(
                demo_run.start, demo_run.end, interval_ms=3_600_000,
                variables={"site": shown}, multi=frozenset({"site"}),
            )  # fmt: skip
            failures, empty = [], set()
            for board in COMMUNE_DASHBOARDS:
                model = commune_dashboard(_load(JSON_DIR / "fr" / f"{board}.json"), own, "X")
                uids = {q.get("uid") for q in _datasources(model)}
                assert uids <= {f"{POSTGRES_UID}-{site_hash(own)}", PROMETHEUS_UID}, uids
                for kind, title, _fmt, raw in _queries(model):
                    sql = macros.expand(raw, rng).encode()
                    try:
                        rows = commune.execute(sql).fetchall()
                    except psycopg.Error as exc:
                        failures.append(f"{board} {kind} {title!r}: {exc}")
                        continue
                    if other in repr(rows):
                        failures.append(f"{board} {title!r} shows {other}")
                    if not rows and owner.execute(sql).fetchall():
                        empty.add((board, title))
            assert failures == [], "\n".join(failures)
            assert empty == set(COMMUNE_EMPTY), empty
    finally:
        with psycopg.connect(demo_run.url, autocommit=True) as conn:
            drop_site_reader(conn, prefix, own)


def _datasources(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)
