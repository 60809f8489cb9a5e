-- The communes side by side, per calendar month (api.commune_benchmark_monthly): lighting,
-- drinking water and the server room's PUE, from the api views of the stages that own them
-- (api.lighting_nights, api.water_balance_daily, api.pue_monthly). For operators only: a
-- commune compares itself with no other (tenancy_caller, as api.service_energy_daily).
--
-- Each indicator comes with the additive terms it is the ratio of, so that several months
-- (or several communes) are compared by ratios of sums, not by averaging ratios:
--   kwh_per_luminaire_night = lighting_kwh / luminaire_nights;
--   lighting_saved_fraction = lighting_saved_kwh / lighting_baseline_kwh (group nights with a
--     no-dimming baseline only: lighting_kwh_with_baseline beside it);
--   yield_percent = 100 * (water_metered_m3 + water_output_m3) / water_input_m3, over the
--     commune's DMAs (a transfer between two DMAs of the commune counts on both sides: slightly
--     higher than the yield of the network taken as one);
--   ili = water_losses_with_uarl_m3 / uarl_m3 (uarl_m3: each DMA's Lambert UARL per day × its
--     days measured; DMAs without mains length, connections, private length and pressure are
--     left out of both terms);
--   pue = facility_kwh / it_kwh (api.pue_monthly: days with both energies only).
-- Months are the local calendar months of the site (nights by the date of their evening).
-- Completeness per domain: every night of the month, every group night complete
-- (lighting_complete); every day of the month for every DMA of the commune, every DMA day
-- complete (water_complete); api.pue_monthly's complete (pue_complete).

CREATE VIEW api.commune_benchmark_monthly AS
    WITH lighting AS (
        SELECT site, date_trunc('month', night)::date AS month,
               count(DISTINCT night) AS nights,
               sum(luminaires) AS luminaire_nights,
               sum(kwh) AS kwh,
               sum(kwh) FILTER (WHERE baseline_kwh IS NOT NULL) AS kwh_with_baseline,
               sum(baseline_kwh) AS baseline_kwh,
               bool_and(complete) AS all_complete
        FROM api.lighting_nights
        GROUP BY 1, 2
    ), water AS (
        SELECT site, date_trunc('month', day)::date AS month,
               count(DISTINCT day) AS days,
               count(*) FILTER (WHERE complete) AS complete_dma_days,
               sum(input_m3) AS input_m3, sum(output_m3) AS output_m3,
               sum(metered_m3) AS metered_m3, sum(losses_m3) AS losses_m3,
               sum(losses_m3) FILTER (WHERE uarl_m3_day > 0) AS losses_with_uarl_m3,
               sum(uarl_m3_day * hours / 24) FILTER (WHERE uarl_m3_day > 0) AS uarl_m3
        FROM api.water_balance_daily
        GROUP BY 1, 2
    ), pue AS (
        SELECT site, month, facility_kwh, it_kwh, pue, category, complete, days_paired
        FROM api.pue_monthly
    ), months AS (
        SELECT site, month FROM lighting
        UNION SELECT site, month FROM water
        UNION SELECT site, month FROM pue
    )
    SELECT m.site, s.name, m.month,
           extract(day FROM m.month + interval '1 month' - interval '1 day')::integer AS days,
           l.nights::integer AS lighting_nights,
           l.luminaire_nights::bigint AS luminaire_nights,
           l.kwh AS lighting_kwh,
           l.kwh / nullif(l.luminaire_nights, 0) AS kwh_per_luminaire_night,
           l.baseline_kwh AS lighting_baseline_kwh,
           l.kwh_with_baseline AS lighting_kwh_with_baseline,
           l.baseline_kwh - l.kwh_with_baseline AS lighting_saved_kwh,
           CASE WHEN l.baseline_kwh > 0 THEN 1 - l.kwh_with_baseline / l.baseline_kwh END
               AS lighting_saved_fraction,
           coalesce(l.all_complete
                    AND l.nights = extract(day FROM m.month + interval '1 month' - interval '1 day'),
                    false) AS lighting_complete,
           w.days::integer AS water_days,
           w.input_m3 AS water_input_m3, w.output_m3 AS water_output_m3,
           w.metered_m3 AS water_metered_m3, w.losses_m3 AS water_losses_m3,
           CASE WHEN w.input_m3 > 0 THEN 100 * (w.metered_m3 + w.output_m3) / w.input_m3 END
               AS yield_percent,
           w.losses_with_uarl_m3 AS water_losses_with_uarl_m3, w.uarl_m3,
           w.losses_with_uarl_m3 / nullif(w.uarl_m3, 0) AS ili,
           coalesce(w.complete_dma_days
                    = (SELECT count(*) FROM dmas d WHERE d.site = m.site)
                      * extract(day FROM m.month + interval '1 month' - interval '1 day'),
                    false) AS water_complete,
           p.facility_kwh, p.it_kwh, p.pue, p.category AS pue_category,
           p.days_paired AS pue_days_paired, coalesce(p.complete, false) AS pue_complete
    FROM months m
    JOIN sites s ON s.site = m.site
    LEFT JOIN lighting l ON l.site = m.site AND l.month = m.month
    LEFT JOIN water w ON w.site = m.site AND w.month = m.month
    LEFT JOIN pue p ON p.site = m.site AND p.month = m.month
    WHERE (SELECT operator FROM tenancy_caller);
