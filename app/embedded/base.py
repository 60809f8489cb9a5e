"""What every embedded service returns: where it is, where it comes from, how to stop it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.embedded.probe import MQTT_5
from core.errors import SobrietyError


class ServiceError(SobrietyError):
    """A configured service is unreachable, or none could be found or started; says which."""


DEMO_EXTRA = "pip install 'sobriety[demo]' (scripts/demo does)"
"""What to install for the pure-Python fallbacks and the progress bar."""


@dataclass(frozen=True)
class Found:
    """A service found or started: its URL, its origin, how to stop it (None: not ours) and,
    for a broker, the MQTT protocol it speaks."""

    url: str
    origin: str
    stop: Callable[[], None] | None = None
    protocol: str = MQTT_5
