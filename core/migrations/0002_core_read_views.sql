-- The read interface (schema "api"): what Grafana, exports and other stages read. Storage can
-- change underneath; these columns and names are the contract.
CREATE SCHEMA api;

CREATE VIEW api.sites AS
    SELECT site, name, timezone, lat, lon FROM sites;

CREATE VIEW api.dmas AS
    SELECT site, dma, name, mains_km, connections, private_km, avg_pressure_m FROM dmas;

CREATE VIEW api.devices AS
    SELECT d.site, d.device, d.kind, d.dma, d.role, d.lat, d.lon, d.lighting_group,
           d.lighting_class, d.nominal_power_w, d.properties,
           s.last_reading_at, s.last_received_at
    FROM devices d
    LEFT JOIN device_status s ON s.device_id = d.id;

CREATE VIEW api.readings AS
    SELECT r.time, d.site, d.device, d.kind, m.name AS metric, r.value, m.unit
    FROM readings r
    JOIN devices d ON d.id = r.device_id
    JOIN metrics m ON m.id = r.metric_id;

CREATE VIEW api.rejected_messages AS
    SELECT id, received_at, last_received_at, times_seen, topic, site, device, reason, detail,
           payload, payload_bytes, replayed_at
    FROM rejected_messages;
