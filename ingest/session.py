"""The ingest's MQTT session, as the service sees it: what it asks of a session and what a
session tells it. Two implementations: :class:`ingest.lean_session.LeanSession` (the default,
the ingest's own receive path) and :class:`ingest.paho_session.PahoSession` (paho-mqtt)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ingest.mqtt_wire import AckToken, Message


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Where and how to connect: broker host and port, the persistent session's client id,
    protocol (``"5"`` or ``"3.1.1"``), keep alive [s], session expiry [s] and Receive Maximum
    [messages] (MQTT 5 only), credentials, the reconnect backoff's ceiling [s]."""

    host: str
    port: int
    client_id: str
    protocol: str
    keepalive_s: int
    session_expiry_s: int
    receive_maximum: int
    username: str | None
    password: str | None
    reconnect_max_s: float


class SessionEvents(Protocol):
    """What a session tells the service, from its network thread."""

    def on_connect(self, session_present: bool) -> None:
        """The broker accepted the connection (a new generation of acknowledgement tokens)."""

    def on_refused(self, reason: str) -> None:
        """The broker answered CONNECT with a refusal; the session retries."""

    def on_connect_fail(self) -> None:
        """The broker cannot be reached; the session retries with a backoff."""

    def on_disconnect(self, reason: str) -> None:
        """The connection is gone (asked for, or lost: the session reconnects)."""

    def on_messages(self, messages: list[Message]) -> None:
        """PUBLISH packets received together, in order."""

    def on_subscribe(self, refused: list[str]) -> None:
        """The SUBACK; ``refused`` names the filters the broker refused (empty: all taken)."""

    def on_unsubscribe(self) -> None:
        """An UNSUBACK."""


class Session(ABC):
    """One MQTT session of a QoS 1 subscriber that acknowledges later, in batches."""

    @abstractmethod
    def start(self) -> None:
        """Connect in the background, and reconnect whenever the connection is lost."""

    @abstractmethod
    def subscribe(self, topic_filter: str) -> None:
        """Subscribe to ``topic_filter`` at QoS 1 (answered by ``on_subscribe``)."""

    @abstractmethod
    def unsubscribe(self, topic_filters: Sequence[str]) -> None:
        """Unsubscribe (answered by ``on_unsubscribe``)."""

    @abstractmethod
    def ack(self, tokens: Sequence[AckToken]) -> int:
        """Acknowledge messages, in order, as one write where possible. Tokens of an earlier
        connection are dropped (their packet ids may name other messages now: the broker
        delivers the old ones again). Returns the number acknowledged."""

    @abstractmethod
    def disconnect(self, end_session: bool) -> None:
        """Send DISCONNECT; ``end_session`` (MQTT 5) sets the session expiry to 0."""

    @abstractmethod
    def stop(self) -> None:
        """End the network thread (after :meth:`disconnect`, or instead of it)."""
