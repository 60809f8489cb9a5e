"""The policy engine in ``sobriety demo``: the policies are published before the simulated town
connects (one pass of :func:`policies.service.publish_pass`, retained), the devices' states are
followed while it runs, and the summary says which programs were in force, how many devices
applied their config (checked against what the simulated devices themselves applied), how many
messages adaptive reporting saved (``api.reporting_daily``) and the kWh dimming is expected to
save over the run's nights (``policies simulate``'s computation).

The policies: the configuration's ``[policies]`` when it has any, else the demo's own
(``simulators/scenarios/demo-policies.toml``). The configs are published once, at the real
instant the run starts: the simulated days all follow the programs of that night and the
reporting of that moment (day or night at the site).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

from core.config import Config
from core.db import connect
from policies.config import PoliciesConfig, load_policies
from policies.mqtt import Link
from policies.service import PassReport, PoliciesMetrics, StateWriter, publish_pass
from policies.store import escalated_dmas
from simulators import Fleet, packaged_scenario

__all__ = [
    "DEMO_POLICIES",
    "PolicyFindings",
    "PolicyRun",
    "demo_policies",
    "render_policies",
]

DEMO_POLICIES = packaged_scenario("demo-policies")
"""The demo's own policies, used when the configuration has none."""
STATES_WAIT_S = 30.0
"""How long the summary waits for the states the simulated devices published."""


def demo_policies(config: Config) -> tuple[PoliciesConfig, str]:
    """The policies the demo publishes, and where they come from."""
    configured = config.section(PoliciesConfig)
    if configured != PoliciesConfig():
        return configured, "the configuration's [policies]"
    return load_policies(DEMO_POLICIES), f"the demo's ({DEMO_POLICIES.name})"


@dataclass
class PolicyFindings:
    """What the policies did in the run, and every difference from the simulated devices."""

    source: str
    published: PassReport
    applied: int = 0  # devices whose recorded state names the published version
    applied_truth: int = 0  # devices of the simulation that applied it
    refused: list[str] = field(default_factory=list)
    messages: int = 0
    baseline_messages: int = 0
    radio_wh: float = 0.0
    baseline_radio_wh: float = 0.0
    reporting_days: tuple[str, str] | None = None
    baseline_interval_s: int = 900
    nights: tuple[str, str] | None = None
    kwh: float = 0.0
    baseline_kwh: float = 0.0
    after_scan: PassReport | None = None  # the pass after the leak scan
    leak_dmas: list[str] = field(default_factory=list)
    measured_kwh: float | None = None  # cabinet meters over the nights covered
    cabinet_kwh: float | None = None  # expected at the cabinet meters
    problems: list[str] = field(default_factory=list)


