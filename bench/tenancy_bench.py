"""Tenancy benchmark (issue 15): what the commune filter of the api views (migration 0019) costs
a commune's dashboards, with 50 communes in the database.

    .venv/bin/python bench/tenancy_bench.py           # about 4 minutes on a 2-core machine

A fresh database ``sobriety_h1_ten_*`` on $SOBRIETY_TEST_DB_URL (default local PostgreSQL),
filled without MQTT: the 50 communes of simulators/scenarios/operator-50.toml, two weeks of
their water networks (the simulators' history, binary COPY) and ``--days`` of the whole fleet
(lighting, cabinets, pumps, server room) through the ingest's bulk path (``ingest.backfill``,
what ``sobriety import readings`` uses: the same validation, batched COPY), then the stages'
outputs (rollup, energy recompute, leak scan). ``sobriety db roles`` makes the service roles and
``--commune`` the role of one commune (``--site``, default commune-07, which has a leak).

Every SQL query of the French dashboards (dashboards/json/fr/*.json: panels, annotations,
variables), expanded as Grafana expands it (dashboards/macros.py) with ``site`` = that commune
over the whole period, runs as the commune's role (the filter on: ``visible_sites`` from
``site_readers``) and as the owner (an operator: every site visible), on two connections, in the
same run, interleaved (which role goes first alternates, the query order is shuffled each
round), ``--runs`` rounds, the queries whose result is the same for both (those that list or
compare communes show the owner all of them: timed once and listed apart). Printed per query:
the median time as owner [ms] and the ratio commune/owner with its spread (min-max over rounds);
the same for the total of a dashboard refresh; queries above ``--flag`` (1.5x) with at least 2
ms are flagged and both plans shown (EXPLAIN ANALYZE).
Roles (``h1t{hex}_*``) and the database are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from bench_support import ROOT_DIR
from psycopg import sql

from anomaly.config import AnomalyConfig
from anomaly.service import Scanner
from app.cli import main as sobriety
from core import rollup
from core.db import upgrade, with_database
from core.inventory import import_inventory
from core.roles import site_reader_name
from dashboards import macros
from energy.config import EnergyConfig
from energy.service import recompute
from ingest.backfill import Backfill
from ingest.pipeline import Limits, Pipeline
from ingest.store import Store
from simulators import (
    Fleet,
    build_town,
    load_scenario,
    packaged_scenario,
    write_inventory,
    write_sites,
)
from simulators.fleet import resolve_start
from simulators.town_history import TownHistory

DASHBOARDS = sorted((ROOT_DIR / "dashboards" / "json" / "fr").glob("*.json"))


def queries() -> list[tuple[str, str]]:
    """(label, rawSql) of every SQL query of the French dashboards (as tests/test_dashboards.py
    finds them: panel targets, annotations, query variables)."""
    out = []
    for path in DASHBOARDS:
        model = json.loads(path.read_text(encoding="utf-8"))
        for panel in model["panels"]:
            out += [(f"{path.stem}/{panel['title']}", t["rawSql"])
                    for t in panel["targets"] if "rawSql" in t]  # fmt: skip
        for ann in model["annotations"].get("list", []):
            if "rawSql" in ann.get("target", {}):
                out.append((f"{path.stem}/annotation {ann['name']}", ann["target"]["rawSql"]))
        for var in model["templating"]["list"]:
            if var["type"] == "query":
                out.append((f"{path.stem}/variable {var['name']}", var["query"]))
    return out


def fill(db_url: str, days: float, seed: int, work: Path) -> tuple[float, float, int]:
    """The communes, their history and ``days`` of the fleet by the bulk path, the stages'
    outputs; returns (start, end) [s since epoch] and the readings stored."""
    scenario = load_scenario(packaged_scenario("operator-50"))
    town = build_town(scenario, seed)
    start = resolve_start(scenario, days)
    with psycopg.connect(db_url) as conn:
        upgrade(conn)
        for path in (write_sites(town, work), *write_inventory(town, work, start=start,
                                                               days=days)):  # fmt: skip
            import_inventory(conn, path)
        ids = {(s, d): i for s, d, i in conn.execute("SELECT site, device, id FROM devices")}
    history = TownHistory(town, start)
    store = Store(db_url)
    pipeline = Pipeline(lambda site, dev: ids.get((site, dev)), scenario.root, Limits())
    backfill = Backfill(store, pipeline, 10_000)
    # Every message goes to the bulk path (received when sent, in simulated time): no broker.
    fleet = Fleet(history.live_town(), "mqtt://127.0.0.1:1", days=days, start=start,
                  backfill=backfill.add, backfill_until=math.inf)  # fmt: skip
    t0 = time.perf_counter()
    with psycopg.connect(db_url) as conn:
        written = history.write(conn, fleet.models)
    truth = fleet.run()
    backfill.flush()
    store.close()
    print(f"filled: {len(town.sites)} communes, {len(town.devices):,} devices; {history.days} "
          f"days of water history ({written.readings:,} readings by COPY) and {days:g} days of "
          f"the fleet ({backfill.report.stored:,} of {truth.readings:,} readings by the bulk "
          f"path) in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        rollup.refresh(conn)
    with psycopg.connect(db_url) as conn:
        recompute(conn, EnergyConfig(), truth.start, truth.end)
        conn.commit()
        Scanner(AnomalyConfig()).scan(conn, history.start, truth.end)
        conn.commit()
        (count,) = conn.execute("SELECT count(*) FROM readings").fetchone() or (0,)
    print(f"stages (rollup, energy, leak scan): {time.perf_counter() - t0:.0f} s", flush=True)
    return history.start, truth.end, int(count)


def timed(conn: psycopg.Connection, query: str) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    rows = conn.execute(query.encode()).fetchall()
    return time.perf_counter() - started, rows


def explain(conn: psycopg.Connection, query: str) -> list[str]:
    plan = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + query.encode()).fetchall()
    return [str(r[0]) for r in plan]


def drop_all(server: str, db: str, prefix: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(db)))  # fmt: skip
        for (role,) in admin.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{prefix}\\_%",)
        ).fetchall():
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default="commune-07", help="the commune whose role reads")
    parser.add_argument("--days", type=float, default=2.0, help="days of the whole fleet")
    parser.add_argument("--runs", type=int, default=7, help="rounds of every query")
    parser.add_argument("--flag", type=float, default=1.5, help="ratio flagged")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    prefix = f"h1t{uuid.uuid4().hex[:8]}"
    db = f"sobriety_h1_ten_{prefix}"
    owner_url = with_database(server, db)
    role = site_reader_name(prefix, args.site)
    rounds: list[dict[str, tuple[float, float]]] = []
    problems: list[str] = []
    try:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        with tempfile.TemporaryDirectory(prefix="sobriety-tenbench-") as tmp:
            start, end, readings = fill(owner_url, args.days, args.seed, Path(tmp))
        assert sobriety(["--db-url", owner_url, "db", "roles", "--prefix", prefix]) == 0
        assert sobriety(["--db-url", owner_url, "db", "roles", "--prefix", prefix,
                         "--commune", args.site]) == 0  # fmt: skip
        rng = macros.TimeRange(
            datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC),
            interval_ms=3_600_000, variables={"site": [args.site]}, multi=frozenset({"site"}),
        )  # fmt: skip
        expanded = [(label, macros.expand(raw, rng)) for label, raw in queries()]
        commune_url = with_database(f"postgresql://{role}@127.0.0.1:5432/postgres", db)
        with (psycopg.connect(commune_url, autocommit=True) as commune,
              psycopg.connect(owner_url, autocommit=True) as owner):  # fmt: skip
            (sees,) = commune.execute("SELECT array_agg(site) FROM api.sites").fetchone() or ([],)
            assert sees == [args.site], f"the commune's role sees {sees}"
            print(f"{readings:,} readings; {len(expanded)} queries of {len(DASHBOARDS)} "
                  f"dashboards as {role} (sees {sees}) and as the owner, {args.runs} rounds, "
                  "interleaved", flush=True)  # fmt: skip
            # Warm-up, and the queries whose rows differ: those that compare communes or list
            # them show the owner every commune and the commune its own only (not the same
            # work): timed once, reported apart.
            others = []
            for label, query in list(expanded):
                (tc, rc), (to, ro) = timed(commune, query), timed(owner, query)
                if sorted(map(repr, rc)) != sorted(map(repr, ro)):
                    others.append((label, tc, len(rc), to, len(ro)))
                    expanded.remove((label, query))
            shuffle = random.Random(args.seed)
            for n in range(args.runs):
                order = list(expanded)
                shuffle.shuffle(order)
                times: dict[str, tuple[float, float]] = {}
                for label, query in order:
                    first, second = (commune, owner) if n % 2 == 0 else (owner, commune)
                    a, _ = timed(first, query)
                    b, _ = timed(second, query)
                    times[label] = (a, b) if first is commune else (b, a)
                rounds.append(times)
            report(expanded, rounds, args.flag, commune, owner, problems)
            print(f"\n{len(others)} queries whose rows differ (the owner reads every commune, "
                  "the commune its own; once each):")  # fmt: skip
            for label, tc, nc, to, no in others:
                print(f"  {label[:58]:58} commune {tc * 1000:7.1f} ms, {nc} rows; owner "
                      f"{to * 1000:7.1f} ms, {no} rows")  # fmt: skip
    finally:
        drop_all(server, db, prefix)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


def report(expanded: list[tuple[str, str]], rounds: list[dict[str, tuple[float, float]]],
           flag: float, commune: psycopg.Connection, owner: psycopg.Connection,
           problems: list[str]) -> None:  # fmt: skip
    """Per query and in all: the owner's median [ms], the ratio commune/owner with its spread;
    the plans of the flagged queries."""
    flagged = []
    print(f"\n{'query':60} {'owner ms':>9} {'commune/owner (min-max)':>24}")
    for label, query in expanded:
        owner_ms = statistics.median(r[label][1] for r in rounds) * 1000
        ratios = [r[label][0] / r[label][1] for r in rounds if r[label][1] > 0]
        mark = ""
        if statistics.median(ratios) > flag and owner_ms >= 2.0:
            mark = "  <-- FLAGGED"
            flagged.append((label, query))
        print(f"{label[:60]:60} {owner_ms:9.1f} {spread(ratios):>24}{mark}")
    totals = [sum(t[0] for t in r.values()) / sum(t[1] for t in r.values()) for r in rounds]
    owner_total = statistics.median(sum(t[1] for t in r.values()) for r in rounds)
    print(f"\nall {len(expanded)} queries: owner {owner_total * 1000:.0f} ms a round (median); "
          f"commune/owner {spread(totals)}")  # fmt: skip
    over = [label for label, _ in flagged]
    print(f"queries above {flag:g}x (and >= 2 ms): {len(over)}")
    for label, query in flagged:
        print(f"\n--- {label}: commune plan")
        print("\n".join(explain(commune, query)[:25]))
        print(f"--- {label}: owner plan")
        print("\n".join(explain(owner, query)[:25]))
    if statistics.median(totals) > flag:
        problems.append(f"a dashboard refresh costs the commune {statistics.median(totals):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
