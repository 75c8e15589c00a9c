"""`models` and `status`: what clients can use, and the daemon's state."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE, ConfigError, load_config, secrets_status
from ..instance import is_running
from .client import call_daemon, daemon_url
from .common import CLIError, load_settings


async def _in_process(paths: Paths, workspace_name: str, *, refresh: bool, models: bool = True,
                      probes: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the daemon would answer, computed here when none runs: the model list and/or backend probes."""
    from ..app import make_session
    from ..runtime import Runtime
    from ..upstream.probe import probe_all

    config = load_settings(paths)
    workspace = config.workspaces.get(workspace_name)
    if workspace is None:
        raise CLIError(f"no workspace named {workspace_name!r} (see `llmtune-companion workspace list`)")
    async with make_session(config) as session:
        runtime = Runtime(paths, config, session)
        try:
            await runtime.detect_local_servers()
            listed = await runtime.list_models(workspace, refresh=refresh) if models else []
            return listed, (await probe_all(runtime) if probes else [])
        finally:
            await runtime.aclose()


def _probes(paths: Paths, url: str | None) -> list[dict[str, Any]]:
    """Every backend asked now, through the running daemon or in this process."""
    from ..api.control import load_control_token

    if url is not None:
        report = call_daemon(url, "/companion/v1/status?probe=1", load_control_token(paths))
        return list(report.get("probes") or [])
    return asyncio.run(_in_process(paths, DEFAULT_WORKSPACE, refresh=False, models=False, probes=True))[1]


def _warn_unreachable(probes: list[dict[str, Any]]) -> None:
    for row in probes:
        if row.get("error"):
            where = f" ({row['url']})" if row.get("url") else ""
            state = "answers, but" if row.get("reachable") else "cannot be reached:"
            print(f"warning: backend {row['name']!r}{where} {state} {row['error']}; its models are missing "
                  "or from the cache", file=sys.stderr)


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
        models = asyncio.run(_in_process(paths, args.workspace, refresh=args.refresh))[0]
    if args.refresh:
        _warn_unreachable(_probes(paths, url))  # a refresh that quietly served the cache would mislead
    if args.json:
        print(orjson.dumps(models, option=orjson.OPT_INDENT_2).decode())
    else:
        for model in models:
            print(f"{model['id']:<50} {model.get('owned_by', '')}")
    return 0


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    from ..api.control import load_control_token

    url = daemon_url(paths)
    if url is None and is_running(paths):
        raise CLIError(f"a daemon holds {paths.lock_file} but left no daemon.json; it may be starting or "
                       "stopping: try again in a moment", 1)
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
            report["secrets"] = secrets_status(config)
            if not args.no_probe:
                report["probes"] = _probes(paths, None)
    else:
        query = "" if args.no_probe else "?probe=1"
        report = {"running": True, "url": url,
                  **call_daemon(url, "/companion/v1/status" + query, load_control_token(paths), timeout=60.0)}
    report["log"] = str(paths.log_file)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_format_status(report))
    return 0 if report["running"] else 3


def _format_probe(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row.get("error"):
        state = "answers with an error" if row.get("reachable") else "UNREACHABLE"
        text = f": {state}: {row['error']}"
    else:
        text = f": reachable, {row['latency_ms']} ms, {row['models']} models"
    if row.get("cache_age_seconds") is not None:
        text += f", cache {row['cache_age_seconds']}s old"
    return text


def _describe_keys(secrets: dict[str, Any]) -> str:
    if secrets["backend"] == "keyring":
        return f"in the OS keychain ({secrets['keychain']})"
    if secrets["backend"] == "file":
        return "in secrets.json (readable by you only)"
    return "none stored yet (they will go to the OS keychain when one works here, else to secrets.json)"


def _format_status(report: dict[str, Any]) -> str:
    lines = [f"daemon:    {'running at ' + report['url'] if report['running'] else 'not running'}",
             f"settings:  {report['settings_dir']}"]
    if report.get("log"):
        lines.append(f"log:       {report['log']}")
    config = report.get("config", {})
    lines.append("config:    valid" if config.get("valid") else f"config:    INVALID: {config.get('error')}"
                 + (" (the daemon keeps its last good settings)" if report["running"] else ""))
    if config.get("restart_needed"):
        lines.append(f"config:    RESTART NEEDED: {'; '.join(config['restart_needed'])} "
                     "(run `llmtune-companion restart`)")
    for ws in report.get("workspaces", []):
        key = f"key from {ws['key_source']}" if ws["has_key"] else "no key"
        lines.append(f"workspace: {ws['name']} ({key})")
    secrets = report.get("secrets")
    if secrets:
        lines.append(f"keys:      {_describe_keys(secrets)}")
        lines += [f"warning:   {warning}" for warning in secrets.get("warnings", [])]
    probed = {row["name"]: row for row in report.get("probes") or []}
    for backend in report.get("backends") or list(probed.values()):
        where = f", {backend['url']}" if backend.get("url") else ""
        probe = _format_probe(probed.get(backend["name"]))
        lines.append(f"backend:   {backend['name']} ({backend['type']}{where}){probe}")
    detect = report.get("autodetect") or {}
    for found in detect.get("found", []):
        used = "" if found.get("backend") else " (not used: a configured backend has its name or URL)"
        lines.append(f"detected:  {found['name']} at {found['url']}{used}")
    if detect and not detect.get("enabled"):
        lines.append("detected:  off ([autodetect] enabled = false)")
    for row in report.get("model_cache", []):
        state = "STALE" if row["stale"] else "fresh"
        extra = f", last error: {row['error']}" if row.get("error") else ""
        lines.append(f"models:    {row['key']}: {row['models']} models, {state}, {row['age_seconds']}s old{extra}")
    return "\n".join(lines)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="list the models clients can use")
    models.add_argument("--refresh", action="store_true", help="ask the backends again instead of the cache")
    models.add_argument("--workspace", metavar="NAME", default=DEFAULT_WORKSPACE,
                        help="list what this workspace can use (default: default)")
    models.add_argument("--json", action="store_true", help="print the OpenAI-shaped model objects as JSON")
    models.set_defaults(func=cmd_models)

    status = commands.add_parser("status", help="is the daemon running, are the settings valid, do the backends "
                                                "answer; where the log is")
    status.add_argument("--json", action="store_true", help="print the whole report as JSON")
    status.add_argument("--no-probe", action="store_true", help="do not ask the backends now (quicker)")
    status.set_defaults(func=cmd_status)
