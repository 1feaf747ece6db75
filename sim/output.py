"""Files: readings and calls as JSONL or CSV, labels and the device registry as
JSON, and a small stderr progress bar for long exports."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from sim.fleet import City, registry
from sim.generate import Event, Reading
from sim.hotline import iso
from sim.scenario import Scenario

READING_COLUMNS = ("event_id", "sensor_id", "sensor_type", "value", "unit", "ts",
                   "district", "street", "grid", "lat", "lon")  # fmt: skip
CALL_COLUMNS = ("event_id", "ticket_id", "kind", "status", "category", "ts", "district", "street", "grid",
                "lat", "lon", "urgency", "channel", "caller_name", "caller_phone", "description",
                "satisfaction")  # fmt: skip


class Progress:
    """`[#####.....]  45%  1,234,567 readings  52,000/s` on one stderr line,
    redrawn at most every `every` seconds of the injected monotonic clock."""

    def __init__(self, total: float, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic, every: float = 0.25, width: int = 30) -> None:
        self.total = max(total, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.clock, self.every, self.width = clock, every, width
        self.t0 = self.last = clock()
        self.drawn = False

    def update(self, done: float, count: int, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < self.every:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * self.width)
        rate = count / max(now - self.t0, 1e-9)
        self.stream.write(f"\r[{bar:<{self.width}}] {frac:4.0%}  {count:,} readings  {rate:,.0f}/s ")
        self.stream.flush()
        self.drawn = True

    def close(self, done: float, count: int) -> None:
        self.update(done, count, force=True)
        self.stream.write("\n")
        self.stream.flush()


def _reading_row(r: Reading) -> tuple[Any, ...]:
    loc = r.sensor.loc
    return (r.event_id, r.sensor.sensor_id, r.sensor.sensor_type.value, r.value, r.sensor.unit, r.ts,
            loc["district"], loc["street"], loc["grid"], loc["lat"], loc["lon"])


def _call_row(p: dict[str, Any]) -> tuple[Any, ...]:
    loc = p["location"]
    return (p["event_id"], p["ticket_id"], p["kind"], p["status"], p["category"], p["ts"], loc["district"],
            loc["street"], loc["grid"], loc["lat"], loc["lon"], p["urgency"], p["channel"],
            p.get("caller_name", ""), p.get("caller_phone", ""), p.get("description", ""),
            p.get("satisfaction", ""))


def write_meta(city: City, scenario: Scenario, out: Path) -> None:
    """labels.json (ground truth), devices.json (registry), scenario.json (what was run)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(
        json.dumps([lb.to_dict() for lb in scenario.labels], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "devices.json").write_bytes(orjson.dumps(registry(city), option=orjson.OPT_INDENT_2) + b"\n")
    meta = {"seed": scenario.seed, "city_seed": city.seed, "start": iso(scenario.start), "end": iso(scenario.end),
            "sensors": len(city.sensors), "districts": list(city.districts),
            "calls_per_hour": scenario.calls_per_hour, "ticket_updates": scenario.ticket_updates,
            "labels": len(scenario.labels)}
    (out / "scenario.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


class FileSink:
    """readings.<fmt> and calls.<fmt>, written one event at a time (`add`), so
    a live run can keep its files as it publishes. Calls and ticket updates go
    to calls.<fmt> in their MQTT wire form (caller in clear: the data is generated)."""

    def __init__(self, out: Path, fmt: str = "jsonl") -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be jsonl or csv, got {fmt!r}")
        out.mkdir(parents=True, exist_ok=True)
        self.readings = self.calls = 0
        self._rf = open(out / f"readings.{fmt}", "w", encoding="utf-8", newline="")
        self._cf = open(out / f"calls.{fmt}", "w", encoding="utf-8", newline="")
        self._rw = self._cw = None
        if fmt == "csv":
            self._rw, self._cw = csv.writer(self._rf), csv.writer(self._cf)
            self._rw.writerow(READING_COLUMNS)
            self._cw.writerow(CALL_COLUMNS)

    def add(self, ev: Event) -> None:
        if isinstance(ev, Reading):
            self.readings += 1
            if self._rw is None:
                self._rf.write(ev.json())
                self._rf.write("\n")
            else:
                self._rw.writerow(_reading_row(ev))
        else:
            self.calls += 1
            p = ev.payload()
            if self._cw is None:
                self._cf.write(json.dumps(p, ensure_ascii=False) + "\n")
            else:
                self._cw.writerow(_call_row(p))

    def close(self) -> dict[str, int]:
        self._rf.close()
        self._cf.close()
        return {"readings": self.readings, "calls": self.calls}


def write_events(events: Iterable[Event], out: Path, fmt: str = "jsonl",
                 progress: Progress | None = None, start: int = 0) -> dict[str, int]:
    """Write all events to readings.<fmt> and calls.<fmt>; returns the counts."""
    sink = FileSink(out, fmt)
    try:
        for ev in events:
            sink.add(ev)
            if progress is not None and not sink.readings & 0x3FF and isinstance(ev, Reading):
                progress.update(ev.t - start, sink.readings)
    finally:
        counts = sink.close()
    return counts
