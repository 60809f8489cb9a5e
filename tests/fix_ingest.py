"""Running the ingest under test: in-process (fast) or as a ``sobriety ingest`` process (for
kill -9, SIGTERM and shared-subscription tests). Each test gets its own topic root and client
ids, so tests on the shared broker never see each other's messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.embedded.service_process import ServiceProcess, private_ingest_config
from core.config import Config
from ingest.service import IngestService

make_config = private_ingest_config
"""A configuration for tests (:func:`app.embedded.service_process.private_ingest_config`)."""


@pytest.fixture
def root() -> str:
    """A topic root of this test's own."""
    return f"test{uuid.uuid4().hex[:8]}/v1"


@pytest.fixture
def run_ingest() -> Iterator[Callable[[Config], IngestService]]:
    """Start in-process ingest services, each returned once the broker acknowledged its
    subscription; all are stopped after the test."""
    started: list[IngestService] = []

    def start(config: Config) -> IngestService:
        service = IngestService(config)
        service.start()
        started.append(service)
        assert service.subscribed.wait(10), "the ingest did not subscribe (no SUBACK)"
        return service

    yield start
    for service in started:
        if not service.stopping.is_set():
            service.stop()


IngestProcess = ServiceProcess
"""``sobriety ingest`` in a child process (:class:`app.embedded.ServiceProcess`, which the
benchmarks use too)."""


@pytest.fixture
def ingest_process(tmp_path: Path) -> Iterator[Callable[[Config], ServiceProcess]]:
    """Create ingest processes (not started); all are killed after the test."""
    made: list[ServiceProcess] = []

    def make(config: Config) -> ServiceProcess:
        proc = ServiceProcess(config, tmp_path)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()
