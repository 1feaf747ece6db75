-- Ingest cost: every btree on `readings` is paid per row by the writer. Area
-- queries read the rollups (or, for short raw ranges, one day's partition),
-- so the (district, ts) btree goes; a BRIN on ts (near-free to maintain,
-- rows arrive roughly in time order) narrows raw scans inside a partition.
DROP INDEX IF EXISTS readings_district_ts;
CREATE INDEX IF NOT EXISTS readings_ts_brin ON readings USING brin (ts);
