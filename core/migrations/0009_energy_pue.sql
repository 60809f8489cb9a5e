-- PUE of the server room per local day and per month: facility energy over IT energy over the
-- same period, from api.energy_daily (facility_meter and it_meter devices of a site). The
-- ISO/IEC 30134-2 measurement category — where the IT energy is measured: PUE1 at the UPS
-- output, PUE2 at the PDU output, PUE3 at the IT equipment's input — comes from the
-- configuration ([energy] pue_category), written here by the energy service, and is stated with
-- every figure. A month is "interim" while the site has fewer than twelve months of PUE: the
-- standard's PUE is over a year.
CREATE TABLE energy_settings (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    pue_category  text NOT NULL DEFAULT 'PUE1' CHECK (pue_category IN ('PUE1', 'PUE2', 'PUE3')),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO energy_settings DEFAULT VALUES;

CREATE VIEW api.pue_daily AS
    WITH days AS (
        SELECT d.site, e.day,
               sum(e.kwh) FILTER (WHERE d.kind = 'facility_meter') AS facility_kwh,
               sum(e.kwh) FILTER (WHERE d.kind = 'it_meter') AS it_kwh,
               bool_and(e.complete) AS all_complete,
               bool_or(d.kind = 'facility_meter') AND bool_or(d.kind = 'it_meter') AS both_kinds
        FROM energy_daily e JOIN devices d ON d.id = e.device_id
        WHERE d.kind IN ('facility_meter', 'it_meter')
        GROUP BY d.site, e.day)
    SELECT site, day, facility_kwh, it_kwh,
           CASE WHEN it_kwh > 0 THEN facility_kwh / it_kwh END AS pue,
           (SELECT pue_category FROM energy_settings) AS category,
           coalesce(all_complete AND both_kinds, false) AS complete
    FROM days;

CREATE VIEW api.pue_monthly AS
    WITH months AS (
        SELECT site, date_trunc('month', day)::date AS month, sum(facility_kwh) AS facility_kwh,
               sum(it_kwh) AS it_kwh, bool_and(complete) AS all_complete, count(*) AS days
        FROM api.pue_daily
        GROUP BY 1, 2)
    SELECT site, month, facility_kwh, it_kwh,
           CASE WHEN it_kwh > 0 THEN facility_kwh / it_kwh END AS pue,
           (SELECT pue_category FROM energy_settings) AS category,
           all_complete AND days = extract(day FROM month + interval '1 month' - interval '1 day')
               AS complete,
           count(*) OVER (PARTITION BY site ORDER BY month) < 12 AS interim
    FROM months;
