-- Tenancy: a commune's role reads its own commune's rows of every api view, nothing else, even
-- with hand-written SQL; an operator reads every site.
--
-- Who reads which site:
--   site_readers (role, site)  a role that reads that site (one row per site it may read);
--   site_operators (role)      a role that reads every site (`sobriety db roles` puts the
--                              PREFIX_services and PREFIX_grafana roles here).
-- The owner of the schema (whoever ran `db upgrade`), its members and superusers are operators
-- without a row. Roles are named, not referenced (a catalog row cannot be a foreign key): the
-- rows of a dropped role should be deleted with it (`sobriety db roles --commune` makes them).
--
-- How a view knows the caller: the api views keep their definer rights (they read the base
-- tables as their owner, so a commune role needs no grant on them) while current_user inside a
-- view is still the caller. The rule lives in one place, the view visible_sites (the sites
-- current_user may read); each api view with a site keeps its columns and adds
-- `site IN (SELECT site FROM visible_sites)`, which the planner turns into a semi-join on the
-- small sites table, so the base tables' indexes are used as before. Views referenced from a
-- view are read with the outer view's owner rights: the callers need no grant on
-- visible_sites, site_readers or site_operators.
--
-- Views without a site column: api.service_energy_daily (the platform's own energy, with the
-- readings stored over all sites) is for operators only; api.energy_factors keeps the general
-- factors (site NULL: national emission factors, default tariff — nothing private) and the
-- caller's sites' own; api.pue_monthly reads api.pue_daily and inherits its filter.

CREATE TABLE site_operators (
    role  name PRIMARY KEY
);

CREATE TABLE site_readers (
    role  name NOT NULL,
    site  text NOT NULL REFERENCES sites (site) ON DELETE CASCADE,
    PRIMARY KEY (role, site)
);

-- The roles that read the api views before this migration (Grafana, the services) keep
-- reading every site until `sobriety db roles` runs again.
INSERT INTO site_operators (role)
SELECT DISTINCT pg_get_userbyid(a.grantee)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE n.nspname = 'api' AND a.privilege_type = 'SELECT' AND a.grantee <> 0
  AND a.grantee <> c.relowner
ON CONFLICT DO NOTHING;

-- Whether current_user reads every site: a member of the tables' owner (or a superuser), or
-- listed in site_operators.
CREATE VIEW tenancy_caller AS
    SELECT pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = 'site_readers'::regclass),
                       'USAGE')
           OR EXISTS (SELECT 1 FROM site_operators o WHERE o.role = current_user) AS operator;

-- The sites current_user reads.
CREATE VIEW visible_sites AS
    SELECT s.site FROM sites s
    WHERE (SELECT operator FROM tenancy_caller)
       OR EXISTS (SELECT 1 FROM site_readers r WHERE r.role = current_user AND r.site = s.site);

-- Every api view with a site, as the latest migration defines it (0002, 0003, 0004, 0005,
-- 0006, 0007, 0009, 0012, 0014, 0015, 0018), with the filter added and its columns unchanged.
CREATE OR REPLACE VIEW api.sites AS
    SELECT site, name, timezone, lat, lon FROM sites
    WHERE site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.dmas AS
    SELECT site, dma, name, mains_km, connections, private_km, avg_pressure_m FROM dmas
    WHERE site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.devices AS
    SELECT d.site, d.device, d.kind, d.dma, d.role, d.lat, d.lon, d.lighting_group,
           d.lighting_class, d.nominal_power_w, d.properties,
           s.last_reading_at, s.last_received_at
    FROM devices d
    LEFT JOIN device_status s ON s.device_id = d.id
    WHERE d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.readings AS
    SELECT r.time, d.site, d.device, d.kind, m.name AS metric, r.value, m.unit
    FROM readings r
    JOIN devices d ON d.id = r.device_id
    JOIN metrics m ON m.id = r.metric_id
    WHERE d.site IN (SELECT site FROM visible_sites);

