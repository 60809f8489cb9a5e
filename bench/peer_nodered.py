"""Node-RED as the peer of bench/peer_bench.py: installed once with npm into a cache outside the
repository, the batched flow written at run time (nothing of Node-RED is committed), the
process started on a free port and watched; and the interface both subscribers under test
offer the workloads (:class:`Subscriber`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from ingest_bench import rss_peak_mb
from paho.mqtt.enums import CallbackAPIVersion

from app.embedded import Mosquitto, free_port

PROBE_DEVICE = "_probe"
"""The device of the probe messages that tell Node-RED is subscribed (stored nowhere)."""
NODE_RED_VERSION = "4.1.8"
PG_VERSION = "8.23.1"  # node-postgres, the driver (and pool) node-red-contrib-postgresql wraps
CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sobriety-bench" / "node-red"
)
NPM_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05
STALL_S = 12.0
"""A workload whose count has not moved for this long after the publisher finished is over
(short of what was sent: the rest is lost). Longer than the pool's connection timeout (10 s)."""

# Kept after `--sweep` (bench/README.md has the figures): batches of 2,000 rows or 200 ms, a
# pool of 4 connections — the best live rate and, with 4 connections, twice the drain of 1-2.
BATCH_ROWS = 2000
BATCH_MS = 200
POOL = 4


# --- Node-RED: installation, flow, process -------------------------------------------------


def install_node_red(cache: Path = CACHE_DIR) -> Path:
    """Node-RED and node-postgres at the pinned versions in ``cache`` (npm, once); red.js."""
    wanted = {"node-red": NODE_RED_VERSION, "pg": PG_VERSION}

    def installed() -> bool:
        for name, version in wanted.items():
            manifest = cache / "node_modules" / name / "package.json"
            try:
                if json.loads(manifest.read_text())["version"] != version:
                    return False
            except (OSError, ValueError, KeyError):
                return False
        return True

    if not installed():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is not installed: Node.js >= 18 and npm are needed")
        cache.mkdir(parents=True, exist_ok=True)
        print(f"installing node-red@{NODE_RED_VERSION} pg@{PG_VERSION} into {cache}", flush=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(cache),
                "--no-audit",
                "--no-fund",
                *(f"{name}@{version}" for name, version in wanted.items()),
            ],
            check=True,
            timeout=NPM_TIMEOUT_S,
            stdout=subprocess.DEVNULL,
        )
        if not installed():
            raise RuntimeError(f"npm did not install {wanted} into {cache}")
    return cache / "node_modules" / "node-red" / "red.js"


PARSE_JS = """
const stats = global.get('stats');
stats.received += 1;
const parts = msg.topic.split('/');
const device = parts[parts.length - 2];
if (device === '%(probe)s') { stats.probes += 1; return null; }
let pack;
try { pack = JSON.parse(msg.payload); } catch (e) { stats.bad += 1; return null; }
if (!Array.isArray(pack)) { pack = [pack]; }
let bn = '', bt = 0;
const rows = [];
for (const r of pack) {
    if (r.bn !== undefined) { bn = r.bn; }
    if (r.bt !== undefined) { bt = r.bt; }
    if (typeof r.v !== 'number' || r.n === undefined) { continue; }
    const name = bn + r.n;
    const cut = Math.max(name.lastIndexOf(':'), name.lastIndexOf('/'));
    rows.push([device, name.slice(cut + 1), bt + (r.t || 0), r.v]);
}
msg.payload = rows;
return msg;
"""

BATCH_JS = """
let s = context.get('s');
if (!s) { s = {rows: [], timer: null}; context.set('s', s); }
const flush = () => {
    if (s.timer) { clearTimeout(s.timer); s.timer = null; }
    if (s.rows.length) { node.send({payload: s.rows}); s.rows = []; }
};
for (const r of msg.payload) {
    s.rows.push(r);
    if (s.rows.length >= %(rows)d) { flush(); }
}
if (s.rows.length && !s.timer) { s.timer = setTimeout(flush, %(ms)d); }
return null;
"""

PG_INIT_JS = """
const pg = global.get('pg');
const pool = new pg.Pool({host: '%(host)s', port: %(port)d, database: '%(db)s', user: '%(user)s',
    max: %(pool)d, idleTimeoutMillis: 1000, connectionTimeoutMillis: 10000});
pool.on('error', (e) => node.warn('pool: ' + e.message));
context.set('pool', pool);
"""

