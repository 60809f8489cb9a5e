-- The water balance of each DMA per local day (api.water_balance_daily), owned by the anomaly
-- stage: the rules of `sobriety anomaly balance` (anomaly/balance.py, anomaly/store.py), so that
-- dashboards and other readers sum the same figures instead of deriving them.
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
-- Kept, not derived at each read: water_balance_days holds the additive figures of a (site,
-- DMA, local day); the anomaly stage (anomaly/balance_store.py) recomputes the days of each
-- scan's period, and of late data, reading the rollup of those days only:
-- water_balance_compute(site, lo, hi) applies the rules above to the hours [lo, hi), which the
-- caller makes whole local days of the site (a meter's first hour in the range looks up the
-- index before it by the rollup's key). api.water_balance_daily reads the table and adds the
-- ratios from the DMA's current inventory. (A view deriving the days from every hour of the
-- rollup at each read took 3.8 s per benchmark panel at 50 communes with two weeks of data.)

CREATE TABLE water_balance_days (
    site                       text NOT NULL,
    dma                        text NOT NULL,
    day                        date NOT NULL,
    covered_hours              integer NOT NULL,
    input_m3                   double precision NOT NULL,
    output_m3                  double precision NOT NULL,
    metered_m3                 double precision NOT NULL,
    index_backwards            integer NOT NULL,
    inlets                     integer NOT NULL,
    inlets_reporting           integer NOT NULL,
    outlets                    integer NOT NULL,
    outlets_reporting          integer NOT NULL,
    customer_meters            integer NOT NULL,
    customer_meters_reporting  integer NOT NULL,
    computed_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, dma, day),
    FOREIGN KEY (site, dma) REFERENCES dmas (site, dma)
);

