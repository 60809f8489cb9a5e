"""Policies per commune in a policies file: ``[sites.SITE]`` tables (each the content of a
``[sites.SITE.policies]`` section of the configuration) over the file's own keys, merged as
core/site_config.py says (tables key by key, arrays and scalars replaced)."""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError
from core.models import read_toml
from core.site_config import SITES_TABLE, PerSite, site_sections
from policies.config import PoliciesConfig, key_path, parse_policies

__all__ = ["load_site_policies"]


def load_site_policies(path: Path) -> PerSite[PoliciesConfig]:
    """The policies of a file, the operator's and each site's; :class:`ConfigError` naming
    the file, the site, the key, the value and what was expected, every error at once."""
    raw = dict(read_toml(path, "policies file"))
    sites = raw.pop(SITES_TABLE, None)
    problems: list[str] = []
    operator: PoliciesConfig | None = None
    try:
        operator = parse_policies(raw, source=str(path))
    except ConfigError as exc:
        problems.append(str(exc))
    own: dict[str, PoliciesConfig] = {}
    if sites is not None:
        if not isinstance(sites, dict):
            problems.append(f"{path}: sites = {sites!r}: expected [sites.SITE] tables")
        else:
            name = PoliciesConfig.SECTION
            found, more = site_sections(
                {site: {name: values} for site, values in sites.items()},
                str(path),
                {name: PoliciesConfig},
                {name: PoliciesConfig.SITE_KEYS},
                {name: raw},
                name_of=key_path,
                invalid=frozenset() if operator is not None else frozenset({name}),
                label=lambda site, _section: f"[sites.{site}]",
            )
            problems.extend(more)
            own = {site: sections[name] for site, sections in found.items()}
    if problems or operator is None:
        raise ConfigError("; ".join(problems))
    return PerSite(operator, own)
