"""Build every dashboard in every language and write (or check) the committed JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards import benchmark, energy, lighting, supervision, water
from dashboards.sdk import Lang, db
from dashboards.sdk import encoder as _encoder

LANGS = (Lang("fr"), Lang("en"))
"""French first, then English."""

DASHBOARDS: dict[str, Callable[[Lang], db.Dashboard]] = {
    lighting.SLUG: lighting.build,
    water.SLUG: water.build,
    energy.SLUG: energy.build,
    supervision.SLUG: supervision.build,
    benchmark.SLUG: benchmark.build,
}
"""Each dashboard's file name (without .json) and its builder."""

OPERATOR_ONLY = frozenset({benchmark.SLUG})
"""The dashboards that compare communes (they read operator-only views, which show a commune's
role no row): provisioned in the operator's folders, never in a folder given to a commune."""

JSON_DIR = Path(__file__).parent / "json"
"""Where the generated dashboards are committed: json/{fr,en}/{slug}.json."""


def to_dict(dashboard: db.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model, panels numbered 1, 2, ... in order (the SDK
    assigns no ids)."""
    model: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=_encoder.JSONEncoder))
    for number, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = number
    return model


def render(model: dict[str, Any]) -> str:
    """The committed text: keys sorted, two-space indent, UTF-8 (French stays readable)."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[Path, str]:
    """Every file's path relative to :data:`JSON_DIR` and its text."""
    return {
        Path(lang.code) / f"{slug}.json": render(to_dict(build(lang)))
        for lang in LANGS
        for slug, build in DASHBOARDS.items()
    }


def write(root: Path = JSON_DIR) -> list[Path]:
    """Write every dashboard under ``root``; the files written."""
    written = []
    for rel, text in generate().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(root: Path = JSON_DIR) -> list[Path]:
    """The files under ``root`` that differ from what the generator gives (or are missing, or
    are left over from a dashboard that no longer exists)."""
    expected = generate()
    out = [
        root / rel
        for rel, text in expected.items()
        if not (root / rel).exists() or (root / rel).read_text(encoding="utf-8") != text
    ]
    out += [p for p in sorted(root.glob("*/*.json")) if p.relative_to(root) not in expected]
    return out
