-- Public lighting per night (the local date of the evening; local noon to noon): each
-- luminaire's energy (its counter), the hours it was lit (its dim telemetry: level above 0) and
-- the no-dimming baseline (its input power at 100 % — nominal_power_w — × those hours); per
-- lighting group in the view, with kWh per luminaire and, where the luminaires carry a street
-- length (property street_km of the group), per km.
CREATE TABLE luminaire_nights (
    device_id     integer NOT NULL REFERENCES devices (id),
    night         date NOT NULL,
    kwh           double precision NOT NULL CHECK (kwh >= 0),
    lit_hours     double precision NOT NULL CHECK (lit_hours >= 0),
    baseline_kwh  double precision CHECK (baseline_kwh >= 0),  -- NULL: no nominal power
    complete      boolean NOT NULL,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, night)
);

CREATE VIEW api.lighting_nights AS
    WITH groups AS (
        SELECT d.site, d.lighting_group, n.night, count(*) AS luminaires,
               avg(n.lit_hours) AS lit_hours, sum(n.kwh) AS kwh,
               sum(n.baseline_kwh) AS baseline_kwh,
               bool_and(n.complete AND n.baseline_kwh IS NOT NULL) AS complete,
               max(CASE WHEN d.properties ->> 'street_km' ~ '^[0-9]+(\.[0-9]+)?$'
                        THEN (d.properties ->> 'street_km')::float8 END) AS street_km
        FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
        GROUP BY d.site, d.lighting_group, n.night)
    SELECT site, lighting_group, night, luminaires, lit_hours, kwh, baseline_kwh,
           baseline_kwh - kwh AS saved_kwh,
           CASE WHEN baseline_kwh > 0 THEN 1 - kwh / baseline_kwh END AS saved_fraction,
           kwh / luminaires AS kwh_per_luminaire,
           CASE WHEN street_km > 0 THEN kwh / street_km END AS kwh_per_km,
           complete
    FROM groups;
