"""``sobriety ingest`` and ``sobriety run``: the services composed in one process (the ingest,
with the anomaly and policies services in threads under ``run``) or as ``--workers N`` ingest
processes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson

from anomaly.config import AnomalyConfig
from core.config import Config
from ingest.config import IngestConfig

log = logging.getLogger("sobriety")


def install_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_stage(
    args: argparse.Namespace,
    config: Config,
    build: Callable[[Any], tuple[Callable[[], None], Callable[[], None]]],
) -> int:
    """Run a stage's periodic service until SIGTERM or Ctrl-C: ``build(registry)`` makes it
    and returns its (run, stop); its metrics on ``--metrics-port`` (else ``metrics.port``; 0:
    none)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    run, stop = build(registry)
    port = args.metrics_port if args.metrics_port is not None else config.metrics.port
    if port:
        start_http_server(port, config.metrics.host, registry=registry)
    install_signals(stop)
    stop_meter = _own_meter(config, args.command)
    try:
        run()
    finally:
        stop_meter()
    return 0


def _own_meter(config: Config, role: str, include_children: bool = True) -> Callable[[], None]:
    """Start this process's own CPU and energy meter (app/own_meter.py); returns its stop."""
    from app.own_meter import start_own_meter
    from energy.config import EnergyConfig

    return start_own_meter(
        config.db_conninfo(), config.section(EnergyConfig), role,
        include_children=include_children,
    )  # fmt: skip


def main_argv() -> list[str]:
    """This process's command line, to start ingest workers (``--worker i``) with."""
    return [sys.executable, "-m", "app.cli", *sys.argv[1:]]


def cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    from ingest.workers import retire_session, worker_config

    if args.validate_config:
        print(orjson.dumps(config.dump(), option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.retire_session:
        return retire_session(worker_config(config, None, args.retire_session))
    # The supervisor of --workers N does not count its reaped children: they meter themselves.
    supervisor = args.worker is None and config.section(IngestConfig).workers > 1
    role = args.command if args.worker is None else f"{args.command}-worker"
    stop_meter = _own_meter(config, role, include_children=not supervisor)
    try:
        return _serve_ingest(args, config)
    finally:
        stop_meter()


def _serve_ingest(args: argparse.Namespace, config: Config) -> int:
    from ingest.service import IngestService
    from ingest.workers import retire_stale_sessions, run_workers, worker_config

    registry = None
    if args.command == "run" and args.worker is None:
        registry = _start_stages(config)
    if args.worker is None:
        retire_stale_sessions(config, config.section(IngestConfig).workers, main_argv())
        if config.section(IngestConfig).workers > 1:
            return run_workers(config, config.section(IngestConfig).workers, main_argv())
    if args.worker is not None:
        config = worker_config(config, args.worker)
    service = IngestService(config, registry=registry)
    install_signals(service.stopping.set)
    service.run()
    return 0


def _start_stages(config: Config) -> Any:
    """``sobriety run``: the anomaly, policies, energy and retention services in threads, their
    metrics in the ingest's registry."""
    from prometheus_client import CollectorRegistry

    from anomaly.service import AnomalyService
    from app.privacy_commands import RetentionService
    from energy.config import EnergyConfig
    from energy.service import EnergyService
    from policies.service import PoliciesService

    registry = CollectorRegistry()
    own = config.services_config()  # their own database role, when database.services_url
    anomaly = AnomalyService(own.db_conninfo(), own.per_site(AnomalyConfig), registry)
    threading.Thread(target=anomaly.run, name="anomaly", daemon=True).start()
    policies = PoliciesService(own, registry)
    threading.Thread(target=policies.run, name="policies", daemon=True).start()
    energy = EnergyService(own.db_conninfo(), own.per_site(EnergyConfig), registry)
    threading.Thread(target=energy.run, name="energy", daemon=True).start()
    retention = RetentionService(own.db_conninfo(), own.privacy, registry)  # [privacy] days
    threading.Thread(target=retention.run, name="privacy", daemon=True).start()
    return registry
