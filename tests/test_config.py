"""Configuration precedence and errors that name the source, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly.config import AnomalyConfig
from app.config import SECTIONS, load_config
from core.errors import ConfigError
from ingest.config import IngestConfig


def test_defaults() -> None:
    config = load_config(None, env={})
    assert config.mqtt.root == "sobriety/v1"
    assert config.metrics.port == 9108
    assert config.database.url.startswith("postgresql://")


def test_flags_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[mqtt]\nurl = "mqtt://file:1883"\nroot = "town/v1"\n[ingest]\nbatch_rows = 77\n'
    )
    env = {"SOBRIETY_MQTT_URL": "mqtt://env:1883", "SOBRIETY_METRICS_PORT": "9200"}
    config = load_config(path, env=env, overrides={"mqtt": {"url": "mqtt://flag:1883"}})
    assert config.mqtt.url == "mqtt://flag:1883"
    assert config.mqtt.root == "town/v1"
    assert config.section(IngestConfig).batch_rows == 77
    assert config.metrics.port == 9200
    assert load_config(path, env=env).mqtt.url == "mqtt://env:1883"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[metrics]\nport = 0\n")
    assert load_config(None, env={"SOBRIETY_CONFIG": str(path)}).metrics.port == 0


def test_bad_value_names_file_key_value_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[ingest]\nbatch_rows = -3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message
    assert "[ingest] batch_rows = -3" in message
    assert "greater than or equal to 1" in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[mqtt]\nurll = 'mqtt://x:1'\n")
    with pytest.raises(ConfigError, match=r"typo\.toml: \[mqtt\] urll .*no such key"):
        load_config(path, env={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment SOBRIETY_DB_URL.*postgresql://"):
        load_config(None, env={"SOBRIETY_DB_URL": "mysql://x/y"})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", env={})


def test_password_comes_from_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr:et\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nurl = "postgresql://app@db:5432/x"\npassword_file = "{secret}"\n')
    monkeypatch.delenv("SOBRIETY_DB_PASSWORD", raising=False)
    config = load_config(path, env={})
    assert config.db_conninfo() == "postgresql://app:s3cr%3Aet@db:5432/x"
    monkeypatch.setenv("SOBRIETY_DB_PASSWORD", "other")
    assert config.db_conninfo() == "postgresql://app:other@db:5432/x"


def test_each_stage_registers_its_own_section(tmp_path: Path) -> None:
    from core.config import load_config as load_core

    path = tmp_path / "s.toml"
    path.write_text("[ingest]\nbatch_rows = 77\n[anomaly]\nconfirm_nights = 3\n")
    # The core knows only its own sections; the application registers the stages'.
    with pytest.raises(ConfigError) as info:
        load_core(path, env={})
    assert f"{path}: [ingest]: no such section (expected one of database, mqtt" in str(info.value)
    config = load_config(path, env={})
    assert config.section(IngestConfig).batch_rows == 77
    assert config.section(AnomalyConfig).confirm_nights == 3
    assert set(config.dump()) == {s.SECTION for s in SECTIONS}


def test_unknown_section_lists_every_registered_one(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[polices]\nx = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    names = ", ".join([*(s.SECTION for s in SECTIONS), "sites"])
    assert str(info.value) == f"{path}: [polices]: no such section (expected one of {names})"


def test_a_rule_across_keys_names_the_section_and_its_source(tmp_path: Path) -> None:
    path = tmp_path / "night.toml"
    path.write_text("[anomaly]\nnight_start_h = 4\nnight_end_h = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: [anomaly]: expected night_end_h after night_start_h (a window within one "
        "local date)"
    )


def test_every_error_of_every_section_at_once(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text("[ingest]\nbatch_ms = 0\n[anomaly]\nconfirm_nights = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"SOBRIETY_METRICS_PORT": "ninety"})
    message = str(info.value)
    assert f"{path}: [ingest] batch_ms = 0" in message
    assert f"{path}: [anomaly] confirm_nights = 0" in message
    assert "environment SOBRIETY_METRICS_PORT: [metrics] port = 'ninety'" in message
