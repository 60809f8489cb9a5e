-- Public lighting per lighting group and night, kept beside luminaire_nights so that a year of
-- api.lighting_nights reads one row per group and night instead of aggregating every
-- luminaire-night (bench/energy_bench.py: 3.1 s for a year of 10,000 luminaires before).
--
-- Kept by statement triggers, in the writer's transaction, by differences: the rows a statement
-- wrote to luminaire_nights are added to their group nights (sums and counts), the rows it
-- removed or replaced subtracted — no group night is aggregated again, so the cost follows the
-- rows written, and concurrent writers only add to the same rows (in key order: no deadlock).
-- A luminaire moved to another group or site (devices updated) takes its nights with it, as the
-- group's street length follows its luminaires' street_km property.
CREATE TABLE lighting_group_nights (
    site            text NOT NULL REFERENCES sites (site),
    lighting_group  text,              -- NULL: luminaires without a group
    night           date NOT NULL,     -- the local date of the evening
    luminaires      integer NOT NULL,  -- luminaire nights
    lit_hours_sum   double precision NOT NULL,  -- [h], summed over the luminaires
    kwh             double precision NOT NULL,
    baseline_kwh    double precision NOT NULL,  -- summed over the luminaires with a baseline
    baselines       integer NOT NULL,  -- luminaires with a baseline (a nominal power)
    incomplete      integer NOT NULL,  -- luminaire nights not complete or without a baseline
    street_km       double precision,  -- the group's street length (property street_km)
    computed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX lighting_group_nights_key
    ON lighting_group_nights (site, lighting_group, night) NULLS NOT DISTINCT;
CREATE INDEX lighting_group_nights_night ON lighting_group_nights (night);
CREATE INDEX devices_site_lighting_group ON devices (site, lighting_group)
    WHERE kind = 'luminaire';

-- A luminaire's street length [km], or NULL (property street_km, a plain decimal).
CREATE FUNCTION luminaire_street_km(properties jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN properties ->> 'street_km' ~ '^[0-9]+(\.[0-9]+)?$'
                THEN (properties ->> 'street_km')::float8 END
$$;

-- The statement that adds the luminaire nights of ``source`` — a query giving site,
-- lighting_group, night, sign (+1 written, -1 removed), lit_hours, kwh, baseline_kwh, complete,
-- street_km — to their group nights. Run by EXECUTE inside the triggers, where their transition
-- tables are visible (a function they call would not see them); streamed, so a statement of
-- millions of rows (a restore, a bulk insert) costs no more memory than its aggregate.
CREATE FUNCTION lighting_group_nights_add_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
    INSERT INTO lighting_group_nights AS g (site, lighting_group, night, luminaires,
                                            lit_hours_sum, kwh, baseline_kwh, baselines,
                                            incomplete, street_km)
    SELECT r.site, r.lighting_group, r.night, sum(r.sign), sum(r.sign * r.lit_hours),
           sum(r.sign * r.kwh), coalesce(sum(r.sign * r.baseline_kwh), 0),
           sum(r.sign * (r.baseline_kwh IS NOT NULL)::int),
           sum(r.sign * (NOT (r.complete AND r.baseline_kwh IS NOT NULL))::int),
           max(r.street_km)
    FROM (%s) AS r
    GROUP BY r.site, r.lighting_group, r.night
    ORDER BY r.site, r.lighting_group, r.night
    ON CONFLICT (site, lighting_group, night) DO UPDATE
        SET luminaires = g.luminaires + excluded.luminaires,
            lit_hours_sum = g.lit_hours_sum + excluded.lit_hours_sum,
            kwh = g.kwh + excluded.kwh,
            baseline_kwh = g.baseline_kwh + excluded.baseline_kwh,
            baselines = g.baselines + excluded.baselines,
            incomplete = g.incomplete + excluded.incomplete,
            street_km = coalesce(excluded.street_km, g.street_km),
            computed_at = now()$q$, source)
$$;

CREATE INDEX lighting_group_nights_empty ON lighting_group_nights (site)
    WHERE luminaires <= 0;  -- group nights left without a luminaire night, deleted at once

CREATE FUNCTION lighting_group_nights_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    written CONSTANT text := 'SELECT d.site, d.lighting_group, t.night, 1 AS sign, t.lit_hours,
        t.kwh, t.baseline_kwh, t.complete, luminaire_street_km(d.properties) AS street_km
        FROM touched t JOIN devices d ON d.id = t.device_id';
    removed CONSTANT text := 'SELECT d.site, d.lighting_group, t.night, -1 AS sign,
        t.lit_hours, t.kwh, t.baseline_kwh, t.complete, NULL::float8 AS street_km
        FROM %s t JOIN devices d ON d.id = t.device_id';
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE lighting_group_nights_add_sql(written);
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE lighting_group_nights_add_sql(format(removed, 'touched'));
    ELSE
        EXECUTE lighting_group_nights_add_sql(
            written || ' UNION ALL ' || format(removed, 'touched_before'));
    END IF;
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM lighting_group_nights WHERE luminaires <= 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION lighting_group_nights_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM lighting_group_nights;
    RETURN NULL;
END
$$;

-- Luminaires moved to another group or site take their nights along; a changed street length
-- is their group's.
CREATE FUNCTION lighting_group_nights_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE lighting_group_nights_add_sql('SELECT s.site, s.lighting_group, n.night, s.sign,
        n.lit_hours, n.kwh, n.baseline_kwh, n.complete, s.street_km
        FROM touched_before o JOIN touched d ON d.id = o.id
        CROSS JOIN LATERAL (VALUES (-1, o.site, o.lighting_group, NULL::float8),
                                   (1, d.site, d.lighting_group,
                                    luminaire_street_km(d.properties)))
            AS s (sign, site, lighting_group, street_km)
        JOIN luminaire_nights n ON n.device_id = d.id
        WHERE (o.site, o.lighting_group) IS DISTINCT FROM (d.site, d.lighting_group)');
    DELETE FROM lighting_group_nights WHERE luminaires <= 0;
    UPDATE lighting_group_nights g SET street_km = k.street_km
    FROM (SELECT l.site, l.lighting_group, max(luminaire_street_km(l.properties)) AS street_km
          FROM devices l
          WHERE l.kind = 'luminaire' AND EXISTS (
              SELECT FROM touched_before o JOIN touched d ON d.id = o.id
              WHERE d.kind = 'luminaire' AND d.site = l.site
                AND d.lighting_group IS NOT DISTINCT FROM l.lighting_group
                AND luminaire_street_km(o.properties)
                    IS DISTINCT FROM luminaire_street_km(d.properties))
          GROUP BY l.site, l.lighting_group) AS k
    WHERE g.site = k.site AND g.lighting_group IS NOT DISTINCT FROM k.lighting_group
      AND g.street_km IS DISTINCT FROM k.street_km;
    RETURN NULL;
END
$$;

CREATE TRIGGER lighting_group_nights_insert AFTER INSERT ON luminaire_nights
    REFERENCING NEW TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_follow();
CREATE TRIGGER lighting_group_nights_delete AFTER DELETE ON luminaire_nights
    REFERENCING OLD TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_follow();
CREATE TRIGGER lighting_group_nights_update AFTER UPDATE ON luminaire_nights
    REFERENCING NEW TABLE AS touched OLD TABLE AS touched_before
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_follow();
CREATE TRIGGER lighting_group_nights_truncate AFTER TRUNCATE ON luminaire_nights
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_clear();
CREATE TRIGGER lighting_group_nights_devices AFTER UPDATE ON devices
    REFERENCING NEW TABLE AS touched OLD TABLE AS touched_before
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_devices();

-- The nights computed before this migration.
INSERT INTO lighting_group_nights (site, lighting_group, night, luminaires, lit_hours_sum, kwh,
                                   baseline_kwh, baselines, incomplete, street_km)
SELECT d.site, d.lighting_group, n.night, count(*), sum(n.lit_hours), sum(n.kwh),
       coalesce(sum(n.baseline_kwh), 0), count(n.baseline_kwh),
       count(*) FILTER (WHERE NOT (n.complete AND n.baseline_kwh IS NOT NULL)),
       max(luminaire_street_km(d.properties))
FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
GROUP BY d.site, d.lighting_group, n.night;

CREATE INDEX luminaire_nights_night ON luminaire_nights (night);

CREATE OR REPLACE VIEW api.lighting_nights AS
    WITH groups AS (
        SELECT site, lighting_group, night, luminaires::bigint AS luminaires,
               lit_hours_sum / luminaires AS lit_hours, kwh,
               CASE WHEN baselines > 0 THEN baseline_kwh END AS baseline_kwh,
               incomplete = 0 AS complete, street_km
        FROM lighting_group_nights)
    SELECT g.site, g.lighting_group, g.night, g.luminaires, g.lit_hours, g.kwh, g.baseline_kwh,
           g.baseline_kwh - g.kwh AS saved_kwh,
           CASE WHEN g.baseline_kwh > 0 THEN 1 - g.kwh / g.baseline_kwh END AS saved_fraction,
           g.kwh / g.luminaires AS kwh_per_luminaire,
           CASE WHEN g.street_km > 0 THEN g.kwh / g.street_km END AS kwh_per_km,
           g.complete,
           g.kwh * fc.value AS kg_co2e, g.kwh * ft.value AS eur,
           (g.baseline_kwh - g.kwh) * fc.value AS saved_kg_co2e,
           (g.baseline_kwh - g.kwh) * ft.value AS saved_eur,
           pc.factor_id AS co2e_factor_id, pt.factor_id AS tariff_id,
           g.street_km
    FROM groups g
    LEFT JOIN energy_day_factors pc ON pc.site = g.site AND pc.day = g.night AND pc.kind = 'co2e'
    LEFT JOIN energy_factors fc ON fc.id = pc.factor_id
    LEFT JOIN energy_day_factors pt
        ON pt.site = g.site AND pt.day = g.night AND pt.kind = 'tariff'
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id;
