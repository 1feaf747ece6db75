"""Storage: schema migrations, the batched idempotent writer, queries (and, later, replay).

Two paths behind one schema: TimescaleDB (hypertables, compression, retention
policies, continuous aggregates) when the extension is present, native
PostgreSQL range partitions with project-maintained rollups when it is not.
"""
