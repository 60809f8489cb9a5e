"""``sobriety rejected``: list rejected messages, and replay them once the cause is fixed.

Replay runs each stored payload through the same pipeline as live messages, with the original
reception time as "now" (so relative SenML times and the time window mean what they meant). A
message whose original reason no longer applies is marked replayed; its good readings are
stored (deduplicated); a new, different reason is recorded as a new rejection.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ingest.pipeline import Outcome, Pipeline
from ingest.store import Store

_COLUMNS = (
    "id, received_at, last_received_at, times_seen, topic, site, device, reason, detail, "
    "payload, payload_bytes, replayed_at"
)


def _filters(
    since: datetime | None, reason: str | None, site: str | None, pending_only: bool
) -> tuple[str, list[Any]]:
    where = []
    params: list[Any] = []
    if since is not None:
        where.append("last_received_at >= %s")
        params.append(since)
    if reason:
        where.append("reason = %s")
        params.append(reason)
    if site:
        where.append("site = %s")
        params.append(site)
    if pending_only:
        where.append("replayed_at IS NULL")
    return (" WHERE " + " AND ".join(where)) if where else "", params


def iter_rejected(
    conn: psycopg.Connection,
    since: datetime | None = None,
    reason: str | None = None,
    site: str | None = None,
    pending_only: bool = False,
) -> Iterator[dict[str, Any]]:
    """Rejected messages as JSON-ready dicts, oldest first, streamed from a server cursor."""
    where, params = _filters(since, reason, site, pending_only)
    with conn.cursor(name="rejected_list") as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM rejected_messages{where} ORDER BY id", params)
        for row in cur:
            (
                id_,
                received,
                last,
                seen,
                topic,
                site_,
                device,
                reason_,
                detail,
                payload,
                size,
                replayed,
            ) = row
            payload = bytes(payload)
            item: dict[str, Any] = {
                "id": id_,
                "received_at": received.isoformat(),
                "last_received_at": last.isoformat(),
                "times_seen": seen,
                "topic": topic,
                "site": site_,
                "device": device,
                "reason": reason_,
                "detail": detail,
                "payload_bytes": size,
                "replayed_at": replayed.isoformat() if replayed else None,
            }
            try:
                item["payload"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                item["payload"] = None
                item["payload_base64"] = base64.b64encode(payload).decode()
            yield item


@dataclass
class ReplayReport:
    """Messages replayed (resolved), still rejected (by reason), readings newly stored."""

    resolved: int = 0
    still_rejected: dict[str, int] = field(default_factory=dict)
    stored: int = 0


def replay(
    conn: psycopg.Connection,
    store: Store,
    pipeline: Pipeline,
    since: datetime | None = None,
    reason: str | None = None,
    site: str | None = None,
    batch_messages: int = 1000,
) -> ReplayReport:
    """Re-validate pending rejected MQTT messages and store what now passes.

    Lines rejected by ``sobriety import readings`` are not replayed here: import the corrected
    file again instead.
    """
    report = ReplayReport()
    where, params = _filters(since, reason, site, pending_only=True)
    query = (
        "SELECT id, topic, reason, payload, received_at FROM rejected_messages"
        f"{where} AND topic NOT LIKE 'import:%%' ORDER BY id"
    )
    out, resolved = Outcome(), []
    with conn.cursor(name="rejected_replay") as cur:
        cur.execute(query, params)
        for id_, topic, old_reason, payload, received_at in cur:
            outcome = pipeline.process(topic, bytes(payload), received_at.timestamp())
            out.rows.extend(outcome.rows)
            if old_reason in {rej.reason.value for rej in outcome.rejections}:
                report.still_rejected[old_reason] = report.still_rejected.get(old_reason, 0) + 1
            else:
                resolved.append(id_)
                out.rejections.extend(outcome.rejections)  # a new reason is a new rejection
            if len(resolved) + len(out.rows) >= batch_messages:
                report.stored += _write(store, out, resolved)
                report.resolved += len(resolved)
                out, resolved = Outcome(), []
        report.stored += _write(store, out, resolved)
        report.resolved += len(resolved)
    return report


def _write(store: Store, out: Outcome, resolved: list[int]) -> int:
    if not out.rows and not out.rejections and not resolved:
        return 0
    return store.write(out.rows, out.rejections, resolved).stored
