-- Emergency mode switches (平急转换) as they were published on
-- city.control.mode (the opscenter's POST /api/v1/mode): who switched which
-- scope ("city" or "district:<code>") to which mode, when. The control topic
-- is compacted (the latest switch per scope), so this table is the only full
-- history; `citybrain replay` republishes the switches of its range at their
-- event time. Every switch as it arrived, refused ones included (the worker's
-- mode board refuses them again in a replay); the key includes the time
-- column like every time-series table's, so a redelivery is skipped.
INSERT INTO storage_policy (table_name, time_column, partition_interval, retention, premake) VALUES
    ('mode_switches', 'ts', interval '1 month', NULL, 1)
ON CONFLICT (table_name) DO NOTHING;

CREATE TABLE IF NOT EXISTS mode_switches (
    ts                 timestamptz NOT NULL,
    event_id           text NOT NULL,
    scope              text NOT NULL,
    mode               text NOT NULL CHECK (mode IN ('normal', 'emergency')),
    actor              text NOT NULL,
    actor_department   text,
    comment            text,
    payload            jsonb NOT NULL,
    ingested_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, ts)
)
--@if plain
PARTITION BY RANGE (ts)
--@endif
;
CREATE INDEX IF NOT EXISTS mode_switches_scope ON mode_switches (scope, ts);

--@if timescale
SELECT create_hypertable('mode_switches', by_range('ts', INTERVAL '1 month'), if_not_exists => TRUE);
--@endif
