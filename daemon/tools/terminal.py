"""run_terminal: a shell command in the workspace root, its output captured for the model.

The command runs as `/bin/sh -c COMMAND` (Windows: `cmd /c`) in a session and process group of its
own, with stdin closed and a scrubbed environment (see `scrub_environment`). When the shell exits,
or the time limit passes, the whole process group is sent SIGTERM and then SIGKILL, so background
children (`sleep 100 &`) do not outlive the call. A command that leaves its process group
(`setsid`, a daemonising server) escapes this; that needs an OS sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config.tool_limits import KIB, ToolLimits
from ..logs import SECRET_PATTERN
from .definitions import ToolArgumentError
from .results import ToolResult

# ---- environment ---------------------------------------------------------------------------------

# A variable is removed when its (upper-cased) name starts with one of these ...
SCRUB_PREFIXES: tuple[str, ...] = ("LLMTUNE_",)
# ... ends with one of these ...
SCRUB_SUFFIXES: tuple[str, ...] = ("_KEY", "_KEYS", "_TOKEN", "_TOKENS", "_PAT", "_API_KEY_ID", "_KEY_ID")
# ... contains one of these ...
SCRUB_PARTS: tuple[str, ...] = ("SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "APIKEY",
                                "ACCESS_TOKEN", "AUTH_TOKEN", "PRIVATE_KEY")
# ... or its value looks like a LLMTune key or a companion token (sk_..., lct_..., ctl_...).
# Set for every command so nothing waits on a pager or a credential prompt.
COMMAND_ENV_OVERRIDES: dict[str, str] = {"PAGER": "cat", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0"}


def is_secret_variable(name: str, value: str = "") -> bool:
    upper = name.upper()
    return (
        upper.startswith(SCRUB_PREFIXES)
        or upper.endswith(SCRUB_SUFFIXES)
        or any(part in upper for part in SCRUB_PARTS)
        or bool(SECRET_PATTERN.search(value))
    )


def scrub_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment commands get: `environ` (default os.environ) without secrets.

    Removed: LLMTUNE_* (keys, base URLs, LLMTUNE_COMPANION_HOME), *_KEY, *_KEYS, *_KEY_ID, *_TOKEN,
    *_TOKENS, *_PAT, anything containing SECRET, PASSWORD, PASSWD, CREDENTIAL, API_KEY, APIKEY,
    ACCESS_TOKEN, AUTH_TOKEN or PRIVATE_KEY (names compared upper-cased), and any variable whose value
    contains an sk_/lct_/ctl_ key or token. PAGER=cat, GIT_PAGER=cat, GIT_TERMINAL_PROMPT=0 are set.
    SSH_AUTH_SOCK is kept (it is a socket path, not a secret): git over ssh keeps working.
    """
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items() if not is_secret_variable(name, value)}
    env.update(COMMAND_ENV_OVERRIDES)
    return env


# ---- output capture -------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class OutputCapture:
    """Keeps the first `head` and the last `tail` bytes of a stream, and counts the rest."""

    def __init__(self, head: int, tail: int) -> None:
        self.head_limit = head
        self.tail_limit = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_limit:
            self.tail += data
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.cut:
            return _ANSI.sub("", head + self.tail.decode("utf-8", "replace"))
        tail = self.tail.decode("utf-8", "replace")
        note = f"\n[... {self.cut} bytes of output cut; {self.total} bytes in all ...]\n"
        return _ANSI.sub("", head) + note + _ANSI.sub("", tail)


