"""Replays started from the API (engineers and the operations center).

A request is checked here (range, area, sensors, speed, warm-up), then run as
`citybrain replay` in a child process of its own: publishing a range reads
and produces as fast as Kafka takes it, which must not stall the API's event
loop. The child is storage's replay engine unchanged: its worker is a
grandchild process, the run's topics are `replay.<run>.*`, its row is in
`replay_runs` and it appends the run to the audit trail ("replay.run"); the
API adds who asked for it ("replay.request", the token's name). The list and
the status come from `replay_runs`; a finished run's diff from its diff.json;
a run that failed before its row existed keeps its one-line error here.

At most `max_running` runs at a time per opscenter process: each runs a
worker, the heavy part on a small machine. Stopping the opscenter interrupts
its runs (SIGINT: the engine removes their topics, as after Ctrl-C).

Kafka identity: on a SASL listener (the opscenter's KAFKA_SECURITY_PROTOCOL is
SASL_*) a run does not use the opscenter's principal, which may not create
topics or groups outside `city.*`: the child runs as `replay`
(KAFKA_SASL_USERNAME=replay, KAFKA_SASL_PASSWORD from KAFKA_REPLAY_PASSWORD in
the opscenter's environment; stack.env has it). Without that password a POST
is refused (503) instead of starting a child that would fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from citybrain.errors import CityBrainError, ConfigError
from citybrain.kafka_security import without_passwords
from storage.replay_diff import RUN_RE, Scope, new_run_id, parse_speed

log = logging.getLogger("citybrain.opscenter.replays")
ROOT = Path(__file__).resolve().parent.parent
REPLAY_PRINCIPAL = "replay"
REPLAY_PASSWORD_VAR = "KAFKA_REPLAY_PASSWORD"


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: datetime = Field(alias="from", description="start of the range, ISO 8601 with zone (inclusive)")
    to: datetime = Field(description="end of the range, ISO 8601 with zone (exclusive)")
    area: str | None = Field(default=None, max_length=64, description="district (name or code) or street name")
    sensors: list[str] = Field(default_factory=list, max_length=500, description="only these sensors")
    ignore_rules: list[str] = Field(default_factory=list, max_length=50,
                                    description="leave alerts of these rules out of the comparison")
    speed: str = Field(default="max", max_length=16, description="'max' or Nx: N event seconds per wall second")
    warmup_minutes: float = Field(default=0, ge=0, le=7 * 24 * 60,
                                  description="also replay this much before `from` to build detector state")
    run: str | None = Field(default=None, max_length=41, description=f"run id ({RUN_RE.pattern}); default: new")


class Invalid(ValueError):
    """A replay request that cannot run: 422 with this reason."""


class Unavailable(ConfigError):
    """This opscenter cannot start replays as configured: 503 with this reason."""


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    run: str
    scope: Scope
    speed: float | None
    warmup: timedelta


def plan(body: ReplayIn, now: datetime, *, max_range: timedelta, area_name: Callable[[str], str | None]) -> ReplayPlan:
    """Pure: the request checked and normalised (area code -> stored name)."""
    for name, t in (("from", body.from_), ("to", body.to)):
        if t.tzinfo is None or t.utcoffset() is None:
            raise Invalid(f"{name} must carry a time zone, e.g. 2026-07-01T08:00:00+08:00")
    if body.from_ >= body.to:
        raise Invalid("from must be before to")
    if body.to - body.from_ > max_range:
        raise Invalid(f"range longer than {max_range.total_seconds() / 86400:g} days")
    if body.from_ > now:
        raise Invalid("from is in the future: nothing recorded to replay")
    area = None
    if body.area:
        area = area_name(body.area)
        if area is None:
            raise Invalid(f"area {body.area!r} is not a known district (name or code) or street")
    try:
        speed = parse_speed(body.speed)
    except CityBrainError as exc:
        raise Invalid(str(exc)) from None
    sensors = tuple(s.strip() for s in body.sensors if s.strip())
    if len(sensors) != len(body.sensors):
        raise Invalid("sensors: empty sensor id")
    run = body.run or new_run_id(now)
    if not RUN_RE.match(run):
        raise Invalid(f"run {run!r} must match {RUN_RE.pattern}")
    scope = Scope(body.from_, body.to, area, sensors, tuple(body.ignore_rules))
    return ReplayPlan(run, scope, speed, timedelta(minutes=body.warmup_minutes))


@dataclass
class _Local:
    """A run this process started: what the table cannot say yet (starting) or at all (an early failure)."""

    task: asyncio.Task[Any]
    requested_by: str
    requested_at: datetime
    plan: ReplayPlan
    error: str | None = None
    proc: asyncio.subprocess.Process | None = None


class ReplayManager:
    def __init__(self, *, database_url: SecretStr, bootstrap: str, schema: str, run_root: str,
                 base_env: Mapping[str, str] | None, partitions: int, max_running: int,
                 clock: Callable[[], datetime]) -> None:
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.schema = schema
        self.run_root = run_root
        self.base_env = dict(base_env) if base_env is not None else None
        self.partitions = partitions
        self.max_running = max_running
        self.clock = clock
        self.local: dict[str, _Local] = {}
        if self.base_env is not None and (why := self.unavailable()) is not None:
            log.warning("replays from the API will be refused: %s", why)

    @property
    def enabled(self) -> bool:
        return self.base_env is not None

    @property
    def sasl(self) -> bool:
        return (self.base_env or {}).get("KAFKA_SECURITY_PROTOCOL", "").upper().startswith("SASL_")

    def unavailable(self) -> str | None:
        """Why a run could not start with this configuration (None: it can)."""
        if self.base_env is None:
            return "this opscenter was started without replay support"
        if self.sasl and not self.base_env.get(REPLAY_PASSWORD_VAR, "").strip():
            return (f"replays on the SASL listener run as the `{REPLAY_PRINCIPAL}` principal, but "
                    f"{REPLAY_PASSWORD_VAR} is not set in the operations center's environment "
                    f"(stack.env has it; `citybrain security bootstrap` creates the user)")
        return None

    def child_env(self) -> dict[str, str]:
        """The environment of a replay's `citybrain replay` child: the opscenter's,
        the database and Kafka it uses, and on SASL the `replay` principal
        instead of the opscenter's (no service's password is passed on but that one)."""
        why = self.unavailable()
        if why is not None:
            raise Unavailable(why)
        assert self.base_env is not None
        env = dict(self.base_env, DATABASE_URL=self.database_url.get_secret_value(),
                   KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, REPLAY_RUN_ROOT=str(Path(self.run_root).resolve()))
        if self.sasl:
            password = self.base_env[REPLAY_PASSWORD_VAR].strip()
            env = without_passwords(env)  # the services' passwords (stack.env), the opscenter's own among them
            env.update(KAFKA_SASL_USERNAME=REPLAY_PRINCIPAL, KAFKA_SASL_PASSWORD=password)
        return env

    def running(self) -> int:
        return sum(1 for x in self.local.values() if not x.task.done())

    def command(self, p: ReplayPlan) -> list[str]:
        sc = p.scope
        args = [sys.executable, "-m", "citybrain.cli", "replay", "--from", sc.start.isoformat(), "--to",
                sc.end.isoformat(), "--run", p.run, "--schema", self.schema, "--speed",
                "max" if p.speed is None else f"{p.speed:g}x", "--warmup", f"{p.warmup.total_seconds():g}s",
                "--quiet"]
        if sc.area:
            args += ["--area", sc.area]
        for sensor in sc.sensors:
            args += ["--sensor", sensor]
        for rule in sc.ignore_rules:
            args += ["--ignore-rule", rule]
        if self.partitions:
            args += ["--partitions", str(self.partitions)]
        return args

    def start(self, p: ReplayPlan, requested_by: str) -> None:
        """Raises Unavailable (nothing started) when a run cannot start as configured."""
        env = self.child_env()

        async def go() -> None:
            entry = self.local[p.run]  # registered below, before this task first runs
            try:
                proc = entry.proc = await asyncio.create_subprocess_exec(
                    *self.command(p), env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
                _, err = await proc.communicate()
                if proc.returncode not in (0, 1):  # 1: --fail-on-diff only, not given here
                    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
                    entry.error = (lines[-1] if lines else f"exit code {proc.returncode}")[-2000:]
                    log.warning("replay %s ended with code %s: %s", p.run, proc.returncode, entry.error)
            except OSError as exc:  # could not even start: the run says why, the opscenter keeps serving
                entry.error = f"{type(exc).__name__}: {exc}"
                log.warning("replay %s did not start: %s", p.run, exc)

        task = asyncio.get_running_loop().create_task(go(), name=f"replay-{p.run}")
        self.local[p.run] = _Local(task, requested_by, self.clock(), p)

    async def stop_all(self, timeout_s: float = 60) -> None:
        for x in self.local.values():
            if x.proc is not None and x.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    x.proc.send_signal(signal.SIGINT)
        for x in self.local.values():
            try:
                await asyncio.wait_for(asyncio.shield(x.task), timeout_s)
            except TimeoutError:
                if x.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        x.proc.kill()

    # ------------------------------------------------------------ reading
    @staticmethod
    def row_json(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"run": r["run_id"], "status": r["status"], "started_at": r["started_at"],
                "finished_at": r["finished_at"], "from": r["range_from"], "to": r["range_to"], "area": r["area"],
                "sensors": list(r["sensors"]), "speed": r["speed"], "readings": r["readings"],
                "hotline": r["hotline"], "summary": orjson.loads(r["summary"]) if r["summary"] else None,
                "topics_kept": r["topics_kept"], "cleaned": r["cleaned_at"] is not None}

    def local_json(self, run: str) -> dict[str, Any] | None:
        x = self.local.get(run)
        if x is None:
            return None
        s = x.plan.scope
        status = "failed" if x.error else ("starting" if not x.task.done() else "unknown")
        speed = "max" if x.plan.speed is None else f"{x.plan.speed:g}x"
        return {"run": run, "status": status, "started_at": None, "finished_at": None, "from": s.start,
                "to": s.end, "area": s.area, "sensors": list(s.sensors), "speed": speed, "readings": 0,
                "hotline": 0, "summary": None, "topics_kept": False, "cleaned": False, "error": x.error}

    def decorate(self, item: dict[str, Any], requesters: Mapping[str, str]) -> dict[str, Any]:
        """Who asked (the audit trail: lasts across restarts; None for a run started from the CLI)."""
        x = self.local.get(item["run"])
        item["requested_by"] = requesters.get(item["run"]) or (x.requested_by if x else None)
        if x is not None and x.error:
            item["error"] = x.error
        return item

    @staticmethod
    async def requesters(conn: Any, runs: list[str]) -> dict[str, str]:
        rows = await conn.fetch("SELECT subject, actor FROM audit_log WHERE kind = 'replay.request' "
                                "AND subject = ANY($1)", runs)
        return {r["subject"]: r["actor"] for r in rows}

    async def list(self, conn: Any, limit: int) -> list[dict[str, Any]]:
        rows = await conn.fetch("SELECT * FROM replay_runs ORDER BY started_at DESC, run_id DESC LIMIT $1", limit)
        who = await self.requesters(conn, [r["run_id"] for r in rows])
        items = [self.decorate(self.row_json(r), who) for r in rows]
        known = {i["run"] for i in items}
        extra = [j for run in self.local if run not in known and (j := self.local_json(run)) is not None]
        return extra + items

    async def get(self, conn: Any, run: str) -> dict[str, Any] | None:
        r = await conn.fetchrow("SELECT * FROM replay_runs WHERE run_id = $1", run)
        if r is None:
            return self.local_json(run)
        item = self.decorate(self.row_json(r), await self.requesters(conn, [run]))
        if r["status"] == "done" and r["run_dir"]:
            path = Path(r["run_dir"]) / "diff.json"
            try:
                item["diff"] = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                item["diff"] = None  # another host's run, or its directory removed: the summary stands
        return item
