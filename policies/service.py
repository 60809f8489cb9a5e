"""The policies service: every ``policies.service.interval_s`` it computes the desired config of
every device (:mod:`policies.desired`), publishes retained on ``{root}/{site}/{device}/config``
those whose content changed — with the next version — and records them once the broker
acknowledged them; it follows the devices' retained ``state`` into ``device_states`` (what
``api.config_drift`` compares), and sends again the config an online device has not applied
after ``policies.service.resend_after_s``.

Escalation goes through the database: the active leak alerts of the anomaly stage (``alerts``)
give the DMAs whose sensors report at the escalated interval; when an alert is resolved they
return to their kind's policy at the next pass. A restart publishes nothing that is unchanged:
the versions and digests live in ``device_configs``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.clock import Clock, SystemClock
from core.config import Config
from core.contract import parse_topic
from core.db import connect
from core.errors import TopicError
from core.lighting import SunCache
from core.messages import Command, MessageError, decode_state, encode
from core.site_config import PerSite
from policies import store
from policies.config import PoliciesConfig
from policies.desired import desired_configs
from policies.mqtt import Link

__all__ = ["PassReport", "PoliciesMetrics", "PoliciesService", "publish_pass"]

log = logging.getLogger(__name__)


class PoliciesMetrics:
    """``sobriety_policies_*`` metrics (the registry is passed in, so tests use their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns, sub = "sobriety", "policies"

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, namespace=ns, subsystem=sub, registry=registry)

        self.published = Counter(
            "configs_published",
            "Configs published with a new version (content changed).",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.resent = Counter(
            "configs_resent",
            "Configs sent again to an online device that had not applied them.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.states = Counter(
            "states_received",
            "Device and gateway states received (invalid ones included).",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.pass_seconds = Histogram(
            "pass_seconds", "Duration of one pass.", namespace=ns, subsystem=sub, registry=registry
        )
        self.pass_failures = Counter(
            "pass_failures",
            "Passes that failed (database or broker unreachable) and were retried.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.devices = gauge("devices", "Devices the policies give a config to.")
        self.drifted = gauge(
            "devices_drifted", "Devices not running their published config (api.config_drift)."
        )
        self.escalated = gauge(
            "devices_escalated", "Sensors of DMAs with an active leak alert, reporting faster."
        )
        self.overrides = gauge("overrides_active", "Manual lighting overrides in force.")


@dataclass
class PassReport:
    """What one pass did."""

    devices: int = 0
    published: int = 0
    unchanged: int = 0
    resent: int = 0
    overrides_resent: int = 0
    escalated: int = 0
    programs: dict[str, int] = field(default_factory=dict)


def publish_pass(
    conn: psycopg.Connection,
    link: Link,
    policies: PoliciesConfig | PerSite[PoliciesConfig],
    now: float,
    sun: SunCache | None = None,
) -> PassReport:
    """One pass at ``now`` [s since the epoch]: publish every changed config (next version),
    wait for the broker's acknowledgements, record them; send again what online devices did not
    apply within ``resend_after_s``. Each site's devices get its own policies where it has
    some; the service settings and the accounting are the operator's."""
    operator = PerSite.of(policies).default
    settings = operator.service
    store.sync_accounting(conn, operator.accounting)
    sites = store.sites(conn)
    last = store.published(conn)
    escalated = store.escalated_dmas(conn)
    conn.commit()
    report = PassReport()
    changed: list[tuple[int, int, bytes, bytes, str | None, bool]] = []
    messages: list[tuple[str, bytes, bool]] = []
    for want in desired_configs(policies, sites, store.devices(conn), escalated, now, sun):
        dev = want.device
        report.devices += 1
        report.escalated += want.escalated
        if want.program is not None:
            report.programs[want.program] = report.programs.get(want.program, 0) + 1
        before = last.get(dev.device_id)
        if before is not None and before.digest == want.digest:
            report.unchanged += 1
            continue
        version = 1 if before is None else before.version + 1
        payload = encode(want.config(version))
        changed.append((dev.device_id, version, want.digest, payload, want.program, want.escalated))
        messages.append((link.topic(dev.site, dev.device, "config"), payload, True))
    conn.commit()
    if messages:
        link.publish_all(messages, settings.publish_timeout_s)
        at = time.time()
        store.save_published(conn, [(*row, at) for row in changed])
        conn.commit()
    report.published = len(messages)
    if settings.resend_after_s > 0:
        stale = store.unapplied(conn, now, settings.resend_after_s)
        if stale:
            link.publish_all(
                (
                    (link.topic(site, device, "config"), payload, True)
                    for _, site, device, payload in stale
                ),
                settings.publish_timeout_s,
            )
            store.mark_resent(conn, [row[0] for row in stale], now)
            conn.commit()
            report.resent = len(stale)
    resends = store.override_resends(conn, now)
    if resends:
        link.publish_all(
            (
                (
                    link.topic(site, device, "cmd"),
                    encode(Command(dim=level, duration_s=until - now)),
                    False,
                )
                for _, site, device, level, until in resends
            ),
            settings.publish_timeout_s,
        )
        store.mark_override_resent(conn, {row[0] for row in resends}, now)
        conn.commit()
        report.overrides_resent = len(resends)
    return report


class StateWriter:
    """Collects the ``state`` messages of the network thread and writes them in batches."""

    def __init__(self, conninfo: str, metrics: PoliciesMetrics, root: str) -> None:
        self._conninfo = conninfo
        self._metrics = metrics
        self._root = root
        self._queue: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.written = 0

    def offer(self, topic: str, payload: bytes, received_at: float) -> None:
        """The link's state handler (network thread): queue, never block."""
        self._metrics.states.inc()
        self._queue.put((topic, payload, received_at))

    def run(self, stopping: threading.Event) -> None:
        """Write what arrives until ``stopping``; a database failure is retried."""
        conn: psycopg.Connection | None = None
        while not stopping.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 5000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None or conn.closed:
                    conn = connect(self._conninfo)
                self._write(conn, batch)
            except Exception as exc:  # noqa: BLE001 - the states are kept and retried
                log.warning("policies: cannot record %d states (%s); retrying", len(batch), exc)
                for item in batch:
                    self._queue.put(item)
                if conn is not None:
                    conn.close()
                conn = None
                stopping.wait(2.0)
        if conn is not None:
            conn.close()

    def _write(self, conn: psycopg.Connection, batch: list[tuple[str, bytes, float]]) -> None:
        rows: list[store.StateRow] = []
        for topic, payload, received_at in batch:
            try:
                parts = parse_topic(topic, self._root)
            except TopicError:
                continue  # our subscription's filter gives only state topics
            try:
                state = decode_state(payload)
            except MessageError as exc:
                store.reject_state(
                    conn, topic, parts.site, parts.device, str(exc), payload, received_at
                )
                continue
            rows.append(
                store.StateRow(
                    parts.site, parts.device, state.online, state.config_version,
                    state.config_error, received_at,
                )
            )  # fmt: skip
        self.written += store.save_states(conn, rows)
        conn.commit()


class PoliciesService:
    """``sobriety policies``: passes every ``interval_s`` and the state writer, until stopped."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        clock: Clock | None = None,
        on_pass: Callable[[PassReport], None] | None = None,
    ) -> None:
        self.config = config
        self.per_site = config.per_site(PoliciesConfig)
        self.policies = self.per_site.default
        self.metrics = PoliciesMetrics(registry)
        self.clock = clock or SystemClock()
        self.stopping = threading.Event()
        self.passes = 0
        self._on_pass = on_pass
        self._conninfo = config.db_conninfo()
        self.states = StateWriter(self._conninfo, self.metrics, config.mqtt.root)
        self._sun = SunCache()

    def run(self) -> None:
        """Connect, then pass until :attr:`stopping` is set."""
        writer = threading.Thread(
            target=self.states.run, args=(self.stopping,), name="policies-states", daemon=True
        )
        writer.start()
        link = Link(self.config, on_state=self.states.offer)
        while not self.stopping.is_set():
            try:
                link.connect()
                break
            except Exception as exc:  # noqa: BLE001 - the broker may come later
                log.warning("policies: %s; retrying", exc)
                self.metrics.pass_failures.inc()
                self.stopping.wait(5.0)
        try:
            while not self.stopping.is_set():
                self.run_pass(link)
                self.stopping.wait(self.policies.service.interval_s)
        finally:
            link.close()
            writer.join(timeout=5.0)

    def run_pass(self, link: Link) -> PassReport | None:
        """One pass with its metrics; a failure is logged, counted and retried next time."""
        started = time.monotonic()
        try:
            with connect(self._conninfo) as conn:
                report = publish_pass(conn, link, self.per_site, self.clock.now(), self._sun)
                numbers = store.counts(conn)
                overrides = len(store.active_overrides(conn, self.clock.now()))
        except Exception as exc:  # noqa: BLE001 - the service keeps going
            log.warning("policies: pass failed (%s); retrying in %.0f s", exc,
                        self.policies.service.interval_s)  # fmt: skip
            self.metrics.pass_failures.inc()
            return None
        self.passes += 1
        self.metrics.pass_seconds.observe(time.monotonic() - started)
        self.metrics.published.inc(report.published)
        self.metrics.resent.inc(report.resent)
        self.metrics.devices.set(report.devices)
        self.metrics.escalated.set(report.escalated)
        self.metrics.drifted.set(numbers["drifted"])
        self.metrics.overrides.set(overrides)
        if report.published or report.resent:
            log.info(
                "policies: %d configs published, %d resent, %d unchanged, %d escalated",
                report.published, report.resent, report.unchanged, report.escalated,
            )  # fmt: skip
        if self._on_pass is not None:
            self._on_pass(report)
        return report
