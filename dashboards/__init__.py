"""Grafana dashboards (French first, then English) over the ``api`` views and Prometheus,
generated with grafana-foundation-sdk and committed as JSON: ``python -m dashboards [--check]``.
See README.md."""

from dashboards.render import DASHBOARDS, JSON_DIR, LANGS, generate, stale, write
from dashboards.sdk import POSTGRES_UID, PROMETHEUS_UID

__all__ = [
    "DASHBOARDS",
    "JSON_DIR",
    "LANGS",
    "POSTGRES_UID",
    "PROMETHEUS_UID",
    "generate",
    "stale",
    "write",
]
