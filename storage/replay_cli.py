"""`citybrain replay`: re-run a recorded time range through an isolated
worker and compare its alerts with the recorded ones; `--list` / `--clean`
manage past runs. The environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS,
KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* - the `replay` principal on the SASL
listener -, REPLAY_*, and the WORKER_* the replay worker inherits) is read here only."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from citybrain.errors import ConfigError, ServiceError
from schemas.common import now_utc
from storage.replay_diff import Scope, check_run, new_run_id, parse_range, parse_speed, render_table

if TYPE_CHECKING:
    from storage.replay import ReplaySettings

T = TypeVar("T")


class StderrProgress:
    """Running counts ("published", "detected") update one line on a terminal
    and print every few seconds into a log; other messages print as lines."""

    RUNNING = ("published ", "detected ")

    def __init__(self, quiet: bool = False, every_s: float = 3.0) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.every_s = every_s
        self.last = 0.0
        self.open_line = False

    def __call__(self, text: str) -> None:
        if self.quiet:
            return
        running = text.startswith(self.RUNNING) and not text.endswith("/s)")
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}" + ("" if running else "\n"))
            sys.stderr.flush()
            return
        t = time.monotonic()
        if running and t - self.last < self.every_s:
            return
        self.last = t
        print(text, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> ReplaySettings:
    from storage.replay import ReplaySettings

    overrides: dict[str, Any] = {"db_schema": args.schema} if args.schema else {}
    if getattr(args, "partitions", None):
        overrides["partitions"] = args.partitions
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    try:
        return ReplaySettings(**overrides)  # type: ignore[call-arg]  # the rest from the environment
    except ValidationError as exc:
        missing = ", ".join(str(e["loc"][0]).upper() for e in exc.errors() if e["type"] == "missing")
        raise ConfigError(f"replay needs {missing or 'valid settings'}: source .run/stack.env") from None


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return timedelta(seconds=float(t[:-1]) * units[t[-1]])
        return timedelta(seconds=float(t))
    except ValueError:
        raise ConfigError(f"duration {text!r} is not like 90s, 30m, 2h") from None


def _run_with_sigint(coro_factory: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a coroutine with SIGINT/SIGTERM setting a stop event instead of raising mid-await."""

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await coro_factory(stop)

    return asyncio.run(main())


def _cmd_replay(args: argparse.Namespace) -> int:
    if args.list:
        return _cmd_list(args)
    if args.clean is not None:
        return _cmd_clean(args)
    if not args.t_from or not args.t_to:
        raise ConfigError("replay needs --from and --to (or --list / --clean)")
    start, end = parse_range(args.t_from, args.t_to)
    speed = parse_speed(args.speed)
    warmup = _duration(args.warmup)
    rules = Path(args.rules).resolve() if args.rules else None
    if args.partitions is not None and not 1 <= args.partitions <= 64:
        raise ConfigError(f"--partitions {args.partitions} is not 1..64")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers {args.workers} is not 1..64")
    if rules is not None and not rules.is_file():
        raise ConfigError(f"rules file {args.rules} does not exist")
    if rules is not None:
        from streams.routing import load_rules

        load_rules(rules)  # a broken rules file fails here in one line, not inside the worker
    run = check_run(args.run) if args.run else new_run_id(now_utc())
    scope = Scope(start, end, args.area, tuple(args.sensor or ()), tuple(args.ignore_rule or ()))

    from storage.replay import ReplayRequest, run_replay

    settings = _settings(args)
    req = ReplayRequest(run=run, scope=scope, warmup=warmup, rules_file=rules, speed=speed, keep=args.keep,
                        json_path=Path(args.json) if args.json else None)
    progress = StderrProgress(quiet=args.quiet)
    env = dict(os.environ)
    try:
        out = _run_with_sigint(
            lambda stop: run_replay(settings, req, stop=stop, base_env=env, now=now_utc, progress=progress)
        )
    except (asyncpg.PostgresError, OSError, KafkaError) as exc:
        raise ServiceError(f"replay {run} failed: {type(exc).__name__}: {exc}") from exc
    if out.status == "interrupted":
        kept = "kept" if req.keep else "removed"
        print(f"replay {run} interrupted after {out.readings} readings; its topics were {kept}", file=sys.stderr)
        return 130
    assert out.diff is not None
    print(f"replay {run}: {out.readings} readings, {out.hotline} hotline events, {out.actions} operator actions, "
          f"{out.modes} mode switches; published in "
          f"{out.publish_s:.1f} s, through detection in {out.detect_s:.1f} s by {out.workers} worker"
          f"{'s' if out.workers != 1 else ''}")
    print(render_table(out.diff))
    print(f"diff: {out.run_dir / 'diff.json'}" + (f" and {req.json_path}" if req.json_path else ""))
    return 0 if out.diff.empty or not args.fail_on_diff else 1


