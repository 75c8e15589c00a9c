"""`dashboard`: open the dashboard in the default browser through a one-time login link."""

from __future__ import annotations

import argparse
import webbrowser

from ..config.paths import Paths
from .client import call_daemon, control


def cmd_dashboard(args: argparse.Namespace, paths: Paths) -> int:
    url, token = control(paths)
    link: str = call_daemon(url, "/companion/v1/dashboard/link", token, method="POST")["url"]
    if args.print_url:
        print(link)
        return 0
    if not webbrowser.open(link):
        # No browser to open (a server, a bare session): the link still works from another one.
        print(f"no browser could be opened; open this link within a minute (it works once):\n{link}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dashboard = commands.add_parser("dashboard", help="open the dashboard in the browser (a one-time login link)")
    dashboard.add_argument("--print-url", action="store_true",
                           help="print the login link instead of opening a browser (it works once, for a minute)")
    dashboard.set_defaults(func=cmd_dashboard)
