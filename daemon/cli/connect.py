"""`connect continue`, `connect env`: point a client at the companion with one command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE
from ..connect import shell_env
from ..connect.endpoint import Companion, ConnectError, choose, list_in_process, list_running, local_backends, locate
from .common import CLIError, load_settings


def _companion(paths: Paths, workspace: str) -> Companion:
    try:
        return locate(paths, load_settings(paths), workspace)
    except ConnectError as exc:
        raise CLIError(str(exc)) from None


def _models(paths: Paths, companion: Companion) -> tuple[list[str], list[dict[str, Any]]]:
    if companion.running:
        return list_running(paths, companion)
    return asyncio.run(list_in_process(paths, load_settings(paths), companion.workspace))


def cmd_continue(args: argparse.Namespace, paths: Paths) -> int:
    from ..connect import continue_config  # ruamel.yaml: loaded only by the command that needs it

    companion = _companion(paths, args.workspace)
    ids, backends = _models(paths, companion)
    choice = choose(ids, local_backends(backends), chat=args.model, autocomplete=args.autocomplete)
    for model in [*choice.chat, *([choice.autocomplete] if choice.autocomplete else [])]:
        if model not in ids:
            print(f"note: {model!r} is not in the companion's model list now (see `llmtune-companion models`); "
                  "written anyway", file=sys.stderr)
    target = continue_config.find_target()
    entries = continue_config.wanted_entries(choice.chat, choice.autocomplete)
    try:
        result = continue_config.plan(target, entries, companion.base_url, companion.workspace.token,
                                      replace_autocomplete=args.autocomplete is not None)
    except continue_config.ContinueConfigError as exc:
        raise CLIError(str(exc)) from None
    shown_token = f"<local token of workspace {companion.workspace.name!r}>"
    if args.dry_run:
        if result.changed:
            print(result.diff({companion.workspace.token: shown_token}), end="")
        else:
            print(f"no changes: {target.path} already points at the companion")
        return 0
    if not result.changed:
        print(f"no changes: {target.path} already points at the companion")
    else:
        try:
            backup = continue_config.write(result)
        except OSError as exc:
            raise CLIError(f"cannot write {target.path}: {exc}") from None
        print(f"wrote {target.path}" + (f" (backup: {backup})" if backup else ""))
    roles = "chat, edit, apply" if target.format == "yaml" else "models"
    print(f"  {roles}: {', '.join(choice.chat)}")
    if choice.autocomplete:
        print(f"  autocomplete: {choice.autocomplete}")
    else:
        print("  autocomplete: none (no local model is served; start one, or pass --autocomplete ID)")
    print(f"  apiBase {companion.base_url}, apiKey {shown_token}")
    for note in result.notes:
        print(f"  {note}")
    if not companion.running:
        print("The companion is not running: start it with `llmtune-companion serve`.")
    return 0


def cmd_env(args: argparse.Namespace, paths: Paths) -> int:
    companion = _companion(paths, args.workspace)
    shell: shell_env.Shell = "dotenv" if args.dotenv else args.shell
    print(shell_env.render(shell_env.variables(companion.base_url, companion.workspace.token), shell), end="")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connect = commands.add_parser("connect", help="point Continue, your shell or Cursor at the companion")
    clients = connect.add_subparsers(dest="client", metavar="CLIENT", required=True)

    cont = clients.add_parser(
        "continue", help="write Continue's config so its models go through the companion",
        description="Add the companion's models to Continue's config (config.yaml in $CONTINUE_GLOBAL_DIR or "
                    "~/.continue; a legacy config.json when only that exists). Everything else in the file "
                    "is kept; a timestamped backup is written first.")
    cont.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    cont.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="whose local token Continue uses")
    cont.add_argument("--model", metavar="ID", nargs="+", action="extend",
                      help="models for chat, edit and apply (default: the first hosted model, else echo)")
    cont.add_argument("--autocomplete", metavar="ID",
                      help="the autocomplete model (default: a model served on this machine, if any)")
    cont.set_defaults(func=cmd_continue)

    env = clients.add_parser(
        "env", help="print OPENAI_BASE_URL and OPENAI_API_KEY for your shell",
        description='Print variables for OpenAI SDKs and tools: eval "$(llmtune-companion connect env)"')
    env.add_argument("--shell", choices=("sh", "fish", "powershell"), default="sh",
                     help="the syntax to print (sh covers bash and zsh)")
    env.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="whose local token to print")
    env.add_argument("--dotenv", action="store_true", help="print .env lines instead")
    env.set_defaults(func=cmd_env)
