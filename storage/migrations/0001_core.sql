-- Core tables. One source for both flavours: blocks between `--@if plain` /
-- `--@if timescale` and `--@endif` are kept only for that flavour (see
-- storage/migrate.py). Every time-series table's unique key includes its time
-- column (a hypertable requirement) and makes every write idempotent.

-- Retention and partitioning per table: read by the plain path's maintenance
-- job and by the Timescale path's policies. Change a value here (UPDATE) to
-- change the tier; NULL retention keeps rows forever.
CREATE TABLE IF NOT EXISTS storage_policy (
    table_name          text PRIMARY KEY,
    time_column         text NOT NULL,
    partition_interval  interval NOT NULL,
    retention           interval,
    premake             integer NOT NULL DEFAULT 3,
    CHECK (partition_interval IN (interval '1 day', interval '1 month', interval '1 year'))
);

INSERT INTO storage_policy (table_name, time_column, partition_interval, retention, premake) VALUES
    ('readings',       'ts',         interval '1 day',   interval '30 days', 3),
    ('readings_1m',    'bucket',     interval '1 month', interval '1 year',  1),
    ('readings_1h',    'bucket',     interval '1 year',  NULL,               1),
    ('hotline_events', 'ts',         interval '1 month', NULL,               1),
    ('alert_history',  'first_seen', interval '1 month', NULL,               1),
    ('alert_actions',  'ts',         interval '1 month', NULL,               1),
    ('dlq_index',      'at',         interval '1 month', interval '90 days', 1)
ON CONFLICT (table_name) DO NOTHING;

-- Raw sensor readings (city.sensor.readings).
CREATE TABLE IF NOT EXISTS readings (
    ts           timestamptz NOT NULL,
    event_id     text NOT NULL,
    sensor_id    text NOT NULL,
    sensor_type  text NOT NULL,
    value        double precision NOT NULL,
    unit         text NOT NULL,
    district     text NOT NULL,
    street       text,
    grid         text,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    sent_at      timestamptz,
    source       text,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ts)
)
--@if plain
PARTITION BY RANGE (ts)
--@endif
;
CREATE INDEX IF NOT EXISTS readings_sensor_ts ON readings (sensor_id, ts DESC);
CREATE INDEX IF NOT EXISTS readings_district_ts ON readings (district, ts DESC);

-- 12345 hotline events (city.hotline.events). The caller travels only as
-- caller_ref, a keyed hash made at intake: no clear PII is ever stored.
CREATE TABLE IF NOT EXISTS hotline_events (
    ts            timestamptz NOT NULL,
    event_id      text NOT NULL,
    ticket_id     text NOT NULL,
    kind          text NOT NULL,
    category      text NOT NULL,
    status        text NOT NULL,
    district      text NOT NULL,
    street        text,
    grid          text,
    lat           double precision NOT NULL,
    lon           double precision NOT NULL,
    description   text NOT NULL DEFAULT '',
    urgency       text NOT NULL,
    channel       text NOT NULL,
    caller_ref    text,
    satisfaction  smallint,
    department    text,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ts)
)
--@if plain
PARTITION BY RANGE (ts)
--@endif
;
CREATE INDEX IF NOT EXISTS hotline_ticket ON hotline_events (ticket_id, ts);
CREATE INDEX IF NOT EXISTS hotline_district_ts ON hotline_events (district, ts DESC);

-- Latest revision of every alert (city.alerts): upserted, a lower revision
-- never overwrites a higher one.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       text PRIMARY KEY,
    revision       integer NOT NULL,
    rule           text NOT NULL,
    subject        text NOT NULL,
    category       text NOT NULL,
    sensor_type    text,
    severity       text NOT NULL,
    severity_rank  smallint NOT NULL,
    colour         text NOT NULL,
    status         text NOT NULL,
    title          text NOT NULL,
    district       text NOT NULL,
    street         text,
    grid           text,
    lat            double precision NOT NULL,
    lon            double precision NOT NULL,
    departments    text[] NOT NULL DEFAULT '{}',
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    count          integer NOT NULL,
    peak_severity  text,
    evidence       jsonb NOT NULL,
    payload        jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alerts_last_seen ON alerts (last_seen DESC, alert_id);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, last_seen DESC);
