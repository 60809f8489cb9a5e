-- Core tables: inventory (sites, DMAs, devices), metrics, readings, rejected messages.
-- Times are timestamptz everywhere. Readings are narrow (ids, not names) and deduplicated on
-- (device, metric, time): a message delivered twice is stored once.

CREATE TABLE sites (
    site        text PRIMARY KEY,
    name        text,
    timezone    text NOT NULL DEFAULT 'Europe/Paris',
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dmas (
    site            text NOT NULL REFERENCES sites (site),
    dma             text NOT NULL,
    name            text,
    mains_km        double precision CHECK (mains_km >= 0),
    connections     integer CHECK (connections >= 0),
    private_km      double precision CHECK (private_km >= 0),
    avg_pressure_m  double precision CHECK (avg_pressure_m >= 0),
    properties      jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, dma)
);

CREATE TABLE devices (
    id               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site             text NOT NULL REFERENCES sites (site),
    device           text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('luminaire', 'cabinet_meter', 'flow_meter',
                         'pressure_sensor', 'water_meter', 'pump_meter', 'facility_meter',
                         'it_meter')),
    dma              text,
    role             text,
    lat              double precision CHECK (lat BETWEEN -90 AND 90),
    lon              double precision CHECK (lon BETWEEN -180 AND 180),
    lighting_group   text,
    lighting_class   text,
    nominal_power_w  double precision CHECK (nominal_power_w >= 0),
    properties       jsonb NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site, device),
    FOREIGN KEY (site, dma) REFERENCES dmas (site, dma)
);

CREATE TABLE metrics (
    id           smallint PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    unit         text NOT NULL,
    description  text NOT NULL
);

INSERT INTO metrics (id, name, unit, description) VALUES
    (1, 'flow', 'm3/h', 'volumetric flow rate, negative when reversed'),
    (2, 'volume', 'm3', 'volume index of a meter (cumulative)'),
    (3, 'pressure', 'bar', 'gauge pressure'),
    (4, 'level', 'm', 'water level'),
    (5, 'power', 'W', 'active electrical power'),
    (6, 'energy', 'Wh', 'active energy index (cumulative counter)'),
    (7, 'dim', '%', 'dimming level, 100 = full light'),
    (8, 'illuminance', 'lx', 'illuminance'),
    (9, 'temperature', '°C', 'temperature'),
    (10, 'presence', 'count', 'presence detections in the interval');

-- No foreign keys on readings: the ingest resolves ids from the inventory before writing, and
-- a foreign-key check per row would halve the write rate.
CREATE TABLE readings (
    time       timestamptz NOT NULL,
    device_id  integer NOT NULL,
    metric_id  smallint NOT NULL,
    value      double precision NOT NULL,
    PRIMARY KEY (device_id, metric_id, time)
);
-- Export, retention and "everything since" scans go by time.
CREATE INDEX readings_time_idx ON readings (time);

-- Last reading time per device, maintained by the ingest once per batch (silent devices).
CREATE TABLE device_status (
    device_id         integer PRIMARY KEY REFERENCES devices (id),
    last_reading_at   timestamptz NOT NULL,
    last_received_at  timestamptz NOT NULL
);

-- A rejected message is stored once per (topic, reason, payload); repeats count in times_seen.
-- The payload is kept raw (bytes), cut to the ingest's max_payload_bytes for oversized ones.
CREATE TABLE rejected_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint       bytea NOT NULL UNIQUE,
    received_at       timestamptz NOT NULL,
    last_received_at  timestamptz NOT NULL,
    times_seen        integer NOT NULL DEFAULT 1,
    topic             text NOT NULL,
    site              text,
    device            text,
    reason            text NOT NULL,
    detail            text NOT NULL,
    payload           bytea NOT NULL,
    payload_bytes     integer NOT NULL,
    replayed_at       timestamptz
);
CREATE INDEX rejected_messages_received_idx ON rejected_messages (received_at);