PG_JS = """
const pool = context.get('pool');
const stats = global.get('stats');
const rows = msg.payload;
const values = [];
const params = [];
for (let i = 0; i < rows.length; i++) {
    const k = 4 * i;
    values.push('($' + (k + 1) + ', $' + (k + 2) + ', to_timestamp($' + (k + 3) + '), $'
        + (k + 4) + ')');
    params.push(rows[i][0], rows[i][1], rows[i][2], rows[i][3]);
}
const sql = 'INSERT INTO %(table)s (device, metric, time, value) VALUES ' + values.join(', ');
pool.query(sql, params)
    .then(() => { stats.written += rows.length; node.done(); })
    .catch((e) => { stats.errors += 1; stats.failed += rows.length; node.error(e.message, msg); });
return null;
"""

STATS_JS = """
msg.payload = global.get('stats');
return msg;
"""


def node_red_flow(
    *,
    broker_port: int,
    client_id: str,
    root: str,
    db_url: str,
    table: str,
    batch_rows: int,
    batch_ms: int,
    pool: int,
) -> list[dict[str, Any]]:
    """Our flow: mqtt in → parse → batch → INSERT; GET /bench/stats answers the counters."""
    db = urlsplit(db_url)
    pg = {
        "host": db.hostname or "127.0.0.1",
        "port": db.port or 5432,
        "db": db.path.lstrip("/"),
        "user": db.username or "postgres",
        "pool": pool,
    }
    tab = "bench"

    def function(
        nid: str, name: str, func: str, wires: list[str], init: str = ""
    ) -> dict[str, Any]:
        return {
            "id": nid,
            "type": "function",
            "z": tab,
            "name": name,
            "func": func,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": init,
            "finalize": "const p = context.get('pool'); if (p) { p.end(); }" if init else "",
            "libs": [],
            "x": 300,
            "y": 100,
            "wires": [wires],
        }

    return [
        {"id": tab, "type": "tab", "label": "sobriety peer bench", "disabled": False},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "bench broker",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": client_id,
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "5",
            "keepalive": "60",
            "cleansession": False,
            "autoUnsubscribe": False,  # a stopped flow keeps its subscription: the backlog queues
            "sessionExpiry": "3600",
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": tab,
            "name": "readings",
            "topic": f"{root}/+/+/up",
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "x": 100,
            "y": 100,
            "wires": [["parse"]],
        },
        function("parse", "SenML → rows", PARSE_JS % {"probe": PROBE_DEVICE}, ["batch"]),
        function("batch", "batch", BATCH_JS % {"rows": batch_rows, "ms": batch_ms}, ["pg"]),
        function("pg", "postgresql", PG_JS % {"table": table}, [], init=PG_INIT_JS % pg),
        {
            "id": "stats_in",
            "type": "http in",
            "z": tab,
            "name": "",
            "url": "/bench/stats",
            "method": "get",
            "upload": False,
            "x": 100,
            "y": 200,
            "wires": [["stats"]],
        },
        function("stats", "stats", STATS_JS, ["stats_out"]),
        {
            "id": "stats_out",
            "type": "http response",
            "z": tab,
            "name": "",
            "statusCode": "",
            "headers": {},
            "x": 500,
            "y": 200,
            "wires": [],
        },
    ]


def node_red_settings(port: int, cache: Path) -> str:
    """settings.js: headless (no editor), our port, pg and the counters in the global context."""
    pg_module = json.dumps(str(cache / "node_modules" / "pg"))
    return f"""module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    flowFile: "flows.json",
    credentialSecret: false,
    disableEditor: true,
    httpAdminRoot: "/",
    httpNodeRoot: "/",
    functionExternalModules: false,
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }} }},
    functionGlobalContext: {{
        pg: require({pg_module}),
        stats: {{ received: 0, probes: 0, bad: 0, written: 0, failed: 0, errors: 0 }},
    }},
    diagnostics: {{ enabled: false, ui: false }},
    runtimeState: {{ enabled: false, ui: false }},
    telemetry: {{ enabled: false, updateNotification: false }},
    logging: {{ console: {{ level: "warn", metrics: false, audit: false }} }},
}};
"""


