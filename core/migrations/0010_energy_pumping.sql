-- Pumping: the volume each pump meter moved per local day (from its volume index, by the same
-- counter rules as energy: resets, glitches and replacements handled), beside its energy.
CREATE TABLE pumping_volume_daily (
    device_id      integer NOT NULL REFERENCES devices (id),
    day            date NOT NULL,
    m3             double precision NOT NULL CHECK (m3 >= 0),
    complete       boolean NOT NULL,
    missing_hours  double precision NOT NULL CHECK (missing_hours >= 0),
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day)
);

CREATE VIEW api.pumping_daily AS
    SELECT d.site, d.device, v.day, e.kwh, v.m3,
           CASE WHEN v.m3 > 0 THEN e.kwh / v.m3 END AS kwh_per_m3,
           (v.complete AND coalesce(e.complete, false)) AS complete
    FROM pumping_volume_daily v
    JOIN devices d ON d.id = v.device_id
    LEFT JOIN energy_daily e ON e.device_id = v.device_id AND e.day = v.day;
