"""Per-commune configuration: ``[sites.SITE.SECTION]`` tables over the operator's defaults.

One install serves many communes; each may set its own keys of the sections that allow it (a
section lists them in ``SITE_KEYS``: lighting programs and calendars, leak thresholds and
holidays, counter rules...). What a commune leaves out is the operator's value: its ``[SECTION]``
table, the environment and the flags, then the defaults. Tables merge key by key, recursively
(``[sites.lyon.policies.programs.late]`` adds a program beside the operator's); arrays and
scalars replace the operator's. The merged section is validated as a whole, and an error names
the site (``[sites.lyon.policies] floors.M3 = 120: ...``). Install-wide keys (the service
intervals, the database...) cannot be set per site: the error lists the keys that can.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from core.contract import valid_segment
from core.models import Loc, describe_errors

__all__ = ["SITES_TABLE", "PerSite", "deep_merge", "site_sections"]

SITES_TABLE = "sites"
"""The top-level table of per-site sections (a reserved section name)."""

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class PerSite(Generic[M]):
    """A section as each site sees it: ``default`` (the operator's) for every site without
    keys of its own, ``sites[site]`` (already merged over the default) for the others."""

    default: M
    sites: Mapping[str, M] = field(default_factory=dict)

    def get(self, site: str) -> M:
        """The section in force at ``site``."""
        return self.sites.get(site, self.default)

    @classmethod
    def of(cls, value: M | PerSite[M]) -> PerSite[M]:
        """``value`` as a :class:`PerSite` (a plain section holds for every site)."""
        return value if isinstance(value, PerSite) else cls(value)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top: tables merged key by key, recursively; any other value
    of ``over`` (array, scalar) replaces ``base``'s."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = deep_merge(below, value)
        else:
            out[key] = value
    return out


def site_sections(
    table: Any,
    source: str,
    kinds: Mapping[str, type[M]],
    site_keys: Mapping[str, frozenset[str]],
    operator: Mapping[str, Mapping[str, Any]],
    name_of: Callable[[Loc], str] | None = None,
    invalid: frozenset[str] = frozenset(),
    label: Callable[[str, str], str] | None = None,
) -> tuple[dict[str, dict[str, M]], list[str]]:
    """Validate the ``[sites]`` ``table`` read from ``source`` (a file name): ``({site:
    {section: merged section}}, problems)``.

    ``kinds`` are the registered sections, ``site_keys`` the keys each lets a site set,
    ``operator`` the operator's raw values of each section (file, environment, flags) under
    which a site's are merged; ``name_of`` renders a key path in errors (default dotted).
    The sites' tables of the ``invalid`` sections (the operator's own failed: its errors are
    reported already) are checked for their keys only. ``label(site, section)`` names a
    site's table in errors (default ``[sites.SITE.SECTION]``)."""
    problems: list[str] = []
    found: dict[str, dict[str, M]] = {}
    if not isinstance(table, Mapping):
        return found, [f"{source}: sites = {table!r}: expected a [sites.SITE.SECTION] table"]
    allowed = sorted(name for name, keys in site_keys.items() if keys)
    for site, sections in table.items():
        where = f"{source}: [sites.{site}]"
        if not valid_segment(str(site)):
            problems.append(f"{where}: not a site id (1-64 characters of A-Za-z0-9_.-)")
            continue
        if not isinstance(sections, Mapping):
            problems.append(f"{where} = {sections!r}: expected tables [sites.{site}.SECTION]")
            continue
        for section, values in sections.items():
            here = f"{source}: " + (
                label(str(site), str(section)) if label else f"[sites.{site}.{section}]"
            )
            keys = site_keys.get(section, frozenset())
            if section not in kinds or not keys:
                problems.append(
                    f"{here}: no section that can be set per site (expected one of "
                    f"{', '.join(allowed) or 'none'})"
                )
                continue
            if not isinstance(values, Mapping):
                problems.append(f"{here} = {values!r}: expected a table of keys")
                continue
            extra = sorted(set(values) - keys)
            problems.extend(
                f"{here} {key} = {values[key]!r}: not settable per site (install-wide); "
                f"the keys a site can set: {', '.join(sorted(keys))}"
                for key in extra
            )
            if section in invalid:
                continue
            mine = {key: value for key, value in values.items() if key in keys}
            merged = deep_merge(operator.get(section, {}), mine)
            try:
                found.setdefault(str(site), {})[section] = kinds[section].model_validate(merged)
            except ValidationError as exc:
                problems.extend(_site_errors(exc, merged, here, name_of or _dotted))
    return found, problems


def _site_errors(
    exc: ValidationError, merged: Mapping[str, Any], here: str, name_of: Callable[[Loc], str]
) -> list[str]:
    def where(_loc: Loc) -> str:
        return here

    return describe_errors(exc, merged, where=where, name=name_of, unknown="no such key")


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc if part != "[key]")
