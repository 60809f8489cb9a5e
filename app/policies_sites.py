"""The site a ``policies`` command is about: its time zone and the coordinates of its
astronomical clock, with the errors a person can act on, and the policies in force there (no
astral here: the CLI starts fast)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from core.config import Config
from core.errors import UsageError
from core.site_config import PerSite
from policies.config import PoliciesConfig
from policies.site_policies import load_site_policies

__all__ = ["policies_in_force", "site_place"]


def policies_in_force(path: Path | None, config: Config) -> PerSite[PoliciesConfig]:
    """The policies of each site: those of the file ``path`` (``--policies``: its
    ``[sites.SITE]`` tables over its own keys), else of the configuration (``[policies]``
    and ``[sites.SITE.policies]``)."""
    return load_site_policies(path) if path is not None else config.per_site(PoliciesConfig)


def site_place(conn: psycopg.Connection, site: str) -> tuple[str, float, float]:
    """(time zone, lat, lon [°]) of ``site``; :class:`UsageError` for an unknown site (the
    known ones listed) or one without coordinates (how to register them)."""
    row = conn.execute("SELECT timezone, lat, lon FROM sites WHERE site = %s", (site,)).fetchone()
    if row is None:
        known = [str(r[0]) for r in conn.execute("SELECT site FROM sites ORDER BY 1")]
        raise UsageError(
            f"--site {site!r}: no such site; known sites: {', '.join(known) or 'none yet'}"
        )
    timezone, lat, lon = row
    missing = [name for name, value in (("lat", lat), ("lon", lon)) if value is None]
    if missing:
        raise UsageError(
            f"site {site!r} has no coordinates ({' and '.join(missing)} missing): the sun cannot "
            "be computed; register them with `sobriety inventory import` of a sites file "
            "(site,name,timezone,lat,lon)"
        )
    return str(timezone), float(lat), float(lon)
