-- Hourly rollup of readings, kept current incrementally (core/rollup.py, `sobriety db rollup`).
-- One row per (device, metric, UTC hour): hour = date_bin('1 hour', time, 'epoch'), the start of
-- the hour. first/last are the values at first_time/last_time, the earliest and latest reading
-- of the hour. Analytics read this instead of the raw readings.
CREATE TABLE readings_hourly (
    device_id   integer NOT NULL,
    metric_id   smallint NOT NULL,
    hour        timestamptz NOT NULL,
    count       integer NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    first       double precision NOT NULL,
    first_time  timestamptz NOT NULL,
    last        double precision NOT NULL,
    last_time   timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric_id, hour)
);

-- What changed since the last refresh: one row per (device, hour) touched by a statement on
-- readings. Append-only and without a unique constraint, so concurrent writers never wait on
-- each other nor deadlock here; the refresh deduplicates what it claims (and deletes it).
CREATE TABLE readings_hourly_pending (
    device_id  integer NOT NULL,
    hour       timestamptz NOT NULL
);

-- Statement-level triggers: one INSERT per statement (not per row), from the transition table
-- of the rows the statement actually wrote — an INSERT ... ON CONFLICT DO NOTHING lists only
-- the rows it inserted, and COPY fires them too. Every writer (ingest, import, COPY backfills,
-- replay, deletes) records what it touched without knowing about the rollup.
CREATE FUNCTION readings_hourly_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO readings_hourly_pending (device_id, hour)
        SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch')
        FROM (SELECT device_id, time FROM touched
              UNION ALL SELECT device_id, time FROM touched_before) AS t;
    ELSE
        INSERT INTO readings_hourly_pending (device_id, hour)
        SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch') FROM touched;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE has no transition table: it empties the rollup and the log with readings (DELETE,
-- not TRUNCATE, so that `TRUNCATE readings, readings_hourly` in one statement works too).
CREATE FUNCTION readings_hourly_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM readings_hourly;
    DELETE FROM readings_hourly_pending;
    RETURN NULL;
END
$$;

-- Under TimescaleDB (core/db.py) readings_hourly becomes a continuous aggregate instead, and
-- these triggers and the pending log are dropped: a database whose readings already are a
-- hypertable does not get them.
DO $$
DECLARE
    hypertable boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables '
                'WHERE hypertable_schema = current_schema() AND hypertable_name = ''readings'')'
            INTO hypertable;
    END IF;
    IF NOT hypertable THEN
        CREATE TRIGGER readings_hourly_insert AFTER INSERT ON readings
            REFERENCING NEW TABLE AS touched
            FOR EACH STATEMENT EXECUTE FUNCTION readings_hourly_mark();
        CREATE TRIGGER readings_hourly_delete AFTER DELETE ON readings
            REFERENCING OLD TABLE AS touched
            FOR EACH STATEMENT EXECUTE FUNCTION readings_hourly_mark();
        CREATE TRIGGER readings_hourly_update AFTER UPDATE ON readings
            REFERENCING NEW TABLE AS touched OLD TABLE AS touched_before
            FOR EACH STATEMENT EXECUTE FUNCTION readings_hourly_mark();
        CREATE TRIGGER readings_hourly_truncate AFTER TRUNCATE ON readings
            FOR EACH STATEMENT EXECUTE FUNCTION readings_hourly_clear();
        -- Readings stored before this migration: every (device, hour) is pending, so the first
        -- refresh builds the whole rollup. In time order, so refresh chunks are compact in time.
        INSERT INTO readings_hourly_pending (device_id, hour)
        SELECT device_id, hour
        FROM (SELECT DISTINCT device_id, date_bin('1 hour', time, 'epoch') AS hour
              FROM readings) AS touched
        ORDER BY hour, device_id;
    END IF;
END
$$;

CREATE VIEW api.readings_hourly AS
    SELECT h.hour AS time, d.site, d.device, d.kind, m.name AS metric, h.count, h.sum, h.min,
           h.max, h.first, h.first_time, h.last, h.last_time, m.unit
    FROM readings_hourly h
    JOIN devices d ON d.id = h.device_id
    JOIN metrics m ON m.id = h.metric_id;
