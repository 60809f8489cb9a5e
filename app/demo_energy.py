"""The demo summary's energy section ("Énergie / Energy"): the energy stage's views over the run
— public lighting per night (kWh, kWh per luminaire-night, the no-dimming baseline and what
dimming saved), the cabinets beside their luminaires, pumping kWh per m³, the server room's
PUE, the service's own kWh per 1,000 readings — each beside the simulator's ground truth.

The stage counts energy between readings: at the run's two ends it cannot know what came before
the first reading or after the last (its figures say so: ``complete``, ``missing_hours``), and it
knows when a luminaire switched only to its sampling interval. A figure is a problem (the demo
fails) when it differs from the truth by more than 1 % plus what those limits explain, stated
beside it: for energy, the hours of the run the stage could not count (its ``missing_hours``
less the hours of its days outside the run: before a device's first reading and after its
last, dropouts) at the devices' full power; for the baseline, also one sampling interval per
switch (two a night) at the luminaires' nominal power. A cabinet whose meter was replaced or
gave flagged steps is left out of the comparison, and the summary says how many. The site
meters (the pump, the server room's two) are held to 1 % of what the truth says they measured
between their first and their last stored reading (a meter silent at the end of the run, a
dropout, shortens that window and the truth with it).

Energies in kWh, times in seconds since the epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from simulators import Town, Truth

__all__ = ["EnergyFindings", "find_energy", "render_energy"]

DEFAULT_INTERVAL_S = 600.0
"""A luminaire's sampling interval when no published config says (the policies' default)."""


@dataclass
class Compared:
    """A figure of the stage beside the truth's, with the tolerance it is held to [its unit]."""

    measured: float
    true: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return abs(self.measured - self.true) <= self.tolerance


@dataclass
class SiteEnergy:
    """One site's energy over the run."""

    site: str
    nights: int = 0
    nights_complete: int = 0
    luminaire_nights: int = 0
    lighting: Compared | None = None
    baseline: Compared | None = None
    saved: Compared | None = None
    cabinets: Compared | None = None
    cabinets_luminaires_kwh: float | None = None
    cabinets_flagged: int = 0  # with a replaced meter or flagged steps: not compared
    pumping_kwh_per_m3: Compared | None = None
    pue: Compared | None = None
    pue_category: str | None = None
    pue_interim: bool = True


@dataclass
class EnergyFindings:
    """The section's figures; ``service_kwh_per_1000`` is install-wide."""

    sites: list[SiteEnergy] = field(default_factory=list)
    service_kwh_per_1000: float | None = None
    service_method: str | None = None
    problems: list[str] = field(default_factory=list)


def _interval_h(conn: psycopg.Connection, site: str, kind: str) -> float:
    """The longest sampling interval the policies published to a site's devices of ``kind``
    [h]; :data:`DEFAULT_INTERVAL_S` without a published config."""
    row = conn.execute(
        """SELECT max((c.payload -> 'reporting' ->> 'interval_s')::float8)
           FROM device_configs c JOIN devices d ON d.id = c.device_id
           WHERE d.site = %s AND d.kind = %s""",
        (site, kind),
    ).fetchone()
    found = float(row[0]) if row is not None and row[0] is not None else DEFAULT_INTERVAL_S
    return found / 3600.0


DAY_BOUNDS = """JOIN sites s ON s.site = e.site
    CROSS JOIN LATERAL (SELECT e.day::timestamp AT TIME ZONE s.timezone AS a,
                               (e.day + 1)::timestamp AT TIME ZONE s.timezone AS b) x"""
"""The start ``x.a`` and end ``x.b`` of the local day of each ``api.energy_daily`` row ``e``."""

IN_RUN_MISSING_H = """greatest(e.missing_hours - extract(epoch FROM
    greatest(least(x.b, %(t0)s) - x.a, interval '0')
    + greatest(x.b - greatest(x.a, %(t1)s), interval '0')) / 3600.0, 0)"""
"""A day's missing hours less its hours outside the run [``t0``, ``t1``] (the truth has none)."""


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _lamps_kw(conn: psycopg.Connection, site: str, fed: bool = False) -> float:
    """The nominal power of a site's luminaires (``fed``: those under a cabinet) [kW]."""
    row = conn.execute(
        "SELECT coalesce(sum(nominal_power_w), 0) / 1000.0 FROM devices WHERE site = %s "
        "AND kind = 'luminaire' AND (NOT %s OR properties ? 'cabinet')",
        (site, fed),
    ).fetchone()
    return float(row[0]) if row is not None else 0.0


