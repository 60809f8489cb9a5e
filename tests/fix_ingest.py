"""Running the ingest under test: in-process (fast) or as a ``sobriety ingest`` process (for
kill -9, SIGTERM and shared-subscription tests). Each test gets its own topic root and client
ids, so tests on the shared broker never see each other's messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.service import IngestService
from sobriety.config import Config, load_config
from tests.fix_mqtt import free_port, wait_port


def make_config(
    db_url: str, mqtt_url: str, tmp_path: Path, root: str, **sections: dict[str, Any]
) -> Config:
    """A configuration for tests (environment ignored); ``sections`` override keys."""
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
            "spool_dir": tmp_path / "spool",
            "batch_ms": 50,
            "db_retry_max_s": 1,
            "inventory_refresh_s": 0,
        },
        "metrics": {"port": 0},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(None, env={}, overrides=overrides)


@pytest.fixture
def root() -> str:
    """A topic root of this test's own."""
    return f"test{uuid.uuid4().hex[:8]}/v1"


@pytest.fixture
def run_ingest() -> Iterator[Callable[[Config], IngestService]]:
    """Start in-process ingest services; all are stopped after the test."""
    started: list[IngestService] = []

    def start(config: Config) -> IngestService:
        service = IngestService(config)
        service.start()
        started.append(service)
        deadline = time.monotonic() + 10
        while service.metrics.broker_connected._value.get() != 1:
            assert time.monotonic() < deadline, "ingest did not connect to the broker"
            time.sleep(0.02)
        time.sleep(0.1)  # the SUBSCRIBE follows the CONNACK
        return service

    yield start
    for service in started:
        if not service.stopping.is_set():
            service.stop()


def _toml(config: Config) -> str:
    lines = []
    for section, values in config.model_dump(mode="json").items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, str):
                lines.append(f"{key} = {value!r}".replace("'", '"'))
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            else:
                lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class IngestProcess:
    """``sobriety ingest`` in a child process, with its own metrics port."""

    def __init__(self, config: Config, directory: Path) -> None:
        self.metrics_port = free_port()
        self.directory = directory
        self.config_path = directory / f"{config.mqtt.client_id}.toml"
        self.config_path.write_text(_toml(config))
        self.log_path = directory / f"{config.mqtt.client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOBRIETY_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sobriety.cli",
                    "--config",
                    str(self.config_path),
                    "ingest",
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.metrics_port, timeout_s=30)
        deadline = time.monotonic() + 15
        while self.metric("sobriety_ingest_broker_connected") != 1:
            assert time.monotonic() < deadline, f"ingest not connected:\n{self.log()}"
            time.sleep(0.05)
        time.sleep(0.2)

    def metric(self, name: str, port: int | None = None) -> float:
        """A sample of the Prometheus endpoint (0 when absent, -1 when unreachable)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port or self.metrics_port}/metrics", timeout=5
            ) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def ingest_process(tmp_path: Path) -> Iterator[Callable[[Config], IngestProcess]]:
    """Create ingest processes (not started); all are killed after the test."""
    made: list[IngestProcess] = []

    def make(config: Config) -> IngestProcess:
        proc = IngestProcess(config, tmp_path)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=10)
