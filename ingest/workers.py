"""``sobriety ingest --workers N``: N ingest processes on one MQTT 5 shared subscription.

One Python process is bound by one core (paho's network loop and the validation share the GIL);
N processes split the messages through ``$share/{group}/{root}/+/+/up``. Worker ``i`` uses the
client id ``{client_id}-{i}``, the spool ``{spool_dir}/{client_id}-{i}`` and the metrics port
``port + i``. The supervisor restarts a worker that dies and forwards SIGTERM/SIGINT.

Mosquitto (like other brokers) keeps queueing shared-subscription messages for a member whose
persistent session is offline. So when N shrinks, the sessions of the workers no longer started
would hold messages until they expire: the supervisor remembers the ids it ran (``workers.json``
in the spool directory) and first drains and retires the sessions of ids it no longer uses.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from core.config import Config
from ingest.config import IngestConfig

log = logging.getLogger("sobriety.ingest")
DEFAULT_GROUP = "sobriety-ingest"


def worker_config(config: Config, index: int | None, retire_id: str | None = None) -> Config:
    """The configuration of worker ``index`` (or of a retired session ``retire_id``)."""
    mqtt = config.mqtt
    client_id = retire_id or f"{mqtt.client_id}-{index}"
    port = config.metrics.port + (index or 0) if config.metrics.port and index is not None else 0
    return config.replace(
        mqtt.model_copy(
            update={"client_id": client_id, "shared_group": mqtt.shared_group or DEFAULT_GROUP}
        ),
        config.metrics.model_copy(update={"port": port}),
    )


def _state_path(config: Config) -> Path:
    return config.section(IngestConfig).spool_dir / f"{config.mqtt.client_id}.workers.json"


def client_ids(config: Config, workers: int) -> list[str]:
    """The MQTT client ids the ingest runs with ``workers`` processes."""
    if workers == 1:
        return [config.mqtt.client_id]
    return [f"{config.mqtt.client_id}-{i}" for i in range(workers)]


def retire_stale_sessions(config: Config, workers: int, argv: Sequence[str]) -> None:
    """Drain and end the broker sessions of client ids an earlier run used and this one won't."""
    state = _state_path(config)
    ids = client_ids(config, workers)
    previous: list[str] = []
    if state.exists():
        previous = json.loads(state.read_text()).get("client_ids", [])
    remembered = list(ids)
    for retired in [cid for cid in previous if cid not in ids]:
        log.info("draining and retiring the session of former worker %s", retired)
        code = subprocess.call([*argv, "--retire-session", retired])
        if code != 0:
            log.error("could not retire session %s (exit %d); keeping it on record", retired, code)
            remembered.append(retired)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"client_ids": remembered}))


def run_workers(config: Config, workers: int, argv: Sequence[str]) -> int:
    """Supervise ``workers`` processes started as ``argv + ["--worker", i]``; 0 on clean stop."""
    ids = client_ids(config, workers)
    stopping = threading.Event()
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(index: int) -> None:
        procs[index] = subprocess.Popen([*argv, "--worker", str(index)])

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(workers):
        start(index)
    log.info("started %d ingest workers (%s)", workers, ", ".join(ids[:workers]))
    backoff = dict.fromkeys(range(workers), 1.0)
    while not stopping.wait(0.5):
        for index, proc in list(procs.items()):
            exit_code = proc.poll()
            if exit_code is not None and not stopping.is_set():
                log.error(
                    "worker %d exited with %d; restarting in %.0f s",
                    index,
                    exit_code,
                    backoff[index],
                )
                if stopping.wait(backoff[index]):
                    break
                backoff[index] = min(backoff[index] * 2, 30.0)
                start(index)
    codes = [proc.wait() for proc in procs.values()]
    return 0 if all(code == 0 for code in codes) else 1


def retire_session(config: Config, quiet_s: float = 2.0, timeout_s: float = 600.0) -> int:
    """Connect with a retired worker's id, store what its session holds, then end the session."""
    from ingest.service import IngestService

    service = IngestService(config, retiring=True)
    service.start()
    deadline = time.monotonic() + timeout_s
    last = -1.0
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)  # polls for quiet: "nothing more came for quiet_s" has no event
        received = service.metrics.value("messages_received_total")
        if received != last:
            last, quiet_since = received, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    service.stop(end_session=True)
    log.info("session %s drained (%d messages) and retired", config.mqtt.client_id, int(last))
    return 0
