"""`serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..config.paths import Paths
from .common import CLIError, load_settings


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 meaning any free one; a clear error otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535, or 0 for any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535, or 0 for any free port)")
    return port


def cmd_serve(args: argparse.Namespace, paths: Paths) -> int:
    from .. import logs
    from ..server import AlreadyRunning, PortBusy, read_daemon_file, run

    try:
        level = logs.check_level(os.environ.get(logs.LEVEL_ENV, "INFO"))
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None
    config = load_settings(paths)
    host = args.host or config.settings.server.host
    port = config.settings.server.port if args.port is None else args.port
    logs.configure(paths, level)

    def ready(url: str) -> None:
        print(f"llmtune-companion {__version__} serving at {url}/v1", flush=True)
        print(f"  settings:    {paths.root}", flush=True)
        print(f"  log:         {paths.log_file}", flush=True)
        print("  local token: run `llmtune-companion token` and use it as the API key", flush=True)
        print("  stop with Ctrl+C (or `llmtune-companion stop`)", flush=True)

    try:
        return run(paths, config, host, port, ready)
    except AlreadyRunning as exc:
        raise CLIError(str(exc), 1) from None
    except PortBusy:
        info = read_daemon_file(paths)
        other = f" (llmtune-companion pid {info.get('pid')} is serving at {info.get('url')})" if info else ""
        raise CLIError(f"port {port} on {host} is already in use{other}; stop it or pass --port", 1) from None
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--host", help="loopback address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, metavar="PORT",
                       help="port to listen on, 1-65535 (default server.port, 8742; 0 picks a free one)")
    serve.set_defaults(func=cmd_serve)