# ---- process groups -------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (not zombie) member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    # killpg also reaches zombies; ask /proc whether any member is still running.
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Terminal:
    """Runs commands in one directory under one set of limits."""

    def __init__(self, root: str, limits: ToolLimits, environ: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.limits = limits
        self._environ = environ

    def _argv(self, command: str) -> list[str]:
        if sys.platform == "win32":
            return [os.environ.get("COMSPEC", "cmd.exe"), "/d", "/s", "/c", command]
        return ["/bin/sh", "-c", command]

    async def run(self, command: str) -> ToolResult:
        if not command.strip():
            raise ToolArgumentError("run_terminal: the command is empty")
        limits = self.limits
        capture = OutputCapture(limits.output_head_bytes, limits.output_tail_bytes)
        started = time.monotonic()
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        else:
            kwargs["start_new_session"] = True
        proc = await asyncio.create_subprocess_exec(
            *self._argv(command),
            cwd=self.root,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=scrub_environment(self._environ),
            **kwargs,
        )
        assert proc.stdout is not None
        reader = asyncio.create_task(self._pump(proc.stdout, capture.feed))
        try:
            timed_out = not await self._wait_exit(proc, limits.command_timeout)
            await self._end_group(proc, reader)
        except BaseException:
            # Cancelled (the client went away): leave nothing running.
            self._kill_now(proc)
            reader.cancel()
            raise
        duration = time.monotonic() - started
        exit_code = proc.returncode
        output = capture.text()
        body = output if output.strip() else "(no output)"
        if not body.endswith("\n"):
            body += "\n"
        if timed_out:
            footer = (f"[timed out after {limits.command_timeout:g} s: the command and its process group were "
                      f"killed; {duration:.2f} s]")
        else:
            footer = f"[exit code {exit_code}; {duration:.2f} s]"
        meta = {
            "command": command,
            "cwd": self.root,
            "exit_code": exit_code,
            "timed_out": timed_out,
            "output_bytes": capture.total,
            "cut_bytes": capture.cut,
            "duration_ms": round(duration * 1000, 1),
        }
        return ToolResult(body + footer, ok=exit_code == 0 and not timed_out, meta=meta)

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, sink: Callable[[bytes], None]) -> None:
        while True:
            chunk = await stream.read(64 * KIB)
            if not chunk:
                return
            sink(chunk)

    def _kill_now(self, proc: asyncio.subprocess.Process) -> None:
        if sys.platform == "win32":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return
        _signal_group(proc.pid, signal.SIGKILL)

    async def _end_group(self, proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
        """The shell has exited or timed out: stop every process left in its group, then drain output."""
        grace = self.limits.kill_grace
        if sys.platform == "win32":
            if proc.returncode is None:
                killer = await asyncio.create_subprocess_exec(
                    "taskkill", "/T", "/F", "/PID", str(proc.pid),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await killer.wait()
            await self._settle(proc, reader, grace)
            return
        pgid = proc.pid
        if proc.returncode is not None and reader.done() and not _group_alive(pgid):
            return
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pgid):  # noqa: ASYNC110 (polling /proc)
                await asyncio.sleep(0.02)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        await self._settle(proc, reader, grace + 1.0)

    @staticmethod
    async def _wait_exit(proc: asyncio.subprocess.Process, limit: float) -> bool:
        """Wait for the shell itself to exit; False when `limit` passed first.

        `Process.wait()` also waits until every holder of the output pipe has closed it (a
        background child would keep it waiting), so the return code is polled as well.
        """
        waiter = asyncio.ensure_future(proc.wait())
        deadline = time.monotonic() + limit
        try:
            while proc.returncode is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                await asyncio.wait({waiter}, timeout=min(0.05, remaining))
            return True
        finally:
            if not waiter.done():
                waiter.cancel()

    async def _settle(self, proc: asyncio.subprocess.Process, reader: asyncio.Task[None], limit: float) -> None:
        """Collect the exit status, and the output still buffered in the pipe."""
        await self._wait_exit(proc, limit)
        try:
            async with asyncio.timeout(limit):  # not wait_for: on 3.11 it can swallow a racing cancel
                await asyncio.shield(reader)
        except TimeoutError:
            # A writer that left the process group (setsid) still holds the pipe: stop reading.
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            transport = getattr(proc, "_transport", None)
            pipe = transport.get_pipe_transport(1) if transport is not None else None
            if pipe is not None:
                pipe.close()
