"""City brain: shared entry points (CLI), settings and errors."""

from citybrain import aiokafka_fixes

# every component (worker, writer, connectors, replay, benches) talks to Kafka through
# aiokafka, whose producer can lose a topic from its metadata for good (see the module)
aiokafka_fixes.apply()
