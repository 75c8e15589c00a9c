"""`models` and `status`: what clients can use, and the daemon's state."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE, ConfigError, load_config
from .client import call_daemon, daemon_url
from .common import CLIError, load_settings


async def _models_in_process(paths: Paths, workspace_name: str, refresh: bool) -> list[dict[str, Any]]:
    from ..app import make_pool, make_session
    from ..runtime import Runtime

    config = load_settings(paths)
    workspace = config.workspaces.get(workspace_name)
    if workspace is None:
        raise CLIError(f"no workspace named {workspace_name!r}")
    async with make_session(config) as session, make_pool(config) as pool:
        runtime = Runtime(paths, config, session, pool)
        try:
            return await runtime.list_models(workspace, refresh=refresh)
        finally:
            await runtime.model_cache.aclose()


def cmd_models(args: argparse.Namespace, paths: Paths) -> int:
    url = daemon_url(paths)
    if url is not None:
        config = load_settings(paths)
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
    from ..api.control import load_control_token

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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="list the models clients can use")
    models.add_argument("--refresh", action="store_true", help="ask the backends again instead of the cache")
    models.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    status = commands.add_parser("status", help="is the daemon running, are the settings valid, is the cache fresh")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
