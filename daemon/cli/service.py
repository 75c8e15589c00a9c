"""`llmtune-companion service install|uninstall|status`: start the companion at login."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from typing import TYPE_CHECKING, Any

import orjson

from ..config.paths import Paths
from .common import CLIError

if TYPE_CHECKING:
    from ..installers.windows import Registry

HEALTH_WAIT = 20.0  # seconds install waits for the new service to answer /healthz


def _registry() -> Registry | None:
    from ..installers.windows import system_registry

    return system_registry()


def cmd_install(args: argparse.Namespace, paths: Paths) -> int:
    from ..installers import service
    from ..installers.plan import render

    platform = args.platform or service.host_platform()
    other = platform != service.host_platform()
    if other and not args.dry_run:
        raise CLIError(f"--platform {platform} only renders that OS's files: add --dry-run", 2)
    tray = not args.no_tray
    if tray and not other and importlib.util.find_spec("llmtune_companion.tray") is None:
        print("note: this install has no tray (llmtune_companion.tray): installing the daemon only", file=sys.stderr)
        tray = False
    ctx = service.make_context(platform, paths, tray=tray, probe=not other)
    plan = service.make_plan(ctx)
    if args.dry_run:
        print(render(plan), end="")
        return 0
    try:
        report = service.install(plan, paths, _registry())
    except service.ServiceError as exc:
        raise CLIError(str(exc)) from None
    for line in report.lines:
        print(line)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    url = service.wait_healthy(paths, HEALTH_WAIT)
    if url is None:
        raise CLIError(f"installed, but the daemon did not answer within {HEALTH_WAIT:.0f}s: see "
                       "`llmtune-companion service status` and the log in " + str(paths.log_dir))
    print(f"the companion runs at {url}/v1 and starts at login")
    print("  its API key for your IDE: `llmtune-companion token`")
    return 0


def _confirm_purge(paths: Paths, yes: bool) -> bool:
    if yes:
        return True
    print(f"Remove {paths.root} with your keys, local tokens, caches and logs? [y/N] ", end="", file=sys.stderr,
          flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_uninstall(args: argparse.Namespace, paths: Paths) -> int:
    from ..installers import service

    if args.purge and not _confirm_purge(paths, args.yes):
        raise CLIError("nothing removed (answer y, or pass --yes, to confirm --purge)", 1)
    ctx = service.make_context(service.host_platform(), paths)
    try:
        report = service.uninstall(ctx, paths, _registry())
    except service.ServiceError as exc:
        raise CLIError(str(exc)) from None
    for line in report.lines or ["the service was not installed"]:
        print(line)
    if args.purge and paths.root.exists():
        from ..config.workspaces import forget_keys

        for warning in forget_keys(paths):
            print(f"warning: {warning}", file=sys.stderr)
        shutil.rmtree(paths.root)
        print(f"removed {paths.root}")
    return 0


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    from ..installers import service

    ctx = service.make_context(service.host_platform(), paths)
    report = service.status(ctx, paths, _registry())
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(report))
    return 0 if report["running"] else 3


def format_status(report: dict[str, Any]) -> str:
    if not report["installed"]:
        state = "not installed (`llmtune-companion service install` starts the companion at login)"
    else:
        state = (f"installed ({report['manager']}), {'enabled' if report['enabled'] else 'NOT enabled'}, "
                 f"{'running' if report['running'] else 'NOT running'}")
    lines = [f"service:  {state}"]
    if not report["installed"] and report["running"]:
        lines.append("daemon:   running (started by hand)")
    lines += [f"file:     {name}" for name in report["files"]]
    return "\n".join(lines)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("service", help="start the companion at login (install, uninstall, status)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="run the companion in the background now and at every login")
    install.add_argument("--no-tray", action="store_true", help="no tray icon at login")
    install.add_argument("--dry-run", action="store_true",
                         help="print every file, registry value and command, and change nothing")
    install.add_argument("--platform", choices=("linux", "macos", "windows"),
                         help="render another OS's files (with --dry-run)")
    install.set_defaults(func=cmd_install)
    uninstall = actions.add_parser("uninstall", help="stop the service and remove what install wrote")
    uninstall.add_argument("--purge", action="store_true",
                           help="also delete the settings directory and the keys in the OS keychain, after asking")
    uninstall.add_argument("--yes", action="store_true", help="do not ask before --purge")
    uninstall.set_defaults(func=cmd_uninstall)
    status = actions.add_parser("status", help="installed, enabled, running, and the files involved")
    status.add_argument("--json", action="store_true", help="print {installed, enabled, running, files} as JSON")
    status.set_defaults(func=cmd_status)
