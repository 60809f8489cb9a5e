"""A commune's Grafana (``sobriety site add|remove``): its own datasource, which logs in to the
database as the commune's role — so that tenancy (migration 0019) holds whatever a panel or an
Explore query asks — and a folder of its own with the commune's dashboards bound to it.

Grafana's file provisioning makes datasources, folders and dashboards but neither
organisations nor permissions (those are its HTTP API's). So every commune gets, in the
organisation ``org_id`` (1 unless the operator made one per commune):

- ``provisioning/datasources/sobriety-site-{site}.yaml``: datasource ``sobriety-postgres-{h}``
  (``{h}``: 10 hex digits of the site's SHA-256; a uid holds at most 40 characters), user the
  commune's role, password read by Grafana from ``{secrets_mount}/{role}_password``
  (``$__file{...}``), host and database from the same variables as the operator's datasource;
- ``provisioning/dashboards/sobriety-site-{site}.yaml``: a provider per language, folders
  ``{name}`` and ``{name} (English)``, uids ``sobriety-site-{h}-fr|en``;
- ``json/sites/{site}/{fr,en}/*.json``: the lighting, water and energy dashboards (not the
  platform's supervision, nor the operator's benchmark), each with its uid suffixed by ``{h}``,
  its title followed by the commune's name, and every PostgreSQL reference on the commune's
  datasource.

Which Grafana users may open that folder is set once in Grafana (folder permissions, or one
organisation per commune): the command prints it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

__all__ = [
    "COMMUNE_DASHBOARDS",
    "GrafanaFiles",
    "commune_dashboard",
    "grafana_files",
    "remove_grafana_files",
    "site_hash",
]

COMMUNE_DASHBOARDS = ("eclairage", "eau", "energie")
"""The dashboards a commune gets (files of dashboards/json/{fr,en}/)."""

POSTGRES_UID = "sobriety-postgres"
"""The operator's datasource uid, which the committed dashboards name (dashboards/sdk.py)."""

_LANGS = {"fr": "", "en": " (English)"}


def site_hash(site: str) -> str:
    """10 hex digits naming ``site`` in Grafana uids."""
    return hashlib.sha256(site.encode()).hexdigest()[:10]


def _json_dir() -> Path:
    spec = importlib.util.find_spec("dashboards")  # the files only: no SDK needed here
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the dashboards package is not installed")
    return Path(spec.origin).parent / "json"


@dataclass(frozen=True)
class GrafanaFiles:
    """Where a commune's Grafana files go under ``root`` (the compose project's
    ``dashboards/`` directory, mounted by docker-compose.yml)."""

    root: Path
    site: str

    @property
    def datasource(self) -> Path:
        return self.root / "provisioning" / "datasources" / f"sobriety-site-{self.site}.yaml"

    @property
    def provider(self) -> Path:
        return self.root / "provisioning" / "dashboards" / f"sobriety-site-{self.site}.yaml"

    @property
    def dashboards(self) -> Path:
        return self.root / "json" / "sites" / self.site

    def all(self) -> list[Path]:
        """Every file there is now."""
        found = [p for p in (self.datasource, self.provider) if p.exists()]
        if self.dashboards.exists():
            found += sorted(p for p in self.dashboards.rglob("*") if p.is_file())
        return found


def _rebind(node: Any, uid: str) -> Any:
    if isinstance(node, dict):
        if node.get("uid") == POSTGRES_UID and "type" in node:
            return {**node, "uid": uid}
        return {k: _rebind(v, uid) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebind(v, uid) for v in node]
    return node


def commune_dashboard(board: dict[str, Any], site: str, name: str) -> dict[str, Any]:
    """A committed dashboard made the commune's: its PostgreSQL references on the commune's
    datasource, its uid suffixed, the commune's name in its title, its site variable showing
    the commune (the only one its role reads)."""
    h = site_hash(site)
    out = _rebind(board, f"{POSTGRES_UID}-{h}")
    out["uid"] = f"{board['uid']}-{h}"
    out["title"] = f"{board['title']} — {name}"
    out["tags"] = [*board.get("tags", []), "commune"]
    return dict(out)


def grafana_files(
    root: Path, site: str, name: str, role: str, secrets_mount: str, org_id: int = 1
) -> list[Path]:
    """Write the commune's datasource, providers and dashboards under ``root``; the paths."""
    files = GrafanaFiles(root, site)
    h = site_hash(site)
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": f"sobriety PostgreSQL — {name}",
                "type": "grafana-postgresql-datasource",
                "uid": f"{POSTGRES_UID}-{h}",
                "orgId": org_id,
                "access": "proxy",
                "url": "$SOBRIETY_GRAFANA_DB_HOST",
                "user": role,
                "isDefault": False,
                "editable": False,
                "jsonData": {
                    "database": "$SOBRIETY_GRAFANA_DB_NAME",
                    "sslmode": "disable",
                    "postgresVersion": 1500,
                    "timescaledb": True,
                    "maxOpenConns": 4,
                    "maxIdleConns": 1,
                    "connMaxLifetime": 14400,
                },
                "secureJsonData": {
                    "password": f"$__file{{{secrets_mount.rstrip('/')}/{role}_password}}"
                },
            }
        ],
    }
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": f"sobriety-site-{site}-{lang}",
                "orgId": org_id,
                "folder": f"{name}{suffix}",
                "folderUid": f"sobriety-site-{h}-{lang}",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {
                    "path": f"/var/lib/grafana/dashboards/sites/{site}/{lang}",
                    "foldersFromFilesStructure": False,
                },
            }
            for lang, suffix in _LANGS.items()
        ],
    }
    header = f"# {name} ({site}): made by `sobriety site add`, taken away by `site remove`.\n"
    written = []
    for path, content in ((files.datasource, datasource), (files.provider, providers)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            header + yaml.safe_dump(content, sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
        written.append(path)
    source = _json_dir()
    for lang in _LANGS:
        out_dir = files.dashboards / lang
        out_dir.mkdir(parents=True, exist_ok=True)
        for board in COMMUNE_DASHBOARDS:
            data = orjson.loads((source / lang / f"{board}.json").read_bytes())
            path = out_dir / f"{board}.json"
            path.write_bytes(
                orjson.dumps(commune_dashboard(data, site, name), option=orjson.OPT_INDENT_2)
                + b"\n"
            )
            written.append(path)
    return written


def remove_grafana_files(root: Path, site: str) -> list[Path]:
    """Delete the commune's files under ``root``; those deleted."""
    files = GrafanaFiles(root, site)
    gone = files.all()
    for path in (files.datasource, files.provider):
        path.unlink(missing_ok=True)
    shutil.rmtree(files.dashboards, ignore_errors=True)
    return gone