class PolicyRun:
    """Publishes before the fleet connects, follows the states while it runs."""

    def __init__(self, config: Config, db_url: str) -> None:
        self.policies, self.source = demo_policies(config)
        self._config = config
        self._db_url = db_url
        self._stop = threading.Event()
        from prometheus_client import CollectorRegistry

        self._writer = StateWriter(db_url, PoliciesMetrics(CollectorRegistry()), config.mqtt.root)
        self._link = Link(config, on_state=self._writer.offer)
        self._thread = threading.Thread(
            target=self._writer.run, args=(self._stop,), name="demo-states", daemon=True
        )
        self.report = PassReport()

    def publish(self) -> PassReport:
        """Connect, start following states, publish every device's config once."""
        self._thread.start()
        self._link.connect()
        with connect(self._db_url) as conn:
            self.report = publish_pass(conn, self._link, self.policies, time.time())
        return self.report

    def finish(
        self, conn: psycopg.Connection, fleet: Fleet, sites: list[str], start: float, end: float
    ) -> PolicyFindings:
        """Wait (bounded) until the states of what the devices applied are recorded, stop, and
        gather the findings of the run from ``start`` to ``end`` [s since the epoch]."""
        truth = _applied_in_simulation(fleet)
        found = PolicyFindings(
            self.source,
            self.report,
            applied_truth=len(truth),
            baseline_interval_s=self.policies.accounting.baseline_interval_s,
        )
        deadline = time.monotonic() + STATES_WAIT_S
        while True:
            applied = _applied_in_database(conn, sites)
            if applied >= truth or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polls a row count: the states arrive through another connection
        self.close()
        found.applied = len(applied)
        if applied != truth:
            missing = [f"{s}/{d}" for s, d in sorted(truth - applied)[:5]]
            extra = [f"{s}/{d}" for s, d in sorted(applied - truth)[:5]]
            found.problems.append(
                f"policies: {len(applied)} devices recorded as running their config, the "
                f"simulation says {len(truth)}"
                + (f" (not recorded: {', '.join(missing)})" if missing else "")
                + (f" (recorded, not applied: {', '.join(extra)})" if extra else "")
            )
        found.refused = [
            f"{s}/{d}: {e}"
            for s, d, e in conn.execute(
                """SELECT site, device, config_error FROM api.config_drift
                   WHERE site = ANY(%s) AND config_error IS NOT NULL ORDER BY 1, 2""",
                (sites,),
            )
        ]
        _messages(conn, sites, found)
        if found.messages != fleet.truth.deliveries_stored:
            found.problems.append(
                f"policies: api.reporting_daily counts {found.messages:,} messages, the town "
                f"sent {fleet.truth.deliveries_stored:,} with a reading to store (duplicates "
                "twice)"
            )
        _energy(conn, sites, start, end, self.policies, found)
        link = Link(self._config, client_id=f"{self._config.mqtt.client_id}-policies-after")
        link.connect()
        try:
            with connect(self._db_url) as work:
                found.after_scan = publish_pass(work, link, self.policies, time.time())
                found.leak_dmas = sorted(
                    f"{site}/{dma}" for site, dma in escalated_dmas(work) if site in sites
                )
        finally:
            link.close()
        return found

    def close(self) -> None:
        """Stop following the states (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._link.close()


def _applied_in_simulation(fleet: Fleet) -> set[tuple[str, str]]:
    """(site, device) of the simulated devices that applied a config (version > 0)."""
    return {
        (group.site, device)
        for group in fleet.groups
        for device, version in zip(group.ids, group.config_version, strict=True)
        if version > 0
    }


def _applied_in_database(conn: psycopg.Connection, sites: list[str]) -> set[tuple[str, str]]:
    rows = conn.execute(
        """SELECT site, device FROM api.device_configs
           WHERE site = ANY(%s) AND applied_version = version""",
        (sites,),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def _messages(conn: psycopg.Connection, sites: list[str], found: PolicyFindings) -> None:
    """The messages of the demo's communes and their fixed-rate baseline (api.reporting_daily)."""
    row = conn.execute(
        """SELECT sum(messages), sum(baseline_messages), sum(radio_energy_wh),
                  sum(baseline_radio_energy_wh), min(day), max(day)
           FROM api.reporting_daily WHERE site = ANY(%s)""",
        (sites,),
    ).fetchone()
    if row is None or row[0] is None:
        found.problems.append("policies: api.reporting_daily counted no message of the run")
        return
    found.messages, found.baseline_messages = int(row[0]), int(row[1] or 0)
    found.radio_wh, found.baseline_radio_wh = float(row[2] or 0), float(row[3] or 0)
    found.reporting_days = (row[4].isoformat(), row[5].isoformat())


def _energy(
    conn: psycopg.Connection,
    sites: list[str],
    start: float,
    end: float,
    policies: PoliciesConfig,
    found: PolicyFindings,
) -> None:
    """The expected energy over the nights the run covers whole (sunset to sunrise inside it),
    and what the cabinet meters measured over those nights (their energy counters)."""
    from app.policies_simulate import site_energy
    from core.lighting import night_of, sun_times

    measured = 0.0
    cabinet: float | None = 0.0
    for site in sites:
        row = conn.execute(
            "SELECT timezone, lat, lon FROM sites WHERE site = %s", (site,)
        ).fetchone()
        if row is None or row[1] is None:
            continue
        zone = ZoneInfo(row[0])
        nights = []
        day = night_of(start, zone)
        while day <= night_of(end, zone):
            sun = sun_times(row[1], row[2], day, zone)
            lit = sun.sunset is not None and sun.sunrise is not None
            if lit and start <= sun.sunset - 3600 and sun.sunrise + 3600 <= end:  # type: ignore[operator]
                nights.append(day)
            day += timedelta(days=1)
        if not nights:
            continue
        result, _ = site_energy(conn, site, nights[0], nights[-1], policies)
        found.kwh += result.kwh
        found.baseline_kwh += result.baseline_kwh
        found.nights = (nights[0].isoformat(), nights[-1].isoformat())
        if cabinet is not None and result.cabinet_kwh is not None:
            cabinet += result.cabinet_kwh
        else:
            cabinet = None
        window = (
            max(start, _noon(nights[0], zone)),
            min(end, _noon(nights[-1] + timedelta(days=1), zone)),
        )
        measured += _cabinet_kwh(conn, site, *window)
    if found.nights is not None:
        found.cabinet_kwh = cabinet
        found.measured_kwh = measured


