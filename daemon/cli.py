"""`llmtune-companion`: serve the daemon, and manage it from the command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
import urllib.error
import urllib.parse
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
                headers: dict[str, str] | None = None, timeout: float = 30.0, json: Any = None) -> Any:
    if not url.startswith("http://"):
        raise CLIError(f"unexpected daemon URL {url!r}")
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    data = None
    if json is not None:
        data = orjson.dumps(json)
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, data=data, method=method, headers=all_headers)  # noqa: S310
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
    from .workspaces import add_workspace, remove_workspace, set_workspace

    try:
        if args.action == "add":
            key = _read_key(args)
            if args.root is not None or args.tools is not None:
                # First, so a bad root or mode refuses the whole command before the key is saved.
                set_workspace(paths, args.name, root=args.root, tools=args.tools)
            add_workspace(paths, args.name, key)
            print(f"workspace {args.name!r} saved; its local token: `llmtune-companion token {args.name}`")
            return 0
        if args.action == "set":
            if args.root is None and args.tools is None:
                raise CLIError("nothing to set: pass --root DIR and/or --tools MODE", 2)
            set_workspace(paths, args.name, root=args.root, tools=args.tools)
            ws = _config(paths).workspaces.get(args.name)
            if ws is not None:
                print(f"workspace {args.name!r}: root {ws.settings.root or '(none)'}, tools {ws.settings.tools}")
            else:
                print(f"workspace {args.name!r} saved")
            return 0
        if args.action == "remove":
            if not remove_workspace(paths, args.name):
                raise CLIError(f"no workspace named {args.name!r}")
            print(f"workspace {args.name!r} removed")
            return 0
    except ConfigError as exc:
        raise CLIError(str(exc), 2) from None
    config = _config(paths)
    rows = [{"name": ws.name, "has_key": ws.has_key, "key_source": ws.key_source, "root": ws.settings.root,
             "tools": ws.settings.tools} for ws in config.workspaces.values()]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        for row in rows:
            key = f"key from {row['key_source']}" if row["has_key"] else "no key (hosted models unavailable)"
            tools = f", tools {row['tools']} in {row['root']}" if row["root"] else ""
            print(f"{row['name']:<20} {key}{tools}")
    return 0


async def _models_in_process(paths: Paths, workspace_name: str, refresh: bool) -> list[dict[str, Any]]:
    from .app import make_pool, make_session
    from .runtime import Runtime

    config = _config(paths)
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


def _control(paths: Paths) -> tuple[str, str]:
    """The running daemon's URL and the control token; an error when no daemon runs."""
    from .control import load_control_token

    url = daemon_url(paths)
    if url is None:
        raise CLIError("the daemon is not running (start it with `llmtune-companion serve`)", 3)
    return url, load_control_token(paths)


def _format_approval(item: dict[str, Any]) -> str:
    arguments = item.get("arguments") or {}
    detail = arguments.get("command") or arguments.get("path") or ""
    expires = max(0, round(float(item.get("expires_at") or 0) - time.time()))
    return f"{item['id']}  {item.get('workspace')}  {item.get('tool')}  {detail}  (expires in {expires}s)"


def cmd_approvals(args: argparse.Namespace, paths: Paths) -> int:
    url, token = _control(paths)
    approvals = call_daemon(url, "/companion/v1/approvals", token)["approvals"]
    if args.json:
        print(orjson.dumps(approvals, option=orjson.OPT_INDENT_2).decode())
    elif not approvals:
        print("no approvals pending")
    else:
        for item in approvals:
            print(_format_approval(item))
    return 0


def _resolve(paths: Paths, approval_id: str, body: dict[str, Any]) -> dict[str, Any]:
    url, token = _control(paths)
    path = "/companion/v1/approvals/" + urllib.parse.quote(approval_id, safe="")
    try:
        result: dict[str, Any] = call_daemon(url, path, token, method="POST", json=body)
    except CLIError as exc:
        if "answered 404" in str(exc):
            raise CLIError(f"no pending approval {approval_id!r} (see `llmtune-companion approvals`; it may "
                           "have been decided already or timed out)") from None
        raise
    return result


def cmd_approve(args: argparse.Namespace, paths: Paths) -> int:
    result = _resolve(paths, args.id, {"decision": "allow", "remember": bool(args.remember)})
    remembered = " and remembered" if result.get("remember") else ""
    print(f"allowed{remembered}: {args.id} ({result.get('tool')} in {result.get('workspace')})")
    return 0


def cmd_deny(args: argparse.Namespace, paths: Paths) -> int:
    result = _resolve(paths, args.id, {"decision": "deny", "reason": args.reason})
    print(f"denied: {args.id} ({result.get('tool')} in {result.get('workspace')})")
    return 0


def _format_undo(entry: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("time") or 0)))
    action = "restore" if entry.get("existed") else "remove (created by the tool)"
    done = "  [undone]" if entry.get("undone_at") else ""
    return f"{entry['id']}  {when}  {entry.get('workspace')}  {entry.get('tool')}  {entry.get('path')}  {action}{done}"


