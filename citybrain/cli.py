"""`citybrain` command line. Each subcommand lives beside the code it drives
and registers itself through `register(subparsers)`; this module only wires
them and turns project errors into one-line messages."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from citybrain.errors import CityBrainError

# modules that define register(subparsers); each adds real commands only
COMMAND_MODULES = [
    "schemas.cli",
    "connectors.cli",
    "connectors.dlq_cli",
    "streams.cli",
    "streams.rules_cli",
    "streams.detect_cli",
    "storage.cli",
    "storage.replay_cli",
    "storage.audit_cli",
    "sim.cli",
    "citybrain.demo",
    "opscenter.cli",
    "citybrain.security_cli",
]


class OneLineParser(argparse.ArgumentParser):
    """A bad argument gets one line saying what is wrong and how to mend it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="citybrain", description="City brain backend")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except CityBrainError as exc:
        print(f"citybrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