def _noon(day: date, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=zone).timestamp()


def _cabinet_kwh(conn: psycopg.Connection, site: str, since: float, until: float) -> float:
    """What the site's cabinet meters counted from ``since`` to ``until`` [kWh]: each
    counter's last reading at or before the end minus its first at or after the start."""
    row = conn.execute(
        """WITH m AS (SELECT id FROM metrics WHERE name = 'energy')
           SELECT sum(e.value - b.value) / 1000.0 FROM devices d
           CROSS JOIN LATERAL (SELECT value FROM readings r WHERE r.device_id = d.id
               AND r.metric_id = (SELECT id FROM m) AND r.time >= to_timestamp(%(a)s)
               ORDER BY time LIMIT 1) b
           CROSS JOIN LATERAL (SELECT value FROM readings r WHERE r.device_id = d.id
               AND r.metric_id = (SELECT id FROM m) AND r.time <= to_timestamp(%(b)s)
               ORDER BY time DESC LIMIT 1) e
           WHERE d.site = %(s)s AND d.kind = 'cabinet_meter'""",
        {"a": since, "b": until, "s": site},
    ).fetchone()
    return float(row[0]) if row is not None and row[0] is not None else 0.0


def render_policies(found: PolicyFindings) -> list[str]:
    """The summary's lines about the policies."""
    report = found.published
    programs = ", ".join(f"{name} ({n} luminaires)" for name, n in sorted(report.programs.items()))
    lines = [
        f"Politiques / policies: {found.source}; {report.published} configs published "
        "(retained, version "
        f"per content), {report.escalated} sensors escalated",
        f"  programmes en vigueur / programs in force: {programs or 'none'}",
        f"  appliqués / devices running their config: {found.applied} of {report.devices} "
        f"(the simulation: {found.applied_truth})",
    ]
    if found.refused:
        lines.append(f"  refusés / refused: {'; '.join(found.refused[:5])}")
    if found.baseline_messages and found.reporting_days:
        saved = 1 - found.messages / found.baseline_messages
        lines.append(
            f"  messages: {found.messages:,} against {found.baseline_messages:,} at one "
            f"message per metric every {found.baseline_interval_s // 60} min — {saved:.0%} "
            "saved by batching and rates "
            f"(radio {found.radio_wh:.2f} Wh against {found.baseline_radio_wh:.2f} Wh; local "
            f"days {found.reporting_days[0]} to {found.reporting_days[1]})"
        )
    if found.nights and found.baseline_kwh > 0:
        saved_kwh = found.baseline_kwh - found.kwh
        lines.append(
            "  énergie attendue / expected lighting energy over the nights of "
            f"{found.nights[0]} to "
            f"{found.nights[1]}: {found.kwh:.1f} kWh against {found.baseline_kwh:.1f} kWh "
            f"without dimming — {saved_kwh:.1f} kWh ({saved_kwh / found.baseline_kwh:.0%}) "
            "saved (sobriety policies simulate)"
        )
        if found.cabinet_kwh is not None and found.measured_kwh:
            gap = found.measured_kwh / found.cabinet_kwh - 1
            lines.append(
                "  armoires / at the cabinet meters over those nights (noon to noon, within the "
                "run): "
                f"{found.measured_kwh:.1f} kWh measured, {found.cabinet_kwh:.1f} kWh expected "
                f"({gap:+.1%}: presence boosts and the simulated lamp faults are not in the "
                "programs)"
            )
    after = found.after_scan
    if after is not None:
        dmas = ", ".join(found.leak_dmas) or "none"
        lines.append(
            f"  après la détection / after the leak scan: DMAs with an active leak alert: {dmas}; "
            f"{after.escalated} sensors escalated, {after.published} configs published"
        )
    return lines
