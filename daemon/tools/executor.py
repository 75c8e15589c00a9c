"""Running the five tools inside a `Sandbox`, with the results written as text for the model.

Nothing here raises for a mistake the model can correct (a missing file, an ambiguous search, a path
outside the workspace): `Executor.execute` returns a `ToolResult` with `ok=False` and a message.

run_terminal runs `/bin/sh -c COMMAND` (Windows: `cmd /c`) in the workspace root, in a session and
process group of its own, with stdin closed and a scrubbed environment (see `scrub_environment`).
When the shell exits, or the time limit passes, the whole process group is sent SIGTERM and then
SIGKILL, so background children (`sleep 100 &`) do not outlive the call. A command that leaves
its process group (`setsid`, a daemonising server) escapes this; that needs an OS sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import hashlib
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..logs import SECRET_PATTERN
from .definitions import (
    LIST_DIRECTORY,
    READ_FILE,
    RUN_TERMINAL,
    SEARCH_REPLACE,
    WRITE_FILE,
    ToolArgumentError,
    ToolCall,
    coerce_call,
)
from .sandbox import O_NONBLOCK, PathChangedError, ResolvedPath, Sandbox, SandboxError

if TYPE_CHECKING:
    from .journal import Journal

log = logging.getLogger("llmtune_companion.tools")

KIB = 1024
MIB = 1024 * 1024


class ToolLimits(BaseModel):
    """Sizes and times; a `[tools.limits]`-style settings block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_read_bytes: int = Field(256 * KIB, ge=1)
    max_write_bytes: int = Field(1 * MIB, ge=1)
    # Largest existing file a write may replace (its old content is kept for undo).
    max_backup_bytes: int = Field(64 * MIB, ge=0)
    list_default_depth: int = Field(1, ge=1, le=10)
    list_max_entries: int = Field(500, ge=1)
    command_timeout: float = Field(60.0, gt=0)
    output_head_bytes: int = Field(16 * KIB, ge=0)
    output_tail_bytes: int = Field(16 * KIB, ge=0)
    # Between SIGTERM and SIGKILL of the process group.
    kill_grace: float = Field(2.0, ge=0)
    # A diff longer than this is cut in results and previews.
    max_diff_bytes: int = Field(64 * KIB, ge=256)


@dataclass(slots=True)
class ToolResult:
    """What a tool call produced: `content` goes back to the model as the `tool` message."""

    content: str
    ok: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def to_message(self, tool_call_id: str | None) -> dict[str, Any]:
        """The OpenAI `{"role": "tool", ...}` message carrying this result."""
        message: dict[str, Any] = {"role": "tool", "content": self.content}
        if tool_call_id:
            message["tool_call_id"] = tool_call_id
        return message


@dataclass(slots=True)
class Preview:
    """What a call would do, computed without doing it: shown to the person asked to approve it.

    `kind` is "diff" (write_file / search_replace: `text` is a unified diff), "command"
    (run_terminal: `text` is the command, `meta["cwd"]` where it runs) or "read"/"list". When the
    call cannot succeed, `error` holds the result to return instead of asking.
    """

    kind: Literal["diff", "command", "read", "list"]
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    error: ToolResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.meta}


class _Refused(Exception):
    """Internal: end the call with this message (ok=False)."""

    def __init__(self, message: str, **meta: Any) -> None:
        super().__init__(message)
        self.message = message
        self.meta = meta


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


# ---- the executor ---------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _human(size: int) -> str:
    if size < KIB:
        return f"{size} bytes"
    if size < MIB:
        return f"{size / KIB:.1f} KiB"
    return f"{size / MIB:.1f} MiB"


def _line_numbers(text: str, needle: str, limit: int = 5) -> list[int]:
    lines: list[int] = []
    start = 0
    while len(lines) < limit:
        index = text.find(needle, start)
        if index < 0:
            break
        lines.append(text.count("\n", 0, index) + 1)
        start = index + max(len(needle), 1)
    return lines