def cmd_undo(args: argparse.Namespace, paths: Paths) -> int:
    from .tools.journal import Journal, UndoError

    url = daemon_url(paths)
    if args.list:
        if args.id is not None:
            raise CLIError("--list takes no ID", 2)
        if url is not None:
            query = "?workspace=" + urllib.parse.quote(args.workspace) if args.workspace else ""
            entries = call_daemon(url, "/companion/v1/undo" + query, _control(paths)[1])["entries"]
        else:
            entries = [entry.to_dict() for entry in Journal.for_paths(paths).list(args.workspace)]
        if args.json:
            print(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode())
        elif not entries:
            print("nothing to undo")
        else:
            for entry in entries:
                print(_format_undo(entry))
        return 0
    if url is not None:
        body = {"id": args.id, "workspace": args.workspace, "force": bool(args.force)}
        try:
            done = call_daemon(url, "/companion/v1/undo", _control(paths)[1], method="POST", json=body)["undone"]
        except CLIError as exc:
            raise CLIError(str(exc).replace("the daemon answered 409: ", "cannot undo: ")) from None
    else:
        try:
            done = Journal.for_paths(paths).restore(args.id, workspace=args.workspace, force=args.force).to_dict()
        except UndoError as exc:
            raise CLIError(f"cannot undo: {exc}") from None
    if args.json:
        print(orjson.dumps(done, option=orjson.OPT_INDENT_2).decode())
    else:
        what = "restored" if done.get("existed") else "removed (the tool had created it)"
        print(f"undone {done['id']}: {done.get('path')} in {done.get('root')} {what}")
    return 0


def _format_job(job: dict[str, Any]) -> str:
    model = job.get("fine_tuned_model") or ""
    if model and job.get("deployed"):
        model += " (deployed)"
    error = f"  last error: {job['error']}" if job.get("error") else ""
    return f"{job['id']}  {job.get('workspace')}  {job.get('status')}  {model}{error}".rstrip()


def cmd_jobs(args: argparse.Namespace, paths: Paths) -> int:
    from .jobs import TrackedJob, check_job_id, jobs_file, load_jobs, save_jobs

    url = daemon_url(paths)
    if args.action == "add":
        try:
            job_id = check_job_id(args.id)
        except ValueError as exc:
            raise CLIError(str(exc), 2) from None
        if url is not None:
            body = {"id": job_id, "workspace": args.workspace}
            job = call_daemon(url, "/companion/v1/jobs", _control(paths)[1], method="POST", json=body)["job"]
        else:
            if args.workspace not in _config(paths).workspaces:
                raise CLIError(f"no workspace named {args.workspace!r}")
            # The daemon polls it from its next start.
            jobs = load_jobs(jobs_file(paths))
            tracked = jobs.setdefault(job_id, TrackedJob(job_id, args.workspace))
            paths.ensure()
            save_jobs(jobs_file(paths), jobs)
            job = tracked.to_dict()
        print(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode() if args.json else f"tracking {_format_job(job)}")
        return 0
    if url is not None:
        listed = call_daemon(url, "/companion/v1/jobs", _control(paths)[1])["jobs"]
    else:
        listed = [job.to_dict() for job in load_jobs(jobs_file(paths)).values()]
    if args.json:
        print(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
    elif not listed:
        print("no fine-tune jobs tracked")
    else:
        for job in listed:
            print(_format_job(job))
    return 0


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


def _tool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="DIR", help="the directory the workspace's tools are confined to")
    parser.add_argument("--tools", choices=("passthrough", "gate", "execute"),
                        help="passthrough: tool calls go to the IDE; gate: ask before the IDE runs them; "
                             "execute: run them here (needs --root)")


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
    _tool_options(add)
    setting = actions.add_parser("set", help="set a workspace's tool root and tool mode")
    setting.add_argument("name")
    _tool_options(setting)
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

    approvals = commands.add_parser("approvals", help="list the tool calls waiting for your approval")
    approvals.add_argument("--json", action="store_true", help="print a JSON list (each item has an id)")
    approvals.set_defaults(func=cmd_approvals)

    approve = commands.add_parser("approve", help="allow a pending tool call")
    approve.add_argument("id", metavar="ID", help="the approval id (see `llmtune-companion approvals`)")
    approve.add_argument("--remember", action="store_true",
                         help="also allow calls like it from now on (saved as a policy rule)")
    approve.set_defaults(func=cmd_approve)

    deny = commands.add_parser("deny", help="refuse a pending tool call")
    deny.add_argument("id", metavar="ID", help="the approval id (see `llmtune-companion approvals`)")
    deny.add_argument("--reason", metavar="TEXT", help="why, told to the model")
    deny.set_defaults(func=cmd_deny)

    undo = commands.add_parser("undo", help="undo a file change a tool made (the latest when no ID is given)",
                               description="Undo a file change a tool made: the latest one, or ID. Works "
                                           "through the running daemon, or directly when none runs.")
    undo.add_argument("id", metavar="ID", nargs="?", help="the undo entry (see `undo --list`)")
    undo.add_argument("--list", action="store_true", help="list the changes that can be undone, newest first")
    undo.add_argument("--workspace", help="only changes made in this workspace")
    undo.add_argument("--force", action="store_true", help="undo even if the file changed since the tool wrote it")
    undo.add_argument("--json", action="store_true")
    undo.set_defaults(func=cmd_undo)

    jobs = commands.add_parser("jobs", help="list the fine-tune jobs the companion watches, or add one by id")
    jobs.add_argument("--json", action="store_true")
    job_actions = jobs.add_subparsers(dest="action", metavar="ACTION")
    job_add = job_actions.add_parser("add", help="watch a fine-tune job created elsewhere")
    job_add.add_argument("id", metavar="ID", help="the hosted job id")
    job_add.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="the workspace whose key can read it")
    job_add.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs, action=None)

    from .cli_service import register as register_service

    register_service(commands)
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
