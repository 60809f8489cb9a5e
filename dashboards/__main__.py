"""``python -m dashboards [--check] [--out DIR]``: write the Grafana JSON of every dashboard in
French and English (dashboards/json/{fr,en}/), or check that the committed files are current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.render import JSON_DIR, stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a committed file differs"
    )
    parser.add_argument("--out", type=Path, default=JSON_DIR, help=f"default {JSON_DIR}")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale(args.out)
        for path in differ:
            print(f"out of date: {path} (run python -m dashboards)", file=sys.stderr)
        return 1 if differ else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
