-- Alerts raised by the anomaly stage, with a lifecycle: open -> acknowledged -> resolved.
-- One alert per subject and kind is not resolved at a time (deduplication); it is updated
-- while the anomaly lasts and resolved by the service when the signal returns to baseline
-- (resolved_by 'sobriety') or by a person.
CREATE TABLE alerts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                text NOT NULL,
    site                text NOT NULL REFERENCES sites (site),
    subject_type        text NOT NULL CHECK (subject_type IN ('dma', 'device')),
    subject             text NOT NULL,
    state               text NOT NULL DEFAULT 'open'
                            CHECK (state IN ('open', 'acknowledged', 'resolved')),
    opened_at           timestamptz NOT NULL,   -- when the anomaly was detected
    started_at          timestamptz,            -- estimated start of the anomaly
    updated_at          timestamptz NOT NULL,   -- last time the service saw it (data time)
    closed_at           timestamptz,            -- signal back to baseline, or resolved by hand
    acknowledged_at     timestamptz,
    acknowledged_by     text,
    resolved_at         timestamptz,
    resolved_by         text,
    estimated_flow_m3h  double precision,
    details             jsonb NOT NULL DEFAULT '{}',
    CHECK (state <> 'resolved' OR (resolved_at IS NOT NULL AND closed_at IS NOT NULL))
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (site, subject_type, subject, kind)
    WHERE state <> 'resolved';
CREATE INDEX alerts_opened_idx ON alerts (opened_at);

-- Night flows of each DMA as computed by the anomaly stage (one row per local night): what
-- the dashboards plot, and where gaps are reported instead of being filled.
CREATE TABLE dma_nights (
    site                text NOT NULL,
    dma                 text NOT NULL,
    night               date NOT NULL,          -- local date of the night window
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    mnf_m3h             double precision,       -- mean net inflow over the window
    metered_m3h         double precision,       -- customer meters over the window
    net_m3h             double precision,       -- mnf - metered: what leaks raise
    baseline_m3h        double precision,
    meter_coverage      double precision,       -- share of customer meters that reported
    gap                 text,                   -- why the night could not be assessed
    computed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, dma, night),
    FOREIGN KEY (site, dma) REFERENCES dmas (site, dma)
);

CREATE VIEW api.alerts AS
    SELECT id, kind, site, subject_type, subject, state, opened_at, started_at, updated_at,
           closed_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by,
           estimated_flow_m3h, details
    FROM alerts;

CREATE VIEW api.dma_nights AS
    SELECT site, dma, night, window_start, window_end, mnf_m3h, metered_m3h, net_m3h,
           baseline_m3h, meter_coverage, gap
    FROM dma_nights;
