-- The policy engine's state: the config last published to each device (its version increases
-- only when the content changes: the digest of the content without the version decides), the
-- retained state each device (or gateway) last reported, and the manual lighting overrides.

CREATE TABLE device_configs (
    device_id     integer PRIMARY KEY REFERENCES devices (id),
    version       integer NOT NULL CHECK (version >= 1),
    digest        bytea NOT NULL,          -- sha256 of the content without the version
    payload       jsonb NOT NULL,          -- the DeviceConfig as published
    program       text,                    -- the lighting program of a luminaire
    escalated     boolean NOT NULL DEFAULT false,  -- a sensor of a DMA with an active leak alert
    published_at  timestamptz NOT NULL,    -- when the broker acknowledged this version
    resent_at     timestamptz,             -- last republish of the same version (not applied)
    resends       integer NOT NULL DEFAULT 0
);

-- Retained {root}/{site}/{device}/state as last received; gateways too (not in devices).
CREATE TABLE device_states (
    site            text NOT NULL,
    device          text NOT NULL,
    online          boolean NOT NULL,
    config_version  integer,
    config_error    text,
    state_at        timestamptz NOT NULL,  -- when the service received it
    PRIMARY KEY (site, device)
);

CREATE TABLE lighting_overrides (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site            text NOT NULL REFERENCES sites (site),
    lighting_group  text,
    device          text,
    level           double precision NOT NULL CHECK (level BETWEEN 0 AND 100),
    starts_at       timestamptz NOT NULL,
    until           timestamptz NOT NULL,
    reason          text NOT NULL CHECK (reason <> ''),
    luminaires      integer NOT NULL CHECK (luminaires >= 0),
    created_by      text NOT NULL DEFAULT current_user,
    resent_at       timestamptz,           -- last resend to luminaires whose state came after
    CHECK ((lighting_group IS NULL) <> (device IS NULL)),
    CHECK (until > starts_at)
);
CREATE INDEX lighting_overrides_until_idx ON lighting_overrides (until);

-- Devices that run an old configuration or none: no config published yet, no state received,
-- or an applied version other than the published one (a refusal says why in config_error).
CREATE VIEW api.config_drift AS
    SELECT d.site, d.device, d.kind, c.version AS published_version,
           s.config_version AS applied_version, c.published_at, s.state_at, s.online,
           s.config_error
    FROM devices d
    LEFT JOIN device_configs c ON c.device_id = d.id
    LEFT JOIN device_states s ON s.site = d.site AND s.device = d.device
    WHERE c.version IS NULL OR s.config_version IS DISTINCT FROM c.version;

-- What every device was last told: version, the program of a luminaire, escalation.
CREATE VIEW api.device_configs AS
    SELECT d.site, d.device, d.kind, d.dma, d.lighting_group, c.version, c.program,
           c.escalated, c.published_at, c.payload, s.config_version AS applied_version,
           s.online, s.state_at
    FROM device_configs c
    JOIN devices d ON d.id = c.device_id
    LEFT JOIN device_states s ON s.site = d.site AND s.device = d.device;

CREATE VIEW api.lighting_overrides AS
    SELECT id, site, lighting_group, device, level, starts_at, until, reason, luminaires,
           created_by, (now() >= starts_at AND now() < until) AS active
    FROM lighting_overrides;
