"""`token` and `workspace`: workspaces, their keys, local tokens, tool roots and modes."""

from __future__ import annotations

import argparse
import getpass
import sys

import orjson

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE, ConfigError
from .common import CLIError, load_settings


def cmd_token(args: argparse.Namespace, paths: Paths) -> int:
    if args.rotate:
        from ..config.workspaces import rotate_token

        try:
            token = rotate_token(paths, args.workspace)
        except ConfigError as exc:
            raise CLIError(str(exc), 1) from None
        print(token)
        print(f"the old local token of workspace {args.workspace!r} no longer works: put this one in your IDE",
              file=sys.stderr)
        return 0
    config = load_settings(paths)
    workspace = config.workspaces.get(args.workspace)
    if workspace is None:
        raise CLIError(f"no workspace named {args.workspace!r} (see `llmtune-companion workspace list`)")
    print(workspace.token)
    return 0


def _read_key(args: argparse.Namespace) -> str | None:
    """The key from --key, or typed at a hidden prompt on a terminal, or a line of piped standard input."""
    if args.key is not None:
        key: str | None = str(args.key)
    elif sys.stdin.isatty():
        # A terminal: prompt without echo, so the key is neither shown nor kept in the scrollback.
        key = getpass.getpass("LLMTune key (sk_..., input hidden; empty for none): ").strip() or None
    elif args.key_stdin:
        key = sys.stdin.readline().strip()
    else:
        key = None
    if key and not args.force:
        from ..config.workspaces import check_key

        check_key(key)
    return key


def cmd_workspace(args: argparse.Namespace, paths: Paths) -> int:
    from ..config.workspaces import add_workspace, remove_workspace, set_workspace, workspace_exists

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
            if not args.create and not workspace_exists(paths, args.name):
                raise CLIError(f"no workspace named {args.name!r} (see `llmtune-companion workspace list`); "
                               f"add --create to make it, or `llmtune-companion workspace add {args.name}`", 1)
            set_workspace(paths, args.name, root=args.root, tools=args.tools)
            ws = load_settings(paths).workspaces.get(args.name)
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
    config = load_settings(paths)
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


NAME_HELP = "the workspace's name (letters, digits, . _ -); `default` is the one LLMTUNE_API_KEY fills"


def _tool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="DIR",
                        help="the directory the workspace's tools are confined to (--root \"\" clears it)")
    parser.add_argument("--tools", choices=("passthrough", "gate", "execute"),
                        help="passthrough: tool calls go to the IDE; gate: ask before the IDE runs them; "
                             "execute: run them here (needs --root)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="print a workspace's local token (and nothing else)")
    token.add_argument("workspace", metavar="WORKSPACE", nargs="?", default=DEFAULT_WORKSPACE,
                       help="the workspace (default: default)")
    token.add_argument("--rotate", action="store_true",
                       help="replace the token with a new one (the old one stops working) and print it")
    token.set_defaults(func=cmd_token)

    workspace = commands.add_parser("workspace", help="add, set, list or remove workspaces",
                                    description="Workspaces: each has its own LLMTune key, local token, "
                                                "tool root and tool mode.")
    actions = workspace.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a workspace or replace its LLMTune key")
    add.add_argument("name", metavar="NAME", help=NAME_HELP)
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--key", help="the LLMTune key (sk_...); prefer --key-stdin, which keeps it out of shell "
                                    "history")
    keys.add_argument("--key-stdin", action="store_true",
                      help="read the key from standard input (a hidden prompt on a terminal)")
    add.add_argument("--force", action="store_true", help="store a key even if it does not look like sk_...")
    _tool_options(add)
    setting = actions.add_parser("set", help="set a workspace's tool root and tool mode")
    setting.add_argument("name", metavar="NAME", help=NAME_HELP)
    setting.add_argument("--create", action="store_true", help="create the workspace if it does not exist")
    _tool_options(setting)
    listing = actions.add_parser("list", help="list workspaces (never their keys)")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    remove = actions.add_parser("remove", help="remove a workspace and its key")
    remove.add_argument("name", metavar="NAME", help=NAME_HELP)
    workspace.set_defaults(func=cmd_workspace, json=False)