-- The rules above over the hours [p_lo, p_hi) of one site.
CREATE FUNCTION water_balance_compute(p_site text, p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (
    site text, dma text, day date, covered_hours integer, input_m3 double precision,
    output_m3 double precision, metered_m3 double precision, index_backwards integer,
    inlets integer, inlets_reporting integer, outlets integer, outlets_reporting integer,
    customer_meters integer, customer_meters_reporting integer
)
LANGUAGE sql STABLE AS $$
    WITH meters AS (
        SELECT d.id, d.site, d.dma, s.timezone, r.role,
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
        WHERE d.site = p_site AND d.dma IS NOT NULL
          AND (d.kind = 'water_meter' OR (d.kind = 'flow_meter' AND d.role IN ('inlet', 'outlet')))
        WINDOW dma AS (PARTITION BY d.site, d.dma)
    ), hours AS (
        SELECT m.site, m.dma, m.role, m.id, m.metric_id, m.inlets, m.outlets,
               m.customer_meters, h.hour, (h.hour AT TIME ZONE m.timezone)::date AS day,
               h.first, h.last, h.sum, h.count
        FROM meters m
        JOIN readings_hourly h ON h.device_id = m.id AND h.metric_id = m.metric_id
        WHERE h.hour >= p_lo AND h.hour < p_hi
    ), steps AS (
        SELECT hours.site, hours.dma, hours.role, hours.id, hours.day, hours.hour,
               hours.inlets, hours.outlets, hours.customer_meters,
               CASE WHEN hours.metric_id = 1 THEN hours.sum / hours.count
                    ELSE hours.last - coalesce(
                        lag(hours.last) OVER meter,
                        (SELECT p.last FROM readings_hourly p
                         WHERE p.device_id = hours.id AND p.metric_id = 2
                           AND p.hour < hours.hour
                         ORDER BY p.hour DESC LIMIT 1),
                        hours.first) END AS m3,
               count(*) FILTER (WHERE hours.role <> 'customer')
                   OVER (PARTITION BY hours.site, hours.dma, hours.day, hours.hour)
                   AS flow_meters_in_hour
        FROM hours
        WINDOW meter AS (PARTITION BY hours.site, hours.dma, hours.day, hours.id
                         ORDER BY hours.hour)
    )
    SELECT s.site, s.dma, s.day,
           count(DISTINCT s.hour) FILTER (WHERE s.role <> 'customer'
                                          AND s.flow_meters_in_hour = s.inlets + s.outlets)::integer,
           coalesce(sum(s.m3) FILTER (WHERE s.role = 'inlet' AND s.m3 > 0), 0),
           coalesce(sum(s.m3) FILTER (WHERE s.role = 'outlet' AND s.m3 > 0), 0),
           coalesce(sum(s.m3) FILTER (WHERE s.role = 'customer' AND s.m3 > 0), 0),
           (count(*) FILTER (WHERE s.m3 < 0))::integer,
           max(s.inlets)::integer, (count(DISTINCT s.id) FILTER (WHERE s.role = 'inlet'))::integer,
           max(s.outlets)::integer,
           (count(DISTINCT s.id) FILTER (WHERE s.role = 'outlet'))::integer,
           max(s.customer_meters)::integer,
           (count(DISTINCT s.id) FILTER (WHERE s.role = 'customer'))::integer
    FROM steps s
    GROUP BY s.site, s.dma, s.day
$$;

CREATE VIEW api.water_balance_daily AS
    WITH balance AS (
        SELECT w.site, w.dma, w.day, w.covered_hours, w.input_m3, w.output_m3, w.metered_m3,
               w.input_m3 - w.output_m3 - w.metered_m3 AS losses_m3, w.index_backwards,
               w.inlets, w.inlets_reporting, w.outlets, w.outlets_reporting, w.customer_meters,
               w.customer_meters_reporting,
               extract(epoch FROM ((w.day + 1)::timestamp AT TIME ZONE s.timezone)
                                  - (w.day::timestamp AT TIME ZONE s.timezone))::float8 / 3600
                   AS hours,
               m.mains_km, m.connections, m.private_km, m.avg_pressure_m,
               (18 * m.mains_km + 0.8 * m.connections + 25 * m.private_km)
                   * m.avg_pressure_m / 1000 AS uarl_m3_day
        FROM water_balance_days w
        JOIN sites s ON s.site = w.site
        JOIN dmas m ON m.site = w.site AND m.dma = w.dma
        WHERE w.site IN (SELECT site FROM visible_sites)
    ), ratios AS (
        SELECT b.*,
               CASE WHEN b.input_m3 > 0 THEN 100 * (b.metered_m3 + b.output_m3) / b.input_m3 END
                   AS yield_percent,
               b.metered_m3 / (b.hours / 24) / nullif(b.mains_km, 0) AS ilc_m3_km_day,
               b.losses_m3 / (b.hours / 24) / nullif(b.mains_km, 0) AS ilp_m3_km_day,
               b.losses_m3 / (b.hours / 24) / nullif(b.uarl_m3_day, 0) AS ili
        FROM balance b
    )
    SELECT site, dma, day, hours, covered_hours, input_m3, output_m3, metered_m3, losses_m3,
           yield_percent, ilc_m3_km_day, ilp_m3_km_day,
           least(85, 65 + ilc_m3_km_day / 5) AS threshold_percent,
           yield_percent >= least(85, 65 + ilc_m3_km_day / 5) AS compliant,
           uarl_m3_day, ili, mains_km, connections, private_km, avg_pressure_m,
           inlets, inlets_reporting, outlets, outlets_reporting, customer_meters,
           customer_meters_reporting, index_backwards,
           inlets > 0 AND covered_hours = hours AND customer_meters_reporting = customer_meters
               AS complete
    FROM ratios;

-- The days already in the rollup of a database upgraded to this migration, once.
INSERT INTO water_balance_days (site, dma, day, covered_hours, input_m3, output_m3, metered_m3,
                                index_backwards, inlets, inlets_reporting, outlets,
                                outlets_reporting, customer_meters, customer_meters_reporting)
SELECT f.* FROM sites s
CROSS JOIN LATERAL water_balance_compute(s.site, '-infinity', 'infinity') f;
