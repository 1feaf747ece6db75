"""Pieces every benchmark shares: percentiles, per-process CPU and memory,
the local services' pids, the machine's conditions."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import psutil
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


class ProcStats:
    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                continue
        self.cpu0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self.peak = dict.fromkeys(self.procs, 0)

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def sample(self) -> None:
        for n, p in self.procs.items():
            try:
                self.peak[n] = max(self.peak[n], p.memory_info().rss)
            except psutil.Error:
                pass

    def report(self) -> dict[str, dict[str, float]]:
        return {
            n: {"cpu_s": round(self._cpu(p) - self.cpu0[n], 2), "peak_rss_mb": round(self.peak[n] / 2**20, 1)}
            for n, p in self.procs.items()
        }


def service_pids() -> dict[str, int]:
    pids = {}
    for name, rel in (("kafka", "kafka/kafka.pid"), ("mosquitto", "mosquitto/mosquitto.pid")):
        f = ROOT / ".run" / rel
        if f.exists():
            pids[name] = int(f.read_text().split()[0])
    pg = ROOT / ".run" / "pg" / "data" / "postmaster.pid"
    if pg.exists():
        pids["postgres"] = int(pg.read_text().split()[0])
    return pids


def conditions() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


async def topics_on_broker(bootstrap: str) -> int | None:
    """How many topics the cluster holds: a condition of every worker figure
    (each whole-cluster metadata refresh decodes them all in pure Python, so
    a dev broker with thousands of leftover test topics slows the worker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        return len(await admin.list_topics())
    except Exception as exc:  # reported, never raised: the figures matter more
        print(f"bench: could not count the broker's topics ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def drop_topics(bootstrap: str, *prefixes: str) -> int:
    """Delete a run's topics (its topic prefix, its app id's internal topics).

    Why: a run leaves ~100 topics; a cluster that keeps them all grows to
    thousands, and every whole-cluster metadata refresh a later run makes
    (Faust asks for several at start-up) decodes all of them in pure Python.
    Best effort: a failure here must not hide the run's figures."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        for i in range(0, len(names), 200):
            await admin.delete_topics(names[i:i + 200])
        return len(names)
    except Exception as exc:  # reported, never raised: the figures matter more
        print(f"bench: could not delete the run's topics ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 0
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
