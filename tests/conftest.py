"""Test plugins: real PostgreSQL and Mosquitto fixtures live in fix_*.py."""

pytest_plugins = ["tests.fix_db", "tests.fix_mqtt", "tests.fix_ingest"]
