"""What the benchmarks share: the repository on the import path. The broker, the database
cluster and the ingest process are the application's embedded services (:mod:`app.embedded`),
the same the tests and ``sobriety demo`` use; the ingest under test has the tests' settings
(:func:`app.embedded.service_process.private_ingest_config`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
if str(ROOT_DIR) not in sys.path:
    sys.path.insert(0, str(ROOT_DIR))

from app.embedded.service_process import private_ingest_config as ingest_config  # noqa: E402

__all__ = ["ROOT_DIR", "ingest_config"]
