"""A ``sobriety`` service in a child process, with a configuration file and a metrics port of its
own: what the fault tests (kill -9, SIGTERM, restarts) and the benchmarks run the ingest as."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from app.config import load_config
from app.embedded.procs import free_port
from core.config import Config

START_TIMEOUT_S = 30.0


def private_ingest_config(
    db_url: str, mqtt_url: str, work: Path, root: str, **sections: dict[str, Any]
) -> Config:
    """An ingest for a test or a benchmark: a client id and a spool (under ``work``) of its own,
    short batches and backoffs, the inventory reloaded on every unknown device, no metrics
    endpoint unless the process is given one, the environment ignored; ``sections`` override
    keys (``mqtt={"shared_group": "g"}``)."""
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


def config_toml(config: Config) -> str:
    """``config`` as a TOML file that ``--config`` reads back to the same values (keys left at
    None are left out: they take their default)."""
    return tomli_w.dumps({section: _plain(values) for section, values in config.dump().items()})


def _plain(value: Any) -> Any:
    """``value`` with what TOML cannot hold turned into what it can: paths into strings, tuples
    into lists, None-valued keys dropped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_metrics(port: int) -> dict[str, float] | None:
    """Every sample of the Prometheus endpoint on 127.0.0.1:``port`` by name with its labels
    (``name{label="v"}``), or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


class ServiceProcess:
    """``sobriety --config FILE COMMAND --metrics-port PORT`` in a child process; its output goes
    to a log file in ``directory``. ``ready`` names the gauge that is 1 once the service is
    ready (the ingest: ``sobriety_ingest_subscribed``, set at the SUBACK)."""

    def __init__(
        self,
        config: Config,
        directory: Path,
        command: Sequence[str] = ("ingest",),
        ready: str = "sobriety_ingest_subscribed",
        name: str | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.directory = directory
        self.command = list(command)
        self.ready = ready
        name = name or config.mqtt.client_id
        self.config_path = directory / f"{name}.toml"
        self.config_path.write_text(config_toml(config))
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start and wait until the ``ready`` gauge is 1 (the environment's ``SOBRIETY_*``
        variables are not passed on: the configuration file says everything)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOBRIETY_")}
        argv = [sys.executable, "-m", "app.cli", "--config", str(self.config_path)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, *self.command, "--metrics-port", str(self.metrics_port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while self.metric(self.ready) != 1:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self.command)} not ready:\n{self.log()[-3000:]}")
            time.sleep(0.05)  # polls the child's metrics endpoint: no event crosses processes

    def metrics(self, port: int | None = None) -> dict[str, float] | None:
        """Every sample of the metrics endpoint (or of the one on ``port``: worker ``i`` of
        ``--workers N`` serves on the port + i); see :func:`read_metrics`."""
        return read_metrics(port or self.metrics_port)

    def metric(self, name: str, port: int | None = None) -> float:
        """One sample (``name`` with its labels, if any): 0 when absent, -1 when the endpoint
        does not answer."""
        samples = self.metrics(port)
        if samples is None:
            return -1.0
        return samples.get(name, 0.0)

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Make sure it is gone (cleanup after a test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
