-- Timescale path only: the continuous aggregates' refresh policies reach back
-- 29 days instead of 3. Rows that arrive days late (a gateway's backlog, a
-- re-driven dead letter) invalidate buckets the aggregates had already
-- materialized; a policy only re-materializes invalidated buckets inside its
-- window, so with 3 days those buckets stayed stale for good, while the plain
-- path recomputes every dirty hour within raw retention (30 days). 29 keeps
-- the window inside raw retention, so a refresh never meets a dropped chunk
-- (which would empty its buckets). A wide window costs little: a refresh
-- reads only the invalidated ranges. (tests/integration/test_timescale_path.py)
--@if timescale
SELECT remove_continuous_aggregate_policy('readings_1m', if_exists => TRUE);
SELECT add_continuous_aggregate_policy('readings_1m',
    start_offset => INTERVAL '29 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT remove_continuous_aggregate_policy('readings_1h', if_exists => TRUE);
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '29 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes', if_not_exists => TRUE);
--@endif
