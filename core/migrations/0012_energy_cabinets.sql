-- The lighting cabinets per night (the local date of the evening; local noon to noon): each
-- cabinet meter's energy beside the sum of the luminaires it feeds (devices.properties ->>
-- 'cabinet' of a luminaire names its cabinet_meter), the difference being the line losses and
-- the loads the inventory does not know; and the no-dimming baseline of the cabinet's
-- luminaires: for each, its input power at 100 % (nominal_power_w) x the hours it was lit —
-- from its own dim telemetry where it has some (luminaire_nights.lit_hours), else from the
-- lighting program in force (the one its published config carries: device_configs) under the
-- site's sun: where only the cabinet meter measures.
CREATE TABLE cabinet_nights (
    device_id          integer NOT NULL REFERENCES devices (id),
    night              date NOT NULL,
    kwh                double precision NOT NULL CHECK (kwh >= 0),
    complete           boolean NOT NULL,       -- the cabinet meter's energy is
    luminaires         integer NOT NULL DEFAULT 0 CHECK (luminaires >= 0),  -- it feeds
    measured           integer NOT NULL DEFAULT 0 CHECK (measured >= 0),  -- with their own night
    luminaires_kwh     double precision CHECK (luminaires_kwh >= 0),  -- theirs, NULL: none
    luminaires_complete boolean NOT NULL DEFAULT false,  -- all measured, every night complete
    baseline_kwh       double precision CHECK (baseline_kwh >= 0),  -- NULL: not one known
    baseline_telemetry integer NOT NULL DEFAULT 0,  -- luminaires whose lit hours are measured
    baseline_program   integer NOT NULL DEFAULT 0,  -- those whose lit hours are the program's
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, night)
);

-- difference_kwh: the cabinet's energy minus its luminaires' (losses and unknown loads), only
-- when every luminaire it feeds has its own energy that night. saved_kwh: the baseline minus
-- the cabinet's energy — a lower bound of what dimming saved, since the cabinet's energy also
-- holds its losses and own loads. baseline_source: 'telemetry', 'program', 'mixed', or NULL
-- when a luminaire's lit hours are known neither way (then baseline_complete is false).
CREATE VIEW api.lighting_cabinets AS
    SELECT d.site, d.device AS cabinet, c.night, c.kwh, c.complete, c.luminaires, c.measured,
           c.luminaires_kwh, c.luminaires_complete,
           CASE WHEN c.luminaires > 0 AND c.measured = c.luminaires
                THEN c.kwh - c.luminaires_kwh END AS difference_kwh,
           CASE WHEN c.luminaires > 0 AND c.measured = c.luminaires AND c.kwh > 0
                THEN (c.kwh - c.luminaires_kwh) / c.kwh END AS difference_fraction,
           c.baseline_kwh,
           CASE WHEN c.baseline_telemetry + c.baseline_program < c.luminaires
                  OR c.luminaires = 0 THEN NULL
                WHEN c.baseline_program = 0 THEN 'telemetry'
                WHEN c.baseline_telemetry = 0 THEN 'program'
                ELSE 'mixed' END AS baseline_source,
           c.luminaires > 0 AND c.baseline_telemetry + c.baseline_program = c.luminaires
               AS baseline_complete,
           c.baseline_kwh - c.kwh AS saved_kwh,
           CASE WHEN c.baseline_kwh > 0 THEN 1 - c.kwh / c.baseline_kwh END AS saved_fraction
    FROM cabinet_nights c JOIN devices d ON d.id = c.device_id;
