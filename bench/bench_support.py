"""What the benchmarks share: the configuration of the ingest under test. The broker, the
database cluster and the ingest process are the application's own embedded services
(:mod:`app.embedded`), the same the tests and ``sobriety demo`` use."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parent.parent
if str(ROOT_DIR) not in sys.path:
    sys.path.insert(0, str(ROOT_DIR))

from app.config import load_config  # noqa: E402
from core.config import Config  # noqa: E402


def ingest_config(
    db_url: str, mqtt_url: str, work: Path, root: str, **sections: dict[str, Any]
) -> Config:
    """The ingest under test (the settings of the tests' ingest): its own client id, spool
    under ``work``, no metrics endpoint unless the process is given one; ``sections`` override
    keys (environment ignored)."""
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        "mqtt": {
            "url": mqtt_url,
            "root": root,
            "client_id": f"ingest-{uuid.uuid4().hex[:8]}",
            "session_expiry_s": 300,
            "reconnect_max_s": 1,
        },
        "ingest": {
            "spool_dir": work / "spool",
            "batch_ms": 50,
            "db_retry_max_s": 1,
            "inventory_refresh_s": 0,
        },
        "metrics": {"port": 0},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(None, env={}, overrides=overrides)
