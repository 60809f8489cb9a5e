"""What every dashboard shares: the grafana-foundation-sdk builders (imported once, here), the
PostgreSQL target the SDK has no builder for, the fixed datasource uids, the ``site`` variable
and the two languages.

The SDK's classic dashboard builders warn at import that a v2 schema exists; the dashboards
stay on the classic JSON model (schemaVersion 42, what file provisioning and the published
JSON Schemas describe), so that one warning is silenced here and nowhere else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="Prefer using dashboardv2.Dashboard instead.", category=DeprecationWarning
    )
    from grafana_foundation_sdk.builders import barchart, geomap, stat, table, timeseries
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus as prom
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import encoder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import geomap as gm
    from grafana_foundation_sdk.models import prometheus as pm

__all__ = [
    "POSTGRES_DATASOURCE",
    "POSTGRES_UID",
    "PROMETHEUS_DATASOURCE",
    "PROMETHEUS_UID",
    "Lang",
    "PostgresQuery",
    "barchart",
    "cb",
    "cm",
    "cogbuilder",
    "cogvariants",
    "db",
    "dm",
    "encoder",
    "geomap",
    "gm",
    "promql",
    "site_variable",
    "sql",
    "stat",
    "table",
    "timeseries",
]

POSTGRES_UID = "sobriety-postgres"
"""The uid of the PostgreSQL datasource: the same in every dashboard and in
provisioning/datasources/sobriety.yaml."""
PROMETHEUS_UID = "sobriety-prometheus"
"""The uid of the Prometheus datasource (provisioning/datasources/sobriety.yaml)."""

POSTGRES_DATASOURCE = cm.DataSourceRef(type_val="grafana-postgresql-datasource", uid=POSTGRES_UID)
PROMETHEUS_DATASOURCE = cm.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)

Format = Literal["time_series", "table"]


@dataclass(frozen=True, slots=True)
class Lang:
    """The language a dashboard is built in: ``lang("texte", "text")`` picks its side. French
    first, in the source as on screen."""

    code: Literal["fr", "en"]

    def __call__(self, fr: str, en: str) -> str:
        return fr if self.code == "fr" else en


class PostgresQuery(cogvariants.Dataquery):
    """A target of the grafana-postgresql-datasource in code mode (the SDK has none)."""

    def __init__(self, ref_id: str, raw_sql: str, format_val: Format) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format_val = format_val

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": POSTGRES_DATASOURCE.type_val, "uid": POSTGRES_DATASOURCE.uid},
            "rawSql": self.raw_sql,
            "format": self.format_val,
            "rawQuery": True,
            "editorMode": "code",
        }


class _Built(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: cogvariants.Dataquery) -> None:
        self._query = query

    def build(self) -> cogvariants.Dataquery:
        return self._query


def sql(raw_sql: str, format_val: Format = "time_series", ref_id: str = "A") -> _Built:
    """A PostgreSQL target: ``raw_sql`` as Grafana will expand it (see :mod:`dashboards.macros`).
    Written as an indented block: the first line's indentation and the blank lines around
    are dropped."""
    return _Built(PostgresQuery(ref_id, _dedent(raw_sql), format_val))


def promql(expr: str, legend: str, ref_id: str = "A") -> prom.Dataquery:
    """A Prometheus range query on the fixed Prometheus datasource."""
    return (
        prom.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .range()
        .editor_mode(pm.QueryEditorMode.CODE)
        .datasource(PROMETHEUS_DATASOURCE)
    )


def site_variable(lang: Lang) -> db.QueryVariable:
    """The ``site`` variable of every dashboard: the communes of api.sites, several at once or
    all (no custom allValue: "All" expands to every site, quoted, in ``${site:sqlstring}``)."""
    return (
        db.QueryVariable("site")
        .label(lang("Commune", "Site"))
        .description(lang("Communes affichées (api.sites)", "Sites shown (api.sites)"))
        .datasource(POSTGRES_DATASOURCE)
        .query("SELECT site AS __value, coalesce(name, site) AS __text FROM api.sites ORDER BY 1")
        .definition("SELECT site FROM api.sites")
        .multi(True)
        .include_all(True)
        .allow_custom_value(False)
        .current(dm.VariableOption(text=["All"], value=["$__all"], selected=True))
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def _dedent(text: str) -> str:
    """Remove the first line's indentation from every line (lines interpolated from a fragment
    start at column 0 and keep their own), and trailing spaces."""
    lines = text.strip("\n").splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip(" ")) if lines else 0
    out = []
    for line in lines:
        lead = len(line) - len(line.lstrip(" "))
        out.append(line[min(lead, indent) :].rstrip())
    return "\n".join(out)
