"""The water balance of each DMA over the dashboard's range, summed from the anomaly stage's
view ``api.water_balance_daily`` (migration 0020: per DMA and local day, volumes in m³ from the
hourly rollup by the rules of ``sobriety anomaly balance``).

Yield, ILC, ILP and ILI over several days are ratios of sums, never means of the daily ratios:
yield = 100 · (metered + output) / input [%]; ILC, ILP = metered, losses per day [m³/day] per km
of mains, the days being the summed lengths of the local days measured (23 or 25 h on the DST
days); the decree 2012-97 threshold = min(85, 65 + ILC/5) [%]; ILI = losses / (Lambert's UARL
[m³/day] × days), an upper bound (apparent losses not separated). A local day belongs to the
range when it meets it (:func:`dashboards.sqlparts.dates_in_range`).
"""

from __future__ import annotations

from dashboards.sqlparts import SITES, dates_in_range, dates_near_range

THRESHOLD = "least(85, 65 + ilc / 5)"
"""The decree 2012-97 threshold [%] from the column ``ilc`` [m³/km/day]."""

_PERIOD = f"""WITH balance AS (
    SELECT w.site, w.dma, sum(w.hours) / 24 AS days, count(*) AS days_measured,
           bool_and(w.complete) AS complete,
           sum(w.input_m3) AS inflow_m3, sum(w.output_m3) AS outflow_m3,
           sum(w.metered_m3) AS consumption_m3, sum(w.losses_m3) AS losses_m3,
           100 * sum(w.metered_m3 + w.output_m3) / nullif(sum(w.input_m3), 0) AS yield_percent,
           sum(w.metered_m3) / (sum(w.hours) / 24) / nullif(max(w.mains_km), 0) AS ilc,
           sum(w.losses_m3) / (sum(w.hours) / 24) / nullif(max(w.mains_km), 0) AS ilp,
           sum(w.losses_m3) / nullif(sum(w.uarl_m3_day * w.hours / 24), 0) AS ili
    FROM api.water_balance_daily w
    JOIN api.sites s ON s.site = w.site
    WHERE w.site {SITES}
      AND {dates_near_range("w.day")}
      AND {dates_in_range("w.day", "s.timezone")}
    GROUP BY w.site, w.dma
)"""


def period_sql(select: str, order: str) -> str:
    """The balance per DMA over the range with ``select`` over the CTE ``balance`` (columns
    site, dma, days [d], days_measured, complete, inflow_m3, outflow_m3, consumption_m3,
    losses_m3 [m³], yield_percent [%], ilc, ilp [m³/km/day], ili); the decree threshold is
    :data:`THRESHOLD`."""
    return f"{_PERIOD}\nSELECT {select.strip()}\nFROM balance\nORDER BY {order}"
