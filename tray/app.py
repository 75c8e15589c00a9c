"""`llmtune-companion tray` and the `llmtune-companion-tray` GUI entry point."""

from __future__ import annotations

import logging
import sys

from ..config.paths import Paths
from .shell import TrayApp, TrayUnavailable, load_pystray


def run(paths: Paths) -> int:
    """Show the tray until Quit; TrayUnavailable when this session cannot show one."""
    pystray = load_pystray()
    return TrayApp(paths, pystray).run()


def gui_main() -> int:
    """The GUI script (no console on Windows): errors go to the log and a dialog-free exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(Paths.from_env())
    except TrayUnavailable as exc:
        logging.getLogger(__name__).error("%s", exc)
        print(f"llmtune-companion-tray: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
