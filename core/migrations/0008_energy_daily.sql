-- Energy accounting: the energy of every metered device per local day of its site, from its
-- cumulative counter (metric energy) where it has one, else from its power samples (sample and
-- hold up to its maximum silence), with what limited the figure: hours missing, counter resets,
-- rollovers, replacements and other flagged steps. Written by the energy stage (energy/).
CREATE TABLE energy_daily (
    device_id      integer NOT NULL REFERENCES devices (id),
    day            date NOT NULL,            -- local date of the device's site
    kwh            double precision NOT NULL CHECK (kwh >= 0),
    source         text NOT NULL CHECK (source IN ('counter', 'power')),
    complete       boolean NOT NULL,
    missing_hours  double precision NOT NULL CHECK (missing_hours >= 0),
    resets         integer NOT NULL DEFAULT 0,
    rollovers      integer NOT NULL DEFAULT 0,
    replacements   integer NOT NULL DEFAULT 0,
    flagged        integer NOT NULL DEFAULT 0,  -- intervals or gaps counted as nothing
    glitches       integer NOT NULL DEFAULT 0,  -- intervals across skipped readings (a spurious zero: 2)
    computed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day)
);
CREATE INDEX energy_daily_day_idx ON energy_daily (day);

CREATE VIEW api.energy_daily AS
    SELECT d.site, d.device, d.kind, e.day, e.kwh, e.source, e.complete, e.missing_hours,
           e.resets, e.rollovers, e.replacements, e.flagged, e.glitches
    FROM energy_daily e
    JOIN devices d ON d.id = e.device_id;
