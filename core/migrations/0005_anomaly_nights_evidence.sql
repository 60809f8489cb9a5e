-- dma_nights says what limited a night besides the DMA's own meters: how many customer meters
-- told the night use, the combined drop of the night pressure below its usual level (noise
-- units, pressure sensors only) and a note (e.g. too few customer meters reported: the net
-- night flow was not assessed, which is not a gap of the DMA and opens no data_gap alert).
ALTER TABLE dma_nights
    ADD COLUMN meters_reported  integer,
    ADD COLUMN pressure_drop_z  double precision,
    ADD COLUMN note             text;

CREATE OR REPLACE VIEW api.dma_nights AS
    SELECT site, dma, night, window_start, window_end, mnf_m3h, metered_m3h, net_m3h,
           baseline_m3h, meter_coverage, gap, meters_reported, pressure_drop_z, note
    FROM dma_nights;
