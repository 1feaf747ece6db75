"""`citybrain dlq list` and `citybrain dlq redrive`: what was rejected and why,
and re-submitting it after a fix (decoder fixed, registry updated).

Redrive re-runs the current decoders on the original bytes of records that
came from MQTT (source `mqtt:<topic>`) and re-produces records that came from
a Kafka topic (source `kafka:<topic>`) to that topic. Event ids are stable,
so redriving twice stores nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from citybrain.dlq import H_MESSAGE, H_REASON, H_SOURCE, H_TIME, decode_headers
from citybrain.errors import ConfigError, RejectedPayload
from citybrain.topics import Topics
from schemas import HotlineEvent, SensorReading
from schemas.common import now_utc


@dataclass(frozen=True, slots=True)
class DlqRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    message: str
    source: str
    time: str


async def read_dlq(bootstrap: str, topic: str, limit: int | None = None) -> list[DlqRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # topic may be new to this client
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[DlqRecord] = []
        async def behind() -> bool:
            return any([(await consumer.position(tp)) < ends[tp] for tp in tps])

        while await behind():
            for msgs in (await consumer.getmany(timeout_ms=1000, max_records=2000)).values():
                for m in msgs:
                    h = decode_headers(m.headers)
                    out.append(
                        DlqRecord(
                            m.partition,
                            m.offset,
                            m.key,
                            m.value or b"",
                            h.get(H_REASON, "?"),
                            h.get(H_MESSAGE, ""),
                            h.get(H_SOURCE, ""),
                            h.get(H_TIME, ""),
                        )
                    )
            if limit is not None and len(out) >= limit:
                break
        return out[:limit] if limit is not None else out
    finally:
        await consumer.stop()


def select(records: list[DlqRecord], reason: str | None, offsets: list[int] | None) -> list[DlqRecord]:
    return [
        r
        for r in records
        if (reason is None or r.reason == reason) and (not offsets or r.offset in offsets)
    ]


def _preview(value: bytes, width: int = 60) -> str:
    text = value[:width].decode("utf-8", "replace").replace("\n", " ")
    return text + ("…" if len(value) > width else "")


def _cmd_list(args: argparse.Namespace) -> int:
    bootstrap, topics = _env(args)
    records = select(asyncio.run(read_dlq(bootstrap, topics.dlq)), args.reason, None)
    counts = Counter(r.reason for r in records)
    for r in records[-args.limit :]:
        print(f"{r.partition}:{r.offset:<8} {r.time[:19]:<19} {r.reason:<18} {r.source:<40} {r.message[:80]}")
        print(f"{'':11}payload: {_preview(r.value)}")
    print(f"{len(records)} record(s) in {topics.dlq}" + "".join(f"; {k}: {v}" for k, v in counts.most_common()))
    return 0


async def redrive(
    bootstrap: str, topics: Topics, records: list[DlqRecord], pii_key: bytes, registry: Any = None, dry_run: bool = False
) -> tuple[int, list[tuple[DlqRecord, str]]]:
    """Returns (events re-submitted, [(record, why it still fails)])."""
    from connectors.base import DecodeContext, pick_decoder
    from connectors.mqtt_kafka import default_routes

    routes = default_routes()
    ctx = DecodeContext(now=now_utc(), registry=registry, pii_key=pii_key)
    out: list[tuple[str, bytes | None, bytes]] = []
    failed: list[tuple[DlqRecord, str]] = []
    for r in records:
        if r.source.startswith("mqtt:"):
            mqtt_topic = r.source[len("mqtt:") :]
            try:
                for ev in pick_decoder(routes, mqtt_topic)(mqtt_topic, r.value, ctx):
                    if isinstance(ev, SensorReading):
                        out.append((topics.readings, ev.sensor_id.encode(), ev.to_json()))
                    elif isinstance(ev, HotlineEvent):
                        out.append((topics.hotline, ev.ticket_id.encode(), ev.to_json()))
            except RejectedPayload as exc:
                failed.append((r, f"{exc.reason}: {exc.message}"))
        elif r.source.startswith("kafka:"):
            out.append((r.source[len("kafka:") :], r.key, r.value))
        else:
            failed.append((r, f"unknown source {r.source!r}"))
    if dry_run or not out:
        return len(out), failed
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in out]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(out), failed


def _cmd_redrive(args: argparse.Namespace) -> int:
    bootstrap, topics = _env(args)
    records = select(asyncio.run(read_dlq(bootstrap, topics.dlq)), args.reason, args.offset)
    if not records:
        print("nothing selected: check --reason / --offset against `citybrain dlq list`")
        return 1
    from connectors.registry import DeviceRegistry

    key = os.environ.get("CONNECTOR_PII_KEY", "").encode()
    reg_file = os.environ.get("CONNECTOR_REGISTRY_FILE")
    registry = DeviceRegistry.from_file(reg_file) if reg_file else DeviceRegistry.sample()
    n, failed = asyncio.run(redrive(bootstrap, topics, records, key, registry, dry_run=args.dry_run))
    verb = "would re-submit" if args.dry_run else "re-submitted"
    print(f"{verb} {n} event(s) from {len(records) - len(failed)} record(s); {len(failed)} still rejected")
    for r, why in failed[:20]:
        print(f"  {r.partition}:{r.offset} {why}")
    return 0 if not failed else 1


def _env(args: argparse.Namespace) -> tuple[str, Topics]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (source .run/stack.env or run `make stack-up`)")
    return bootstrap, Topics(prefix=args.topic_prefix)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", help="inspect and re-submit dead-lettered input")
    s = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="show rejected records and why")
    ls.add_argument("--reason", help="only this reason class (e.g. malformed_json)")
    ls.add_argument("--limit", type=int, default=50, help="show the last N records (default 50)")
    ls.add_argument("--topic-prefix", default="", help=argparse.SUPPRESS)
    ls.set_defaults(func=_cmd_list)
    rd = s.add_parser("redrive", help="re-submit selected records through the current decoders")
    rd.add_argument("--reason", help="only records rejected for this reason")
    rd.add_argument("--offset", type=int, action="append", help="only these DLQ offsets (repeatable)")
    rd.add_argument("--dry-run", action="store_true", help="decode and count, produce nothing")
    rd.add_argument("--topic-prefix", default="", help=argparse.SUPPRESS)
    rd.set_defaults(func=_cmd_redrive)
