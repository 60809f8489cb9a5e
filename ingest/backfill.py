"""Backfill: MQTT-shaped messages of the past (a gateway's buffer, the first days of a long
simulation) through the ingest's own pipeline and store, without a broker.

Each message is validated as if it had been received at its ``received_at`` — the same checks,
window included, as a live message received then — and the outcomes are written in batches by
:class:`~ingest.store.Store` (deduplicated, rejections stored with their reason). This is the
path ``sobriety import readings`` uses for CSV files; here the input keeps the shape of MQTT
messages, so payload faults are rejected exactly as on the broker path, and they are counted
per device and day (``device_reporting_daily``) as the messages of the broker are: a gateway's
buffer holds messages its devices sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.pipeline import Outcome, Pipeline, Uplinks
from ingest.store import Store


@dataclass
class BackfillReport:
    """Messages taken, readings newly stored and already present, rejections by reason."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Backfill:
    """Validates messages with ``pipeline`` and writes them with ``store`` every ``batch_rows``
    rows (and at :meth:`flush`)."""

    def __init__(self, store: Store, pipeline: Pipeline, batch_rows: int = 10000) -> None:
        self.store = store
        self.pipeline = pipeline
        self.batch_rows = batch_rows
        self.report = BackfillReport()
        self._out = Outcome()
        self._uplinks = Uplinks()

    def add(self, topic: str, payload: bytes, received_at: float) -> None:
        """One message, as received at ``received_at`` [s since the epoch]."""
        outcome = self.pipeline.process(topic, payload, received_at)
        self.report.messages += 1
        self._out.rows.extend(outcome.rows)
        if outcome.rows:
            self._uplinks.add(outcome.rows)
        self._out.rejections.extend(outcome.rejections)
        for rejection in outcome.rejections:
            reason = rejection.reason.value
            self.report.rejected[reason] = self.report.rejected.get(reason, 0) + 1
        if len(self._out.rows) + len(self._out.rejections) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Write what is pending, in one transaction."""
        out, self._out = self._out, Outcome()
        uplinks, self._uplinks = self._uplinks, Uplinks()
        if not out.rows and not out.rejections:
            return
        result = self.store.write(out.rows, out.rejections, uplinks=uplinks)
        self.report.stored += result.stored
        self.report.duplicates += result.duplicates
