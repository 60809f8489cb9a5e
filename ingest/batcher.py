"""Batches of the ingest: the outcomes of messages gathered for one write, and when a batch is
due (its size, its age, or the quiet after its last message)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from ingest.pipeline import Outcome, Rejection, Row, Uplinks


@dataclass(slots=True)
class Batch:
    """Messages gathered for one write. ``acks`` are (connection generation, mid, qos);
    ``uplinks`` the messages that gave rows, counted when the batch is stored."""

    rows: list[Row] = field(default_factory=list)
    uplinks: Uplinks = field(default_factory=Uplinks)
    rejections: list[Rejection] = field(default_factory=list)
    acks: list[tuple[int, int, int]] = field(default_factory=list)
    newest: list[float] = field(default_factory=list)
    messages: int = 0
    started: float = 0.0  # monotonic time of the first message
    last: float = 0.0  # monotonic time of the last message

    @property
    def size(self) -> int:
        """Rows plus rejections: what the batch limit counts."""
        return len(self.rows) + len(self.rejections)


class Batcher:
    """Gathers outcomes until ``max_rows``, or ``max_ms`` after the first one, or ``idle_ms``
    after the last one (0: no idle limit).

    The idle limit matters when the broker holds messages back: a broker that sends at most N
    unacknowledged messages (Mosquitto's default ``max_inflight_messages`` is 20) sends nothing
    more until the batch is written and acknowledged, so waiting ``max_ms`` for more would cap
    the ingest at N messages per ``max_ms``.
    """

    def __init__(self, max_rows: int, max_ms: int, idle_ms: int = 0) -> None:
        self._max_rows = max_rows
        self._max_s = max_ms / 1000.0
        self._idle_s = idle_ms / 1000.0 if idle_ms else math.inf
        self._batch = Batch()
        self._cond = threading.Condition()
        self._closed = False

    def add_many(self, outcomes: list[tuple[Outcome, tuple[int, int, int] | None]]) -> bool:
        """Add the outcomes of messages received together (one lock, one wake-up); False when
        closed (the messages stay unacknowledged).

        Waits while the open batch is full and the writer has not taken it yet: the receiver
        then stops reading its socket, and the broker keeps the rest. What the ingest holds is
        bounded by two batches (one being written, one full) and the messages of one read,
        whatever the broker sends.
        """
        with self._cond:
            while not self._closed and self._batch.size >= self._max_rows:
                self._cond.wait()
            if self._closed:
                return False
            batch = self._batch
            batch.last = time.monotonic()
            if not batch.messages:
                batch.started = batch.last
            batch.messages += len(outcomes)
            rows, uplinks, acks, newest = batch.rows, batch.uplinks, batch.acks, batch.newest
            for outcome, ack in outcomes:
                if outcome.rows:
                    rows.extend(outcome.rows)
                    uplinks.add(outcome.rows)
                if outcome.rejections:
                    batch.rejections.extend(outcome.rejections)
                if ack is not None:
                    acks.append(ack)
                if outcome.newest:
                    newest.append(outcome.newest)
            if batch.size >= self._max_rows:
                self._cond.notify_all()
        return True

    def pending(self) -> int:
        """Messages in the open batch."""
        return self._batch.messages

    def take(self, timeout: float) -> Batch | None:
        """The batch when full or due, waiting at most ``timeout`` s; None if nothing is due."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                batch = self._batch
                now = time.monotonic()
                due = batch.messages and (
                    batch.size >= self._max_rows
                    or now - batch.started >= self._max_s
                    or now - batch.last >= self._idle_s
                    or self._closed
                )
                if due:
                    self._batch = Batch()
                    self._cond.notify_all()  # a receiver waiting for room
                    return batch
                if now >= deadline or self._closed:
                    return None
                wait = deadline - now
                if batch.messages:
                    due_at = min(batch.started + self._max_s, batch.last + self._idle_s)
                    wait = min(wait, due_at - now)
                self._cond.wait(max(wait, 0.001))

    def close(self) -> None:
        """Refuse new messages; the open batch becomes due at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
