"""Acknowledging QoS 1 messages once their batch is durable, on paho (``ingest.mqtt_client =
"paho"``; the default receive path, :mod:`ingest.lean_session`, writes its PUBACKs itself).

paho's public ``Client.ack(mid, qos)`` queues one PUBACK packet per message, and every queued
packet wakes paho's network loop for one small write. For batches of thousands of messages that
cost the drain rate dearly (measured in issue 2: 79k → 130k readings/s once a batch's PUBACKs go
out as one write). So :func:`send_pubacks` builds the PUBACKs of a batch as one buffer and hands
it to paho's private ``Client._packet_queue`` — the one place this project touches paho's
internals. :data:`BATCHED` says whether that method is there with the signature this code was
written for (checked once, at import); when it is not (a paho release changed it), every message
is acknowledged through ``Client.ack`` instead. ``tests/test_acks.py`` fails loudly when the
signature changes and runs both paths against a real broker.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from ingest.mqtt_wire import puback_packets

log = logging.getLogger("sobriety.ingest")

EXPECTED_PARAMETERS = ("self", "command", "packet", "mid", "qos", "info")
"""Parameters of ``Client._packet_queue`` in the paho releases this code was checked with."""


def _batched_available() -> bool:
    method = getattr(mqtt.Client, "_packet_queue", None)
    if method is None:
        return False
    try:
        names = tuple(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return names == EXPECTED_PARAMETERS


BATCHED = _batched_available()
if not BATCHED:
    log.warning("paho's Client._packet_queue changed: acknowledging messages one by one")


def send_pubacks(
    client: mqtt.Client, acks: Sequence[tuple[int, int]], batched: bool = BATCHED
) -> None:
    """Acknowledge ``(mid, qos)`` messages received on the current connection, in order: as one
    write when ``batched`` and every one is QoS 1, else one ``Client.ack`` each."""
    if not acks:
        return
    if batched and all(qos == 1 for _mid, qos in acks):
        packets = puback_packets([mid for mid, _ in acks])
        client._packet_queue(mqtt.PUBACK, packets, 0, 0)
        return
    for mid, qos in acks:
        client.ack(mid, qos)