-- A rejected message of an unknown site (or of none) is for operators only.
CREATE OR REPLACE VIEW api.rejected_messages AS
    SELECT id, received_at, last_received_at, times_seen, topic, site, device, reason, detail,
           payload, payload_bytes, replayed_at
    FROM rejected_messages
    WHERE (SELECT operator FROM tenancy_caller) OR site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.alerts AS
    SELECT id, kind, site, subject_type, subject, state, opened_at, started_at, updated_at,
           closed_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by,
           estimated_flow_m3h, details
    FROM alerts
    WHERE site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.dma_nights AS
    SELECT site, dma, night, window_start, window_end, mnf_m3h, metered_m3h, net_m3h,
           baseline_m3h, meter_coverage, gap, meters_reported, pressure_drop_z, note
    FROM dma_nights
    WHERE site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.readings_hourly AS
    SELECT h.hour AS time, d.site, d.device, d.kind, m.name AS metric, h.count, h.sum, h.min,
           h.max, h.first, h.first_time, h.last, h.last_time, m.unit
    FROM readings_hourly h
    JOIN devices d ON d.id = h.device_id
    JOIN metrics m ON m.id = h.metric_id
    WHERE d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.reporting_daily AS
    SELECT d.site, d.kind, c.day,
           count(*) AS devices,
           sum(c.messages)::bigint AS messages,
           sum(c.readings)::bigint AS readings,
           sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s) AS baseline_messages,
           1 - sum(c.messages)
               / nullif(sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s), 0)
               AS saved_fraction,
           sum(c.messages) * b.uplink_energy_j / 3600 AS radio_energy_wh,
           sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s)
               * b.uplink_energy_j / 3600 AS baseline_radio_energy_wh
    FROM device_reporting_daily c
    JOIN devices d ON d.id = c.device_id
    JOIN sites s ON s.site = d.site
    CROSS JOIN reporting_baseline b
    CROSS JOIN LATERAL (
        SELECT extract(epoch FROM ((c.day + 1)::timestamp AT TIME ZONE s.timezone)
                                  - (c.day::timestamp AT TIME ZONE s.timezone))::double precision
               AS day_s) len
    WHERE d.site IN (SELECT site FROM visible_sites)
    GROUP BY d.site, d.kind, c.day, b.interval_s, b.uplink_energy_j;

CREATE OR REPLACE VIEW api.config_drift AS
    SELECT d.site, d.device, d.kind, c.version AS published_version,
           s.config_version AS applied_version, c.published_at, s.state_at, s.online,
           s.config_error
    FROM devices d
    LEFT JOIN device_configs c ON c.device_id = d.id
    LEFT JOIN device_states s ON s.site = d.site AND s.device = d.device
    WHERE (c.version IS NULL OR s.config_version IS DISTINCT FROM c.version)
      AND d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.device_configs AS
    SELECT d.site, d.device, d.kind, d.dma, d.lighting_group, c.version, c.program,
           c.escalated, c.published_at, c.payload, s.config_version AS applied_version,
           s.online, s.state_at
    FROM device_configs c
    JOIN devices d ON d.id = c.device_id
    LEFT JOIN device_states s ON s.site = d.site AND s.device = d.device
    WHERE d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.lighting_overrides AS
    SELECT id, site, lighting_group, device, level, starts_at, until, reason, luminaires,
           created_by, (now() >= starts_at AND now() < until) AS active
    FROM lighting_overrides
    WHERE site IN (SELECT site FROM visible_sites);

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
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id
    WHERE d.site IN (SELECT site FROM visible_sites);

-- The general factors (site NULL) are public figures; a site's own only for that site.
CREATE OR REPLACE VIEW api.energy_factors AS
    SELECT id, kind, site, valid_from, value, unit, source, created_at
    FROM energy_factors
    WHERE site IS NULL OR site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.pue_daily AS
    WITH days AS (
        SELECT d.site, e.day,
               sum(e.kwh) FILTER (WHERE d.kind = 'facility_meter') AS facility_kwh,
               sum(e.kwh) FILTER (WHERE d.kind = 'it_meter') AS it_kwh,
               bool_and(e.complete) AS all_complete,
               bool_or(d.kind = 'facility_meter') AND bool_or(d.kind = 'it_meter') AS both_kinds
        FROM energy_daily e JOIN devices d ON d.id = e.device_id
        WHERE d.kind IN ('facility_meter', 'it_meter')
          AND d.site IN (SELECT site FROM visible_sites)
        GROUP BY d.site, e.day)
    SELECT site, day, facility_kwh, it_kwh,
           CASE WHEN it_kwh > 0 THEN facility_kwh / it_kwh END AS pue,
           (SELECT pue_category FROM energy_settings) AS category,
           coalesce(all_complete AND both_kinds, false) AS complete
    FROM days;

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
    LEFT JOIN energy_factors ft ON ft.id = pt.factor_id
    WHERE d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.lighting_nights AS
    WITH groups AS (
        SELECT site, lighting_group, night, luminaires::bigint AS luminaires,
               lit_hours_sum / luminaires AS lit_hours, kwh,
               CASE WHEN baselines > 0 THEN baseline_kwh END AS baseline_kwh,
               incomplete = 0 AS complete, street_km
        FROM lighting_group_nights
        WHERE site IN (SELECT site FROM visible_sites))
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

