"""The ingest's view of the inventory: (site, device) → device id, cached, with a snapshot on
disk so that the ingest starts and validates while its database is down."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import orjson
import psycopg

from core.db import DatabaseError, connect, redact

log = logging.getLogger("sobriety.ingest")


def snapshot_name(conninfo: str) -> str:
    """The file of the inventory snapshot of one database: a spool directory may serve an
    ingest that is pointed at another database later, and must not lend it this inventory."""
    digest = hashlib.sha256(redact(conninfo).encode()).hexdigest()[:16]
    return f"inventory-{digest}.json"


class InventoryCache:
    """(site, device) → device id, reloaded on a miss at most every ``refresh_s`` seconds.

    A snapshot is kept in the spool directory so that the ingest can start (and validate)
    while the database is down.
    """

    def __init__(self, conninfo: str, refresh_s: float, snapshot: Path) -> None:
        self._conninfo = conninfo
        self._refresh_s = refresh_s
        self._snapshot = snapshot
        self._ids: dict[tuple[str, str], int] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def load(self) -> bool:
        """Reload from the database (True), or from the snapshot when it is down (False)."""
        try:
            with connect(self._conninfo, timeout_s=3) as conn:
                rows = conn.execute("SELECT site, device, id FROM devices").fetchall()
        except (DatabaseError, psycopg.Error) as exc:
            self._loaded_at = time.monotonic()
            if not self._ids and self._snapshot.exists():
                data = orjson.loads(self._snapshot.read_bytes())
                self._ids = {(s, d): i for s, d, i in data}
                log.warning("database unreachable (%s); using the inventory snapshot", exc)
            return False
        ids = {(s, d): i for s, d, i in rows}
        with self._lock:
            self._ids = ids
            self._loaded_at = time.monotonic()
        tmp = self._snapshot.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(rows))
        tmp.replace(self._snapshot)
        return True

    @property
    def size(self) -> int:
        """Devices known."""
        return len(self._ids)

    def lookup(self, site: str, device: str) -> int | None:
        """The device id, or None when the device is not registered."""
        found = self._ids.get((site, device))
        if found is None and time.monotonic() - self._loaded_at >= self._refresh_s:
            self.load()
            found = self._ids.get((site, device))
        return found
