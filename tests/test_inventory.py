"""``sobriety inventory import``: CSV and GeoJSON, idempotent, errors with file/line/column."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from core.errors import InventoryError
from core.inventory import import_inventory

pytestmark = pytest.mark.services


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_devices_and_dmas_import_once(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    dmas = write(
        tmp_path / "dmas.csv",
        f"site,dma,mains_km,connections,avg_pressure_m\n{site},nord,12.5,800,45\n",
    )
    devices = write(
        tmp_path / "devices.csv",
        "site,device,kind,dma,role,lat,lon,group,lighting_class,nominal_power_w,vendor\n"
        f"{site},lum-1,luminaire,,,45.76,4.83,rue-a,M4,40,acme\n"
        f"{site},fm-1,flow_meter,nord,inlet,,,,,,\n",
    )
    first_dmas = import_inventory(conn, dmas)
    assert (first_dmas.table, first_dmas.inserted) == ("dmas", 1)
    assert first_dmas.sites_created == [site]
    first = import_inventory(conn, devices)
    assert (first.table, first.inserted, first.updated) == ("devices", 2, 0)
    before = conn.execute("SELECT * FROM devices WHERE site = %s ORDER BY id", (site,)).fetchall()
    again = import_inventory(conn, devices)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    after = conn.execute("SELECT * FROM devices WHERE site = %s ORDER BY id", (site,)).fetchall()
    assert before == after
    lum = conn.execute(
        "SELECT kind, lighting_group, lighting_class, nominal_power_w, lat, properties "
        "FROM api.devices WHERE site = %s AND device = 'lum-1'",
        (site,),
    ).fetchone()
    assert lum == ("luminaire", "rue-a", "M4", 40.0, 45.76, {"vendor": "acme"})


def test_luminaire_properties_are_checked_then_stored_as_text(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "d.csv",
        "site,device,kind,cct_k,usage,closing_time,vendor\n"
        f"{site},l1,luminaire,2700.0,Park,20:00,acme\n"
        f"{site},l2,luminaire,,,,\n",
    )
    assert import_inventory(conn, path).inserted == 2
    rows = conn.execute(
        "SELECT device, properties FROM api.devices WHERE site = %s ORDER BY device", (site,)
    ).fetchall()
    assert rows == [
        ("l1", {"cct_k": "2700", "usage": "park", "closing_time": "20:00", "vendor": "acme"}),
        ("l2", {}),
    ]
    assert import_inventory(conn, path).unchanged == 2


def test_meter_properties_are_checked_then_stored_as_text(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "m.csv",
        "site,device,kind,counter_max_wh,max_power_w,replaced_at\n"
        f"{site},c1,cabinet_meter,999999900.0,2500,2026-11-03T10:00:00+01:00\n",
    )
    assert import_inventory(conn, path).inserted == 1
    row = conn.execute("SELECT properties FROM api.devices WHERE site = %s", (site,)).fetchone()
    assert row == (
        {
            "counter_max_wh": "999999900",
            "max_power_w": "2500",
            "replaced_at": "2026-11-03T09:00:00+00:00",
        },
    )
    assert import_inventory(conn, path).unchanged == 1


def test_a_luminaire_names_its_cabinet_in_the_file_or_registered(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    first = write(
        tmp_path / "a.csv",
        f"site,device,kind,cabinet\n{site},cab-1,cabinet_meter,\n{site},l1,luminaire,cab-1\n",
    )
    assert import_inventory(conn, first).inserted == 2
    later = write(tmp_path / "b.csv", f"site,device,kind,cabinet\n{site},l2,luminaire,cab-1\n")
    assert import_inventory(conn, later).inserted == 1
    rows = conn.execute(
        "SELECT device, properties ->> 'cabinet' FROM devices WHERE site = %s ORDER BY 1",
        (site,),
    ).fetchall()
    assert rows == [("cab-1", None), ("l1", "cab-1"), ("l2", "cab-1")]


def test_changed_row_is_updated(conn: psycopg.Connection, site: str, tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv", f"site,device,kind,nominal_power_w\n{site},lum-1,luminaire,40\n"
    )
    import_inventory(conn, path)
    write(path, f"site,device,kind,nominal_power_w\n{site},lum-1,luminaire,30\n")
    result = import_inventory(conn, path)
    assert (result.inserted, result.updated) == (0, 1)


def test_geojson_points_give_coordinates(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [4.83, 45.76]},
                "properties": {
                    "site": site,
                    "device": "lum-9",
                    "kind": "luminaire",
                    "nominal_power_w": 25,
                },
            },
        ],
    }
    path = write(tmp_path / "lum.geojson", json.dumps(doc))
    assert import_inventory(conn, path).inserted == 1
    row = conn.execute(
        "SELECT lat, lon, nominal_power_w FROM devices WHERE site = %s", (site,)
    ).fetchone()
    assert row == (45.76, 4.83, 25.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site,device,kind\n{site},lum-1,lamp\n", r"line 2, column kind: 'lamp' is not one of"),
        (
            "site,device,kind,lat\n{site},lum-1,luminaire,north\n",
            r"line 2, column lat: 'north' is not",
        ),
        (
            "site,device,kind,lat\n{site},lum-1,luminaire,95\n",
            r"line 2, column lat: '95' is not a number from -90 to 90",
        ),
        ("site,device,kind\n{site},,luminaire\n", r"line 2, column device: missing value"),
        (
            "site,device,kind\n{site},lum 1,luminaire\n",
            r"line 2, column device: 'lum 1' is not an id",
        ),
        (
            "site,device,kind,dma,role\n{site},fm,flow_meter,nord,middle\n",
            r"column role: a flow_meter",
        ),
        (
            "site,device,kind\n{site},a,luminaire\n{site},a,luminaire\n",
            r"line 3: .* already defined at .*line 2",
        ),
        (
            "site,device,kind,dma\n{site},fm,water_meter,sud\n",
            r"line 2, column dma: DMA 'sud' .* import the DMA file first",
        ),
        ("name,kind\nx,luminaire\n", r"cannot tell the file: .* a 'site' column without"),
        (
            "site,dma,connections\n{site},n,-4\n",
            r"line 2, column connections: '-4' is not a whole number",
        ),
        (
            "site,device,kind,cct_k\n{site},l,luminaire,3000\n{site},m,luminaire,warm\n",
            r"line 3, column cct_k: 'warm' is not a number from 1000 to 10000",
        ),
        (
            "site,device,kind,cct_k\n{site},l,luminaire,30000\n",
            r"line 2, column cct_k: '30000' is not a number from 1000 to 10000",
        ),
        (
            "site,device,kind,usage\n{site},l,luminaire,parc\n",
            r"line 2, column usage: 'parc' is not one of road, parking, pedestrian, park, "
            r"heritage, sports, other",
        ),
        (
            "site,device,kind,closing_time\n{site},l,luminaire,8pm\n",
            r'line 2, column closing_time: \'8pm\' is not a local time "HH:MM" from 00:00',
        ),
        (
            "site,device,kind,closing_time\n{site},l,luminaire,24:00\n",
            r"line 2, column closing_time: '24:00' is not a local time",
        ),
        (
            "site,device,kind,counter_max_wh\n{site},c,cabinet_meter,0\n",
            r"line 2, column counter_max_wh: '0' is not a number from 1 to",
        ),
        (
            "site,device,kind,max_power_w\n{site},c,cabinet_meter,-5\n",
            r"line 2, column max_power_w: '-5' is not a number from 0 to",
        ),
        (
            "site,device,kind,replaced_at\n{site},c,cabinet_meter,2026-11-03T10:00\n",
            r"line 2, column replaced_at: '2026-11-03T10:00' is not an instant in ISO 8601 "
            r"with a UTC offset",
        ),
        (
            "site,device,kind,cabinet\n{site},c,cabinet_meter,\n{site},l,luminaire,cab 1\n",
            r"line 3, column cabinet: 'cab 1' is not a device id",
        ),
        (
            "site,device,kind,cabinet\n{site},p,pump_meter,\n{site},l,luminaire,p\n",
            r"line 3, column cabinet: 'p' is not a cabinet_meter of site '.*' \(in this file "
            r"or registered\)",
        ),
        (
            "site,device,kind,cabinet\n{site},c,cabinet_meter,\n{site},f,flow_meter,c\n",
            r"line 3, column cabinet: only a luminaire is fed by a cabinet, not a flow_meter",
        ),
    ],
)
def test_errors_name_file_line_and_column(
    conn: psycopg.Connection, site: str, tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "bad.csv", text.format(site=site))
    with pytest.raises(InventoryError, match=expected) as info:
        import_inventory(conn, path)
    assert str(path) in str(info.value)
    assert conn.execute("SELECT count(*) FROM devices WHERE site = %s", (site,)).fetchone() == (0,)


def test_sites_file_creates_then_updates_sites(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    other = f"{site}b"
    path = write(
        tmp_path / "sites.csv",
        "site,name,timezone,lat,lon\n"
        f"{site},Lyon,Europe/Paris,45.764,4.8357\n"
        f"{other},Pointe-à-Pitre,America/Guadeloupe,16.241,-61.533\n",
    )
    first = import_inventory(conn, path)
    assert (first.table, first.inserted, first.updated, first.unchanged) == ("sites", 2, 0, 0)
    again = import_inventory(conn, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    rows = conn.execute(
        "SELECT site, name, timezone, lat, lon FROM api.sites WHERE site IN (%s, %s) ORDER BY 1",
        (site, other),
    ).fetchall()
    assert rows == [
        (site, "Lyon", "Europe/Paris", 45.764, 4.8357),
        (other, "Pointe-à-Pitre", "America/Guadeloupe", 16.241, -61.533),
    ]
    # A later file with only some columns updates those and leaves the others.
    write(path, f"site,timezone\n{site},Europe/Brussels\n")
    changed = import_inventory(conn, path)
    assert (changed.inserted, changed.updated) == (0, 1)
    assert conn.execute(
        "SELECT name, timezone, lat FROM sites WHERE site = %s", (site,)
    ).fetchone() == ("Lyon", "Europe/Brussels", 45.764)


def test_a_site_created_by_a_devices_file_gets_its_coordinates(
    conn: psycopg.Connection, site: str, tmp_path: Path
) -> None:
    devices = write(tmp_path / "d.csv", f"site,device,kind\n{site},lum-1,luminaire\n")
    assert import_inventory(conn, devices).sites_created == [site]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [4.83, 45.76]},
                "properties": {"site": site, "name": "Lyon", "timezone": "Europe/Paris"},
            }
        ],
    }
    sites = write(tmp_path / "sites.geojson", json.dumps(doc))
    assert import_inventory(conn, sites).updated == 1
    assert conn.execute("SELECT lat, lon, name FROM sites WHERE site = %s", (site,)).fetchone() == (
        45.76,
        4.83,
        "Lyon",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "site,timezone\n{site},Mars/Olympus\n",
            r"line 2, column timezone: 'Mars/Olympus' is not an IANA time zone such as "
            r"Europe/Paris",
        ),
        (
            "site,timezone\n{site},Europe/Paris\n{site}b,CET+1\n",
            r"line 3, column timezone: 'CET\+1' is not an IANA time zone",
        ),
        (
            "site,lat,lon\n{site},91,4.8\n",
            r"line 2, column lat: '91' is not a number from -90 to 90",
        ),
        (
            "site,lat,lon\n{site},45.7,east\n",
            r"line 2, column lon: 'east' is not a number from -180 to 180",
        ),
        ("site,name\n{site} x,Lyon\n", r"line 2, column site: '.* x' is not an id"),
        (
            "site,name,mayor\n{site},Lyon,Ada\n",
            r"column mayor: not a column of a sites file \(expected site, name, timezone, lat, "
            r"lon",
        ),
        ("site,name\n{site},a\n{site},b\n", r"line 3: site .* already defined at .*line 2"),
    ],
)
def test_sites_file_errors_name_file_line_column_and_value(
    conn: psycopg.Connection, site: str, tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "sites.csv", text.format(site=site))
    with pytest.raises(InventoryError, match=expected) as info:
        import_inventory(conn, path)
    assert str(path) in str(info.value)
    assert conn.execute(
        "SELECT count(*) FROM sites WHERE site LIKE %s", (f"{site}%",)
    ).fetchone() == (0,)
