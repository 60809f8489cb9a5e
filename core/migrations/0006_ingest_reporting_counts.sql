-- Messages and readings per device and local day, counted by the ingest in the transaction that
-- stores a batch (ingest/store.py), and what they would have been with one single-record
-- message every reporting_baseline.interval_s per metric: the radio traffic the reporting
-- policies save.
--
-- day is the local date (sites.timezone) of a message's earliest reading for messages, and of
-- each reading for readings: a message sent at 23:50 with readings up to 00:10 counts on the
-- first day, its readings on both. messages: MQTT messages that gave at least one row (stored
-- or already stored: a redelivered message counts again); rejected messages are not counted.
-- readings: rows newly stored (a duplicate is not counted twice), so the sum over days matches
-- the readings table for what went through the ingest. (The ingest sums a batch per device and
-- UTC quarter hour before the time-zone conversion: every UTC offset in use today is a multiple
-- of 15 minutes, so a quarter hour lies in one local day.)
--
-- metric_mask: bit m set when the device stored a reading of metric id m on that local day. The
-- baseline needs the number of distinct metrics a device reported per local day; readings_hourly
-- could give it, but its hours are UTC (a zone such as Asia/Kolkata does not cut them at local
-- midnight), it is current only after a rollup refresh, and scanning it per device-day makes the
-- view cost grow with the readings. The mask is kept exact, in the same statement that counts,
-- for the same rows, and bit_count() reads it. It needs metric ids in 0..62 (contract.METRICS
-- holds 1..10): the constraint on metrics makes a larger id fail loudly, not miscount.
ALTER TABLE metrics ADD CONSTRAINT metrics_id_fits_reporting_mask CHECK (id BETWEEN 0 AND 62);

CREATE TABLE device_reporting_daily (
    device_id    integer NOT NULL REFERENCES devices (id),
    day          date NOT NULL,
    messages     bigint NOT NULL DEFAULT 0,
    readings     bigint NOT NULL DEFAULT 0,
    metric_mask  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, day)
) WITH (fillfactor = 50);  -- room on each page: the per-batch updates stay HOT
-- Reports read days across devices (the key leads with the device).
CREATE INDEX device_reporting_daily_day_idx ON device_reporting_daily (day);

-- Spool frames whose messages were counted (ingest/spool.py gives each frame a random id): a
-- segment replayed again after an interrupted drain stores nothing twice (readings are unique)
-- and must count nothing twice either. Kept 30 days (the store prunes at each replay).
CREATE TABLE ingest_replayed_frames (
    frame_id     bytea PRIMARY KEY,
    replayed_at  timestamptz NOT NULL DEFAULT now()
);

-- The reference the savings are measured against (one row; the policies stage keeps it in line
-- with its configuration).
--
-- uplink_energy_j, the radio energy of one uplink, default 0.0366 J: a LoRaWAN class A uplink of
-- a 20-byte application payload (33-byte PHY payload with the 13 bytes of LoRaWAN header, port
-- and MIC) at SF9/125 kHz, coding rate 4/5, explicit header, CRC on, 8-symbol preamble, no low
-- data rate optimisation. Airtime from the LoRa formula (Semtech AN1200.13): symbol time
-- 2^9 / 125 kHz = 4.096 ms; preamble (8 + 4.25) x 4.096 = 50.176 ms; payload
-- 8 + ceil((8x33 - 4x9 + 28 + 16) / (4x9)) x 5 = 48 symbols = 196.608 ms; total 246.784 ms.
-- Transmit current 41.54 mA at 3.3 V: Microchip SAM R34 (an SX1276 inside) datasheet, current
-- consumption table, 868 MHz, TX power setting 15 on the RFO output (the +14 dBm of EU868); the
-- SX1276 datasheet itself has no +14 dBm row (29 mA at +13 dBm on RFO, 87 mA at +17 dBm on
-- PA_BOOST bracket it). TX: 0.04154 A x 3.3 V x 0.246784 s = 0.03383 J. The two receive windows
-- of class A with no downlink, each open for an 8-symbol preamble at SF9 (32.8 ms) at 12.68 mA
-- (same table, RX 868 MHz 125 kHz): 2 x 0.032768 s x 0.01268 A x 3.3 V = 0.00274 J. Total
-- 0.03657 J. Not counted: the MCU's wake-up and sensing, the same with or without the policies.
CREATE TABLE reporting_baseline (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    interval_s       integer NOT NULL DEFAULT 900 CHECK (interval_s > 0),
    uplink_energy_j  double precision NOT NULL DEFAULT 0.0366 CHECK (uplink_energy_j >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO reporting_baseline DEFAULT VALUES;

-- Per site, device kind and local day. devices: those with messages or readings counted that day.
-- baseline_messages: per device, distinct metrics x the day's real length / interval_s (86,400 s,
-- or 82,800 and 90,000 on the days clocks change: 92 and 100 messages instead of 96 per metric at
-- 15 min). saved_fraction = 1 - messages / baseline_messages (NULL when the baseline is 0;
-- negative when devices sent more than the baseline). Energies in Wh.
CREATE VIEW api.reporting_daily AS
    SELECT d.site, d.kind, c.day,
           count(*) AS devices,
           sum(c.messages)::bigint AS messages,
           sum(c.readings)::bigint AS readings,
           sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s) AS baseline_messages,
           1 - sum(c.messages)
               / nullif(sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s), 0)
               AS saved_fraction,
           sum(c.messages) * b.uplink_energy_j / 3600 AS radio_energy_wh,
           sum(bit_count(c.metric_mask::bit(64)) * len.day_s / b.interval_s)
               * b.uplink_energy_j / 3600 AS baseline_radio_energy_wh
    FROM device_reporting_daily c
    JOIN devices d ON d.id = c.device_id
    JOIN sites s ON s.site = d.site
    CROSS JOIN reporting_baseline b
    CROSS JOIN LATERAL (
        SELECT extract(epoch FROM ((c.day + 1)::timestamp AT TIME ZONE s.timezone)
                                  - (c.day::timestamp AT TIME ZONE s.timezone))::double precision
               AS day_s) len
    GROUP BY d.site, d.kind, c.day, b.interval_s, b.uplink_energy_j;
