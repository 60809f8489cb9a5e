-- What each rollup refresh recomputed, for the stages that follow the rollup incrementally
-- (core/rollup_changes.py): one row per (device, UTC hour) a chunk recomputed, in order, and
-- each follower's position in that log. A follower reads the entries after its position, does
-- its work and moves its position in the same transaction; the refresh prunes what every
-- follower has read and, whatever they read, what is older than a week (a follower behind that
-- starts again from its own rescan). Under TimescaleDB the continuous aggregate's refresh writes
-- no such log: followers fall back to their rescan.
CREATE TABLE readings_hourly_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   integer NOT NULL,
    hour        timestamptz NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX readings_hourly_changes_changed_at ON readings_hourly_changes (changed_at);

CREATE TABLE readings_hourly_followers (
    follower    text PRIMARY KEY,
    last_id     bigint NOT NULL,      -- the last entry read and acted upon
    updated_at  timestamptz NOT NULL DEFAULT now()
);
