"""`citybrain sim run` (publish to MQTT, paced) and `citybrain sim export`
(write files as fast as possible, with a progress bar).

    citybrain sim run --scenario demo                       # 36 sensors, pollution, speed 60
    citybrain sim run --sensors 5000 --speed 0 --batch 500 --duration 10m
    citybrain sim export out/ --sensors 100000 --duration 1h --incidents all --faults 10

Live runs place event time so the run ends at "now" (an accelerated run
replays the recent past), because the connectors reject readings from the
future; exports default to a fixed start, so the same options give the same
files.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from citybrain.errors import ConfigError
from sim.fleet import City
from sim.generate import generate
from sim.hotline import iso
from sim.output import FileSink, Progress, write_events, write_meta
from sim.scenario import FAULT_KINDS, INCIDENT_KINDS, Scenario
from sim.scenarios import DEMO_DURATION, DEMO_SENSORS, DEMO_SPEED, city, demo

MAX_BATCH = 10_000  # readings per message the native decoder accepts
MAX_PAST = timedelta(days=7)  # oldest event time the connectors accept
EXPORT_START = datetime(2025, 7, 1, 0, 0, tzinfo=UTC)  # 08:00 in Beijing
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"bad duration {text!r}: use a number with s, m, h or d (e.g. 90s, 15m, 6h, 2d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def parse_start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"bad start {text!r}: use ISO 8601 with a zone, e.g. 2025-07-01T08:00+08:00") from None
    if dt.tzinfo is None:
        raise ConfigError(f"start {text!r} has no time zone: add +08:00 or Z")
    return dt


def live_start(now: datetime, duration: timedelta, speed: float | None) -> datetime:
    """Event time of the first event so that the last one is not in the future."""
    lag = duration - duration / speed if speed else duration
    return (now - lag).replace(microsecond=0)


def _incidents(text: str) -> list[str]:
    items = [i.strip() for i in text.split(",") if i.strip() and i.strip() != "none"]
    for i in items:
        if i != "all" and i not in INCIDENT_KINDS:
            raise ConfigError(f"unknown incident {i!r}; known: all, none, {', '.join(INCIDENT_KINDS)}")
    return items


def _faults(text: str) -> int | list[str]:
    if text.isdigit():
        return int(text)
    items = [f.strip() for f in text.split(",") if f.strip()]
    for f in items:
        if f not in FAULT_KINDS:
            raise ConfigError(f"unknown fault {f!r}; give a count or kinds from: {', '.join(FAULT_KINDS)}")
    return items


def build(args: argparse.Namespace, start: datetime, duration: timedelta) -> tuple[City, Scenario]:
    if args.scenario == "demo":
        return demo(start, duration, seed=args.seed, sensors=args.sensors or DEMO_SENSORS,
                    calls_per_hour=args.calls_per_hour if args.calls_per_hour is not None else 6.0)
    districts = [d.strip() for d in args.districts.split(",")] if args.districts else None
    return city(start, duration, seed=args.seed, sensors=args.sensors or 1000, districts=districts,
                incidents=_incidents(args.incidents), faults=_faults(args.faults),
                calls_per_hour=args.calls_per_hour if args.calls_per_hour is not None else 30.0,
                prefix=args.prefix, ticket_updates=args.ticket_updates)


def _duration(args: argparse.Namespace) -> timedelta:
    if args.duration:
        return parse_duration(args.duration)
    return DEMO_DURATION if args.scenario == "demo" else timedelta(hours=1)


def _cmd_run(args: argparse.Namespace) -> int:
    from sim.mqtt import Publisher, PublishSettings, publish_events  # paho only when publishing

    duration = _duration(args)
    speed = args.speed if args.speed is not None else (DEMO_SPEED if args.scenario == "demo" else 1.0)
    if speed < 0:
        raise ConfigError("speed must be >= 0 (0: as fast as possible)")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ConfigError(f"batch must be 1..{MAX_BATCH} readings (the connectors refuse bigger batches)")
    now = datetime.now(UTC)
    start = parse_start(args.start) if args.start else live_start(now, duration, speed or None)
    if not args.start and start < now - MAX_PAST:
        raise ConfigError("this run would start more than 7 days in the past, which the connectors reject; "
                          "raise --speed or shorten --duration")
    c, sc = build(args, start, duration)
    try:
        settings = PublishSettings(publisher=args.publisher, topic_root=args.topic_root)  # type: ignore[call-arg]
    except ValidationError:
        raise ConfigError("MQTT_PUBLISH_URL is not set; source .run/stack.env") from None
    if args.out:
        write_meta(c, sc, Path(args.out))
    pub = Publisher(settings)
    pub.connect()
    print(f"sim: {len(c.sensors)} sensors, {iso_range(sc)}, speed {speed or 'max'}, "
          f"{len(sc.labels)} labels", file=sys.stderr)
    sink = FileSink(Path(args.out)) if args.out else None
    try:
        stats = publish_events(generate(c, sc), pub, sc.start, speed or None, batch=args.batch,
                               on_event=sink.add if sink else None)
    finally:
        pub.close()
        if sink is not None:
            sink.close()
    print(f"sim: published {stats.readings} readings and {stats.calls} hotline events in {stats.messages} messages, "
          f"{stats.acked} acknowledged, {stats.wall_s:.1f} s", file=sys.stderr)
    return 0


def iso_range(sc: Scenario) -> str:
    return f"{iso(sc.start)} .. {iso(sc.end)}"


def _cmd_export(args: argparse.Namespace) -> int:
    duration = _duration(args)
    start = parse_start(args.start) if args.start else EXPORT_START
    c, sc = build(args, start, duration)
    out = Path(args.dir)
    write_meta(c, sc, out)
    progress = None if args.no_progress else Progress(sc.end - sc.start)
    t0 = time.monotonic()
    counts = write_events(generate(c, sc), out, fmt=args.format, progress=progress, start=sc.start)
    if progress is not None:
        progress.close(sc.end - sc.start, counts["readings"])
    wall = time.monotonic() - t0
    print(f"sim: wrote {counts['readings']} readings, {counts['calls']} hotline events, {len(sc.labels)} labels, "
          f"{len(c.sensors)} devices to {out} in {wall:.1f} s", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=("city", "demo"), default="city",
                   help="city: options below; demo: 36 sensors, one pollution episode (default speed 60)")
    p.add_argument("--sensors", type=int, help="number of sensors (city default 1000)")
    p.add_argument("--districts", help="comma-separated districts (names or codes); default all 16")
    p.add_argument("--duration", help="event time to cover, e.g. 90s, 15m, 6h, 2d (default 1h; demo 6h)")
    p.add_argument("--start", help="event time of the start, ISO 8601 with zone")
    p.add_argument("--seed", type=int, default=1, help="same seed, same run (default 1)")
    p.add_argument("--incidents", default="",
                   help=f"comma-separated: all, {', '.join(INCIDENT_KINDS)} (default none)")
    p.add_argument("--faults", default="0", help=f"a count, or comma-separated kinds: {', '.join(FAULT_KINDS)}")
    p.add_argument("--calls-per-hour", type=float, help="background hotline calls per hour (default 30; demo 6)")
    p.add_argument("--ticket-updates", action="store_true",
                   help="follow each call with its ticket's in_progress, resolved and feedback events (demo: on)")
    p.add_argument("--prefix", default="", help="prefix for sensor ids (keeps runs apart in one database)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="the city simulator")
    s = p.add_subparsers(dest="sim_command", metavar="ACTION", required=True)
    r = s.add_parser("run", help="publish a run to MQTT (MQTT_PUBLISH_URL), paced by --speed")
    _common(r)
    r.add_argument("--speed", type=float, help="event seconds per wall second; 0 = as fast as possible "
                   "(default 1; demo 60)")
    r.add_argument("--batch", type=int, default=1, help="readings per MQTT message (>1: batch topic)")
    r.add_argument("--publisher", default="sim", help="name in the batch topic city/sensors/batch/<name>")
    r.add_argument("--topic-root", default="city", help="first topic level (default city)")
    r.add_argument("--out", help="also write the run's files (labels, devices, readings, calls) here")
    r.set_defaults(func=_cmd_run)
    e = s.add_parser("export", help="write readings, calls, labels and the device registry to files")
    e.add_argument("dir", help="output directory")
    _common(e)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    e.set_defaults(func=_cmd_export)
