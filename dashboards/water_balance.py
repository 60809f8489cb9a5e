"""The water balance of each DMA in SQL, as ``sobriety anomaly balance`` computes it
(anomaly/balance.py, anomaly/store.py): volumes in, out and metered from the hourly rollup,
losses, yield (*rendement*), the decree 2012-97 threshold (85 %, or 65 + ILC/5 when lower),
ILC and ILP per km of mains, Lambert's UARL = (18·Lm + 0.8·Nc + 25·Lp)·P L/day and
ILI = CARL/UARL (CARL = all losses, an upper bound).

No view holds the balance (the anomaly stage computes it per period on demand), so the panels
derive it from api.readings_hourly, api.devices, api.dmas and api.sites: each meter's volume
per hour is the difference of its last index from the previous hour's (the first hour of the
range: from its first reading), a negative difference (reset, meter change) counts as nothing;
a customer meter without an index counts its mean hourly flow × 1 h.
"""

from __future__ import annotations

from dashboards.sqlparts import SITES

_HOURS = f"""WITH hours AS (
    SELECT r.site, d.dma, d.kind, d.role, r.time, s.timezone,
           (r.time AT TIME ZONE s.timezone)::date AS day,
           CASE WHEN r.metric = 'volume'
                THEN r.last - coalesce(lag(r.last) OVER (PARTITION BY r.site, r.device, r.metric
                                                         ORDER BY r.time), r.first)
                ELSE r.sum / r.count END AS m3,
           r.metric = 'volume'
               OR NOT bool_or(r.metric = 'volume') OVER (PARTITION BY r.site, r.device)
               AS counted
    FROM api.readings_hourly r
    JOIN api.devices d ON d.site = r.site AND d.device = r.device
    JOIN api.sites s ON s.site = r.site
    WHERE r.site {SITES} AND $__timeFilter(r.time)
      AND r.metric IN ('volume', 'flow') AND d.dma IS NOT NULL
      AND (d.kind = 'water_meter'
           OR (d.kind = 'flow_meter' AND r.metric = 'volume' AND d.role IN ('inlet', 'outlet')))
),
volumes AS (
    SELECT site, dma, timezone, {{key}} AS period,
           count(DISTINCT time) FILTER (WHERE kind = 'flow_meter' AND role = 'inlet') / 24.0
               AS days,
           coalesce(sum(m3) FILTER (WHERE kind = 'flow_meter' AND role = 'inlet'
                                    AND counted AND m3 >= 0), 0) AS inflow_m3,
           coalesce(sum(m3) FILTER (WHERE kind = 'flow_meter' AND role = 'outlet'
                                    AND counted AND m3 >= 0), 0) AS outflow_m3,
           coalesce(sum(m3) FILTER (WHERE kind = 'water_meter' AND counted AND m3 >= 0), 0)
               AS consumption_m3
    FROM hours
    GROUP BY site, dma, timezone, period
),
balance AS (
    SELECT v.*, m.mains_km,
           v.inflow_m3 - v.outflow_m3 - v.consumption_m3 AS losses_m3,
           100 * (v.consumption_m3 + v.outflow_m3) / nullif(v.inflow_m3, 0) AS yield_percent,
           v.consumption_m3 / nullif(v.days, 0) / nullif(m.mains_km, 0) AS ilc,
           (v.inflow_m3 - v.outflow_m3 - v.consumption_m3) / nullif(v.days, 0)
               / nullif(m.mains_km, 0) AS ilp,
           (18 * m.mains_km + 0.8 * m.connections + 25 * m.private_km) * m.avg_pressure_m / 1000
               AS uarl_m3_day
    FROM volumes v
    JOIN api.dmas m ON m.site = v.site AND m.dma = v.dma
)"""


def balance_sql(key: str, select: str, order: str) -> str:
    """The balance per DMA and period ``key`` (``0`` for the whole range, ``day`` per local
    day) with ``select`` over the CTE ``balance`` (columns site, dma, timezone, period, days,
    inflow_m3, outflow_m3, consumption_m3, losses_m3, yield_percent, ilc, ilp, uarl_m3_day,
    mains_km);
    the decree threshold is ``least(85, 65 + ilc / 5)``."""
    return f"{_HOURS.replace('{key}', key)}\nSELECT {select}\nFROM balance\nORDER BY {order}"