def _lighting(conn: psycopg.Connection, st: SiteEnergy, truth: Truth) -> None:
    site = st.site
    nights = conn.execute(
        """SELECT night::text, sum(luminaires), sum(kwh), sum(baseline_kwh), bool_and(complete)
           FROM api.lighting_nights WHERE site = %s GROUP BY night ORDER BY night""",
        (site,),
    ).fetchall()
    if not nights:
        return
    full_kw = _lamps_kw(conn, site)
    interval_h = _interval_h(conn, site, "luminaire")
    true = dict.fromkeys(("kwh", "baseline_kwh"), 0.0)
    for night, *_rest in nights:
        for group_night, figures in truth.lighting_nights.items():
            if group_night.startswith(f"{site}/") and group_night.endswith(f"/{night}"):
                true["kwh"] += figures["kwh"]
                true["baseline_kwh"] += figures["baseline_kwh"]
    kwh = sum(float(n[2] or 0.0) for n in nights)
    baseline = sum(float(n[3] or 0.0) for n in nights)
    st.nights = len(nights)
    st.nights_complete = sum(1 for n in nights if n[4])
    st.luminaire_nights = int(sum(int(n[1]) for n in nights))
    # What the stage could not count inside the run — the hours no pair of readings spans (before
    # a luminaire's first reading and after its last, a dropout, a replaced meter, a flagged
    # step), less the hours of its days outside the run (the truth has none) — at each
    # luminaire's full power.
    lost = conn.execute(
        f"""SELECT coalesce(sum({IN_RUN_MISSING_H} * d.nominal_power_w), 0) / 1000.0
            FROM api.energy_daily e JOIN devices d ON d.site = e.site AND d.device = e.device
            {DAY_BOUNDS}
            WHERE e.site = %(s)s AND e.kind = 'luminaire'""",
        {"s": site, "t0": _ts(truth.start), "t1": _ts(truth.end)},
    ).fetchone()
    edges = float(lost[0]) if lost is not None and lost[0] is not None else 0.0
    switches = 2 * len(nights) * interval_h * full_kw  # one interval per switch, two a night
    st.lighting = Compared(kwh, true["kwh"], 0.01 * true["kwh"] + edges)
    st.baseline = Compared(baseline, true["baseline_kwh"],
                           0.01 * true["baseline_kwh"] + edges + switches)  # fmt: skip
    saved_true = true["baseline_kwh"] - true["kwh"]
    st.saved = Compared(baseline - kwh, saved_true,
                        st.lighting.tolerance + st.baseline.tolerance)  # fmt: skip


def _cabinets(conn: psycopg.Connection, st: SiteEnergy, truth: Truth) -> None:
    # A cabinet whose meter was replaced, or whose counter gave flagged steps, is left out of
    # the comparison (the stage counts nothing across them; its flags say so).
    flagged = {
        str(r[0]) for r in conn.execute(
            """SELECT device FROM api.energy_daily WHERE site = %s AND kind = 'cabinet_meter'
               GROUP BY device HAVING sum(flagged) > 0""",
            (st.site,),
        )
    }  # fmt: skip
    st.cabinets_flagged = len(flagged)
    rows = conn.execute(
        """SELECT night::text, sum(kwh), sum(luminaires_kwh), bool_and(measured = luminaires)
           FROM api.lighting_cabinets WHERE site = %s AND NOT cabinet = ANY(%s)
           GROUP BY night""",
        (st.site, sorted(flagged)),
    ).fetchall()
    if not rows:
        return
    nights = {r[0] for r in rows}
    true = sum(
        kwh for key, kwh in truth.cabinet_nights.items()
        if key.startswith(f"{st.site}/") and key.rsplit("/", 1)[1] in nights
        and key.split("/")[1] not in flagged
    )  # fmt: skip
    # The hours the stage could not count, at the full power of the cabinet's luminaires
    # (with a margin for the losses and its own loads).
    lost = conn.execute(
        f"""SELECT coalesce(sum({IN_RUN_MISSING_H} * f.kw), 0) FROM api.energy_daily e
            JOIN (SELECT properties ->> 'cabinet' AS cabinet, sum(nominal_power_w) * 1.1 / 1000
                         AS kw
                  FROM devices WHERE site = %(s)s AND kind = 'luminaire' GROUP BY 1) f
              ON f.cabinet = e.device
            {DAY_BOUNDS}
            WHERE e.site = %(s)s AND e.kind = 'cabinet_meter' AND NOT e.device = ANY(%(x)s)""",
        {"s": st.site, "x": sorted(flagged), "t0": _ts(truth.start), "t1": _ts(truth.end)},
    ).fetchone()
    edges = float(lost[0]) if lost is not None and lost[0] is not None else 0.0
    st.cabinets = Compared(sum(float(r[1] or 0.0) for r in rows), true, 0.01 * true + edges)
    if all(r[3] for r in rows):
        st.cabinets_luminaires_kwh = sum(float(r[2] or 0.0) for r in rows)


