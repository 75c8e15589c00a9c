"""`stop`, `restart`, `logs` and `reset`: the daemon's life from the command line."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from ..config.paths import Paths
from ..instance import is_running, read_daemon_file
from .client import DaemonUnreachable, call_daemon, daemon_url
from .common import CLIError

# How long `stop` waits for the daemon to finish its requests and let go of the settings directory.
STOP_WAIT_SECONDS = 30.0
# How long `restart` waits for the new daemon to answer.
START_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1


def _wait(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return bool(condition())


def stop_daemon(paths: Paths) -> dict[str, Any] | None:
    """Ask the running daemon to stop and wait until it has; its daemon.json (None when none ran)."""
    from ..api.control import load_control_token

    url = daemon_url(paths)
    if url is None:
        if is_running(paths):
            raise CLIError(f"a daemon holds {paths.lock_file} but says nowhere where it listens; it may be starting "
                           "or stopping: try again in a moment", 1)
        return None
    info = read_daemon_file(paths) or {}
    try:
        call_daemon(url, "/companion/v1/shutdown", load_control_token(paths), method="POST")
    except DaemonUnreachable:
        if not is_running(paths):
            return info  # it stopped meanwhile
        raise
    if not _wait(lambda: not is_running(paths), STOP_WAIT_SECONDS):
        raise CLIError(f"the daemon (pid {info.get('pid')}) did not stop within {STOP_WAIT_SECONDS:g}s; it may be "
                       f"finishing a long request. Try again, or end it with: kill {info.get('pid')}", 1)
    return info


def cmd_stop(args: argparse.Namespace, paths: Paths) -> int:
    info = stop_daemon(paths)
    if info is None:
        print("the daemon is not running (nothing to stop)")
        return 0
    print(f"stopped the daemon (pid {info.get('pid')}, was serving at {info.get('url')})")
    return 0


def _detached() -> dict[str, Any]:
    """Popen options for a daemon that outlives this command and its terminal."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS}
    return {"start_new_session": True}


def cmd_restart(args: argparse.Namespace, paths: Paths) -> int:
    info = stop_daemon(paths)
    command = [sys.executable, "-m", "llmtune_companion", "serve"]
    host, port = (info or {}).get("host"), (info or {}).get("port")
    if args.port is not None:
        port = args.port
    if isinstance(host, str):
        command += ["--host", host]
    if isinstance(port, int):
        command += ["--port", str(port)]
    # The new daemon writes its log file as usual; its console output is not kept.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **_detached())
    started = _wait(lambda: child.poll() is not None or daemon_url(paths) is not None, START_WAIT_SECONDS)
    url = daemon_url(paths)
    if not started or url is None:
        raise CLIError(f"the daemon did not start (exit code {child.poll()}); see `llmtune-companion logs` or run "
                       "`llmtune-companion serve` to see why", 1)
    was = "restarted" if info is not None else "was not running; started"
    print(f"{was}: serving at {url}/v1 (pid {child.pid}); log: {paths.log_file}")
    return 0


def _follow(path: Path, handle: IO[str] | None) -> None:
    """Print what is appended to the log until Ctrl+C, from where `handle` stopped reading; a rotated
    (replaced or shrunk) file is reopened from its start."""
    identity = None
    if handle is not None:
        stat = os.fstat(handle.fileno())
        identity = (stat.st_dev, stat.st_ino)
    try:
        while True:
            if handle is not None and (chunk := handle.read()):
                sys.stdout.write(chunk)
                sys.stdout.flush()
            try:
                current = path.stat()
            except FileNotFoundError:
                current = None
            if current is not None and (handle is None or (current.st_dev, current.st_ino) != identity
                                        or current.st_size < handle.tell()):
                if handle is not None:
                    sys.stdout.write(handle.read())  # the rest of the old file first
                    handle.close()
                handle = path.open("r", encoding="utf-8", errors="replace")
                identity = (current.st_dev, current.st_ino)
                continue
            time.sleep(0.25)
    finally:
        if handle is not None:
            handle.close()


def cmd_logs(args: argparse.Namespace, paths: Paths) -> int:
    path = paths.log_file
    if args.lines < 0:
        raise CLIError("-n takes a number of lines, 0 or more", 2)
    try:
        handle: IO[str] | None = path.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not args.follow:
            raise CLIError(f"no log yet at {path}: the daemon writes it once `llmtune-companion serve` runs",
                           1) from None
        handle = None
    if handle is not None:
        # The same handle goes on following, so nothing written between the tail and the follow is lost.
        sys.stdout.write("".join(deque(handle, maxlen=args.lines)))  # reads to the end, keeps the last N
        sys.stdout.flush()
    if args.follow:
        _follow(path, handle)
    elif handle is not None:
        handle.close()
    return 0


# What `reset` removes: keys, tokens, caches and state. config.toml, the log and the undo journal stay.
RESET_FILES = ("secrets.json", "control-token", "jobs.json", "daemon.json")
RESET_FOLDERS = ("cache",)


def cmd_reset(args: argparse.Namespace, paths: Paths) -> int:
    if daemon_url(paths) is not None or is_running(paths):
        raise CLIError("the daemon is running: stop it first with `llmtune-companion stop`", 1)
    targets = [paths.root] if args.all else [paths.root / name for name in (*RESET_FILES, *RESET_FOLDERS)]
    present = [path for path in targets if path.exists()]
    if not present:
        print(f"nothing to reset in {paths.root}")
        return 0
    what = (f"the whole settings directory {paths.root} (settings, keys, tokens, caches, log, undo journal)"
            if args.all else "the LLMTune keys, local tokens, control token, model caches and watched jobs in "
                             f"{paths.root} (config.toml, the log and the undo journal stay)")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(f"reset removes {what}; pass --yes to confirm", 2)
        answer = input(f"This removes {what}.\nEvery IDE will need the new local token. Type 'yes' to go on: ")
        if answer.strip().lower() != "yes":
            print("nothing removed")
            return 1
    for path in present:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    print(f"removed {', '.join(path.name for path in present)}")
    if os.environ.get("LLMTUNE_API_KEY"):
        print("note: LLMTUNE_API_KEY is still set in this environment and still gives `default` a key",
              file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import port_number

    stop = commands.add_parser("stop", help="stop the running daemon (it finishes the requests in flight)")
    stop.set_defaults(func=cmd_stop)

    restart = commands.add_parser("restart", help="stop the running daemon and start it again in the background",
                                  description="Stop the running daemon (if any) and start a new one in the "
                                              "background on the same address; its output goes to the log.")
    restart.add_argument("--port", type=port_number, metavar="PORT", help="listen on this port instead")
    restart.set_defaults(func=cmd_restart)

    logs = commands.add_parser("logs", help="print the daemon's log (keys and tokens are scrubbed from it)")
    logs.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="print the last N lines (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl+C")
    logs.set_defaults(func=cmd_logs)

    reset = commands.add_parser("reset", help="remove keys, tokens, caches and watched jobs (asks first)",
                                description="Remove the LLMTune keys, local tokens, control token, model caches "
                                            "and watched jobs. config.toml, the log and the undo journal stay "
                                            "(--all removes the whole settings directory). The daemon must be "
                                            "stopped.")
    reset.add_argument("--yes", action="store_true", help="do not ask; needed when not on a terminal")
    reset.add_argument("--all", action="store_true", help="remove the whole settings directory")
    reset.set_defaults(func=cmd_reset)
