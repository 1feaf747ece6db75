-- Ingest cost (plain path): the readings key was (event_id, ts). event_id is
-- a hash, so every insert landed on a random leaf of an index that spans the
-- whole day partition, and a second btree (sensor_id, ts DESC) was paid per
-- row as well. The key becomes (sensor_id, ts, event_id): inserts land at
-- each sensor's newest end (a few hundred hot leaves, not the whole index),
-- and the same index serves every per-sensor read (series, latest value,
-- alert detail), so (sensor_id, ts DESC) goes. Idempotency stays per event:
-- a redelivered reading is the same record (the connector derives event_id,
-- sensor_id and ts from the payload, Kafka redelivers the same bytes), so it
-- meets its own (sensor_id, ts, event_id) and is skipped.
--
-- Timescale path unchanged: there readings are compressed after 7 days, and
-- re-keying a hypertable that holds compressed chunks is nothing the pglite
-- tier can show to be safe; that path was not measured here either.
--
-- On an existing database this rebuilds the readings index of every
-- partition (30 days of raw rows) inside the migration's transaction, which
-- holds an exclusive lock on `readings` meanwhile: run it in a quiet hour.
-- Rows already unique on (event_id, ts) are unique on the wider key.
--@if plain
ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_pkey;
ALTER TABLE readings ADD CONSTRAINT readings_pkey PRIMARY KEY (sensor_id, ts, event_id);
DROP INDEX IF EXISTS readings_sensor_ts;
--@endif
