"""`llmtune-companion`: serve the daemon, and manage it from the command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from . import __version__
from .paths import Paths
from .settings import DEFAULT_WORKSPACE, ConfigError, load_config


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _config(paths: Paths) -> Any:
    try:
        return load_config(paths)
    except ConfigError as exc:
        raise CLIError(f"invalid settings: {exc}", 2) from None


# -- talking to a running daemon -------------------------------------------------------------


def daemon_url(paths: Paths) -> str | None:
    """The URL of the daemon that is running for this settings directory, if any."""
    from .server import read_daemon_file

    info = read_daemon_file(paths) or {}
    url, pid = info.get("url"), info.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url


def call_daemon(url: str, path: str, token: str, *, method: str = "GET",
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
    if not url.startswith("http://"):
        raise CLIError(f"unexpected daemon URL {url!r}")
    request = urllib.request.Request(url + path, method=method, headers={"Authorization": f"Bearer {token}",  # noqa: S310
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http URL from daemon.json)
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read())["error"]["message"]
        except Exception:
            message = exc.reason
        raise CLIError(f"the daemon answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CLIError(f"cannot reach the daemon at {url}: {exc}") from None


# -- commands --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, paths: Paths) -> int:
    from . import logs
    from .server import PortBusy, read_daemon_file, run

    config = _config(paths)
    host = args.host or config.settings.server.host
    port = config.settings.server.port if args.port is None else args.port
    logs.configure(paths, os.environ.get("LLMTUNE_COMPANION_LOG_LEVEL", "INFO"))

    def ready(url: str) -> None:
        print(f"llmtune-companion {__version__} serving at {url}/v1", flush=True)
        print(f"  settings:    {paths.root}", flush=True)
        print("  local token: run `llmtune-companion token` and use it as the API key", flush=True)
        print("  stop with Ctrl+C", flush=True)

    try:
        return run(paths, config, host, port, ready)
    except PortBusy:
        info = read_daemon_file(paths)
        other = f" (llmtune-companion pid {info.get('pid')} is serving at {info.get('url')})" if info else ""
        raise CLIError(f"port {port} on {host} is already in use{other}; stop it or pass --port", 1) from None
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None


def cmd_token(args: argparse.Namespace, paths: Paths) -> int:
    config = _config(paths)
    workspace = config.workspaces.get(args.workspace)
    if workspace is None:
        raise CLIError(f"no workspace named {args.workspace!r} (see `llmtune-companion workspace list`)")
    print(workspace.token)
    return 0


def _read_key(args: argparse.Namespace) -> str | None:
    if args.key_stdin:
        return sys.stdin.readline().strip()
    if args.key is not None:
        return str(args.key)
    if sys.stdin.isatty():
        entered = getpass.getpass("LLMTune key (sk_..., empty for none): ").strip()
        return entered or None
    return None


def cmd_workspace(args: argparse.Namespace, paths: Paths) -> int:
    from .workspaces import add_workspace, remove_workspace

    try:
        if args.action == "add":
            add_workspace(paths, args.name, _read_key(args))
            print(f"workspace {args.name!r} saved; its local token: `llmtune-companion token {args.name}`")
            return 0
        if args.action == "remove":
            if not remove_workspace(paths, args.name):
                raise CLIError(f"no workspace named {args.name!r}")
            print(f"workspace {args.name!r} removed")
            return 0
    except ConfigError as exc:
        raise CLIError(str(exc), 2) from None
    config = _config(paths)
    rows = [{"name": ws.name, "has_key": ws.has_key, "key_source": ws.key_source}
            for ws in config.workspaces.values()]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        for row in rows:
            key = f"key from {row['key_source']}" if row["has_key"] else "no key (hosted models unavailable)"
            print(f"{row['name']:<20} {key}")
    return 0


async def _models_in_process(paths: Paths, workspace_name: str, refresh: bool) -> list[dict[str, Any]]:
    from .app import make_session
    from .runtime import Runtime

    config = _config(paths)
    workspace = config.workspaces.get(workspace_name)
    if workspace is None:
        raise CLIError(f"no workspace named {workspace_name!r}")
    async with make_session(config) as session:
        runtime = Runtime(paths, config, session)
        try:
            return await runtime.list_models(workspace, refresh=refresh)
        finally:
            await runtime.model_cache.aclose()


def cmd_models(args: argparse.Namespace, paths: Paths) -> int:
    url = daemon_url(paths)
    if url is not None:
        config = _config(paths)
        workspace = config.workspaces.get(args.workspace)
        if workspace is None:
            raise CLIError(f"no workspace named {args.workspace!r}")
        headers = {"Cache-Control": "no-cache"} if args.refresh else None
        models = call_daemon(url, "/v1/models", workspace.token, headers=headers)["data"]
    else:
        paths.ensure()
        models = asyncio.run(_models_in_process(paths, args.workspace, args.refresh))
    if args.json:
        print(orjson.dumps(models, option=orjson.OPT_INDENT_2).decode())
    else:
        for model in models:
            print(f"{model['id']:<50} {model.get('owned_by', '')}")
    return 0


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    from .control import load_control_token

    url = daemon_url(paths)
    if url is None:
        try:
            config = load_config(paths)
            error = None
        except ConfigError as exc:
            config, error = None, str(exc)
        report: dict[str, Any] = {"running": False, "settings_dir": str(paths.root),
                                  "config": {"valid": error is None, "error": error}}
        if config is not None:
            report["workspaces"] = [{"name": ws.name, "has_key": ws.has_key, "key_source": ws.key_source}
                                    for ws in config.workspaces.values()]
    else:
        report = {"running": True, "url": url,
                  **call_daemon(url, "/companion/v1/status", load_control_token(paths))}
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_format_status(report))
    return 0 if report["running"] else 3


def _format_status(report: dict[str, Any]) -> str:
    lines = [f"daemon:    {'running at ' + report['url'] if report['running'] else 'not running'}",
             f"settings:  {report['settings_dir']}"]
    config = report.get("config", {})
    lines.append("config:    valid" if config.get("valid") else f"config:    INVALID: {config.get('error')}"
                 + (" (the daemon keeps its last good settings)" if report["running"] else ""))
    for ws in report.get("workspaces", []):
        key = f"key from {ws['key_source']}" if ws["has_key"] else "no key"
        lines.append(f"workspace: {ws['name']} ({key})")
    for backend in report.get("backends", []):
        where = f", {backend['url']}" if backend.get("url") else ""
        lines.append(f"backend:   {backend['name']} ({backend['type']}{where})")
    for row in report.get("model_cache", []):
        state = "STALE" if row["stale"] else "fresh"
        extra = f", last error: {row['error']}" if row.get("error") else ""
        lines.append(f"models:    {row['key']}: {row['models']} models, {state}, {row['age_seconds']}s old{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtune-companion",
        description="A localhost companion between your IDE and your language models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--host", help="loopback address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8742)")
    serve.set_defaults(func=cmd_serve)

    token = commands.add_parser("token", help="print a workspace's local token (and nothing else)")
    token.add_argument("workspace", nargs="?", default=DEFAULT_WORKSPACE)
    token.set_defaults(func=cmd_token)

    workspace = commands.add_parser("workspace", help="add, list or remove workspaces")
    actions = workspace.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a workspace or replace its LLMTune key")
    add.add_argument("name")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--key", help="the LLMTune key (sk_...); --key-stdin keeps it out of shell history")
    keys.add_argument("--key-stdin", action="store_true", help="read the key from standard input")
    listing = actions.add_parser("list", help="list workspaces (never their keys)")
    listing.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", help="remove a workspace and its key")
    remove.add_argument("name")
    workspace.set_defaults(func=cmd_workspace, json=False)

    models = commands.add_parser("models", help="list the models clients can use")
    models.add_argument("--refresh", action="store_true", help="ask the backends again instead of the cache")
    models.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    status = commands.add_parser("status", help="is the daemon running, are the settings valid, is the cache fresh")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
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
