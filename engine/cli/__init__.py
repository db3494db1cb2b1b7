"""`python -m engine ...`: the engine from the command line, one module per command group."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import StudioError
from . import index, inspect, label, model, train

COMMAND_GROUPS = (model, label, index, inspect, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="SigLIP 2 Studio engine")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