class Subscriber(ABC):
    """What a workload needs of a subscriber under test (Node-RED here, sobriety's ingest in
    peer_bench.py)."""

    name = ""
    rss_peak = 0.0
    insert_errors = 0
    """Failed INSERTs (Node-RED: each loses its batch; the ingest retries, so never counted)."""

    @abstractmethod
    def start(self, wait_subscribed: bool) -> None:
        """Start the process (and, when asked, wait until it is subscribed)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it gracefully."""

    @abstractmethod
    def kill9(self) -> None:
        """Kill it with SIGKILL."""

    @abstractmethod
    def close(self) -> None:
        """Make sure every process it started is gone (cleanup, also on failure)."""

    @abstractmethod
    def committed(self) -> int:
        """Readings written since this process started (its own counter: cheap to poll)."""

    @abstractmethod
    def table_counts(self) -> tuple[int, int]:
        """(rows, distinct (device, metric, time)) in its table."""

    def redelivered(self) -> int:
        """Readings received again and refused by a key since the process started (or 0)."""
        return 0

    @abstractmethod
    def truncate(self) -> None:
        """Empty its table between workloads."""


class NodeRed(Subscriber):
    """Node-RED running our flow; its userDir is in the cache directory."""

    name = "node-red"

    def __init__(
        self,
        red_js: Path,
        db_url: str,
        broker: Mosquitto,
        root: str,
        site: str,
        logdir: Path,
        *,
        batch_rows: int = BATCH_ROWS,
        batch_ms: int = BATCH_MS,
        pool: int = POOL,
        table: str = "nodered_readings",
    ) -> None:
        self.red_js = red_js
        self.cache = red_js.parent.parent.parent
        self.userdir = self.cache / "userdir" / uuid.uuid4().hex[:8]
        self.db_url = db_url
        self.broker = broker
        self.root = root
        self.site = site
        self.table = table
        self.client_id = f"peer-nodered-{uuid.uuid4().hex[:6]}"
        self.log_path = logdir / f"{self.client_id}.log"
        self.config = (batch_rows, batch_ms, pool)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                f"CREATE TABLE {table} (time timestamptz, device text, metric text, "
                "value double precision)"
            )

    def start(self, wait_subscribed: bool) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        self.userdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        batch_rows, batch_ms, pool = self.config
        flow = node_red_flow(
            broker_port=self.broker.port,
            client_id=self.client_id,
            root=self.root,
            db_url=self.db_url,
            table=self.table,
            batch_rows=batch_rows,
            batch_ms=batch_ms,
            pool=pool,
        )
        (self.userdir / "flows.json").write_text(json.dumps(flow, indent=1))
        settings = self.userdir / "settings.js"
        settings.write_text(node_red_settings(self.port, self.cache))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    node,
                    str(self.red_js),
                    "--settings",
                    str(settings),
                    "--userDir",
                    str(self.userdir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.stats() is None:  # admin/HTTP up and our flow started (its endpoint answers)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"Node-RED not ready:\n{self.log()[-3000:]}")
            time.sleep(POLL_S)
        if wait_subscribed:
            self._wait_subscribed(deadline)

    def _wait_subscribed(self, deadline: float) -> None:
        """Publish probe packs until the flow has received one: the subscription is live."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}")
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            topic = f"{self.root}/{self.site}/{PROBE_DEVICE}/up"
            next_probe = 0.0
            while (self.stats() or {}).get("probes", 0) == 0:
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise TimeoutError(f"Node-RED never subscribed:\n{self.log()[-3000:]}")
                if time.monotonic() >= next_probe:
                    pack = [{"bn": f"{PROBE_DEVICE}:", "bt": time.time(), "n": "probe", "v": 0}]
                    client.publish(topic, json.dumps(pack), qos=1)
                    next_probe = time.monotonic() + 0.25
                time.sleep(POLL_S)
        finally:
            client.disconnect()
            client.loop_stop()

    def stats(self) -> dict[str, int] | None:
        if not self.port:
            return None
        try:
            url = f"http://127.0.0.1:{self.port}/bench/stats"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def committed(self) -> int:
        return int((self.stats() or {}).get("written", 0))

    def _note_rss(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, rss_peak_mb(self.proc.pid))
            self.insert_errors += int((self.stats() or {}).get("errors", 0))

    def stop(self) -> None:
        self._note_rss()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def kill9(self) -> None:
        self._note_rss()
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        shutil.rmtree(self.userdir, ignore_errors=True)

    def table_counts(self) -> tuple[int, int]:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT (device, metric, time)) FROM {self.table}"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def truncate(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {self.table}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
