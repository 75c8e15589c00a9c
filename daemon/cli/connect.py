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


def cmd_cursor(args: argparse.Namespace, paths: Paths) -> int:
    from ..connect import tunnel

    if args.stop:
        revoked = tunnel.revoke_token(paths)
        closed = tunnel.stop_running(paths)
        print("tunnel token revoked: requests with it are refused from now on" if revoked
              else "no tunnel token to revoke")
        if closed is not None:
            print(f"closed the tunnel at {closed.public_url} (pid {closed.pid})")
        return 0
    config = load_settings(paths)
    if args.workspace not in config.workspaces:
        raise CLIError(f"no workspace named {args.workspace!r} (see `llmtune-companion workspace list`)")
    running = tunnel.running_tunnel(paths)
    if running is not None:
        token = tunnel.issue_token(paths, args.workspace, rotate=args.rotate)
        print(f"a tunnel is already open (pid {running.pid}); it uses this token from its next request")
        _cursor_steps(running.public_url, token, config.settings.tunnel.requests_per_minute)
        return 0
    try:
        forwarder = tunnel.ngrok_forwarder()
    except tunnel.TunnelError as exc:
        raise CLIError(str(exc)) from None
    token = tunnel.issue_token(paths, args.workspace, rotate=args.rotate)
    _serve_tunnel(paths, config, forwarder, token)
    return 0


def _serve_tunnel(paths: Paths, config: Any, forwarder: Any, token: str) -> None:
    from .. import logs
    from ..connect import tunnel

    logs.configure(paths, "INFO")

    def ready(opened: tunnel.Opened) -> None:
        print(f"tunnel open: {opened.public_url} -> {opened.local_url} (the restricted listener, not the daemon)")
        _cursor_steps(opened.public_url, token, config.settings.tunnel.requests_per_minute)
        print("Stop with Ctrl+C (the token stays valid for next time).", flush=True)

    try:
        asyncio.run(tunnel.serve_tunnel(paths, config, forwarder, ready=ready))
    except tunnel.TunnelError as exc:
        raise CLIError(str(exc)) from None


def _cursor_steps(public_url: str, token: str, per_minute: int) -> None:
    print(f"""
In Cursor: Settings > Models > API Keys:
  1. OpenAI API Key: paste {token}
  2. Override OpenAI Base URL: turn it on and paste {public_url}/v1
  3. Add the models to use by their companion ids (`llmtune-companion models`), then Verify.

This URL is public: anyone on the internet who has it can send requests to it. Only requests carrying
the token above are answered, at most {per_minute} a minute, and only chat, completions and the model
list (never the control API); no local tool runs through it, whatever the workspace's tool mode.
Replace the token with `llmtune-companion connect cursor --rotate`; revoke it and close the tunnel
with `llmtune-companion connect cursor --stop`.""", flush=True)


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

    cursor = clients.add_parser(
        "cursor", help="open a public tunnel Cursor can use (needs the [tunnel] extra and NGROK_AUTHTOKEN)",
        description="Cursor calls its models from Cursor's servers, so it needs a public URL. This opens an "
                    "ngrok tunnel to a restricted listener (chat, completions and the model list only, its own "
                    "token, a request cap, no local tools) until you press Ctrl+C.")
    cursor.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="whose models and key Cursor uses")
    actions = cursor.add_mutually_exclusive_group()
    actions.add_argument("--rotate", action="store_true", help="replace the tunnel token (the old one stops working)")
    actions.add_argument("--stop", action="store_true", help="revoke the tunnel token and close a running tunnel")
    cursor.set_defaults(func=cmd_cursor)
