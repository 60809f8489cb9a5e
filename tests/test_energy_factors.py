"""CO₂e and cost factors on a real database: the version in force per site and day (the site's
own over all-sites, the latest valid_from on or before the day), pinned once so a factor added
later leaves the past alone unless 'factors apply'; the views' kg CO₂e and € exactly kWh ×
the pinned factor; the CLI with its errors. Each test that adds an all-sites factor has a
database of its own (such a factor would reach every other test's sites)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import orjson
import psycopg
import pytest

from app.cli import main
from core.db import migrations, upgrade
from energy.factors import FactorError, add_factor, apply_factors, list_factors, pin_factors
from tests.fix_db import register

pytestmark = pytest.mark.services

ADEME_2022 = 0.0520
"""The seeded factor: ADEME Base Empreinte, Electricité - 2022 - mix moyen - consommation."""


@pytest.fixture
def own(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a migrated database of the test's own."""
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        upgrade(conn)
        yield conn


def _at(day: date) -> float:
    """Noon UTC of ``day`` [s]: inside the same local day in Europe/Paris."""
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()


def _pins(conn: psycopg.Connection, site: str) -> dict[tuple[date, str], int]:
    rows = conn.execute(
        "SELECT day, kind, factor_id FROM energy_day_factors WHERE site = %s", (site,)
    ).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def _daily(conn: psycopg.Connection, site: str, day: date) -> tuple[Any, ...]:
    row = conn.execute(
        """SELECT kwh, kg_co2e, eur, co2e_factor_id, tariff_id FROM api.energy_daily
           WHERE site = %s AND day = %s""",
        (site, day),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _energy_day(conn: psycopg.Connection, device_id: int, day: date, kwh: float) -> None:
    conn.execute(
        """INSERT INTO energy_daily (device_id, day, kwh, source, complete, missing_hours)
           VALUES (%s, %s, %s, 'counter', true, 0)""",
        (device_id, day, kwh),
    )


def test_the_ademe_mix_is_seeded_and_no_tariff(conn: psycopg.Connection) -> None:
    seeded = [f for f in list_factors(conn) if f.site is None and f.valid_from.year == 2022]
    assert [(f.kind, f.value, f.unit) for f in seeded] == [("co2e", ADEME_2022, "kgCO2e/kWh")]
    assert "Electricité - 2022 - mix moyen - consommation" in seeded[0].source
    view = conn.execute("SELECT kind, value, source FROM api.energy_factors WHERE id = %s",
                        (seeded[0].id,)).fetchone()  # fmt: skip
    assert view == ("co2e", ADEME_2022, seeded[0].source)


def test_the_views_keep_their_columns_and_append_the_new_ones(conn: psycopg.Connection) -> None:
    def columns(view: str) -> list[str]:
        description = conn.execute(f"SELECT * FROM api.{view} LIMIT 0").description
        assert description is not None
        return [c.name for c in description]

    assert columns("energy_daily") == [
        "site", "device", "kind", "day", "kwh", "source", "complete", "missing_hours", "resets",
        "rollovers", "replacements", "flagged", "glitches",
        "kg_co2e", "eur", "co2e_factor_id", "tariff_id",
    ]  # fmt: skip
    assert columns("lighting_nights") == [
        "site", "lighting_group", "night", "luminaires", "lit_hours", "kwh", "baseline_kwh",
        "saved_kwh", "saved_fraction", "kwh_per_luminaire", "kwh_per_km", "complete",
        "kg_co2e", "eur", "saved_kg_co2e", "saved_eur", "co2e_factor_id", "tariff_id",
        "street_km",  # migration 0015
    ]  # fmt: skip
    assert columns("pumping_daily") == [
        "site", "device", "day", "kwh", "m3", "kwh_per_m3", "complete",
        "kg_co2e", "eur", "eur_per_m3", "co2e_factor_id", "tariff_id",
    ]  # fmt: skip


def test_the_site_factor_wins_then_the_latest_valid_from(own: psycopg.Connection) -> None:
    register(own, "alpha", ("m", "cabinet_meter"))
    register(own, "beta", ("m", "cabinet_meter"))
    general_jan = add_factor(own, "co2e", date(2026, 1, 1), 0.05, "kgCO2e/kWh", "general Jan")
    general_mar = add_factor(own, "co2e", date(2026, 3, 1), 0.06, "kgCO2e/kWh", "general Mar")
    alpha_feb = add_factor(own, "co2e", date(2026, 2, 1), 0.07, "kgCO2e/kWh", "alpha", "alpha")
    fixed = add_factor(own, "co2e", date(2026, 3, 1), 0.065, "kgCO2e/kWh", "general Mar, fixed")
    days = [date(2025, 6, 1), date(2026, 1, 15), date(2026, 2, 1), date(2026, 3, 15)]
    assert pin_factors(own, "alpha", days) == 4
    assert pin_factors(own, "beta", days) == 4
    seeded = list_factors(own, kind="co2e")[0]
    assert seeded.valid_from == date(2022, 1, 1)
    assert _pins(own, "alpha") == {
        (days[0], "co2e"): seeded.id,  # before every 2026 factor: the seeded ADEME mix
        (days[1], "co2e"): general_jan.id,  # alpha's own holds from February only
        (days[2], "co2e"): alpha_feb.id,  # valid from that very day
        (days[3], "co2e"): alpha_feb.id,  # the site's own over a newer all-sites one
    }
    assert _pins(own, "beta") == {
        (days[0], "co2e"): seeded.id,
        (days[1], "co2e"): general_jan.id,
        (days[2], "co2e"): general_jan.id,
        (days[3], "co2e"): fixed.id,  # same valid_from as general_mar: the latest entered
    }
    assert general_mar.id not in _pins(own, "beta").values()
    assert [f.source for f in list_factors(own, site="beta")] == [
        "ADEME Base Empreinte, Electricité - 2022 - mix moyen - consommation (France "
        "continentale), 0.0520 kgCO2e/kWh", "general Jan", "general Mar", "general Mar, fixed",
    ]  # fmt: skip
    assert len(list_factors(own, site="alpha")) == 5


def test_a_factor_added_later_leaves_a_pinned_day_alone_until_applied(
    own: psycopg.Connection,
) -> None:
    ids = register(own, "gamma", ("m", "cabinet_meter"))
    day, kwh = date(2026, 4, 10), 12.345
    _energy_day(own, ids["m"], day, kwh)
    assert _daily(own, "gamma", day)[1:] == (None, None, None, None)  # not computed with factors
    assert pin_factors(own, "gamma", [day]) == 1  # no tariff yet: co2e only
    seeded = list_factors(own, kind="co2e")[0].id
    assert _daily(own, "gamma", day) == (kwh, kwh * ADEME_2022, None, seeded, None)

    newer = add_factor(own, "co2e", date(2026, 1, 1), 0.1, "kgCO2e/kWh", "a newer mix")
    tariff = add_factor(own, "tariff", date(2026, 1, 1), 0.2516, "EUR/kWh", "the contract")
    assert pin_factors(own, "gamma", [day]) == 1  # recomputed: the tariff pinned, co2e kept
    # The day had no € figure: giving it one rewrites nothing; its kg CO2e stays as it was.
    assert _daily(own, "gamma", day) == (kwh, kwh * ADEME_2022, kwh * 0.2516, seeded, tariff.id)

    report = apply_factors(own, _at(day), _at(day), "gamma")
    assert (report.sites, report.days, report.pinned, report.repinned) == (1, 1, 0, 1)
    assert _daily(own, "gamma", day) == (kwh, kwh * 0.1, kwh * 0.2516, newer.id, tariff.id)
    again = apply_factors(own, _at(day), _at(day), "gamma")
    assert (again.pinned, again.repinned) == (0, 0)


def test_lighting_and_pumping_give_kwh_times_the_pinned_factor_exactly(
    own: psycopg.Connection,
) -> None:
    ids = register(own, "delta", ("l1", "luminaire"), ("l2", "luminaire"), ("p", "pump_meter"))
    own.execute("UPDATE devices SET lighting_group = 'main' WHERE site = 'delta'")
    night = date(2026, 5, 2)
    for device, kwh, base in (("l1", 0.3217, 0.5113), ("l2", 0.2791, 0.5113)):
        own.execute(
            """INSERT INTO luminaire_nights (device_id, night, kwh, lit_hours, baseline_kwh,
                   complete) VALUES (%s, %s, %s, 9.5, %s, true)""",
            (ids[device], night, kwh, base),
        )
    _energy_day(own, ids["p"], night, 41.77)
    own.execute(
        """INSERT INTO pumping_volume_daily (device_id, day, m3, complete, missing_hours)
           VALUES (%s, %s, 133.9, true, 0)""",
        (ids["p"], night),
    )
    tariff = add_factor(own, "tariff", date(2026, 1, 1), 0.1987, "EUR/kWh", "delta", "delta")
    pin_factors(own, "delta", [night])
    co2e = list_factors(own, kind="co2e")[0]
    row = own.execute(
        """SELECT kwh, saved_kwh, kg_co2e, eur, saved_kg_co2e, saved_eur, co2e_factor_id,
                  tariff_id FROM api.lighting_nights WHERE site = 'delta'"""
    ).fetchone()
    assert row is not None
    kwh, saved = row[0], row[1]
    assert kwh == 0.3217 + 0.2791
    assert row[2:] == (
        kwh * co2e.value,
        kwh * 0.1987,
        saved * co2e.value,
        saved * 0.1987,
        co2e.id,
        tariff.id,
    )
    pump = own.execute(
        """SELECT kwh, m3, kg_co2e, eur, eur_per_m3, co2e_factor_id, tariff_id
           FROM api.pumping_daily WHERE site = 'delta'"""
    ).fetchone()
    assert pump == (41.77, 133.9, 41.77 * co2e.value, 41.77 * 0.1987, 41.77 * 0.1987 / 133.9,
                    co2e.id, tariff.id)  # fmt: skip


def test_a_factor_that_cannot_be_stored_says_why(conn: psycopg.Connection, site: str) -> None:
    register(conn, site, ("m", "cabinet_meter"))
    cases = [
        (("gas", date(2026, 1, 1), 0.1, "kgCO2e/kWh", "x"), "expected one of co2e, tariff"),
        (("tariff", date(2026, 1, 1), 25.0, "c€/kWh", "x"), "a tariff factor is in EUR/kWh"),
        (("co2e", date(2026, 1, 1), 52.0, "gCO2e/kWh", "x"), "is in kgCO2e/kWh"),
        (("co2e", date(2026, 1, 1), -0.1, "kgCO2e/kWh", "x"), "a finite number, 0 or more"),
        (("co2e", date(2026, 1, 1), float("nan"), "kgCO2e/kWh", "x"), "a finite number"),
        (("co2e", date(2026, 1, 1), 0.1, "kgCO2e/kWh", "  "), "say where the value comes from"),
    ]
    for arguments, message in cases:
        with pytest.raises(FactorError, match=message):
            add_factor(conn, *arguments, site=site)
    with pytest.raises(FactorError, match="'atlantis': no such site; known sites:"):
        add_factor(conn, "co2e", date(2026, 1, 1), 0.1, "kgCO2e/kWh", "x", "atlantis")


def test_migration_pins_the_days_computed_before_it(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in migrations():
            if m.version < 14:
                conn.execute(m.sql.encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (m.version, m.label))
        ids = register(conn, "eps", ("m", "cabinet_meter"))
        _energy_day(conn, ids["m"], date(2026, 6, 1), 3.0)
        _energy_day(conn, ids["m"], date(2021, 6, 1), 3.0)  # before the seeded factor's year
        assert "0014_energy_factors" in upgrade(conn)
        assert _daily(conn, "eps", date(2026, 6, 1))[1:3] == (3.0 * ADEME_2022, None)
        assert _daily(conn, "eps", date(2021, 6, 1))[1:] == (None, None, None, None)


def test_factors_from_the_command_line(
    fresh_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        upgrade(conn)
        ids = register(conn, "zeta", ("m", "cabinet_meter"))
        _energy_day(conn, ids["m"], date(2026, 7, 1), 10.0)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--db-url", fresh_db_url, "energy", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("factors")
    assert code == 0
    assert "#1 co2e at every site from 2022-01-01: 0.052 kgCO2e/kWh (ADEME" in out
    assert "no tariff factor set: the EUR columns are empty" in out
    code, out, _ = run(
        "factor", "add", "--kind", "tariff", "--valid-from", "2026-01-01", "--value", "0.2",
        "--unit", "EUR/kWh", "--source", "commune contract 2026", "--site", "zeta",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("added #2 tariff at zeta from 2026-01-01: 0.2 EUR/kWh")
    assert "days already computed keep their factor" in out
    code, out, _ = run("factors", "--site", "zeta", "--format", "json")
    assert code == 0
    listed = orjson.loads(out)
    assert [(f["id"], f["kind"], f["site"], f["value"]) for f in listed] == [
        (1, "co2e", None, ADEME_2022),
        (2, "tariff", "zeta", 0.2),
    ]
    code, out, _ = run(
        "factors", "apply", "--since", "2026-07-01T12:00Z", "--until", "2026-07-02T12:00Z",
        "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert orjson.loads(out) == {"sites": 1, "days": 2, "pinned": 4, "repinned": 0}
    with psycopg.connect(fresh_db_url) as conn:
        assert _daily(conn, "zeta", date(2026, 7, 1)) == (10.0, 10.0 * ADEME_2022, 10.0 * 0.2,
                                                          1, 2)  # fmt: skip
    code, out, _ = run("factors", "apply", "--since", "2026-07-01T12:00Z", "--until",
                       "2026-07-01T13:00Z")  # fmt: skip
    assert (code, out) == (0, "1 sites, 1 site-days: 0 pins made, 0 moved to the factors in "
                              "force now\n")  # fmt: skip

    add = ["factors", "add", "--valid-from", "2026-01-01", "--source", "x"]
    code, _, err = run(*add, "--kind", "tariff", "--value", "25", "--unit", "c/kWh")
    assert (code, err) == (2, "sobriety: factor unit 'c/kWh': a tariff factor is in EUR/kWh\n")
    code, _, err = run(*add, "--kind", "co2e", "--value", "-1", "--unit", "kgCO2e/kWh")
    assert code == 2
    assert "expected a finite number, 0 or more" in err
    code, _, err = run(*add, "--kind", "co2e", "--value", "1", "--unit", "kgCO2e/kWh",
                       "--site", "atlantis")  # fmt: skip
    assert code == 2
    assert "--site 'atlantis': no such site; known sites: zeta" in err
    code, _, err = run("factors", "apply", "--since", "now", "--until", "1d")
    assert (code, "--until must be after --since" in err) == (2, True)
    for argv, accepted in (
        ([*add, "--kind", "gas", "--value", "1", "--unit", "x"], "'co2e', 'tariff'"),
        (["factors", "add", "--kind", "co2e", "--valid-from", "1 July", "--value", "1",
          "--unit", "kgCO2e/kWh", "--source", "x"], "expected a date YYYY-MM-DD"),
        ([*add, "--kind", "co2e", "--value", "much", "--unit", "x"], "expected a number"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            run(*argv)
        assert info.value.code == 2
        assert accepted in capsys.readouterr().err
    with psycopg.connect(fresh_db_url) as conn:
        assert len(list_factors(conn)) == 2  # nothing stored by the refused ones
