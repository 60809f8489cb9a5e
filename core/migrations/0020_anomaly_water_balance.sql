-- The water balance of each DMA per local day (api.water_balance_daily), owned by the anomaly
-- stage: the rules of `sobriety anomaly balance` (anomaly/balance.py, anomaly/store.py) as a
-- view, so that dashboards and other readers sum the same figures instead of deriving them.
--
-- Read from the hourly rollup readings_hourly (never raw readings); volumes in m³, lengths in
-- km, pressures in metres of water. The meters of a DMA's balance: its flow meters of role
-- inlet (input) and outlet (output: water exported), by their index (metric volume); its
-- customer meters (kind water_meter), by their index, or — a meter that has never reported an
-- index — by their mean flow of each hour × 1 h.
--
-- An index meter's use in a UTC hour is the hour's last index minus the last index before the
-- hour (the meter's previous rollup hour, however old); the first hour a meter ever reported
-- counts from its first reading. Summed over consecutive hours that is the last index minus the
-- first: over a whole history, exactly `sobriety anomaly balance` (max - min of the period's
-- readings); over a period that starts after the first reading, the view also counts the use
-- between the last reading before the period and its first one (which the command leaves out),
-- so that consecutive days add up to their period. An index that goes backwards in an hour
-- (reset, meter change) counts as nothing for that hour and is counted in index_backwards.
--
-- Each hour belongs to the local day of its start in the site's time zone (whole-hour offsets,
-- as in France). Days are additive: over a period, sum the volumes and the hours, then take
-- the ratios of the sums (yield = (metered + output) / input; ILC, ILP per day of the summed
-- hours; ILI = losses per day / UARL) — the per-day ratios are given for a single day only.
-- A day is complete when every inlet and outlet meter of the DMA has an index in each of its
-- hours and every customer meter of the DMA reported in it; a day when nothing reported has no
-- row.
--
-- Cost: a filter on site or day is pushed below the hourly windows, so only the asked sites'
-- water meters are read, each by the rollup's primary key (device, metric), and only the asked
-- days are windowed and aggregated; the day is derived from each hour in the site's zone, so
-- a filter on day is applied to each of the meter's hourly rows, not through the index. The
-- first hour of a meter's day probes the key once for the index before it.

