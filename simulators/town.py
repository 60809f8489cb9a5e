"""A town generated from a scenario and a seed, and its inventory files.

Device ids: ``lum-SS-NNN`` (street SS), ``cab-CC``, ``fm-D-in`` / ``fm-D-out`` (DMA ``dma-D``),
``ps-D``, ``wm-D-NNNN``, ``pump-1``, ``facility-1``, ``it-1``. The same scenario and seed always
give the same town.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.arrays import FloatArray
from core.inventory import (
    DEVICE_FILE_COLUMNS,
    DMA_FILE_COLUMNS,
    SITE_FILE_COLUMNS,
    write_inventory_csv,
)
from simulators.meter_faults import INVENTORY_COLUMNS, plan_meter_faults
from simulators.scenario import Scenario, Site

_METRES_PER_DEGREE_LAT = 111_320.0


@dataclass
class Device:
    """One inventory row."""

    site: str
    device: str
    kind: str
    dma: str = ""
    role: str = ""
    lat: float | None = None
    lon: float | None = None
    group: str = ""
    lighting_class: str = ""
    nominal_power_w: float | None = None


@dataclass
class SiteTown:
    """The devices of one site and the parameters the simulation needs."""

    spec: Site
    devices: list[Device] = field(default_factory=list)
    luminaires: list[str] = field(default_factory=list)
    lum_cabinet: list[int] = field(default_factory=list)
    lum_nominal_w: FloatArray = field(default_factory=lambda: np.zeros(0))
    lum_presence: list[bool] = field(default_factory=list)
    cabinets: list[str] = field(default_factory=list)
    dmas: list[str] = field(default_factory=list)
    dma_has_outlet: list[bool] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)
    customer_dma: list[int] = field(default_factory=list)
    customer_base_m3h: FloatArray = field(default_factory=lambda: np.zeros(0))
    customer_start_m3: FloatArray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Town:
    """All sites of a scenario."""

    scenario: Scenario
    seed: int
    sites: list[SiteTown]

    @property
    def devices(self) -> list[Device]:
        """Every device of every site."""
        return [d for s in self.sites for d in s.devices]


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    dlat = north_m / _METRES_PER_DEGREE_LAT
    dlon = east_m / (_METRES_PER_DEGREE_LAT * max(math.cos(math.radians(lat)), 1e-6))
    return round(lat + dlat, 6), round(lon + dlon, 6)


def _build_site(spec: Site, rng: np.random.Generator) -> SiteTown:
    town = SiteTown(spec)
    site = spec.site
    light = spec.lighting
    nominal: list[float] = []
    for street in range(light.streets):
        cabinet = street // light.streets_per_cabinet
        if cabinet == len(town.cabinets):
            cab_id = f"cab-{cabinet:02d}"
            town.cabinets.append(cab_id)
            lat, lon = _offset(spec.lat, spec.lon, 200.0 * street, -20.0)
            town.devices.append(
                Device(
                    site, cab_id, "cabinet_meter", lat=lat, lon=lon, group=f"street-{street:02d}"
                )
            )
        klass = light.classes[int(rng.integers(len(light.classes)))]
        power = float(light.nominal_power_w[int(rng.integers(len(light.nominal_power_w)))])
        for n in range(light.luminaires_per_street):
            dev = f"lum-{street:02d}-{n:03d}"
            lat, lon = _offset(spec.lat, spec.lon, 200.0 * street, 30.0 * n)
            town.devices.append(
                Device(
                    site,
                    dev,
                    "luminaire",
                    lat=lat,
                    lon=lon,
                    group=f"street-{street:02d}",
                    lighting_class=klass,
                    nominal_power_w=power,
                )
            )
            town.luminaires.append(dev)
            town.lum_cabinet.append(cabinet)
            town.lum_presence.append(bool(rng.random() < light.presence_fraction))
            nominal.append(power)
    town.lum_nominal_w = np.array(nominal, dtype=float)

    water = spec.water
    base: list[float] = []
    start: list[float] = []
    for d in range(water.dmas):
        dma = f"dma-{d}"
        town.dmas.append(dma)
        outlet = water.outlet_every > 0 and d % water.outlet_every == water.outlet_every - 1
        town.dma_has_outlet.append(outlet)
        lat, lon = _offset(spec.lat, spec.lon, -500.0 - 400.0 * d, 0.0)
        town.devices.append(Device(site, f"fm-{d}-in", "flow_meter", dma, "inlet", lat, lon))
        if outlet:
            town.devices.append(
                Device(site, f"fm-{d}-out", "flow_meter", dma, "outlet", lat, lon + 0.004)
            )
        town.devices.append(Device(site, f"ps-{d}", "pressure_sensor", dma, "", lat, lon + 0.002))
        for n in range(water.customers_per_dma):
            dev = f"wm-{d}-{n:04d}"
            clat, clon = _offset(lat, lon, -10.0 * (n // 20), 15.0 * (n % 20))
            town.devices.append(Device(site, dev, "water_meter", dma, "", clat, clon))
            town.customers.append(dev)
            town.customer_dma.append(d)
            # Household sizes vary: lognormal consumption around the scenario's mean.
            base.append(water.consumption_m3_per_day / 24.0 * float(rng.lognormal(-0.125, 0.5)))
            start.append(float(rng.uniform(50.0, 2000.0)))
    town.customer_base_m3h = np.array(base, dtype=float)
    town.customer_start_m3 = np.array(start, dtype=float)
    if water.pumping_station and water.dmas:
        lat, lon = _offset(spec.lat, spec.lon, -300.0, -300.0)
        town.devices.append(Device(site, "pump-1", "pump_meter", lat=lat, lon=lon))
    if spec.server_room.enabled:
        town.devices.append(Device(site, "facility-1", "facility_meter"))
        town.devices.append(Device(site, "it-1", "it_meter"))
    return town


def build_town(scenario: Scenario, seed: int) -> Town:
    """The town of ``scenario`` for ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    return Town(scenario, seed, [_build_site(spec, rng) for spec in scenario.sites])