def _stored_true(
    conn: psycopg.Connection, truth: Truth, site: str, device: str, metric: str
) -> float | None:
    """What ``site``/``device`` really measured of ``metric`` (``energy`` [kWh], ``volume``
    [m³]) between its first and its last stored reading: the window the stage can count."""
    row = conn.execute(
        """SELECT extract(epoch FROM min(time)), extract(epoch FROM max(time)) FROM api.readings
           WHERE site = %s AND device = %s AND metric = %s""",
        (site, device, metric),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    found = truth.between(f"{site}/{device}", float(row[0]), float(row[1]))
    if found is None:
        return None
    return found[0] / 1000.0 if metric == "energy" else found[1]


def _room(conn: psycopg.Connection, st: SiteEnergy, truth: Truth) -> None:
    row = conn.execute(
        """SELECT sum(facility_kwh), sum(it_kwh), min(category) FROM api.pue_daily
           WHERE site = %s""",
        (st.site,),
    ).fetchone()
    true_facility = _stored_true(conn, truth, st.site, "facility-1", "energy")
    true_it = _stored_true(conn, truth, st.site, "it-1", "energy")
    if row is None or not row[1] or not true_it or true_facility is None:
        return
    pue, true_pue = float(row[0]) / float(row[1]), true_facility / true_it
    st.pue = Compared(pue, true_pue, 0.01 * true_pue)
    st.pue_category = str(row[2])
    months = conn.execute(
        "SELECT bool_or(interim) FROM api.pue_monthly WHERE site = %s", (st.site,)
    ).fetchone()
    st.pue_interim = bool(months is None or months[0] is None or months[0])


def _pumping(conn: psycopg.Connection, st: SiteEnergy, truth: Truth) -> None:
    row = conn.execute(
        "SELECT sum(kwh), sum(m3) FROM api.pumping_daily WHERE site = %s", (st.site,)
    ).fetchone()
    true_kwh = _stored_true(conn, truth, st.site, "pump-1", "energy")
    true_m3 = _stored_true(conn, truth, st.site, "pump-1", "volume")
    if row is None or not row[1] or true_kwh is None or not true_m3:
        return
    ratio, true_ratio = float(row[0]) / float(row[1]), true_kwh / true_m3
    st.pumping_kwh_per_m3 = Compared(ratio, true_ratio, 0.01 * true_ratio)


def _service(conn: psycopg.Connection, findings: EnergyFindings, since: float) -> None:
    exists = conn.execute("SELECT to_regclass('api.service_energy_daily')").fetchone()
    if exists is None or exists[0] is None:
        return
    row = conn.execute(
        """SELECT sum(kwh), sum(readings_stored), string_agg(DISTINCT method, ', ')
           FROM api.service_energy_daily
           WHERE day >= (to_timestamp(%s) AT TIME ZONE 'UTC')::date""",
        (since,),
    ).fetchone()
    if row is None or not row[1]:
        return
    findings.service_kwh_per_1000 = float(row[0] or 0.0) / float(row[1]) * 1000.0
    findings.service_method = row[2]


def find_energy(conn: psycopg.Connection, truth: Truth, town: Town) -> EnergyFindings:
    """The section's figures from the energy stage's views (computed over the run first by the
    demo), each against the truth; a figure off by more than its tolerance is a problem."""
    findings = EnergyFindings()
    for site_town in town.sites:
        st = SiteEnergy(site_town.spec.site)
        _lighting(conn, st, truth)
        _cabinets(conn, st, truth)
        _room(conn, st, truth)
        _pumping(conn, st, truth)
        findings.sites.append(st)
        for name, figure in (
            ("lighting kWh", st.lighting), ("no-dimming baseline kWh", st.baseline),
            ("kWh saved by dimming", st.saved), ("cabinet meters kWh", st.cabinets),
            ("pumping kWh/m3", st.pumping_kwh_per_m3), ("PUE", st.pue),
        ):  # fmt: skip
            if figure is not None and not figure.ok:
                findings.problems.append(
                    f"MISMATCH: {st.site} {name}: {figure.measured:,.3f} from api views, "
                    f"{figure.true:,.3f} true (tolerance ±{figure.tolerance:,.3f})"
                )
    _service(conn, findings, truth.start)
    return findings


def _fr(value: float, digits: int = 1) -> str:
    """A number written the French way: 1 234,5."""
    return f"{value:,.{digits}f}".replace(",", " ").replace(".", ",")


def _pair(figure: Compared, unit: str, digits: int = 1) -> str:
    return (
        f"{_fr(figure.measured, digits)} {unit} (vrai / true {_fr(figure.true, digits)}, "
        f"±{_fr(figure.tolerance, digits)})"
    )


def render_energy(findings: EnergyFindings) -> list[str]:
    """The section's lines, French first, English beside."""
    lines = ["", "-- Énergie / Energy (api.lighting_nights, api.lighting_cabinets, "
             "api.pumping_daily, api.pue_daily) --"]  # fmt: skip
    w = lines.append
    for st in findings.sites:
        if st.lighting is not None and st.baseline is not None and st.saved is not None:
            per = st.lighting.measured / st.luminaire_nights if st.luminaire_nights else 0.0
            fraction = st.saved.measured / st.baseline.measured if st.baseline.measured else 0.0
            w(
                f"éclairage public / public lighting, {st.site}: {_pair(st.lighting, 'kWh', 2)} "
                f"sur / over {st.nights} nuit(s) / night(s) ({st.nights_complete} complète(s) / "
                f"complete; the run's ends are partial), {_fr(per, 3)} kWh par luminaire-nuit "
                "/ per luminaire-night"
            )
            w(
                f"    économies par gradation / saved by dimming: {_pair(st.saved, 'kWh', 2)}, "
                f"{_fr(100 * fraction)} % de la référence sans gradation / of the no-dimming "
                f"baseline {_pair(st.baseline, 'kWh', 2)}"
            )
        if st.cabinets is not None:
            beside = (
                ""
                if st.cabinets_luminaires_kwh is None
                else f"; luminaires {_fr(st.cabinets_luminaires_kwh, 2)} kWh, écart (pertes en "
                f"ligne, charges inconnues) / difference (line losses, unknown loads) "
                f"{_fr(st.cabinets.measured - st.cabinets_luminaires_kwh, 2)} kWh"
            )
            left = (
                f"; {st.cabinets_flagged} au compteur signalé (remplacé, …) non comparée(s) / "
                "with a flagged meter (replaced, ...) not compared"
                if st.cabinets_flagged
                else ""
            )
            w(f"    armoires / cabinets: {_pair(st.cabinets, 'kWh', 2)}{beside}{left}")
        if st.pumping_kwh_per_m3 is not None:
            w(f"pompage / pumping, {st.site}: {_pair(st.pumping_kwh_per_m3, 'kWh/m³', 3)}")
        if st.pue is not None:
            label = "provisoire / interim" if st.pue_interim else "annuel / annual"
            w(
                f"salle serveurs / server room, {st.site}: PUE {_pair(st.pue, '', 3)} "
                f"({st.pue_category}, {label}: moins de 12 mois / fewer than 12 months)"
            )
    if findings.service_kwh_per_1000 is not None:
        w(
            f"consommation du service / the service's own: "
            f"{_fr(findings.service_kwh_per_1000, 6)} kWh par / per 1 000 relevés / readings "
            f"({findings.service_method})"
        )
    else:
        w("consommation du service / the service's own: pas encore mesurée / not measured yet")
    return lines