def _fmt(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if isinstance(t, datetime) else "-"


def _cmd_list(args: argparse.Namespace) -> int:
    from storage.replay import list_runs

    settings = _settings(args)
    try:
        runs = asyncio.run(list_runs(settings))
    except (asyncpg.PostgresError, OSError, KafkaError) as exc:  # e.g. SASL credentials refused
        raise ServiceError(f"replay --list failed: {type(exc).__name__}: {exc}") from exc
    if not runs:
        print("no replay runs")
        return 0
    print(f"{'run':24} {'status':11} {'started':16} {'range':33} {'readings':>9}  {'diff':28} topics")
    for r in runs:
        s = r.summary or {}
        diff = (f"{s.get('identical', 0)}={s.get('missing', 0)}-{s.get('new', 0)}+{s.get('changed', 0)}~"
                if s else "-")
        rng = f"{_fmt(r.range_from)} .. {_fmt(r.range_to)[11:]}" if r.range_from else "-"
        print(f"{r.run:24} {r.status:11} {_fmt(r.started_at):16} {rng:33} {r.readings:>9}  {diff:28} "
              f"{len(r.topics)}")
    print("diff: identical=missing-new+changed~")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from storage.replay import clean_runs

    settings = _settings(args)
    run = check_run(args.clean) if args.clean else None
    try:
        done = asyncio.run(clean_runs(settings, run, now_utc))
    except (asyncpg.PostgresError, OSError, KafkaError) as exc:
        raise ServiceError(f"replay --clean failed: {type(exc).__name__}: {exc}") from exc
    for rid, n in done:
        print(f"replay {rid}: {n} topics removed, worker data removed")
    if not done:
        print("nothing to clean")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run a recorded time range through an isolated worker and diff the alerts")
    p.add_argument("--from", dest="t_from", metavar="T1", help="start of the range, ISO 8601 with zone")
    p.add_argument("--to", dest="t_to", metavar="T2", help="end of the range (exclusive), ISO 8601 with zone")
    p.add_argument("--area", help="only this district or street (name as stored, e.g. 朝阳区)")
    p.add_argument("--sensor", action="append", metavar="ID", help="only this sensor (repeatable)")
    p.add_argument("--rules", metavar="FILE", help="routing rules file for the replay (default: the live one)")
    p.add_argument("--ignore-rule", action="append", metavar="RULE",
                   help="leave alerts of this rule out of the comparison, e.g. health:silence (repeatable)")
    p.add_argument("--speed", default="max", help="'max' (default) or Nx: N event seconds per wall second")
    p.add_argument("--warmup", default="0s",
                   help="also replay this much before --from to build detector state (e.g. 1h); its alerts "
                        "are not compared")
    p.add_argument("--keep", action="store_true", help="keep the run's topics and worker data")
    p.add_argument("--json", metavar="PATH", help="also write the diff as JSON here")
    p.add_argument("--run", help="run id (default: time + random suffix)")
    p.add_argument("--partitions", type=int, help="partitions of the replay topics (default: as many as the live "
                   "readings topic has; give the recording's count when it came from another prefix)")
    p.add_argument("--workers", type=int, help="worker processes sharing the partitions (default: one per CPU "
                   "core, at most one per partition)")
    p.add_argument("--schema", help="storage schema to read (default $REPLAY_DB_SCHEMA or public)")
    p.add_argument("--fail-on-diff", action="store_true", help="exit 1 when the diff is not empty")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--list", action="store_true", help="list replay runs")
    p.add_argument("--clean", nargs="?", const="", metavar="RUN",
                   help="remove the topics and worker data of RUN, or of every finished run")
    p.set_defaults(func=_cmd_replay)