def write_sites(town: Town, directory: Path) -> Path:
    """Write ``sites.csv``: each commune's name, time zone and the coordinates of its
    astronomical clock (import it first: the devices file would create the sites bare)."""
    rows = [
        {
            "site": site.spec.site,
            "name": site.spec.name,
            "timezone": site.spec.timezone,
            "lat": site.spec.lat,
            "lon": site.spec.lon,
        }
        for site in town.sites
    ]
    return write_inventory_csv(directory / "sites.csv", rows, SITE_FILE_COLUMNS)


def write_inventory(
    town: Town, directory: Path, *, start: float | None = None, days: float | None = None
) -> tuple[Path, Path]:
    """Write ``dmas.csv`` and ``devices.csv`` (and ``devices.geojson``); return the CSV paths.

    Import ``dmas.csv`` first: devices name their DMA. When the scenario injects meter faults
    (:mod:`simulators.meter_faults`), the devices file has two more columns (properties):
    ``counter_max_wh`` of a rolling register, and ``replaced_at`` (ISO 8601 UTC) of a replaced
    meter, which needs the run's ``start`` [s since epoch] (the fleet's ``start``; ``days``
    defaults to the scenario's): without it, no ``replaced_at``.
    """
    plan = plan_meter_faults(
        town, 0.0 if start is None else start, town.scenario.days if days is None else days
    )
    declared = plan.inventory()
    if start is None:
        declared = {
            k: {c: v for c, v in props.items() if c != "replaced_at"}
            for k, props in declared.items()
        }
        declared = {k: v for k, v in declared.items() if v}
    dmas = [
        {
            "site": site.spec.site,
            "dma": dma,
            "name": f"Secteur {dma}",
            "mains_km": site.spec.water.mains_km_per_dma,
            "connections": site.spec.water.customers_per_dma,
            "private_km": site.spec.water.private_km_per_dma,
            "avg_pressure_m": site.spec.water.avg_pressure_m,
        }
        for site in town.sites
        for dma in site.dmas
    ]
    feeds = {
        (site.spec.site, lum): site.cabinets[cab]
        for site in town.sites
        for lum, cab in zip(site.luminaires, site.lum_cabinet, strict=True)
    }
    devices = [
        {k: v for k, v in asdict(d).items() if v not in ("", None)}
        | declared.get((d.site, d.device), {})
        | ({"cabinet": feeds[(d.site, d.device)]} if (d.site, d.device) in feeds else {})
        for d in town.devices
    ]
    used = {c for props in declared.values() for c in props}
    columns = (
        DEVICE_FILE_COLUMNS
        + (("cabinet",) if feeds else ())
        + tuple(c for c in INVENTORY_COLUMNS if c in used)
    )
    features = [
        {
            "type": "Feature",
            "geometry": (
                {"type": "Point", "coordinates": [d.lon, d.lat]} if d.lat is not None else None
            ),
            "properties": {k: v for k, v in row.items() if k not in {"lat", "lon"}},
        }
        for d, row in zip(town.devices, devices, strict=True)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "devices.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    return (
        write_inventory_csv(directory / "dmas.csv", dmas, DMA_FILE_COLUMNS),
        write_inventory_csv(directory / "devices.csv", devices, columns),
    )
