"""`citybrain schemas export DIR`: the JSON Schema of every wire model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from schemas import WIRE_MODELS


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in WIRE_MODELS.items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), ensure_ascii=False, indent=2) + "\n")
        written.append(path)
    return written


def _cmd_export(args: argparse.Namespace) -> int:
    for path in export(Path(args.dir)):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schemas", help="wire schemas")
    s = p.add_subparsers(dest="schemas_command", metavar="ACTION", required=True)
    e = s.add_parser("export", help="write the JSON Schema of every topic's model")
    e.add_argument("dir", help="output directory")
    e.set_defaults(func=_cmd_export)
