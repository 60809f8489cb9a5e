"""Prometheus metrics of the ingest. The registry is passed in, so tests use their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.errors import RejectReason

LAG_BUCKETS = (
    0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0, 86400.0,
)  # fmt: skip


class IngestMetrics:
    """``sobriety_ingest_*`` metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ns, sub = "sobriety", "ingest"
        self.received = Counter(
            "messages_received",
            "MQTT messages received on the up channel.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.stored = Counter(
            "readings_stored",
            "Readings newly stored in the database.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.duplicates = Counter(
            "readings_duplicate",
            "Readings already stored (redelivered or repeated), not stored.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.rejected = Counter(
            "messages_rejected",
            "Rejected messages (a message counts once per reason).",
            ["reason"],
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        for reason in RejectReason:
            self.rejected.labels(reason=reason.value)
        self.batch_write = Histogram(
            "batch_write_seconds",
            "Time to write one batch to the database [s].",
            namespace=ns,
            subsystem=sub,
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.lag = Histogram(
            "reading_lag_seconds",
            "Time from a message's newest reading timestamp to its commit (or spool) [s].",
            namespace=ns,
            subsystem=sub,
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.spool_bytes = Gauge(
            "spool_bytes",
            "Bytes waiting in the local spool for the database.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.spooled = Counter(
            "batches_spooled",
            "Batches written to the spool because the database was down.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.merged = Counter(
            "batches_merged",
            "Batches holding a reading already stored (a redelivery), written through the "
            "deduplicating merge instead of the direct COPY.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.pending = Gauge(
            "messages_pending",
            "Messages received and not yet acknowledged (not yet durable).",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.db_up = Gauge(
            "database_up",
            "1 when the last database write succeeded, else 0.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.broker_connected = Gauge(
            "broker_connected",
            "1 while connected to the MQTT broker.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.written = Counter(
            "messages_written",
            "Messages made durable (committed, or spooled while the database is down), then "
            "acknowledged.",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.connect_failures = Counter(
            "broker_connect_failures",
            "Attempts to reach the broker that failed (retried with backoff).",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )
        self.subscribed = Gauge(
            "subscribed",
            "1 once the broker acknowledged the subscription on this connection (SUBACK).",
            namespace=ns,
            subsystem=sub,
            registry=registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """The current value of ``sobriety_ingest_{name}`` (with its labels), 0 if never set:
        what the endpoint serves, read through the registry's public API."""
        found = self.registry.get_sample_value(f"sobriety_ingest_{name}", labels or None)
        return 0.0 if found is None else found

    def rejected_by_reason(self) -> dict[str, int]:
        """Messages rejected so far, by reason (reasons never seen left out)."""
        counts = {r.value: int(self.value("messages_rejected_total", reason=r.value))
                  for r in RejectReason}  # fmt: skip
        return {reason: n for reason, n in counts.items() if n}
