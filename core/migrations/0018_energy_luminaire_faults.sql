-- Luminaire faults found by the energy stage (energy/fault_scan.py) in the alerts table:
-- kinds lamp_failure, day_burner, power_off_curve, subject_type 'device', subject the device
-- id; with the luminaire's lighting group, class, position and nominal power for the map and
-- the alert list, and the evidence of details (expected and measured W, dim level, hours).
CREATE INDEX alerts_device_faults_idx ON alerts (site, subject)
    WHERE subject_type = 'device'
      AND kind IN ('lamp_failure', 'day_burner', 'power_off_curve');

CREATE VIEW api.luminaire_faults AS
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
      AND a.kind IN ('lamp_failure', 'day_burner', 'power_off_curve');
