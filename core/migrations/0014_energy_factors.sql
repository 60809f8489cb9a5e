-- CO2e and cost beside each kWh figure. energy_factors holds the versioned factors: a kind
-- (co2e, kgCO2e/kWh; tariff, EUR/kWh), the site they are for (NULL: every site), the local
-- date from which they hold, their value, unit and source. A factor's id is its version: a
-- correction is a new row, never an UPDATE. energy_day_factors pins, per site, local day and
-- kind, the factor a day's figures were first computed with (the site's own factor over an
-- all-sites one, then the latest valid_from on or before the day, then the latest entered):
-- the energy stage inserts the pin when it computes a day and leaves it alone afterwards, so
-- a factor added later never rewrites the past; 'sobriety energy factors apply' repins a
-- period when asked. The views multiply kWh by the pinned factor: no pin, no figure (NULL).
CREATE TABLE energy_factors (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('co2e', 'tariff')),
    site        text REFERENCES sites (site),       -- NULL: every site
    valid_from  date NOT NULL,                      -- local date of the site
    value       double precision NOT NULL
                CHECK (value >= 0 AND value < 'Infinity'),  -- NaN is above Infinity here
    unit        text NOT NULL,
    source      text NOT NULL CHECK (btrim(source) <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'co2e' AND unit = 'kgCO2e/kWh') OR (kind = 'tariff' AND unit = 'EUR/kWh'))
);
CREATE INDEX energy_factors_lookup_idx ON energy_factors (kind, site, valid_from);

CREATE TABLE energy_day_factors (
    site       text NOT NULL REFERENCES sites (site),
    day        date NOT NULL,   -- local date of the site (a lighting night: its evening's date)
    kind       text NOT NULL CHECK (kind IN ('co2e', 'tariff')),
    factor_id  integer NOT NULL REFERENCES energy_factors (id),
    pinned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, day, kind)
);

-- The French grid's average consumption mix, ADEME Base Empreinte (ex Base Carbone), element
-- "Electricité - 2022 - mix moyen - consommation", France continentale: 0.0520 kgCO2e/kWh
-- (life cycle: upstream, combustion, transport and distribution losses). Value and name as
-- ADEME's own Nos Gestes Climat model carries them (incubateur-ademe/nosgestesclimat,
-- data/commun.publicodes, "Electricité/2022 - mix moyen/consommation", updated from the 2021
-- value 0.0569 in pull request #1993 of 2023-07-20). The usage factors ("mix de consommation
-- - par usage", éclairage among them) are not seeded: the Base Carbone documentation
-- ("Mix de consommation - par usage") says a GHG report must use the average mix, the usage
-- factors being indicative only, and that none is computed after 2023. A newer year's mix, or
-- Corsica's and the overseas territories' own factors, are added with
-- 'sobriety energy factors add'. No tariff is seeded: a regulated tariff (TRVE) is a grid of
-- options, powers and a subscription, with taxes on top; the commune's own price per kWh
-- belongs to it ('sobriety energy factors add --kind tariff').
INSERT INTO energy_factors (kind, site, valid_from, value, unit, source)
VALUES ('co2e', NULL, DATE '2022-01-01', 0.0520, 'kgCO2e/kWh',
        'ADEME Base Empreinte, Electricité - 2022 - mix moyen - consommation (France '
        'continentale), 0.0520 kgCO2e/kWh');

-- The days already computed are pinned to the factor now in force: they had no CO2e figure,
-- so nothing is rewritten.
INSERT INTO energy_day_factors (site, day, kind, factor_id)
SELECT s.site, s.day, 'co2e', f.id
FROM (SELECT DISTINCT d.site, e.day FROM energy_daily e JOIN devices d ON d.id = e.device_id
      UNION
      SELECT d.site, n.night FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
      UNION
      SELECT d.site, v.day FROM pumping_volume_daily v JOIN devices d ON d.id = v.device_id) s
CROSS JOIN LATERAL (
    SELECT id FROM energy_factors
    WHERE kind = 'co2e' AND (site = s.site OR site IS NULL) AND valid_from <= s.day
    ORDER BY (site IS NULL), valid_from DESC, id DESC LIMIT 1) f
ON CONFLICT DO NOTHING;

