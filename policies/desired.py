"""What every device should be doing now: its desired ``config`` content, from the inventory,
the policies, the sun at its site and the DMAs under a leak alert. Pure: no I/O.

- a luminaire gets the :class:`~core.messages.LightingProgram` of the night in force (the local
  night of ``now``: from local noon to the next local noon, so a calendar's program changes at
  noon, hours before the evening it is for) and the reporting of its kind;
- every device gets the :class:`~core.messages.Reporting` of its kind by day or by night (night:
  between sunset and sunrise at its site; at a site without coordinates the shorter of the two
  intervals, so no data is lost for lack of a sun), or escalated when it is a flow meter,
  pressure sensor or customer meter of a DMA with an active leak alert.

The content is compared by :func:`digest` (SHA-256 of the canonical JSON without the version):
the version of a device's config increases only when its digest changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from core.lighting import SunCache, night_of
from core.messages import DeviceConfig, LightingProgram, Reporting
from core.site_config import PerSite
from policies.config import PoliciesConfig
from policies.programs import device_program, program_for, reporting_for

__all__ = [
    "ESCALATED_KINDS",
    "Desired",
    "InventoryDevice",
    "InventorySite",
    "desired_configs",
    "digest",
    "is_night",
]

ESCALATED_KINDS: Final = frozenset({"flow_meter", "pressure_sensor", "water_meter"})
"""The kinds of a DMA's devices that report faster while the DMA has an active leak alert."""


@dataclass(frozen=True, slots=True)
class InventorySite:
    """A site: IANA time zone and the coordinates of its astronomical clock [°] (may be None)."""

    site: str
    timezone: str
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class InventoryDevice:
    """A device as the policies see it."""

    device_id: int
    site: str
    device: str
    kind: str
    dma: str | None = None
    lighting_group: str | None = None
    lighting_class: str | None = None


@dataclass(frozen=True, slots=True)
class Desired:
    """The config content a device should run (``version`` is the store's business), the
    program of a luminaire, whether it is escalated, and its :func:`digest`."""

    device: InventoryDevice
    reporting: Reporting
    lighting: LightingProgram | None
    program: str | None
    escalated: bool
    digest: bytes

    def config(self, version: int) -> DeviceConfig:
        """The :class:`DeviceConfig` to publish as ``version``."""
        return DeviceConfig(version=version, reporting=self.reporting, lighting=self.lighting)


def _content(reporting: Reporting, lighting: LightingProgram | None) -> dict[str, Any]:
    content: dict[str, Any] = {"reporting": reporting.model_dump(mode="json")}
    if lighting is not None:
        content["lighting"] = lighting.model_dump(mode="json")
    return content


def digest(reporting: Reporting, lighting: LightingProgram | None) -> bytes:
    """SHA-256 of the canonical JSON (sorted keys) of a config's content without its version."""
    return hashlib.sha256(
        orjson.dumps(_content(reporting, lighting), option=orjson.OPT_SORT_KEYS)
    ).digest()


def is_night(
    site: InventorySite, now: float, sun: SunCache, tz: tzinfo | None = None
) -> bool | None:
    """Whether ``now`` [s since the epoch] is between sunset and sunrise at ``site`` (a polar
    night is night all day, a polar day never is); ``None`` without coordinates."""
    if site.lat is None or site.lon is None:
        return None
    zone = tz or ZoneInfo(site.timezone)
    times = sun.get(site.lat, site.lon, night_of(now, zone), zone)
    if times.polar is not None:
        return times.polar == "night"
    start = times.sunset if times.sunset is not None else float("-inf")
    end = times.sunrise if times.sunrise is not None else float("inf")
    return start <= now < end


def desired_configs(
    policies: PoliciesConfig | PerSite[PoliciesConfig],
    sites: Mapping[str, InventorySite],
    devices: Iterable[InventoryDevice],
    escalated_dmas: Collection[tuple[str, str]],
    now: float,
    sun: SunCache | None = None,
) -> Iterator[Desired]:
    """The :class:`Desired` content of each of ``devices`` at ``now`` [s since the epoch].

    ``escalated_dmas`` are the (site, dma) with an active leak alert; a site with policies of its
    own (``[sites.SITE.policies]``) gets them, the others the operator's. The reporting and the
    program of identical inputs are computed once (10,000 devices share a handful of each)."""
    per_site = PerSite.of(policies)
    sun = sun or SunCache()
    zones: dict[str, tzinfo] = {}
    nights: dict[str, bool | None] = {}
    reportings: dict[tuple[int, str, bool | None, bool], Reporting] = {}
    programs: dict[tuple[str, str, str | None, str | None, str | None], Any] = {}
    digests: dict[tuple[int, int], bytes] = {}
    named: dict[int, set[str]] = {}
    for dev in devices:
        site = sites[dev.site]
        own = per_site.get(dev.site)
        named_devices = named.get(id(own))
        if named_devices is None:
            named_devices = named[id(own)] = {n for ex in own.exceptions for n in ex.devices}
        zone = zones.get(dev.site)
        if zone is None:
            zone = zones[dev.site] = ZoneInfo(site.timezone)
            nights[dev.site] = is_night(site, now, sun, zone)
        night = nights[dev.site]
        escalated = dev.kind in ESCALATED_KINDS and (dev.site, dev.dma or "") in escalated_dmas
        key = (id(own), dev.kind, night, escalated)
        reporting = reportings.get(key)
        if reporting is None:
            reporting = reportings[key] = _reporting(own, dev.kind, night, escalated)
        lighting: LightingProgram | None = None
        program: str | None = None
        if dev.kind == "luminaire":
            program = program_for(own, dev.lighting_group, night_of(now, zone))
            # A device named by an exception gets its own program; others share by group.
            alone = dev.device if dev.device in named_devices else None
            pkey = (program, dev.site, dev.lighting_group, dev.lighting_class, alone)
            found = programs.get(pkey)
            if found is None:
                found = programs[pkey] = device_program(
                    own, program, dev.lighting_class, dev.lighting_group, dev.device
                )[0]
            lighting = found
        dkey = (id(reporting), id(lighting))
        value = digests.get(dkey)
        if value is None:
            value = digests[dkey] = digest(reporting, lighting)
        yield Desired(dev, reporting, lighting, program, escalated, value)


def _reporting(
    policies: PoliciesConfig, kind: str, night: bool | None, escalated: bool
) -> Reporting:
    if night is not None or escalated:
        return reporting_for(policies, kind, bool(night), escalated)
    by_day = reporting_for(policies, kind, False, False)
    by_night = reporting_for(policies, kind, True, False)
    return by_day if by_day.interval_s <= by_night.interval_s else by_night
