"""Shared test settings: the stack's addresses come from .run/stack.env
(written by `make stack-up`) unless the environment already gives them."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_stack_env() -> None:
    env_file = ROOT / ".run" / "stack.env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ.setdefault(key, shlex.split(value)[0] if value else "")


_load_stack_env()
