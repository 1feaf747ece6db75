-- Time partitions (plain path) and the 1-minute / 1-hour rollups (both paths).
--
-- Rollup columns are the same either way, so queries do not care which path
-- made them: bucket, sensor_id, sensor_type, district, street, n, vmin, vmax,
-- vsum, vavg. Buckets are aligned to UTC.

--@if plain
-- Partition bounds for a time and a step (1 day, 1 month or 1 year), in UTC.
CREATE OR REPLACE FUNCTION cb_partition_bounds(t timestamptz, step interval,
                                               OUT lo timestamptz, OUT hi timestamptz)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    unit text := CASE step WHEN interval '1 day' THEN 'day'
                           WHEN interval '1 month' THEN 'month'
                           WHEN interval '1 year' THEN 'year' END;
BEGIN
    IF unit IS NULL THEN
        RAISE EXCEPTION 'unsupported partition interval %', step;
    END IF;
    lo := date_trunc(unit, t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi := ((lo AT TIME ZONE 'UTC') + step) AT TIME ZONE 'UTC';
END $$;

-- Create (if missing) the partition of `parent` that holds time `t`. Safe
-- under concurrency: a partition created meanwhile by someone else is fine.
CREATE OR REPLACE FUNCTION cb_ensure_partition(parent regclass, t timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    nsp text; rel text; step interval; lo timestamptz; hi timestamptz; part text;
BEGIN
    SELECT n.nspname, c.relname INTO nsp, rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    EXECUTE format('SELECT partition_interval FROM %I.storage_policy WHERE table_name = $1', nsp)
       INTO step USING rel;
    IF step IS NULL THEN
        RAISE EXCEPTION 'no storage_policy row for %.%', nsp, rel;
    END IF;
    SELECT b.lo, b.hi INTO lo, hi FROM cb_partition_bounds(t, step) b;
    part := rel || '_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD');
    IF to_regclass(format('%I.%I', nsp, part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                       nsp, part, nsp, rel, lo, hi);
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        RETURN false;
    END;
    RETURN true;
END $$;

-- Ensure the partitions for every time in `ts` (the writer passes one time
-- per distinct bucket of a batch); returns how many it created.
CREATE OR REPLACE FUNCTION cb_ensure_partitions(parent regclass, ts timestamptz[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE t timestamptz; made integer := 0;
BEGIN
    FOREACH t IN ARRAY ts LOOP
        IF cb_ensure_partition(parent, t) THEN made := made + 1; END IF;
    END LOOP;
    RETURN made;
END $$;

-- Partitions of `parent` with their bounds.
CREATE OR REPLACE FUNCTION cb_partitions(parent regclass)
RETURNS TABLE (partition_name text, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent
       AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
$$;

CREATE TABLE IF NOT EXISTS readings_1m (
    bucket       timestamptz NOT NULL,
    sensor_id    text NOT NULL,
    sensor_type  text NOT NULL,
    district     text NOT NULL,
    street       text,
    n            bigint NOT NULL,
    vmin         double precision NOT NULL,
    vmax         double precision NOT NULL,
    vsum         double precision NOT NULL,
    vavg         double precision NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE IF NOT EXISTS readings_1h (
    bucket       timestamptz NOT NULL,
    sensor_id    text NOT NULL,
    sensor_type  text NOT NULL,
    district     text NOT NULL,
    street       text,
    n            bigint NOT NULL,
    vmin         double precision NOT NULL,
    vmax         double precision NOT NULL,
    vsum         double precision NOT NULL,
    vavg         double precision NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX IF NOT EXISTS readings_1m_district ON readings_1m (district, bucket);
CREATE INDEX IF NOT EXISTS readings_1h_district ON readings_1h (district, bucket);

-- Recompute the rollups of up to `max_hours` dirty hours from raw rows.
-- Idempotent: an hour's buckets are replaced by what the raw rows say now.
-- Hours older than `horizon` (raw already past retention) are only unmarked,
-- never recomputed, so rollups outlive their raw rows. Concurrency: the
-- writer marks an hour with INSERT .. ON CONFLICT DO UPDATE in the same
-- transaction as its rows, so deleting the mark waits for that transaction
-- and the recompute (a later statement, a fresh snapshot) sees its rows; a
-- writer that commits after the recompute marks the hour again.
CREATE OR REPLACE FUNCTION cb_refresh_rollups(horizon timestamptz, max_hours integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE h timestamptz; done integer := 0;
BEGIN
    DELETE FROM rollup_dirty WHERE hour < horizon;
    FOR h IN
        DELETE FROM rollup_dirty
         WHERE hour IN (SELECT d.hour FROM rollup_dirty d ORDER BY d.hour LIMIT max_hours)
        RETURNING hour
    LOOP
        PERFORM cb_ensure_partition('readings_1m'::regclass, h);
        PERFORM cb_ensure_partition('readings_1h'::regclass, h);
        DELETE FROM readings_1m WHERE bucket >= h AND bucket < h + interval '1 hour';
        INSERT INTO readings_1m (bucket, sensor_id, sensor_type, district, street, n, vmin, vmax, vsum, vavg)
        SELECT date_bin(interval '1 minute', ts, timestamptz '2000-01-01 00:00:00+00'), sensor_id,
               min(sensor_type), min(district), min(street),
               count(*), min(value), max(value), sum(value), avg(value)
          FROM readings
         WHERE ts >= h AND ts < h + interval '1 hour'
         GROUP BY 1, 2;
        DELETE FROM readings_1h WHERE bucket = h;
        INSERT INTO readings_1h (bucket, sensor_id, sensor_type, district, street, n, vmin, vmax, vsum, vavg)
        SELECT h, sensor_id, min(sensor_type), min(district), min(street),
               sum(n), min(vmin), max(vmax), sum(vsum), sum(vsum) / sum(n)
          FROM readings_1m
         WHERE bucket >= h AND bucket < h + interval '1 hour'
         GROUP BY sensor_id;
        done := done + 1;
    END LOOP;
    RETURN done;
END $$;
-- Pin the function to this schema: it names its tables unqualified.
DO $$ BEGIN
    EXECUTE format('ALTER FUNCTION cb_refresh_rollups(timestamptz, integer) SET search_path = %I, public',
                   current_schema());
END $$;
--@endif

--@if timescale
-- Continuous aggregates; real-time (materialized_only = false) so the newest
-- buckets come from raw rows until refreshed. 1-hour is hierarchical on 1-minute.
CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket,
       sensor_id,
       min(sensor_type) AS sensor_type,
       min(district) AS district,
       min(street) AS street,
       count(*) AS n,
       min(value) AS vmin,
       max(value) AS vmax,
       sum(value) AS vsum,
       avg(value) AS vavg
  FROM readings
 GROUP BY time_bucket(INTERVAL '1 minute', ts), sensor_id
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sensor_id,
       min(sensor_type) AS sensor_type,
       min(district) AS district,
       min(street) AS street,
       sum(n)::bigint AS n,
       min(vmin) AS vmin,
       max(vmax) AS vmax,
       sum(vsum) AS vsum,
       sum(vsum) / sum(n) AS vavg
  FROM readings_1m
 GROUP BY time_bucket(INTERVAL '1 hour', bucket), sensor_id
WITH NO DATA;

-- Refresh windows stay well inside raw retention (30 days), so dropping raw
-- chunks never empties materialized buckets.
SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes', if_not_exists => TRUE);

-- Compression of raw readings after an age (segment by sensor: series
-- queries read one segment), then retention tiers from storage_policy.
ALTER TABLE readings SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'sensor_id',
    timescaledb.compress_orderby = 'ts DESC');
SELECT add_compression_policy('readings', compress_after => INTERVAL '7 days', if_not_exists => TRUE);

DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT table_name, retention FROM storage_policy WHERE retention IS NOT NULL LOOP
        PERFORM add_retention_policy(p.table_name::regclass, drop_after => p.retention, if_not_exists => TRUE);
    END LOOP;
END $$;
--@endif