CREATE VIEW api.energy_factors AS
    SELECT id, kind, site, valid_from, value, unit, source, created_at
    FROM energy_factors;

-- The three views as migrations 0008, 0010 and 0011 define them, with columns appended.
CREATE OR REPLACE VIEW api.energy_daily AS
    SELECT d.site, d.device, d.kind, e.day, e.kwh, e.source, e.complete, e.missing_hours,
           e.resets, e.rollovers, e.replacements, e.flagged, e.glitches,
           e.kwh * fc.value AS kg_co2e, e.kwh * ft.value AS eur,
           pc.factor_id AS co2e_factor_id, pt.factor_id AS tariff_id
    FROM energy_daily e
    JOIN devices d ON d.id = e.device_id
    LEFT JOIN energy_day_factors pc ON pc.site = d.site AND pc.day = e.day AND pc.kind = 'co2e'
    LEFT JOIN energy_factors fc ON fc.id = pc.factor_id
    LEFT JOIN energy_day_factors pt ON pt.site = d.site AND pt.day = e.day AND pt.kind = 'tariff'
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id;

CREATE OR REPLACE VIEW api.pumping_daily AS
    SELECT d.site, d.device, v.day, e.kwh, v.m3,
           CASE WHEN v.m3 > 0 THEN e.kwh / v.m3 END AS kwh_per_m3,
           (v.complete AND coalesce(e.complete, false)) AS complete,
           e.kwh * fc.value AS kg_co2e, e.kwh * ft.value AS eur,
           CASE WHEN v.m3 > 0 THEN e.kwh * ft.value / v.m3 END AS eur_per_m3,
           pc.factor_id AS co2e_factor_id, pt.factor_id AS tariff_id
    FROM pumping_volume_daily v
    JOIN devices d ON d.id = v.device_id
    LEFT JOIN energy_daily e ON e.device_id = v.device_id AND e.day = v.day
    LEFT JOIN energy_day_factors pc ON pc.site = d.site AND pc.day = v.day AND pc.kind = 'co2e'
    LEFT JOIN energy_factors fc ON fc.id = pc.factor_id
    LEFT JOIN energy_day_factors pt ON pt.site = d.site AND pt.day = v.day AND pt.kind = 'tariff'
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id;

CREATE OR REPLACE VIEW api.lighting_nights AS
    WITH groups AS (
        SELECT d.site, d.lighting_group, n.night, count(*) AS luminaires,
               avg(n.lit_hours) AS lit_hours, sum(n.kwh) AS kwh,
               sum(n.baseline_kwh) AS baseline_kwh,
               bool_and(n.complete AND n.baseline_kwh IS NOT NULL) AS complete,
               max(CASE WHEN d.properties ->> 'street_km' ~ '^[0-9]+(\.[0-9]+)?$'
                        THEN (d.properties ->> 'street_km')::float8 END) AS street_km
        FROM luminaire_nights n JOIN devices d ON d.id = n.device_id
        GROUP BY d.site, d.lighting_group, n.night)
    SELECT g.site, g.lighting_group, g.night, g.luminaires, g.lit_hours, g.kwh, g.baseline_kwh,
           g.baseline_kwh - g.kwh AS saved_kwh,
           CASE WHEN g.baseline_kwh > 0 THEN 1 - g.kwh / g.baseline_kwh END AS saved_fraction,
           g.kwh / g.luminaires AS kwh_per_luminaire,
           CASE WHEN g.street_km > 0 THEN g.kwh / g.street_km END AS kwh_per_km,
           g.complete,
           g.kwh * fc.value AS kg_co2e, g.kwh * ft.value AS eur,
           (g.baseline_kwh - g.kwh) * fc.value AS saved_kg_co2e,
           (g.baseline_kwh - g.kwh) * ft.value AS saved_eur,
           pc.factor_id AS co2e_factor_id, pt.factor_id AS tariff_id
    FROM groups g
    LEFT JOIN energy_day_factors pc ON pc.site = g.site AND pc.day = g.night AND pc.kind = 'co2e'
    LEFT JOIN energy_factors fc ON fc.id = pc.factor_id
    LEFT JOIN energy_day_factors pt
        ON pt.site = g.site AND pt.day = g.night AND pt.kind = 'tariff'
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id;
