"""`python -m llmtune_companion.installers.launch --home DIR COMMAND...`: the CLI with a settings directory.

Used where the login entry cannot set an environment variable (a Windows Run value).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config.paths import HOME_ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmtune_companion.installers.launch")
    parser.add_argument("--home", required=True, help="the settings directory")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    os.environ[HOME_ENV] = args.home
    from ..cli.main import main as cli_main

    return cli_main(args.command)


if __name__ == "__main__":
    sys.exit(main())