class Executor:
    """Executes tool calls inside one workspace root. File work runs in a thread, off the event loop.

    With a `journal`, the previous content of every file a write replaces is saved first (undo).
    """

    def __init__(self, sandbox: Sandbox, limits: ToolLimits | None = None, *, journal: Journal | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.limits = limits or ToolLimits()
        self.journal = journal
        self._environ = environ

    @property
    def root(self) -> str:
        return str(self.sandbox.root)

    # ---- entry points ----------------------------------------------------------------------------

    async def execute(self, call: ToolCall | Mapping[str, Any], *, workspace: str = "default",
                      expect_sha256: str | Literal[False] | None = False,
                      expect_path: str | None = None) -> ToolResult:
        """Run one call; never raises for the model's mistakes (only for cancellation).

        `expect_sha256`: for write_file / search_replace, the hash of the file as it was previewed
        (None: it did not exist); the write is refused if the file changed meanwhile. False: no check.
        `expect_path`: the root-relative real path the policy judged; the call is refused if the path
        now resolves elsewhere (a symbolic link changed in between).
        """
        started = time.monotonic()
        try:
            call = coerce_call(call)
            if call.name == RUN_TERMINAL:
                result = await self._run_terminal(call.arguments["command"])
            else:
                result = await asyncio.to_thread(self._file_tool, call, workspace, expect_sha256, expect_path)
        except ToolArgumentError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "arguments"})
        except PathChangedError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "path_changed"})
        except SandboxError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "sandbox"})
        except _Refused as exc:
            result = ToolResult(exc.message, ok=False, meta={"error": "refused", **exc.meta})
        except OSError as exc:
            result = ToolResult(self._os_error(call, exc), ok=False, meta={"error": "os", "errno": exc.errno})
        result.meta.setdefault("duration_ms", round((time.monotonic() - started) * 1000, 1))
        result.meta.setdefault("result_bytes", len(result.content.encode("utf-8", "replace")))
        return result

    async def preview(self, call: ToolCall | Mapping[str, Any]) -> Preview:
        """What `call` would do, without doing it (a diff for writes, the command and cwd for commands)."""
        try:
            call = coerce_call(call)
            if call.name == RUN_TERMINAL:
                return Preview("command", call.arguments["command"], {"cwd": self.root})
            return await asyncio.to_thread(self._preview_file, call)
        except ToolArgumentError as exc:
            return Preview("read", "", error=ToolResult(str(exc), ok=False, meta={"error": "arguments"}))
        except SandboxError as exc:
            return Preview("read", "", error=ToolResult(str(exc), ok=False, meta={"error": "sandbox"}))
        except _Refused as exc:
            return Preview("read", "", error=ToolResult(exc.message, ok=False, meta={"error": "refused", **exc.meta}))
        except OSError as exc:
            return Preview("read", "", error=ToolResult(self._os_error(call, exc), ok=False, meta={"error": "os"}))

    @staticmethod
    def _os_error(call: ToolCall | Mapping[str, Any], exc: OSError) -> str:
        if isinstance(call, ToolCall) and call.name == RUN_TERMINAL:
            return f"the command could not be started: {exc.strerror or exc}"
        what = call.path if isinstance(call, ToolCall) and call.path else "the file"
        if isinstance(exc, FileNotFoundError):
            return f"{what!r} does not exist"
        if isinstance(exc, NotADirectoryError):
            return f"{what!r}: a component of the path is not a directory"
        if isinstance(exc, IsADirectoryError):
            return f"{what!r} is a directory"
        if isinstance(exc, PermissionError):
            return f"{what!r}: permission denied"
        return f"{what!r}: {exc.strerror or exc}"

    # ---- files -------------------------------------------------------------------------------------

    def _file_tool(self, call: ToolCall, workspace: str, expect: str | Literal[False] | None,
                   expect_path: str | None = None) -> ToolResult:
        target = self.sandbox.resolve(call.arguments["path"])
        if expect_path is not None and target.display != expect_path:
            raise PathChangedError(f"{target.requested!r} now leads to {target.display!r}, not {expect_path!r} "
                                   "as when it was checked; refused")
        if call.name == READ_FILE:
            return self._read_file(target)
        if call.name == LIST_DIRECTORY:
            return self._list_directory(target, call.arguments.get("depth"))
        if call.name == WRITE_FILE:
            return self._write_file(target, call.arguments["content"], workspace, expect)
        if call.name == SEARCH_REPLACE:
            args = call.arguments
            return self._search_replace(target, args["search"], args["replace"], bool(args.get("replace_all")),
                                        workspace, expect)
        raise ToolArgumentError(f"unknown tool {call.name!r}")

    def _read_existing(self, target: ResolvedPath, limit: int, what: str) -> tuple[bytes, os.stat_result] | None:
        """The bytes and status of a regular file, None if it does not exist; refused above `limit`."""
        try:
            fd = self.sandbox.open_file(target, os.O_RDONLY | O_NONBLOCK)
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise _Refused(f"{target.display!r} is a directory; use list_directory") from exc
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise _Refused(f"{target.display!r} is a directory; use list_directory")
            if not stat.S_ISREG(info.st_mode):
                raise _Refused(f"{target.display!r} is not a regular file")
            if info.st_size > limit:
                raise _Refused(
                    f"{target.display!r} is {_human(info.st_size)}, more than the {_human(limit)} {what} limit"
                    + ("; read part of it with run_terminal (head, sed -n, grep)" if what == "read" else ""),
                    size=info.st_size,
                )
            chunks: list[bytes] = []
            remaining = limit + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, MIB))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
            if len(data) > limit:  # grew since fstat
                raise _Refused(f"{target.display!r} is more than the {_human(limit)} {what} limit")
            return data, info
        finally:
            os.close(fd)

    @staticmethod
    def _decode_text(target: ResolvedPath, data: bytes) -> str:
        if b"\x00" in data:
            raise _Refused(f"{target.display!r} is a binary file (it contains NUL bytes); not read", binary=True)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(f"{target.display!r} is not UTF-8 text (binary or another encoding); not read",
                           binary=True) from exc

    def _read_file(self, target: ResolvedPath) -> ToolResult:
        found = self._read_existing(target, self.limits.max_read_bytes, "read")
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        data, _ = found
        text = self._decode_text(target, data)
        return ToolResult(text, ok=True, meta={"path": target.display, "bytes": len(data)})

    def _list_directory(self, target: ResolvedPath, depth: int | None) -> ToolResult:
        depth = depth or self.limits.list_default_depth
        info = self.sandbox.lstat(target)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        if not stat.S_ISDIR(info.st_mode):
            raise _Refused(f"{target.display!r} is not a directory; use read_file")
        entries, truncated = self.sandbox.list_tree(target, depth=depth, max_entries=self.limits.list_max_entries)
        lines = []
        for entry in entries:
            if entry.kind == "dir":
                lines.append(entry.path + "/")
            elif entry.kind == "link":
                lines.append(f"{entry.path}@ -> {entry.target}" if entry.target else entry.path + "@")
            else:
                lines.append(entry.path)
        if not lines:
            lines.append("(empty directory)")
        if truncated:
            lines.append(f"[listing stopped at {self.limits.list_max_entries} entries; list a subdirectory "
                         "or use a smaller depth]")
        header = f"{target.display}/ (depth {depth}):" if not target.is_root else f"./ (depth {depth}):"
        return ToolResult("\n".join([header, *lines]), ok=True,
                          meta={"path": target.display, "entries": len(entries), "truncated": truncated})

    def _check_writable(self, target: ResolvedPath, data: bytes) -> None:
        if target.is_root:
            raise _Refused("the workspace root is a directory, not a file")
        if len(data) > self.limits.max_write_bytes:
            raise _Refused(f"the new content is {_human(len(data))}, more than the "
                           f"{_human(self.limits.max_write_bytes)} write limit", size=len(data))

    def _old(self, target: ResolvedPath, limit: int) -> tuple[bytes | None, int | None]:
        found = self._read_existing(target, limit, "backup")
        if found is None:
            return None, None
        data, info = found
        return data, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)

    def _check_expected(self, target: ResolvedPath, old: bytes | None, expect: str | Literal[False] | None) -> None:
        if expect is False:
            return
        now = None if old is None else sha256(old)
        if now != expect:
            raise _Refused(f"{target.display!r} changed while the call was waiting for approval; "
                           "read it again and retry", conflict=True)

    def _commit(self, target: ResolvedPath, tool: str, old: bytes | None, mode: int | None, new: bytes,
                workspace: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": target.display, "bytes": len(new), "created": old is None}
        if old is not None:
            meta["previous_bytes"] = len(old)
        entry = None
        if self.journal is not None:
            entry = self.journal.record(workspace=workspace, root=self.sandbox.root, path=target.display, tool=tool,
                                        previous=old, mode=mode, after=new)
            meta["undo_id"] = entry.id
        try:
            self.sandbox.write_atomic(target, new, mode=mode)
        except BaseException:
            if self.journal is not None and entry is not None:
                self.journal.discard(entry.id)
            raise
        return meta

    def _write_file(self, target: ResolvedPath, content: str, workspace: str,
                    expect: str | Literal[False] | None) -> ToolResult:
        new = content.encode("utf-8")
        self._check_writable(target, new)
        old, mode = self._old(target, self.limits.max_backup_bytes)
        self._check_expected(target, old, expect)
        meta = self._commit(target, WRITE_FILE, old, mode, new, workspace)
        if old is None:
            message = f"Created {target.display} ({_human(len(new))})."
        elif old == new:
            message = f"{target.display} already had this content ({_human(len(new))}); rewritten unchanged."
        else:
            message = f"Wrote {target.display} ({_human(len(new))}, was {_human(len(old))})."
        return ToolResult(message, ok=True, meta=meta)

    def _diff(self, target: ResolvedPath, before: str, after: str) -> str:
        name = target.display
        lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     fromfile=f"a/{name}", tofile=f"b/{name}", n=3)
        out: list[str] = []
        size = 0
        for line in lines:
            if not line.endswith("\n"):
                line += "\n\\ No newline at end of file\n"
            size += len(line)
            if size > self.limits.max_diff_bytes:
                out.append("[... diff cut ...]\n")
                break
            out.append(line)
        return "".join(out)

    def _replacement(self, target: ResolvedPath, text: str, search: str, replace: str,
                     replace_all: bool) -> tuple[str, int]:
        if search == "":
            raise _Refused("search is empty; give the exact text to replace")
        if search == replace:
            raise _Refused("search and replace are the same text; nothing to change")
        count = text.count(search)
        if count == 0 and "\r\n" in text and "\r\n" not in search and "\n" in search:
            # A file with Windows line endings, and the model's text with Unix ones.
            search, replace = search.replace("\n", "\r\n"), replace.replace("\n", "\r\n")
            count = text.count(search)
        if count == 0:
            hint = ""
            stripped = search.strip()
            if stripped and stripped != search and stripped in text:
                hint = " (it occurs with different leading/trailing whitespace; copy it exactly)"
            elif "\t" in text and "\t" not in search and search.startswith(" "):
                hint = " (the file indents with tabs)"
            raise _Refused(f"the search text was not found in {target.display!r}{hint}; read the file and "
                           "copy the text exactly", matches=0)
        if count > 1 and not replace_all:
            lines = _line_numbers(text, search)
            raise _Refused(
                f"the search text occurs {count} times in {target.display!r} (lines "
                f"{', '.join(map(str, lines))}{', ...' if count > len(lines) else ''}); include more "
                "surrounding lines to make it unique, or set replace_all to true",
                matches=count,
            )
        return text.replace(search, replace) if replace_all else text.replace(search, replace, 1), count

    def _search_replace(self, target: ResolvedPath, search: str, replace: str, replace_all: bool, workspace: str,
                        expect: str | Literal[False] | None) -> ToolResult:
        old, mode = self._old(target, self.limits.max_write_bytes)
        if old is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        self._check_expected(target, old, expect)
        text = self._decode_text(target, old)
        updated, count = self._replacement(target, text, search, replace, replace_all)
        new = updated.encode("utf-8")
        self._check_writable(target, new)
        meta = self._commit(target, SEARCH_REPLACE, old, mode, new, workspace)
        meta["replacements"] = count
        diff = self._diff(target, text, updated)
        plural = "s" if count > 1 else ""
        return ToolResult(f"Replaced {count} occurrence{plural} in {target.display}.\n{diff}", ok=True, meta=meta)

    def _preview_file(self, call: ToolCall) -> Preview:
        target = self.sandbox.resolve(call.arguments["path"])
        meta: dict[str, Any] = {"path": target.display, "protected": target.protected}
        if call.name == READ_FILE:
            return Preview("read", target.display, meta)
        if call.name == LIST_DIRECTORY:
            return Preview("list", target.display, meta)
        if call.name == WRITE_FILE:
            new = call.arguments["content"].encode("utf-8")
            self._check_writable(target, new)
            old, _ = self._old(target, self.limits.max_backup_bytes)
            meta.update(before_sha256=None if old is None else sha256(old), bytes=len(new), created=old is None)
            try:
                before = "" if old is None else self._decode_text(target, old)
            except _Refused:
                return Preview("diff", f"(replaces a binary file of {_human(len(old or b''))})\n", meta)
            return Preview("diff", self._diff(target, before, call.arguments["content"]), meta)
        old, _ = self._old(target, self.limits.max_write_bytes)
        if old is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        text = self._decode_text(target, old)
        args = call.arguments
        updated, count = self._replacement(target, text, args["search"], args["replace"],
                                           bool(args.get("replace_all")))
        self._check_writable(target, updated.encode("utf-8"))
        meta.update(before_sha256=sha256(old), replacements=count)
        return Preview("diff", self._diff(target, text, updated), meta)

    # ---- run_terminal ------------------------------------------------------------------------------

    def _argv(self, command: str) -> list[str]:
        if sys.platform == "win32":
            return [os.environ.get("COMSPEC", "cmd.exe"), "/d", "/s", "/c", command]
        return ["/bin/sh", "-c", command]

    async def _run_terminal(self, command: str) -> ToolResult:
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


async def execute(call: ToolCall | Mapping[str, Any], *, root: str | os.PathLike[str],
                  limits: ToolLimits | None = None, workspace: str = "default") -> ToolResult:
    """One-off execution without journal or policy (tests, scripts): `Executor(Sandbox(root)).execute(call)`."""
    return await Executor(Sandbox(root), limits).execute(call, workspace=workspace)
