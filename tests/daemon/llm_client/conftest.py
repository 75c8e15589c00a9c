"""A real `llmtune-companion serve` subprocess for the client's no-configuration path (daemon.json)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from llmtune_companion.config.paths import HOME_ENV, Paths
from llmtune_companion.config.workspaces import add_workspace

from tests.conftest import WORKSPACE_KEY

TIMEOUT = 60.0


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    env: dict[str, str]


ServeDaemon = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve_daemon(home: Paths, tmp_path: Path) -> AsyncIterator[ServeDaemon]:
    """`await serve_daemon(config=..., env=...)`: the daemon as the user runs it, on a free port."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*, config: str = "", env: dict[str, str] | None = None) -> Served:
        home.ensure()
        if config:
            home.config_file.write_text(config, encoding="utf-8")
        add_workspace(home, "default", WORKSPACE_KEY)
        full_env = {**os.environ, HOME_ENV: str(home.root), **(env or {})}
        log = (tmp_path / "serve.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmtune_companion", "serve", "--port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log, env=full_env)
        log.close()
        started.append(process)
        assert process.stdout is not None
        banner = ""
        while "stop with" not in banner:
            line = (await asyncio.wait_for(process.stdout.readline(), TIMEOUT)).decode()
            if not line:
                raise AssertionError("serve exited early: " + (tmp_path / "serve.log").read_text())
            banner += line
        match = re.search(r"serving at (http://\S+)/v1", banner)
        assert match, banner
        return Served(process, match.group(1), full_env)

    yield start
    for process in started:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
