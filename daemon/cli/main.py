"""`llmtune-companion`: the parser assembled from one module per command group, and main().

A new command group is a module with a `register(commands)` function and one line in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config.paths import Paths
from . import connect, dashboard, jobs, lifecycle, models, serve, service, tools, tray, workspace
from .common import CLIError

COMMANDS = (serve, lifecycle, workspace, models, tools, jobs, dashboard, connect, service, tray)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtune-companion",
        description="A localhost companion between your IDE and your language models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    paths = Paths.from_env()
    try:
        return int(args.func(args, paths))
    except CLIError as exc:
        print(f"llmtune-companion: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