CREATE INDEX IF NOT EXISTS alerts_district ON alerts (district, last_seen DESC);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts (rule, last_seen DESC);
CREATE INDEX IF NOT EXISTS alerts_departments ON alerts USING gin (departments);

-- Every revision (and so every lifecycle transition) of every alert.
-- first_seen is fixed for an alert (its id derives from the window start).
CREATE TABLE IF NOT EXISTS alert_history (
    first_seen   timestamptz NOT NULL,
    alert_id     text NOT NULL,
    revision     integer NOT NULL,
    status       text NOT NULL,
    severity     text NOT NULL,
    departments  text[] NOT NULL DEFAULT '{}',
    last_seen    timestamptz NOT NULL,
    payload      jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, revision, first_seen)
)
--@if plain
PARTITION BY RANGE (first_seen)
--@endif
;

-- Operator and citizen actions on alerts (city.alert.actions).
CREATE TABLE IF NOT EXISTS alert_actions (
    ts                 timestamptz NOT NULL,
    event_id           text NOT NULL,
    alert_id           text NOT NULL,
    action             text NOT NULL,
    actor              text NOT NULL,
    actor_department   text,
    comment            text,
    target_department  text,
    satisfaction       smallint,
    ingested_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ts)
)
--@if plain
PARTITION BY RANGE (ts)
--@endif
;
CREATE INDEX IF NOT EXISTS alert_actions_alert ON alert_actions (alert_id, ts);

-- Latest revision of every incident (city.incidents).
CREATE TABLE IF NOT EXISTS incidents (
    incident_id  text PRIMARY KEY,
    revision     integer NOT NULL,
    kind         text NOT NULL,
    severity     text NOT NULL,
    severity_rank smallint NOT NULL,
    status       text NOT NULL,
    district     text NOT NULL,
    street       text,
    grid         text,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    alert_ids    text[] NOT NULL DEFAULT '{}',
    ticket_ids   text[] NOT NULL DEFAULT '{}',
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    payload      jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS incidents_last_seen ON incidents (last_seen DESC, incident_id);
CREATE INDEX IF NOT EXISTS incidents_district ON incidents (district, last_seen DESC);

-- One row per dead-lettered record (city.dlq): where it came from and why.
CREATE TABLE IF NOT EXISTS dlq_index (
    at             timestamptz NOT NULL,
    dlq_topic      text NOT NULL,
    dlq_partition  integer NOT NULL,
    dlq_offset     bigint NOT NULL,
    reason         text NOT NULL,
    message        text NOT NULL DEFAULT '',
    source         text NOT NULL DEFAULT '',
    component      text NOT NULL DEFAULT '',
    stage          text NOT NULL DEFAULT '',
    record_key     text,
    size_bytes     integer NOT NULL,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset, at)
)
--@if plain
PARTITION BY RANGE (at)
--@endif
;
CREATE INDEX IF NOT EXISTS dlq_index_reason ON dlq_index (reason, at DESC);

-- Hours whose raw readings changed since their rollups were computed (plain
-- path; the writer marks them in the same transaction as the rows).
CREATE TABLE IF NOT EXISTS rollup_dirty (
    hour   timestamptz PRIMARY KEY,
    marks  bigint NOT NULL DEFAULT 1
);

--@if timescale
SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE);
SELECT create_hypertable('hotline_events', by_range('ts', INTERVAL '1 month'), if_not_exists => TRUE);
SELECT create_hypertable('alert_history', by_range('first_seen', INTERVAL '1 month'), if_not_exists => TRUE);
SELECT create_hypertable('alert_actions', by_range('ts', INTERVAL '1 month'), if_not_exists => TRUE);
SELECT create_hypertable('dlq_index', by_range('at', INTERVAL '1 month'), if_not_exists => TRUE);
--@endif
