-- A month's PUE over the days that have both its energies: a day with facility energy and no IT
-- energy (an IT meter silent, not yet installed) counted its facility kWh in the month's
-- numerator only, and raised the month's PUE. Such a day still makes the month incomplete;
-- `days_paired` (appended) says how many days the month's figure covers.
CREATE OR REPLACE VIEW api.pue_monthly AS
    WITH months AS (
        SELECT site, date_trunc('month', day)::date AS month,
               sum(facility_kwh) FILTER (WHERE paired) AS facility_kwh,
               sum(it_kwh) FILTER (WHERE paired) AS it_kwh,
               bool_and(complete) AS all_complete, count(*) AS days,
               count(*) FILTER (WHERE paired) AS days_paired
        FROM (SELECT *, facility_kwh IS NOT NULL AND it_kwh > 0 AS paired
              FROM api.pue_daily) AS d
        GROUP BY 1, 2)
    SELECT site, month, facility_kwh, it_kwh,
           CASE WHEN it_kwh > 0 THEN facility_kwh / it_kwh END AS pue,
           (SELECT pue_category FROM energy_settings) AS category,
           all_complete AND days = extract(day FROM month + interval '1 month' - interval '1 day')
               AS complete,
           count(*) OVER (PARTITION BY site ORDER BY month) < 12 AS interim,
           days_paired
    FROM months;
