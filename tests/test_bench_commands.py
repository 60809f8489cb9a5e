"""The benchmark commands the root README's Scaling section shows exist with the options it
names (each bench is run by hand: it takes minutes; here only its command line is checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _scaling_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Scaling\n", 1)[1].split("\n## ", 1)[0]
    return [cmd.split() for cmd in re.findall(r"`(bench/[a-z_]+\.py[^`]*)`", section)]


def test_the_scaling_sections_bench_commands_parse() -> None:
    commands = _scaling_commands()
    assert {c[0] for c in commands} >= {
        "bench/peer_bench.py",
        "bench/scale_bench.py",
        "bench/ingest_profile.py",
        "bench/ingest_bench.py",
    }
    for script, *options in commands:
        done = subprocess.run(
            [sys.executable, script, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        for option in options:
            if option.startswith("--"):
                assert option in done.stdout, f"{script} has no option {option}"
        for value in options:
            if not value.startswith("--"):
                assert value in done.stdout, f"{script}: {value} is not an accepted value"
