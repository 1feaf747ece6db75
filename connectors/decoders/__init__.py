"""Payload decoders: plain functions `decode(topic, payload, ctx) -> [event]`."""
