"""`approvals`, `approve`, `deny` and `undo`: deciding on tool calls and taking their changes back."""

from __future__ import annotations

import argparse
import time
import urllib.parse
from typing import Any

import orjson

from ..config.paths import Paths
from .client import DaemonError, call_daemon, control, daemon_url
from .common import CLIError


def _format_approval(item: dict[str, Any]) -> str:
    arguments = item.get("arguments") or {}
    detail = arguments.get("command") or arguments.get("path") or ""
    expires = max(0, round(float(item.get("expires_at") or 0) - time.time()))
    return f"{item['id']}  {item.get('workspace')}  {item.get('tool')}  {detail}  (expires in {expires}s)"


def cmd_approvals(args: argparse.Namespace, paths: Paths) -> int:
    url, token = control(paths)
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
    url, token = control(paths)
    path = "/companion/v1/approvals/" + urllib.parse.quote(approval_id, safe="")
    try:
        result: dict[str, Any] = call_daemon(url, path, token, method="POST", json=body)
    except DaemonError as exc:
        if exc.status == 404:
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
    from ..tools.journal import Journal, UndoError

    url = daemon_url(paths)
    if args.list:
        if args.id is not None:
            raise CLIError("--list takes no ID", 2)
        if url is not None:
            query = "?workspace=" + urllib.parse.quote(args.workspace) if args.workspace else ""
            entries = call_daemon(url, "/companion/v1/undo" + query, control(paths)[1])["entries"]
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
            done = call_daemon(url, "/companion/v1/undo", control(paths)[1], method="POST", json=body)["undone"]
        except DaemonError as exc:
            if exc.status == 409:
                raise CLIError(f"cannot undo: {exc.error_message}") from None
            raise
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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    undo.add_argument("--workspace", metavar="NAME", help="only changes made in this workspace")
    undo.add_argument("--force", action="store_true", help="undo even if the file changed since the tool wrote it")
    undo.add_argument("--json", action="store_true", help="print the entries (or the undone one) as JSON")
    undo.set_defaults(func=cmd_undo)
