-- What the supervision itself consumes (energy/README.md, api.service_energy_daily).
--
-- service_cpu_samples: every long-running process of the service (sobriety run, sobriety
-- ingest and its workers, the stage services) samples itself every [energy] own_sample_s
-- (app/own_meter.py). A process is (host, pid, started_at); cpu_s its cumulative user + system
-- CPU time [s] (with its reaped children's, unless those run a meter of their own: the ingest
-- workers); machine_busy_s / machine_total_s the machine's cumulative busy and total CPU time
-- over all cores from /proc/stat [s]; rapl_uj the energy_uj of each RAPL package zone [µJ] and
-- rapl_max_uj its max_energy_range_uj [µJ], NULL when the counters cannot be read (most
-- kernels since CVE-2020-8694 make them root-only); final for the sample taken as the process
-- stops cleanly.
CREATE TABLE service_cpu_samples (
    host            text NOT NULL,
    pid             integer NOT NULL,
    started_at      timestamptz NOT NULL,
    sampled_at      timestamptz NOT NULL,
    role            text NOT NULL,
    cpu_s           double precision NOT NULL CHECK (cpu_s >= 0),
    machine_busy_s  double precision NOT NULL CHECK (machine_busy_s >= 0),
    machine_total_s double precision NOT NULL CHECK (machine_total_s >= 0),
    rapl_uj         bigint[],
    rapl_max_uj     bigint[],
    final           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (host, pid, started_at, sampled_at),
    CHECK ((rapl_uj IS NULL) = (rapl_max_uj IS NULL))
);
CREATE INDEX service_cpu_samples_time_idx ON service_cpu_samples (sampled_at);

-- Per day (in [energy] own_timezone, written in timezone), host and role: kept by the energy
-- service (energy/own_store.py refresh_service_energy; the math in energy/own_use.py).
-- cpu_s the service's CPU time [s], machine_busy_s the machine's busy CPU time over the same
-- intervals [s], kwh the energy attributed to the service, seconds the process-time covered by
-- sample intervals [s] and rapl_seconds the part of it measured by RAPL (the rest estimated
-- from CPU time with min/max_w_per_core [W] from coefficient_source).
CREATE TABLE service_energy_daily (
    day                date NOT NULL,
    host               text NOT NULL,
    role               text NOT NULL,
    processes          integer NOT NULL CHECK (processes >= 0),
    cpu_s              double precision NOT NULL CHECK (cpu_s >= 0),
    machine_busy_s     double precision NOT NULL CHECK (machine_busy_s >= 0),
    kwh                double precision NOT NULL CHECK (kwh >= 0),
    seconds            double precision NOT NULL CHECK (seconds >= 0),
    rapl_seconds       double precision NOT NULL CHECK (rapl_seconds >= 0),
    min_w_per_core     double precision NOT NULL,
    max_w_per_core     double precision NOT NULL,
    coefficient_source text NOT NULL,
    timezone           text NOT NULL,
    complete           boolean NOT NULL,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, host, role)
);

-- Per day: readings_stored the readings the ingest stored that day (device_reporting_daily,
-- whose days are each site's local days: exact when own_timezone is the sites' zone, shifted by
-- the difference otherwise); method 'rapl' when every interval of the day was measured by RAPL,
-- 'cpu_time' when none was, 'mixed' otherwise; cpu_share the service's share of the machine's
-- busy CPU time; watts_per_busy_core the energy per CPU second of the service [W]; the
-- coefficients of the estimate (NULL for a day measured by RAPL alone); complete when every
-- process of the day is known past its end (or stopped cleanly) with no interval discarded.
CREATE VIEW api.service_energy_daily AS
    SELECT s.day,
           coalesce(r.readings, 0)::bigint AS readings_stored,
           s.cpu_seconds,
           s.kwh,
           s.kwh * 1000 / nullif(r.readings, 0) AS kwh_per_1000_readings,
           CASE WHEN s.rapl_seconds >= s.seconds AND s.seconds > 0 THEN 'rapl'
                WHEN s.rapl_seconds = 0 THEN 'cpu_time'
                ELSE 'mixed' END AS method,
           s.cpu_seconds / nullif(s.machine_busy_s, 0) AS cpu_share,
           s.kwh * 3.6e6 / nullif(s.cpu_seconds, 0) AS watts_per_busy_core,
           CASE WHEN s.rapl_seconds < s.seconds OR s.seconds = 0 THEN s.min_w END
               AS min_w_per_core,
           CASE WHEN s.rapl_seconds < s.seconds OR s.seconds = 0 THEN s.max_w END
               AS max_w_per_core,
           CASE WHEN s.rapl_seconds >= s.seconds AND s.seconds > 0
                    THEN 'RAPL package energy x the service''s share of the machine''s busy '
                         'CPU time (/proc/stat)'
                WHEN s.rapl_seconds = 0 THEN s.sources
                ELSE 'RAPL where readable, else ' || s.sources END AS coefficient_source,
           s.processes,
           s.hosts,
           s.timezone,
           s.complete
    FROM (
        SELECT day,
               sum(cpu_s) AS cpu_seconds,
               sum(machine_busy_s) AS machine_busy_s,
               sum(kwh) AS kwh,
               sum(seconds) AS seconds,
               sum(rapl_seconds) AS rapl_seconds,
               min(min_w_per_core) AS min_w,
               max(max_w_per_core) AS max_w,
               string_agg(DISTINCT coefficient_source, '; ') AS sources,
               sum(processes)::integer AS processes,
               count(DISTINCT host)::integer AS hosts,
               string_agg(DISTINCT timezone, ', ') AS timezone,
               bool_and(complete) AS complete
        FROM service_energy_daily
        GROUP BY day
    ) s
    LEFT JOIN LATERAL (
        SELECT sum(c.readings) AS readings FROM device_reporting_daily c WHERE c.day = s.day
    ) r ON true;
