"""Operator benchmark (issue 15): 50 communes (simulators/scenarios/operator-50.toml) through the
real chain, and whether each stage keeps up.

    .venv/bin/python bench/operator_bench.py          # about 3 minutes on a 2-core machine

A private Mosquitto (the limits of deploy/mosquitto) and a fresh database ``sobriety_h1_opb_*``
on $SOBRIETY_TEST_DB_URL (default local PostgreSQL), dropped at the end. The communes'
inventory is imported and two weeks of their water networks written by binary COPY (the
simulators' history); then ``sobriety run`` in a child process — the ingest, the policies, the
anomaly and the energy services, each pass every ``--interval`` s — while the simulator plays
the scenario's live days at full speed over MQTT. Sampled every 0.25 s: readings published
(the simulator's count) and committed (the ingest's metric), and each service's pass count and
total duration (its Prometheus histogram), so every pass's duration is known.

Reported per stage: the ingest — readings published against stored, per commune (one lost is
a failure), the rate sustained against the rate the communes produce in real time (headroom),
the publish→commit lag at full speed (p50/p99/max over the run) and the drain after the last
message; the policies, anomaly and energy services — passes, mean and longest pass [s] against
their production interval (defaults of the configuration) — and each stage's output per commune
(configs published, energy days, DMA nights; leaks and luminaire faults found against the
ground truth, as ``sobriety demo`` scores them). A stage keeps up when nothing is lost and its
longest pass fits its interval.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from pathlib import Path

import psycopg
from bench_support import ingest_config

from anomaly.config import AnomalyConfig
from app.demo_faults import find_faults
from app.demo_leaks import find_leaks
from app.embedded import Mosquitto
from app.embedded.service_process import ServiceProcess
from core.db import upgrade, with_database
from core.inventory import import_inventory
from energy.config import EnergyConfig
from policies.config import PoliciesConfig
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

SERVICES = {  # name: (histogram of its pass [s], its production interval [s])
    "policies": ("sobriety_policies_pass_seconds", PoliciesConfig().service.interval_s),
    "anomaly": ("sobriety_anomaly_scan_seconds", AnomalyConfig().interval_s),
    "energy": ("sobriety_energy_pass_seconds", EnergyConfig().interval_s),
}
STORED = "sobriety_ingest_readings_stored_total"
OUTPUTS = {  # stage: api view whose sites say the stage covered them
    "policies": "api.device_configs",
    "energy": "api.energy_daily",
    "anomaly": "api.dma_nights",
}


class Sampler(threading.Thread):
    """Polls the service's metrics: committed readings over time, every pass's duration."""

    def __init__(self, proc: ServiceProcess, period_s: float = 0.25) -> None:
        super().__init__(name="sampler", daemon=True)
        self.proc, self.period_s = proc, period_s
        self.stored: list[tuple[float, float]] = []
        self.passes: dict[str, list[float]] = {name: [] for name in SERVICES}
        self._last: dict[str, tuple[float, float]] = dict.fromkeys(SERVICES, (0.0, 0.0))
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.poll()
            self.halt.wait(self.period_s)

    def poll(self) -> None:
        samples = self.proc.metrics()
        if samples is None:
            return
        self.stored.append((time.monotonic(), samples.get(STORED, 0.0)))
        for name, (hist, _interval) in SERVICES.items():
            count, total = samples.get(f"{hist}_count", 0.0), samples.get(f"{hist}_sum", 0.0)
            before = self._last[name]
            if count > before[0]:
                n = int(count - before[0])
                self.passes[name] += [(total - before[1]) / n] * n
                self._last[name] = (count, total)


def lags(published: list[tuple[float, int]], stored: list[tuple[float, float]]) -> list[float]:
    """For each published mark (time, readings so far): the time until the committed count
    reached it [s]; marks never reached are left out (a loss shows in the totals)."""
    times = [t for t, _ in stored]
    counts = [n for _, n in stored]
    out = []
    for t, n in published:
        i = bisect_left(counts, n)
        if i < len(counts):
            out.append(max(times[i] - t, 0.0))
        del times[: max(i - 1, 0)], counts[: max(i - 1, 0)]
    return out


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def wait_for(predicate: object, timeout_s: float, poll_s: float = 0.25) -> bool:
    """Until ``predicate()`` or ``timeout_s``; polls (the state is in another process)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def by_site(conn: psycopg.Connection, sql: str, *params: object) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute(sql, params)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=packaged_scenario("operator-50"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=30.0,
                        help="the services' pass interval during the bench [s]")  # fmt: skip
    args = parser.parse_args()
    server = os.environ.get("SOBRIETY_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"sobriety_h1_opb_{uuid.uuid4().hex[:8]}"
    db_url = with_database(server, name)
    root = f"opbench{uuid.uuid4().hex[:6]}/v1"
    scenario = load_scenario(args.scenario).model_copy(update={"root": root})
    town = build_town(scenario, args.seed)
    start = resolve_start(scenario, scenario.days)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    proc: ServiceProcess | None = None
    with tempfile.TemporaryDirectory(prefix="sobriety-opbench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            with psycopg.connect(db_url) as conn:
                upgrade(conn)
                for path in (write_sites(town, work / "inv"),
                             *write_inventory(town, work / "inv", start=start)):  # fmt: skip
                    import_inventory(conn, path)
            history = TownHistory(town, start)
            fleet = Fleet(history.live_town(), broker.url, start=start, client_prefix="opb")
            with psycopg.connect(db_url) as conn:
                written = history.write(conn, fleet.models)
            print(f"operator: {len(town.sites)} communes, {len(town.devices):,} devices; "
                  f"history {history.days} days, {written.readings:,} readings by COPY in "
                  f"{written.seconds:.1f} s", flush=True)  # fmt: skip
            every = {"interval_s": args.interval}
            config = ingest_config(db_url, broker.url, work, root, anomaly=every, energy=every,
                                   policies={"service": every})  # fmt: skip
            proc = ServiceProcess(config, work, command=("run",), name="run")
            proc.start(timeout_s=60)
            sampler = Sampler(proc)
            sampler.start()
            published: list[tuple[float, int]] = []

            def pace(sent: int) -> None:
                if sent % 100 == 0:
                    published.append((time.monotonic(), fleet.truth.readings))

            fleet.pace = pace
            fleet.connect(timeout_s=60)
            began = time.monotonic()
            truth = fleet.run()
            fleet.wait_published(timeout_s=600)
            fleet.close()
            sim_end = time.monotonic()
            published.append((sim_end, truth.readings))
            history.describe_leaks(truth, fleet.town)
            ok = wait_for(lambda: proc is not None and proc.metric(STORED) >= truth.readings, 600)
            drained = time.monotonic()
            # One whole pass of each service over all the data: two more passes begun after.
            done = {n: len(p) for n, p in sampler.passes.items()}
            wait_for(lambda: all(len(sampler.passes[n]) >= done[n] + 2 for n in SERVICES),
                     4 * args.interval + 300)  # fmt: skip
            sampler.halt.set()
            sampler.join()
            sampler.poll()
            with psycopg.connect(db_url) as conn:
                stored = by_site(conn, "SELECT d.site, count(*) FROM readings r JOIN devices d "
                                 "ON d.id = r.device_id WHERE r.time >= to_timestamp(%s) "
                                 "GROUP BY d.site", truth.start)  # fmt: skip
                outputs = {stage: by_site(conn, f"SELECT site, count(*) FROM {view} GROUP BY 1")
                           for stage, view in OUTPUTS.items()}  # fmt: skip
                leaks = find_leaks(conn, truth, fleet.town, history.start, AnomalyConfig())
                faults = find_faults(conn, truth, EnergyConfig())
            rss = 0.0
            if proc.proc is not None:
                status = Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines()
                rss = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024
            assert proc.terminate(timeout_s=60) == 0
        finally:
            if proc is not None:
                proc.kill()
            broker.stop()
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    sites = [s.spec.site for s in town.sites]
    lost = {s: truth.readings_by_site.get(s, 0) - stored.get(s, 0) for s in sites}
    lost = {s: n for s, n in lost.items() if n}
    chain_s = drained - began
    real_rate = truth.readings / (scenario.days * 86400.0)
    lag = lags(published, sampler.stored)
    print(f"\nlive: {scenario.days:g} simulated days, {truth.messages:,} messages, "
          f"{truth.readings:,} readings; simulator {sim_end - began:.1f} s, chain "
          f"{chain_s:.1f} s ({scenario.days * 86400 / chain_s:,.0f}x real time)")  # fmt: skip
    print(
        f"ingest: {sum(stored.values()):,} of {truth.readings:,} readings stored; "
        f"communes with a loss: {len(lost)} {dict(list(lost.items())[:5]) if lost else ''}"
    )
    print(
        f"  rate {truth.readings / chain_s:,.0f} readings/s sustained against "
        f"{real_rate:,.1f}/s in real time: headroom {truth.readings / chain_s / real_rate:,.0f}x"
    )
    print(f"  publish->commit lag at full speed: p50 {quantile(lag, 0.5):.2f} s, p99 "
          f"{quantile(lag, 0.99):.2f} s, max {max(lag, default=float('nan')):.2f} s; drain "
          f"after the last message {drained - sim_end:.1f} s; peak RSS of `sobriety run` "
          f"{rss:.0f} MB; {'ok' if ok and not lost else 'LOSS'}")  # fmt: skip
    verdict = ok and not lost
    for svc, (_hist, interval) in SERVICES.items():
        p = sampler.passes[svc]
        longest = max(p, default=float("nan"))
        fits = bool(p) and longest <= interval
        verdict = verdict and fits
        covered = len(set(outputs[svc]) & set(sites))
        print(f"{svc}: {len(p)} passes, mean {sum(p) / max(len(p), 1):.2f} s, longest "
              f"{longest:.2f} s against its production interval {interval:.0f} s "
              f"({longest / interval:.1%}); communes in {OUTPUTS[svc]}: {covered}/{len(sites)}; "
              f"{'keeps up' if fits else 'DOES NOT KEEP UP'}")  # fmt: skip
        verdict = verdict and covered == len(sites)
    assessable = [r for r in leaks.leaks if leaks.assessable(r)]
    found = [r for r in assessable if r.detected]
    print(f"leaks: {len(found)}/{len(assessable)} detectable leaks found in their commune "
          f"({len(leaks.leaks) - len(assessable)} too recent to be detectable), "
          f"{len(leaks.false_alarms)} false alarms")  # fmt: skip
    due = [f for f in faults.faults if f.due]
    print(f"luminaire faults: {sum(f.opened_at is not None for f in due)}/{len(due)} due found "
          f"({len(faults.faults) - len(due)} not due yet), {len(faults.false_alarms)} false "
          "alarms")  # fmt: skip
    verdict = verdict and len(found) == len(assessable) and not faults.problems
    print(f"every stage keeps up at {len(sites)} communes: {'yes' if verdict else 'NO'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
