"""``sobriety import readings FILE.csv``: backfill history through the ingest's validation.

Columns ``time,site,device,metric,value,unit`` (``unit`` may be empty: canonical unit); times are
ISO 8601 with an offset. The file is streamed and written in batches; a bad line is a rejection
(topic ``import:FILE``, payload the line, detail naming the line) exactly as for MQTT, and the good
lines are stored. Re-importing a file stores nothing twice.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import PayloadError, RejectReason, SobrietyError
from core.payloads import RawRecord, RecordProblem, parse_iso_time
from ingest.pipeline import Limits, Outcome, Pipeline, Rejection
from ingest.store import Store

COLUMNS = ("time", "site", "device", "metric", "value", "unit")
_HISTORY_S = 200 * 365.25 * 86400.0


class ImportFileError(SobrietyError):
    """The file itself is unusable (missing, not CSV, wrong header)."""


@dataclass
class ImportReport:
    """Lines read, readings stored (new), duplicates, and rejected lines by reason."""

    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def import_readings(
    path: Path,
    store: Store,
    pipeline: Pipeline,
    now: float,
    batch_rows: int = 10000,
) -> ImportReport:
    """Stream ``path`` into the database; ``now`` [s since epoch] bounds future times."""
    report = ImportReport()
    topic = f"import:{path.name}"
    out = Outcome()
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read ({exc})") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise ImportFileError(
                f"{path}: line 1: expected the header {','.join(COLUMNS)}, got {header!r}"
            )
        for line in reader:
            report.lines += 1
            _one_line(pipeline, out, topic, reader.line_num, line, now)
            if len(out.rows) + len(out.rejections) >= batch_rows:
                _flush(store, out, report)
                out = Outcome()
        _flush(store, out, report)
    return report


def _one_line(
    pipeline: Pipeline, out: Outcome, topic: str, line_num: int, line: list[str], now: float
) -> None:
    raw = ",".join(line).encode()
    site = device = None

    def reject(reason: RejectReason, detail: str) -> None:
        out.rejections.append(
            Rejection(now, topic, site, device, reason, f"line {line_num}: {detail}", raw, len(raw))
        )

    if len(line) != len(COLUMNS):
        reject(RejectReason.INVALID_PAYLOAD, f"expected {len(COLUMNS)} columns, got {len(line)}")
        return
    text_time, site, device, metric, text_value, unit = (c.strip() for c in line)
    try:
        when = parse_iso_time(text_time)
    except PayloadError as exc:
        reject(exc.reason, exc.detail)
        return
    device_id = pipeline.lookup(site, device)
    if device_id is None:
        reject(RejectReason.UNKNOWN_DEVICE, f"device {device!r} of site {site!r} is not registered")
        return
    problems: list[RecordProblem] = []
    records: list[RawRecord] = []
    try:
        value = float(text_value)
    except ValueError:
        problems.append(RecordProblem(0, RejectReason.INVALID_VALUE, f"{text_value!r}"))
    else:
        records.append(RawRecord(metric, value, unit or None, when))
    pipeline.check_records(
        out, topic, raw, now, site, device, device_id, records, problems, where=f"line {line_num}"
    )


def _flush(store: Store, out: Outcome, report: ImportReport) -> None:
    if not out.rows and not out.rejections:
        return
    result = store.write(out.rows, out.rejections)
    report.stored += result.stored
    report.duplicates += result.duplicates
    for rej in out.rejections:
        report.rejected[rej.reason.value] = report.rejected.get(rej.reason.value, 0) + 1


def history_limits(future_window_s: float) -> Limits:
    """Limits for backfill: any past time, the usual allowance into the future."""
    return Limits(past_window_s=_HISTORY_S, future_window_s=future_window_s)
