"""Running the five tools inside a `Sandbox`, with the results written as text for the model.

Nothing here raises for a mistake the model can correct (a missing file, an ambiguous search, a path
outside the workspace): `Executor.execute` returns a `ToolResult` with `ok=False` and a message.
The file tools are in file_tools.py, run_terminal in terminal.py; this is the one entry point.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..config.tool_limits import ToolLimits
from .definitions import RUN_TERMINAL, ToolArgumentError, ToolCall, coerce_call
from .file_tools import FileTools
from .results import Preview, Refused, ToolResult
from .sandbox import PathChangedError, Sandbox, SandboxError
from .terminal import Terminal

if TYPE_CHECKING:
    from .journal import Journal


class Executor:
    """Executes tool calls inside one workspace root. File work runs in a thread, off the event loop.

    With a `journal`, the previous content of every file a write replaces is saved first (undo).
    """

    def __init__(self, sandbox: Sandbox, limits: ToolLimits | None = None, *, journal: Journal | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.limits = limits or ToolLimits()
        self.journal = journal
        self.files = FileTools(sandbox, self.limits, journal)
        self.terminal = Terminal(self.root, self.limits, environ)

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
                result = await self.terminal.run(call.arguments["command"])
            else:
                result = await asyncio.to_thread(self.files.run, call, workspace, expect_sha256, expect_path)
        except ToolArgumentError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "arguments"})
        except PathChangedError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "path_changed"})
        except SandboxError as exc:
            result = ToolResult(str(exc), ok=False, meta={"error": "sandbox"})
        except Refused as exc:
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
            return await asyncio.to_thread(self.files.preview, call)
        except ToolArgumentError as exc:
            return Preview("read", "", error=ToolResult(str(exc), ok=False, meta={"error": "arguments"}))
        except SandboxError as exc:
            return Preview("read", "", error=ToolResult(str(exc), ok=False, meta={"error": "sandbox"}))
        except Refused as exc:
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


async def execute(call: ToolCall | Mapping[str, Any], *, root: str | os.PathLike[str],
                  limits: ToolLimits | None = None, workspace: str = "default") -> ToolResult:
    """One-off execution without journal or policy (tests, scripts): `Executor(Sandbox(root)).execute(call)`."""
    return await Executor(Sandbox(root), limits).execute(call, workspace=workspace)


__all__ = ["Executor", "execute"]
