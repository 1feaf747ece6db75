"""Start the pipeline's processes (connector, worker, writer, ...) as
children, watch them, stop them cleanly. Used by `citybrain demo`, the
end-to-end benchmark and the end-to-end tests, so all three run the same
processes the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from citybrain.errors import ServiceError

# what the processes log once they are ready for input
WORKER_READY = "[^Worker]: Ready"
CONNECTOR_SUBSCRIBED = "MQTT 127.0.0.1"  # logged once connected; it subscribes in on_connect


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_start: int = 0  # size of the log when the current process started: markers count from here

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Supervisor:
    log_dir: Path
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    children: dict[str, Child] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Child:
        """Start `citybrain <args>` (or a python -m module when args[0] == '-m')."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, *args] if args[0] == "-m" else [sys.executable, "-m", "citybrain.cli", *args]
        full_env = {**self.base_env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        child = Child(name, argv, full_env, self.log_dir / f"{name}.log")
        self._spawn(child)
        self.children[name] = child
        return child

    def _spawn(self, child: Child) -> None:
        log = child.log_path.open("ab")
        child.log_start = log.tell()
        child.proc = subprocess.Popen(
            child.argv, env=child.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def restart(self, name: str) -> Child:
        child = self.children[name]
        self._spawn(child)
        return child

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        if child.proc and child.proc.poll() is None:
            child.proc.send_signal(sig)
            child.proc.wait(timeout=30)

    def wait_for_log(self, name: str, marker: str, timeout: float = 180, poll_s: float = 0.5) -> None:
        """Block until `marker` appears in what the child's current process
        logged (e.g. the worker's "[^Worker]: Ready"); raises ServiceError when the child exits first or
        the marker does not come within `timeout` (a loaded machine is slow to
        start a worker, and input sent before it is ready lands late)."""
        child = self.children[name]
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if child.log_path.exists():
                with child.log_path.open("rb") as f:
                    f.seek(child.log_start)
                    if marker.encode() in f.read():
                        return
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} did not log {marker!r} within {timeout:g} s (log: {child.log_path})")
            time.sleep(poll_s)

    def check_alive(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                tail = child.log_path.read_text(errors="replace")[-2000:]
                raise ServiceError(f"{child.name} exited with code {child.proc.returncode}; log tail:\n{tail}")

    def stop_all(self, timeout: float = 20) -> None:
        """SIGINT first (clean flush), SIGKILL what is still there after `timeout`."""
        for child in self.children.values():
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
