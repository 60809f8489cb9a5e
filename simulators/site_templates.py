"""Site templates of a scenario file: many communes from one description (``[[site_templates]]``).

An intercommunal operator serves dozens of communes that differ in size, place and a few events;
writing each as a ``[[sites]]`` table by hand is error-prone. A template gives ``count`` copies
of one site, each with its own id and name (patterns of the copy's number ``n``), coordinates
spread over a box, and per-copy variation:

- ``base``: the keys of a ``[[sites]]`` table (``lighting``, ``water``, ``server_room``,
  ``timezone``, ...) that every copy starts from;
- ``vary``: ``{"dotted.key" = [v0, v1, ...]}``: copy ``k`` (0-based) takes ``values[k % len]``
  (lists of coprime lengths give many combinations);
- ``[[site_templates.every]]``: ``every``, ``offset`` and a table ``set`` deep-merged into the
  copies ``k`` with ``k % every == offset`` (a leak, more faults, another time zone).

:func:`expand_templates` turns them into plain ``[[sites]]`` tables before the scenario is
validated; :func:`origin_of` names where a generated site came from, so that a validation error
of a copy names the template, the copy and the key (``site_templates.0[c07].water.dmas``).
Coordinates in decimal degrees.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from core.contract import valid_segment
from core.errors import ConfigError
from core.models import StrictModel, describe_errors, dotted

__all__ = ["SiteTemplate", "expand_templates", "origin_of"]

_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # golden-ratio steps: low-discrepancy, no random draw
_SQRT2 = math.sqrt(2.0) - 1.0
_FIXED = ("site", "name", "lat", "lon")
"""Keys a template sets on each copy itself (not in ``base`` nor ``vary``)."""


class Variant(StrictModel):
    """``set`` deep-merged into the copies ``k`` with ``k % every == offset``."""

    every: int = Field(..., ge=1, description="one copy in this many")
    offset: int = Field(0, ge=0, description="the first copy (0-based) it applies to")
    set: dict[str, Any] = Field(..., description="keys of a [[sites]] table")

    @model_validator(mode="after")
    def _offset(self) -> Variant:
        if self.offset >= self.every:
            raise ValueError(f"offset = {self.offset}: below every = {self.every}")
        return self


class SiteTemplate(StrictModel):
    """``count`` sites from one description; ``{n}`` in ``site`` and ``name`` is the copy's
    number, from ``first`` (a format spec is allowed: ``c{n:02d}``)."""

    count: int = Field(..., ge=1, le=10_000)
    first: int = Field(1, ge=0, description="number n of the first copy")
    site: str = Field(..., description="id pattern, e.g. 'commune-{n:02d}'")
    name: str | None = Field(None, description="name pattern, e.g. 'Commune {n}'")
    lat: tuple[float, float] = Field((43.0, 49.0), description="[south, north] [°]")
    lon: tuple[float, float] = Field((-1.0, 7.0), description="[west, east] [°]")
    base: dict[str, Any] = Field(default_factory=dict)
    vary: dict[str, list[Any]] = Field(default_factory=dict)
    every: list[Variant] = Field(default_factory=list)

    @field_validator("site", "name")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            value.format(n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"a pattern with {{n}} only ({exc})") from None
        return value

    @field_validator("lat", "lon")
    @classmethod
    def _box(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"[min, max], not {list(value)}")
        return value

    @field_validator("base")
    @classmethod
    def _base(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(set(value) & set(_FIXED))
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: set by the template itself, not in base")
        return value

    @field_validator("vary")
    @classmethod
    def _vary(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: a non-empty list of values")
            if key.split(".")[0] in _FIXED:
                raise ValueError(f"{key}: set by the template itself (use lat/lon or a pattern)")
        return value

    def copy_id(self, k: int) -> str:
        """Id of copy ``k`` (0-based)."""
        return self.site.format(n=self.first + k)

    def copies(self) -> list[dict[str, Any]]:
        """The ``[[sites]]`` tables of every copy (not validated yet)."""
        out = []
        for k in range(self.count):
            table = copy.deepcopy(self.base)
            for key, values in self.vary.items():
                _put(table, key.split("."), copy.deepcopy(values[k % len(values)]))
            for variant in self.every:
                if k % variant.every == variant.offset:
                    _merge(table, copy.deepcopy(variant.set))
            n = self.first + k
            table["site"] = self.site.format(n=n)
            if self.name is not None:
                table["name"] = self.name.format(n=n)
            table["lat"] = round(_spread(self.lat, (0.5 + k * _PHI) % 1.0), 5)
            table["lon"] = round(_spread(self.lon, (0.5 + k * _SQRT2) % 1.0), 5)
            out.append(table)
        return out


def _spread(box: tuple[float, float], u: float) -> float:
    return box[0] + (box[1] - box[0]) * u


def _put(table: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        inner = table.setdefault(part, {})
        if not isinstance(inner, dict):
            raise ValueError(f"{'.'.join(path)}: {part} is not a table")
        table = inner
    table[path[-1]] = value


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Deep-merge tables; any other value (lists included) replaces."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def expand_templates(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """``raw`` (a parsed scenario file) with its ``site_templates`` turned into ``sites``, and
    the origin of every site (``sites.3`` or ``site_templates.0[c07]``). :class:`ConfigError`
    naming ``where``, the key, the value and what was expected for a template that does not
    validate, or an id that is not valid or not unique."""
    raw = dict(raw)
    templates = raw.pop("site_templates", [])
    sites = list(raw.get("sites", []))
    origins = [f"sites.{i}" for i in range(len(sites))]
    if not isinstance(templates, list):
        raise ConfigError(f"{where}: site_templates: expected an array of tables")
    for i, table in enumerate(templates):
        try:
            template = SiteTemplate.model_validate(table)
            copies = template.copies()
        except ValidationError as exc:
            lines = describe_errors(
                exc, table, where=lambda _loc: where,
                name=lambda loc: dotted(("site_templates", i, *loc)),  # noqa: B023 - used now
                unknown="expected no such key",
            )  # fmt: skip
            raise ConfigError("; ".join(lines)) from None
        except ValueError as exc:
            raise ConfigError(f"{where}: site_templates.{i}.vary: {exc}") from None
        for k, site in enumerate(copies):
            if not valid_segment(site["site"]):
                raise ConfigError(
                    f"{where}: site_templates.{i}.site = {template.site!r}: copy {k} gives "
                    f"{site['site']!r}, expected an id of 1-64 characters A-Za-z0-9_.-"
                )
            sites.append(site)
            origins.append(f"site_templates.{i}[{site['site']}]")
    seen: dict[str, str] = {}
    for site, origin in zip(sites, origins, strict=True):
        sid = site.get("site") if isinstance(site, dict) else None
        if isinstance(sid, str) and sid in seen:
            raise ConfigError(f"{where}: {origin}: site {sid!r} already given by {seen[sid]}")
        if isinstance(sid, str):
            seen[sid] = origin
    if templates or "sites" in raw:
        raw["sites"] = sites
    return raw, origins


def origin_of(loc: tuple[int | str, ...], origins: list[str]) -> str:
    """A validation error's location, dotted, with a generated site named by its template."""
    if len(loc) >= 2 and loc[0] == "sites" and isinstance(loc[1], int) and loc[1] < len(origins):
        return ".".join([origins[loc[1]], *(str(p) for p in loc[2:])])
    return dotted(loc)
