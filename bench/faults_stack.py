"""A private local stack for the fault matrix: its own Kafka, Mosquitto and
PostgreSQL (own run directory and ports), started, broken and restarted by
the bench through deploy/local/stack.sh, so killing a service never disturbs
the shared stack other tests run on."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from citybrain.errors import ServiceError

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "local" / "stack.sh"
# variables that make stack.sh reuse a service instead of starting its own, and
# client settings of the shared stack (its stack.env) that must not leak into ours
_GIVEN = ("KAFKA_BOOTSTRAP_SERVERS", "MQTT_URL", "MQTT_PUBLISH_URL", "DATABASE_URL", "CONNECTOR_PII_KEY")
_SHARED_PREFIXES = ("KAFKA_", "MQTT_", "CITYBRAIN_")


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port(lo: int = 20000, hi: int = 29000, also: tuple[int, ...] = (), taken: tuple[int, ...] = ()) -> int:
    """A free loopback port p with p + each of `also` free too (stack.sh derives
    Kafka's controller and SASL ports and Mosquitto's TLS port that way)."""
    rng = random.Random()
    for _ in range(2000):
        p = rng.randrange(lo, hi)
        ports = [p, *(p + d for d in also)]
        if not set(ports) & set(taken) and all(_free(q) for q in ports):
            return p
    raise ServiceError(f"no free loopback port in {lo}-{hi}")


class PrivateStack:
    def __init__(self, run_dir: Path | None = None) -> None:
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix="citybrain-faults-"))
        # postgres and mosquitto run as their own users and must reach their dirs
        run_dir.mkdir(parents=True, exist_ok=True)
        run_dir.chmod(0o755)
        self.run_dir = run_dir
        self.kafka_port = free_port(20000, 29000, also=(1, 2))
        self.mqtt_port = free_port(20000, 29000, also=(7000,), taken=(self.kafka_port, self.kafka_port + 1))
        self.pg_port = free_port(20000, 29000, taken=(self.kafka_port, self.kafka_port + 1, self.kafka_port + 2,
                                                      self.mqtt_port, self.mqtt_port + 7000))
        self.env = {k: v for k, v in os.environ.items() if k not in _GIVEN and not k.startswith(_SHARED_PREFIXES)}
        self.env.update(
            CITYBRAIN_RUN_DIR=str(run_dir),
            CITYBRAIN_KAFKA_PORT=str(self.kafka_port),
            CITYBRAIN_MQTT_PORT=str(self.mqtt_port),
            CITYBRAIN_PG_PORT=str(self.pg_port),
        )
        shared = ROOT / ".run" / "kafka"
        if (shared / "libs").is_dir() and (shared / "libs.stamp").is_file():
            # reuse the jars Maven already resolved for the shared stack (read only)
            (run_dir / "kafka").mkdir(parents=True, exist_ok=True)
            link = run_dir / "kafka" / "libs"
            if not link.exists():
                link.symlink_to(shared / "libs")
            shutil.copy(shared / "libs.stamp", run_dir / "kafka" / "libs.stamp")

    # ------------------------------------------------------------ stack.sh
    def _stack(self, *args: str, timeout: float = 240) -> None:
        try:
            out = subprocess.run(
                ["bash", str(STACK), *args], env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"stack.sh {' '.join(args)} did not finish within {timeout:.0f} s") from exc
        if out.returncode != 0:
            tail = " | ".join(out.stderr.strip().splitlines()[-3:])
            raise ServiceError(f"stack.sh {' '.join(args)} failed: {tail}")

    def up(self, *services: str) -> None:
        self._stack("up", *services)

    def down(self) -> None:
        self._stack("down", timeout=120)

    def settings(self) -> dict[str, str]:
        """Everything the private stack.env exports (KAFKA_BOOTSTRAP_SERVERS, MQTT_URL,
        MQTT_PUBLISH_URL, DATABASE_URL, CONNECTOR_PII_KEY, its secrets dir ...)."""
        out: dict[str, str] = {}
        for line in (self.run_dir / "stack.env").read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line.removeprefix("export ").partition("=")
                out[k] = v.strip("'")
        return out

    # ------------------------------------------------------------ Kafka
    def kafka_pid(self) -> int:
        return int((self.run_dir / "kafka" / "kafka.pid").read_text().split()[0])

    def kafka_signal(self, sig: int, wait_s: float = 120) -> float:
        """Send `sig` to the broker and wait until it has exited; returns the seconds it took."""
        proc = psutil.Process(self.kafka_pid())
        t0 = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except psutil.TimeoutExpired:
            proc.kill()  # a controlled shutdown that hangs is itself a finding; do not hang the bench
            proc.wait(timeout=30)
            raise ServiceError(f"Kafka did not exit within {wait_s:.0f} s of signal {sig}; killed") from None
        return time.monotonic() - t0

    def kafka_freeze(self) -> None:
        os.kill(self.kafka_pid(), signal.SIGSTOP)

    def kafka_thaw(self) -> None:
        os.kill(self.kafka_pid(), signal.SIGCONT)

    # ------------------------------------------------------------ PostgreSQL
    def pg_stop_immediate(self) -> None:
        """The equivalent of a crash: no checkpoint, clients cut off, WAL replay at start."""
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            raise ServiceError("pg_ctl not found under /usr/lib/postgresql")
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(bins[-1]), "-D", str(self.run_dir / "pg" / "data"),
             "-m", "immediate", "-w", "stop"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise ServiceError(f"pg_ctl stop -m immediate failed: {out.stderr.strip()[-300:]}")

    def mosquitto_log(self) -> Path:
        return self.run_dir / "mosquitto" / "mosquitto.log"
