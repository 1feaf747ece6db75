"""Ingestion: MQTT (and HTTP Open311) into Kafka, losing nothing."""
