"""Pseudonyms of personal data: customer water meters (devices of kind ``water_meter``) leave
the service only under a keyed pseudonym (RGPD art. 4(5), 25 and 32).

Pure functions, no I/O: the key is read by :meth:`core.config.Config.privacy_key` from the file
``[privacy] hmac_key_file`` names, and passed in. A pseudonym is ``wm-`` followed by the first
16 hex digits (64 bits) of HMAC-SHA256(key, ``site + "/" + device``): the same for the same key
(exports of different periods can be joined), different under another key, and not reversible
without the key (a list of meter ids cannot be hashed to find them, as a plain hash could).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["CUSTOMER_KINDS", "MIN_KEY_BYTES", "PREFIX", "is_personal", "pseudonym", "pseudonyms"]

CUSTOMER_KINDS = frozenset({"water_meter"})
"""Device kinds whose data are personal data (one household's consumption)."""
PREFIX = "wm-"
"""What a pseudonym starts with, so a reader knows the id was replaced."""
MIN_KEY_BYTES = 16
"""The shortest key accepted (128 bits): a short key could be found by trying them all."""
_HEX_DIGITS = 16


def pseudonym(key: bytes, site: str, device: str) -> str:
    """The pseudonym of ``device`` at ``site`` under ``key``: ``wm-`` + 16 hex digits."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the pseudonymisation key must be {MIN_KEY_BYTES} bytes or more")
    digest = hmac.new(key, f"{site}/{device}".encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:_HEX_DIGITS]


def pseudonyms(key: bytes, devices: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """``{(site, device): pseudonym}`` for these ``(site, device)`` pairs."""
    return {(site, device): pseudonym(key, site, device) for site, device in devices}


def is_personal(kind: str) -> bool:
    """Whether the data of a device of this kind are personal data."""
    return kind in CUSTOMER_KINDS
