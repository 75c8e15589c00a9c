"""What the tray asks of the desktop: open a file, folder or page, copy text, run our own CLI.

One class, so the shell can swap in its toolkit's clipboard and a test can record what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from ..config.paths import Paths

log = logging.getLogger(__name__)

# Longest a CLI command run from the menu may take (service install writes a few files).
CLI_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class CLIResult:
    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """The first line worth showing a person."""
        text = (self.out if self.code == 0 else self.err or self.out).strip()
        return text.splitlines()[0] if text else ("done" if self.code == 0 else f"failed ({self.code})")


def cli_argv(*args: str) -> list[str]:
    """Our own CLI with the interpreter that runs the tray (the tray's venv, not whatever is on PATH)."""
    return [sys.executable, "-m", "llmtune_companion", *args]


class Desktop:
    def open_path(self, path: Path) -> None:
        """Open a file or folder with the desktop's default application."""
        if sys.platform == "win32":
            os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 (a path of our own)
            return
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)

    def open_url(self, url: str) -> None:
        webbrowser.open(url)

    def copy(self, text: str) -> bool:
        """Put text on the clipboard with the platform's own tool; False when there is none."""
        for command in _clipboard_commands():
            if shutil.which(command[0]):
                try:
                    subprocess.run(command, input=text.encode(), timeout=5, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    return True
                except (OSError, subprocess.SubprocessError):
                    continue
        return False

    async def run_cli(self, *args: str) -> CLIResult:
        process = await asyncio.create_subprocess_exec(*cli_argv(*args), stdin=subprocess.DEVNULL,
                                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                out, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return CLIResult(124, "", f"`llmtune-companion {' '.join(args)}` took too long")
        return CLIResult(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    def start_daemon(self, paths: Paths) -> None:
        """A detached `serve` that outlives the tray; its output goes next to the log."""
        paths.ensure()
        out = open(paths.log_dir / "serve.out", "ab")
        try:
            flags = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            subprocess.Popen(cli_argv("serve"), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True, creationflags=flags)
        finally:
            out.close()


def _clipboard_commands() -> list[list[str]]:
    if sys.platform == "darwin":
        return [["pbcopy"]]
    if sys.platform == "win32":
        return [["clip"]]
    return [["wl-copy"], ["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
