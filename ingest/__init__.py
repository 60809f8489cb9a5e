"""The MQTT ingest: decode, validate, batch, spool and write readings with COPY."""

from ingest.pipeline import Limits, Outcome, Pipeline, Rejection
from ingest.service import IngestService

__all__ = ["IngestService", "Limits", "Outcome", "Pipeline", "Rejection"]
