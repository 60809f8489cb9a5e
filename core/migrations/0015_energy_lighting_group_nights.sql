-- Public lighting per lighting group and night, kept beside luminaire_nights so that a year of
-- api.lighting_nights reads one row per group and night instead of aggregating every
-- luminaire-night (bench/energy_bench.py: 3.1 s for a year of 10,000 luminaires before).
--
-- Statement triggers on luminaire_nights keep it: every (site, lighting group, night) a
-- statement touched is aggregated again from luminaire_nights, in the writer's transaction.
-- The group and street length are the luminaire's when its night was written: a luminaire
-- moved to another group counts in the new one from the nights computed after the move
-- (`sobriety energy recompute` rewrites older ones).
CREATE TABLE lighting_group_nights (
    site            text NOT NULL REFERENCES sites (site),
    lighting_group  text,              -- NULL: luminaires without a group
    night           date NOT NULL,     -- the local date of the evening
    luminaires      integer NOT NULL CHECK (luminaires > 0),
    lit_hours       double precision NOT NULL,  -- mean per luminaire [h]
    kwh             double precision NOT NULL,
    baseline_kwh    double precision,  -- NULL: a luminaire without a nominal power
    complete        boolean NOT NULL,
    street_km       double precision,  -- the group's street length (property street_km)
    computed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX lighting_group_nights_key
    ON lighting_group_nights (site, lighting_group, night) NULLS NOT DISTINCT;
CREATE INDEX lighting_group_nights_night ON lighting_group_nights (night);
CREATE INDEX devices_site_lighting_group ON devices (site, lighting_group)
    WHERE kind = 'luminaire';

-- The group nights of these luminaire nights (device_ids[i], nights[i]) aggregated again.
CREATE FUNCTION lighting_group_nights_update(device_ids integer[], nights date[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- One writer at a time, each aggregating what the others committed (a new snapshot per
    -- statement under READ COMMITTED): two passes over the same nights cannot leave a group
    -- night that misses the luminaires of the other.
    PERFORM pg_advisory_xact_lock(hashtext('lighting_group_nights'));
    INSERT INTO lighting_group_nights AS g (site, lighting_group, night, luminaires, lit_hours,
                                            kwh, baseline_kwh, complete, street_km)
    SELECT k.site, k.lighting_group, k.night, count(*), avg(n.lit_hours), sum(n.kwh),
           sum(n.baseline_kwh), bool_and(n.complete AND n.baseline_kwh IS NOT NULL),
           max(CASE WHEN d.properties ->> 'street_km' ~ '^[0-9]+(\.[0-9]+)?$'
                    THEN (d.properties ->> 'street_km')::float8 END)
    FROM (SELECT DISTINCT d.site, d.lighting_group, t.night
          FROM unnest(device_ids, nights) AS t (device_id, night)
          JOIN devices d ON d.id = t.device_id) AS k
    JOIN devices d ON d.site = k.site AND d.kind = 'luminaire'
                  AND d.lighting_group IS NOT DISTINCT FROM k.lighting_group
    JOIN luminaire_nights n ON n.device_id = d.id AND n.night = k.night
    GROUP BY k.site, k.lighting_group, k.night
    ON CONFLICT (site, lighting_group, night) DO UPDATE
        SET luminaires = excluded.luminaires, lit_hours = excluded.lit_hours,
            kwh = excluded.kwh, baseline_kwh = excluded.baseline_kwh,
            complete = excluded.complete, street_km = excluded.street_km,
            computed_at = now();
    -- Group nights left without a luminaire night.
    DELETE FROM lighting_group_nights g
    USING (SELECT DISTINCT d.site, d.lighting_group, t.night
           FROM unnest(device_ids, nights) AS t (device_id, night)
           JOIN devices d ON d.id = t.device_id) AS k
    WHERE g.site = k.site AND g.lighting_group IS NOT DISTINCT FROM k.lighting_group
      AND g.night = k.night
      AND NOT EXISTS (SELECT FROM devices d JOIN luminaire_nights n ON n.device_id = d.id
                      WHERE d.site = k.site AND d.kind = 'luminaire'
                        AND d.lighting_group IS NOT DISTINCT FROM k.lighting_group
                        AND n.night = k.night);
END
$$;

CREATE FUNCTION lighting_group_nights_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids integer[];
    nights date[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(device_id), array_agg(night) INTO ids, nights
        FROM (SELECT device_id, night FROM touched
              UNION SELECT device_id, night FROM touched_before) AS t;
    ELSE
        SELECT array_agg(device_id), array_agg(night) INTO ids, nights FROM touched;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM lighting_group_nights_update(ids, nights);
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

CREATE TRIGGER lighting_group_nights_insert AFTER INSERT ON luminaire_nights
    REFERENCING NEW TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_refresh();
CREATE TRIGGER lighting_group_nights_delete AFTER DELETE ON luminaire_nights
    REFERENCING OLD TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_refresh();
CREATE TRIGGER lighting_group_nights_update AFTER UPDATE ON luminaire_nights
    REFERENCING NEW TABLE AS touched OLD TABLE AS touched_before
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_refresh();
CREATE TRIGGER lighting_group_nights_truncate AFTER TRUNCATE ON luminaire_nights
    FOR EACH STATEMENT EXECUTE FUNCTION lighting_group_nights_clear();

-- The nights computed before this migration.
INSERT INTO lighting_group_nights (site, lighting_group, night, luminaires, lit_hours, kwh,
                                   baseline_kwh, complete, street_km)
SELECT d.site, d.lighting_group, n.night, count(*), avg(n.lit_hours), sum(n.kwh),
       sum(n.baseline_kwh), bool_and(n.complete AND n.baseline_kwh IS NOT NULL),
       max(CASE WHEN d.properties ->> 'street_km' ~ '^[0-9]+(\.[0-9]+)?$'
                THEN (d.properties ->> 'street_km')::float8 END)
FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
GROUP BY d.site, d.lighting_group, n.night;

CREATE INDEX luminaire_nights_night ON luminaire_nights (night);

CREATE OR REPLACE VIEW api.lighting_nights AS
    SELECT g.site, g.lighting_group, g.night, g.luminaires::bigint AS luminaires, g.lit_hours,
           g.kwh, g.baseline_kwh,
           g.baseline_kwh - g.kwh AS saved_kwh,
           CASE WHEN g.baseline_kwh > 0 THEN 1 - g.kwh / g.baseline_kwh END AS saved_fraction,
           g.kwh / g.luminaires AS kwh_per_luminaire,
           CASE WHEN g.street_km > 0 THEN g.kwh / g.street_km END AS kwh_per_km,
           g.complete,
           g.kwh * fc.value AS kg_co2e, g.kwh * ft.value AS eur,
           (g.baseline_kwh - g.kwh) * fc.value AS saved_kg_co2e,
           (g.baseline_kwh - g.kwh) * ft.value AS saved_eur,
           pc.factor_id AS co2e_factor_id, pt.factor_id AS tariff_id
    FROM lighting_group_nights g
    LEFT JOIN energy_day_factors pc ON pc.site = g.site AND pc.day = g.night AND pc.kind = 'co2e'
    LEFT JOIN energy_factors fc ON fc.id = pc.factor_id
    LEFT JOIN energy_day_factors pt
        ON pt.site = g.site AND pt.day = g.night AND pt.kind = 'tariff'
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id;
