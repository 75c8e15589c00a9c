"""`tray`: the companion in the system tray (status, approvals, notifications); see docs/tray.md."""

from __future__ import annotations

import argparse
import logging
import os

from ..config.paths import Paths
from .common import CLIError


def cmd_tray(args: argparse.Namespace, paths: Paths) -> int:
    from ..tray.app import run
    from ..tray.shell import TrayUnavailable

    logging.basicConfig(level=os.environ.get("LLMTUNE_COMPANION_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(paths)
    except TrayUnavailable as exc:
        raise CLIError(str(exc), 2) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tray = commands.add_parser("tray", help="show the companion in the system tray (status, approvals, "
                                            "notifications)")
    tray.set_defaults(func=cmd_tray)