CREATE VIEW api.water_balance_daily AS
    WITH meters AS (
        SELECT d.id, d.site, d.dma, s.timezone, r.role,
               -- a customer meter that has ever reported an index counts by it, else by flow
               CASE WHEN d.kind = 'flow_meter'
                      OR EXISTS (SELECT 1 FROM readings_hourly x
                                 WHERE x.device_id = d.id AND x.metric_id = 2)
                    THEN 2 ELSE 1 END AS metric_id,
               count(*) FILTER (WHERE r.role = 'inlet') OVER dma AS inlets,
               count(*) FILTER (WHERE r.role = 'outlet') OVER dma AS outlets,
               count(*) FILTER (WHERE r.role = 'customer') OVER dma AS customer_meters
        FROM devices d
        JOIN sites s ON s.site = d.site
        CROSS JOIN LATERAL (
            SELECT CASE WHEN d.kind = 'water_meter' THEN 'customer' ELSE d.role END AS role) r
        WHERE d.dma IS NOT NULL
          AND (d.kind = 'water_meter' OR (d.kind = 'flow_meter' AND d.role IN ('inlet', 'outlet')))
          AND d.site IN (SELECT site FROM visible_sites)
        WINDOW dma AS (PARTITION BY d.site, d.dma)
    ), hours AS (
        SELECT m.site, m.dma, m.role, m.id, m.metric_id, m.timezone, m.inlets, m.outlets,
               m.customer_meters, h.hour, (h.hour AT TIME ZONE m.timezone)::date AS day,
               h.first, h.last, h.sum, h.count
        FROM meters m
        JOIN readings_hourly h ON h.device_id = m.id AND h.metric_id = m.metric_id
    ), steps AS (
        -- Partitioned by site and day: a filter on either is pushed below the windows; the
        -- first hour of a meter's day reads the previous index by the rollup's primary key.
        SELECT site, dma, role, id, day, hour, timezone, inlets, outlets, customer_meters,
               CASE WHEN metric_id = 1 THEN sum / count
                    ELSE last - coalesce(
                        lag(last) OVER meter,
                        (SELECT p.last FROM readings_hourly p
                         WHERE p.device_id = hours.id AND p.metric_id = 2 AND p.hour < hours.hour
                         ORDER BY p.hour DESC LIMIT 1),
                        first) END AS m3,
               count(*) FILTER (WHERE role <> 'customer') OVER (PARTITION BY site, dma, day, hour)
                   AS flow_meters_in_hour
        FROM hours
        WINDOW meter AS (PARTITION BY site, dma, day, id ORDER BY hour)
    ), days AS (
        SELECT site, dma, day, min(timezone) AS timezone,
               coalesce(sum(m3) FILTER (WHERE role = 'inlet' AND m3 > 0), 0) AS input_m3,
               coalesce(sum(m3) FILTER (WHERE role = 'outlet' AND m3 > 0), 0) AS output_m3,
               coalesce(sum(m3) FILTER (WHERE role = 'customer' AND m3 > 0), 0) AS metered_m3,
               count(*) FILTER (WHERE m3 < 0) AS index_backwards,
               max(inlets) AS inlets, max(outlets) AS outlets,
               max(customer_meters) AS customer_meters,
               count(DISTINCT id) FILTER (WHERE role = 'inlet') AS inlets_reporting,
               count(DISTINCT id) FILTER (WHERE role = 'outlet') AS outlets_reporting,
               count(DISTINCT id) FILTER (WHERE role = 'customer') AS customer_meters_reporting,
               count(DISTINCT hour) FILTER (WHERE role <> 'customer'
                                              AND flow_meters_in_hour = inlets + outlets)
                   AS covered_hours
        FROM steps
        GROUP BY site, dma, day
    ), balance AS (
        SELECT x.*, x.input_m3 - x.output_m3 - x.metered_m3 AS losses_m3,
               extract(epoch FROM ((x.day + 1)::timestamp AT TIME ZONE x.timezone)
                                  - (x.day::timestamp AT TIME ZONE x.timezone))::float8 / 3600
                   AS hours,
               m.mains_km, m.connections, m.private_km, m.avg_pressure_m,
               (18 * m.mains_km + 0.8 * m.connections + 25 * m.private_km)
                   * m.avg_pressure_m / 1000 AS uarl_m3_day
        FROM days x
        JOIN dmas m ON m.site = x.site AND m.dma = x.dma
    ), ratios AS (
        SELECT b.*,
               CASE WHEN b.input_m3 > 0 THEN 100 * (b.metered_m3 + b.output_m3) / b.input_m3 END
                   AS yield_percent,
               b.metered_m3 / (b.hours / 24) / nullif(b.mains_km, 0) AS ilc_m3_km_day,
               b.losses_m3 / (b.hours / 24) / nullif(b.mains_km, 0) AS ilp_m3_km_day,
               b.losses_m3 / (b.hours / 24) / nullif(b.uarl_m3_day, 0) AS ili
        FROM balance b
    )
    SELECT site, dma, day, hours, covered_hours::integer AS covered_hours,
           input_m3, output_m3, metered_m3, losses_m3, yield_percent,
           ilc_m3_km_day, ilp_m3_km_day, least(85, 65 + ilc_m3_km_day / 5) AS threshold_percent,
           yield_percent >= least(85, 65 + ilc_m3_km_day / 5) AS compliant,
           uarl_m3_day, ili, mains_km, connections, private_km, avg_pressure_m,
           inlets::integer AS inlets, inlets_reporting::integer AS inlets_reporting,
           outlets::integer AS outlets, outlets_reporting::integer AS outlets_reporting,
           customer_meters::integer AS customer_meters,
           customer_meters_reporting::integer AS customer_meters_reporting,
           index_backwards::integer AS index_backwards,
           inlets > 0 AND covered_hours = hours AND customer_meters_reporting = customer_meters
               AS complete
    FROM ratios;
