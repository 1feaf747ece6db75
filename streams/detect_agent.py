"""Readings -> detection engine -> alert revisions (one open alert per rule and subject).

`DetectStage.process(messages)` handles one batch of `city.sensor.readings`
records: decode, step each sensor's state, publish the detection revisions,
write each touched sensor's state once to the changelog table. It is fed two
ways, with the same code:

- **the fast path** (live and replay workers): the consumer's drain loop hands
  it each fetched batch of readings directly (streams.faust_drain's batch
  handlers) and acks them once it returns. Faust's per-event machinery (the
  conductor's delivery, an Event and a stream buffer slot per record, the
  stream's per-event acking and sensors) cost about as much CPU per reading as
  the detection itself (bench.worker);
- **the `detect` agent** over the same topic, which Faust's `test_context()`
  drives in the agent tests and which keeps the topic subscribed and the state
  table co-partitioned with it (recovery and rebalancing are Faust's, as before).

Per-sensor state lives in a changelog-backed table keyed by the raw sensor_id
bytes; each key's changelog record goes to its source partition (Faust's
co-partitioning), so a restarted or rebalanced worker recovers exactly the
state of the partitions it owns. The table is written once per key per batch,
with the partition given explicitly rather than through Faust's current-event
context.

A record that cannot be processed is dead-lettered with a reason; it is never
allowed to raise out of the stage (in the agent an exception would ack it
silently, faust-streaming#315; in the drain loop it would stop the consumer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from citybrain.errors import RejectedPayload
from schemas import SensorReading
from streams import markers
from streams.changelog import ChangelogBatcher
from streams.context import EPOCH, WorkerContext
from streams.faust_drain import register_batch_handler
from streams.pipeline import ReadingProcessor

log = logging.getLogger("citybrain.streams")

DECODED_MAX = 20_000  # decoded sensor states kept between batches (~10 kB each)
# A batch of 1,000 readings is ~100 ms of CPU: run whole, it held the lifecycle
# agent (detection -> department topic) on the same loop for as long, the p99 of
# that hop in bench.e2e. Yielding every YIELD_EVERY readings bounds each wait to
# ~1-2 ms; the lifecycle awaits several times per alert (one send per topic), so
# the slice counts: 50 -> 10 took that hop's p99 at 3,000/s from 107-279 ms to
# 78-84 ms (three interleaved 60 s runs each), at no measurable cost in bench.worker.
YIELD_EVERY = 10


@dataclass(frozen=True, slots=True)
class _AsEvent:
    """A record in the shape `WorkerContext.dead_letter` reads (an event's `.message`)."""

    message: Any


class DetectStage:
    def __init__(self, ctx: WorkerContext, table: Any, changelog: ChangelogBatcher) -> None:
        self.ctx = ctx
        self.table = table
        self.changelog = changelog
        self.processor = ReadingProcessor(ctx.rules.table, mode_of=ctx.modes.mode_for, emergency=ctx.policy.emergency)
        # Event-time progress PER SOURCE PARTITION: a worker consumes its
        # partitions unevenly (catching up, replaying at full speed), so a
        # worker-wide maximum would make the sensors of a lagging partition look
        # silent; a partition's own maximum depends only on its own, ordered input.
        self.watermarks: dict[int, datetime] = {}
        # key -> (the bytes this stage last stored, that state decoded): spares an orjson.loads per reading
        self.decoded: dict[bytes, tuple[bytes, dict[str, Any]]] = {}
        # the keys a batch has stepped and not yet stored (the tick leaves them to the batch)
        self.in_flight: dict[bytes, tuple[int, dict[str, Any]]] = {}
        # one batch at a time, whoever feeds it (a lane left over from a restarted fetcher,
        # the agent): two interleaved batches would step a sensor from the same old state
        self._one_batch = asyncio.Lock()
        self.by_markers = ctx.settings.progress_markers

    def current_rules(self) -> None:
        # hot reload: the holder swaps its table; the processor reads it per batch
        self.processor.routing = self.ctx.rules.table

    async def process(self, messages: Sequence[Any]) -> None:
        """One batch of readings records: aiokafka's records from the drain loop, Faust `Message`s
        from the agent (both have topic, partition, offset, key, value)."""
        async with self._one_batch:
            await self._process(messages)

    async def _process(self, messages: Sequence[Any]) -> None:
        ctx, processor, watermarks, decoded = self.ctx, self.processor, self.watermarks, self.decoded
        data = self.table.data
        self.current_rules()
        touched: dict[bytes, tuple[int, dict[str, Any]]] = {}
        self.in_flight = touched
        # the validator itself: model_validate_json is a Python wrapper around it (~0.3 us a reading)
        validate = SensorReading.__pydantic_validator__.validate_json
        marked: dict[int, tuple[datetime, bool]] = {}  # this batch's progress markers: partition -> (time, final)
        by_markers, marker_prefix = self.by_markers, markers.PREFIX
        for n, msg in enumerate(messages, 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if by_markers and msg.value and msg.value.startswith(marker_prefix):
                try:
                    _, at, final = markers.decode(msg.value)
                except ValueError as exc:
                    await ctx.dead_letter(_AsEvent(msg), "invalid_marker", str(exc), "detect")
                    continue
                if msg.partition not in marked or at > marked[msg.partition][0]:
                    marked[msg.partition] = (at, final)
                continue
            try:
                reading = validate(msg.value)
            except ValidationError as exc:
                await ctx.dead_letter(_AsEvent(msg), "invalid_reading", str(exc.errors(include_url=False)[0]["msg"]),
                                      "detect")
                continue
            key = reading.sensor_id.encode()
            partition = msg.partition
            try:
                st: dict[str, Any] | None
                held = touched.get(key)
                if held is not None:
                    st = held[1]
                else:
                    raw = data.get(key)
                    cached = decoded.get(key)
                    # the same bytes object as this stage last stored: its decoded form is current
                    # (a recovery or rebalance puts other objects in the table)
                    st = cached[1] if cached is not None and cached[0] is raw else (orjson.loads(raw) if raw else None)
                st, alerts = processor.step(st, reading)
                st["p"] = partition
                touched[key] = (partition, st)
                if reading.ts > watermarks.get(partition, EPOCH):
                    watermarks[partition] = reading.ts
            except RejectedPayload as exc:  # late beyond the allowed lateness, counted in the DLQ
                await ctx.dead_letter(_AsEvent(msg), exc.reason, exc.message, "detect")
                continue
            except Exception as exc:  # one bad record must not stop or silently ack the stream
                log.exception("processing failed")
                decoded.pop(key, None)  # the step may have left it half-changed
                await ctx.dead_letter(_AsEvent(msg), "processing_error", f"{type(exc).__name__}: {exc}", "detect")
                continue
            for alert in alerts:
                await ctx.publish_detected(alert)
        if len(decoded) + len(touched) > DECODED_MAX:
            decoded.clear()  # bounded memory for a city of many sensors; the hot ones come back
        changes: list[tuple[int, bytes, bytes]] = []
        dumps = orjson.dumps
        for key, (partition, st) in touched.items():
            body = dumps(st)
            data[key] = body
            decoded[key] = (body, st)
            changes.append((partition, key, body))
        self.in_flight = {}
        if changes:
            await self.changelog.send(changes)
        if marked:
            await self._forward_markers(marked)

    async def _forward_markers(self, marked: dict[int, tuple[datetime, bool]]) -> None:
        """A replay's markers (streams.markers): nothing earlier than T follows on
        partition p. Its sensors are swept for silence at T minus the lateness,
        as live sweeps them at its watermark minus the lateness; a silence opens
        with the same alert whether a sweep or the next reading finds it
        (streams.detectors.health). Then every partition of the detected topic
        is told how far this partition's alerts have got, after those alerts."""
        lateness = timedelta(seconds=self.ctx.settings.lateness_s)
        for p, (at, _) in marked.items():
            if at > self.watermarks.get(p, EPOCH):
                self.watermarks[p] = at
        await self._sweep({p: at - lateness for p, (at, _) in marked.items()})
        topic = self.ctx.extras["detected_topic"]
        for p, (at, final) in sorted(marked.items()):
            body = markers.encode(f"detect:{p}", markers.forwarded(at, final, lateness), final)
            await self.ctx.send_to_every_partition(topic, markers.KEY, body)

    async def tick(self, lateness: timedelta) -> None:
        """Silence is detected by event-time progress, not by the next reading:
        each sensor this worker holds sees its partition's watermark (the
        partition's latest event time minus the lateness). Between batches only,
        as before the batches yielded: a sweep in the middle of one would see a
        watermark of half a batch, and the same input could give other alerts."""
        async with self._one_batch:
            await self._tick(lateness)

    async def _tick(self, lateness: timedelta) -> None:
        await self._sweep({p: t - lateness for p, t in self.watermarks.items()})

    async def _sweep(self, marks: dict[int, datetime]) -> None:
        """Tick every sensor of a partition in `marks` at that partition's mark."""
        if not marks:
            return
        self.current_rules()
        data = self.table.data
        changes: list[tuple[int, bytes, bytes]] = []
        for n, key in enumerate(list(data.keys())):
            if n % 200 == 199:
                await asyncio.sleep(0)  # let the readings be processed between slices of the sweep
            raw = data.get(key)
            if not raw or key in self.in_flight:  # a batch holds a newer state; it has a reading, so no silence
                continue
            cached = self.decoded.get(key)
            st = cached[1] if cached is not None and cached[0] is raw else orjson.loads(raw)
            watermark = marks.get(st.get("p", 0))
            if watermark is None:
                continue
            try:
                st, alerts = self.processor.tick(st, watermark)
            except Exception:
                log.exception("tick failed for %r", key)
                self.decoded.pop(key, None)  # the tick may have left it half-changed
                continue
            if not alerts:
                # a tick that signals nothing leaves a sensor's state as it was
                # (tests/unit/test_detect_tick.py): nothing to store, no encoding
                continue
            for alert in alerts:
                await self.ctx.publish_detected(alert)
            body = orjson.dumps(st)
            data[key] = body
            self.decoded[key] = (body, st)
            changes.append((st.get("p", 0), key, body))
        # a key a batch wrote again while the sweep yielded has its newer record queued already
        current = [c for c in changes if data.get(c[1]) is c[2]]
        if current:
            await self.changelog.send(current)


@dataclass(frozen=True, slots=True)
class DetectHandles:
    """For tests and tools: the detect agent, its per-sensor state table, the
    sender of that table's changelog records and the stage both paths feed."""

    agent: Any
    table: Any
    changelog: ChangelogBatcher
    stage: DetectStage


def register(ctx: WorkerContext) -> None:
    app, settings = ctx.app, ctx.settings
    readings_topic = app.topic(
        ctx.topics.readings, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=settings.partitions
    )
    table = app.Table("sensor-state", key_type=bytes, value_type=bytes, partitions=settings.partitions)
    ctx.extras["detected_topic"] = app.topic(ctx.topics.alerts_detected, key_type=bytes, value_type=bytes,
                                             value_serializer="raw")
    changelog = ChangelogBatcher(app, table)
    stage = DetectStage(ctx, table, changelog)
    if settings.fast_path:
        register_batch_handler(app, ctx.topics.readings, stage.process, settings.detect_batch_max)

    @app.agent(readings_topic, name="detect")
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await stage.process([event.message for event in events])

    ctx.extras["detect"] = DetectHandles(detect, table, changelog, stage)

    @app.timer(interval=settings.tick_every_s)
    async def tick_sensors() -> None:
        await stage.tick(timedelta(seconds=settings.lateness_s))
