-- Incident replay runs (`citybrain replay`): one row per run, so `--list` and
-- `--clean` know what exists and the diff summary outlives the run's topics.
-- Plain table in both flavours: a few rows, no time series.
CREATE TABLE IF NOT EXISTS replay_runs (
    run_id        text PRIMARY KEY,
    status        text NOT NULL CHECK (status IN ('running', 'done', 'interrupted', 'failed')),
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    range_from    timestamptz NOT NULL,
    range_to      timestamptz NOT NULL,
    area          text,
    sensors       text[] NOT NULL DEFAULT '{}',
    rules_file    text,
    speed         text NOT NULL,
    readings      bigint NOT NULL DEFAULT 0,
    hotline       bigint NOT NULL DEFAULT 0,
    summary       jsonb,
    run_dir       text NOT NULL,
    pid           integer,
    host          text,
    topics_kept   boolean NOT NULL DEFAULT false,
    cleaned_at    timestamptz
);
CREATE INDEX IF NOT EXISTS replay_runs_started ON replay_runs (started_at DESC);