CREATE OR REPLACE VIEW api.lighting_cabinets AS
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
    FROM cabinet_nights c JOIN devices d ON d.id = c.device_id
    WHERE d.site IN (SELECT site FROM visible_sites);

CREATE OR REPLACE VIEW api.luminaire_faults AS
    SELECT a.id, a.kind, a.site, a.subject AS device, d.lighting_group, d.lighting_class,
           d.lat, d.lon, d.nominal_power_w, a.state, a.state <> 'resolved' AS active,
           a.opened_at, a.started_at, a.updated_at, a.closed_at, a.acknowledged_at,
           a.acknowledged_by, a.resolved_at, a.resolved_by,
           (a.details ->> 'expected_w')::float8 AS expected_w,
           (a.details ->> 'measured_w')::float8 AS measured_w,
           (a.details ->> 'dim')::float8 AS dim,
           (a.details ->> 'fault_hours')::float8 AS fault_hours,
           a.details
    FROM alerts a
    LEFT JOIN devices d ON d.site = a.site AND d.device = a.subject AND d.kind = 'luminaire'
    WHERE a.subject_type = 'device'
      AND a.kind IN ('lamp_failure', 'day_burner', 'power_off_curve')
      AND a.site IN (SELECT site FROM visible_sites);

-- The platform's own energy and the readings stored over all sites: operators only.
CREATE OR REPLACE VIEW api.service_energy_daily AS
    SELECT s.day,
           coalesce(r.readings, 0)::bigint AS readings_stored,
           s.cpu_seconds,
           s.kwh,
           s.kwh * 1000 / nullif(r.readings, 0) AS kwh_per_1000_readings,
           CASE WHEN s.rapl_seconds >= s.seconds AND s.seconds > 0 THEN 'rapl'
                WHEN s.rapl_seconds = 0 THEN 'cpu_time'
                ELSE 'mixed' END AS method,
           s.cpu_seconds / nullif(s.machine_busy_s, 0) AS cpu_share,
           s.kwh * 3.6e6 / nullif(s.cpu_seconds, 0) AS watts_per_busy_core,
           CASE WHEN s.rapl_seconds < s.seconds OR s.seconds = 0 THEN s.min_w END
               AS min_w_per_core,
           CASE WHEN s.rapl_seconds < s.seconds OR s.seconds = 0 THEN s.max_w END
               AS max_w_per_core,
           CASE WHEN s.rapl_seconds >= s.seconds AND s.seconds > 0
                    THEN 'RAPL package energy x the service''s share of the machine''s busy '
                         'CPU time (/proc/stat)'
                WHEN s.rapl_seconds = 0 THEN s.sources
                ELSE 'RAPL where readable, else ' || s.sources END AS coefficient_source,
           s.processes,
           s.hosts,
           s.timezone,
           s.complete
    FROM (
        SELECT day,
               sum(cpu_s) AS cpu_seconds,
               sum(machine_busy_s) AS machine_busy_s,
               sum(kwh) AS kwh,
               sum(seconds) AS seconds,
               sum(rapl_seconds) AS rapl_seconds,
               min(min_w_per_core) AS min_w,
               max(max_w_per_core) AS max_w,
               string_agg(DISTINCT coefficient_source, '; ') AS sources,
               sum(processes)::integer AS processes,
               count(DISTINCT host)::integer AS hosts,
               string_agg(DISTINCT timezone, ', ') AS timezone,
               bool_and(complete) AS complete
        FROM service_energy_daily
        GROUP BY day
    ) s
    LEFT JOIN LATERAL (
        SELECT sum(c.readings) AS readings FROM device_reporting_daily c WHERE c.day = s.day
    ) r ON true
    WHERE (SELECT operator FROM tenancy_caller);
