"""The tray's fixtures: the real daemon (execute mode, the hosted stand-in behind it) and a controller on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from llmtune_companion.config.paths import Paths, write_private
from llmtune_companion.tray.controller import Backoff, Controller
from llmtune_companion.tray.desktop import CLIResult, Desktop
from llmtune_companion.tray.model import Features, Notification, Snapshot

from tests.conftest import Daemon, StandIn, StartDaemon

TIMEOUT = 15.0


def announce(daemon: Daemon) -> None:
    """Write daemon.json as `serve` does, so the tray finds this daemon the way it finds a real one."""
    write_private(daemon.paths.daemon_file, orjson.dumps({"pid": os.getpid(), "url": daemon.url}))


@dataclass
class RecordingDesktop(Desktop):
    """The desktop's side (clipboard, file manager, browser, our CLI) as a record of what was asked."""

    copied: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    commands: list[tuple[str, ...]] = field(default_factory=list)

    def copy(self, text: str) -> bool:
        self.copied.append(text)
        return True

    def open_path(self, path: Path) -> None:
        self.opened.append(str(path))

    def open_url(self, url: str) -> None:
        self.opened.append(url)

    async def run_cli(self, *args: str) -> CLIResult:
        self.commands.append(args)
        return await super().run_cli(*args)


@dataclass
class Tray:
    controller: Controller
    desktop: RecordingDesktop
    snapshots: list[tuple[float, Snapshot]] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.fixture
async def daemon(start_daemon: StartDaemon, standin: StandIn, project: Path) -> Daemon:
    config = f'[workspaces.default]\nroot = "{project}"\ntools = "execute"\n'
    started = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url})
    announce(started)
    return started


async def start_tray(paths: Paths, features: Features | None = None) -> tuple[Tray, asyncio.Task[None]]:
    desktop = RecordingDesktop()
    tray = Tray(Controller(paths, desktop=desktop, features=features or Features(), stop_grace=0.3,
                           backoff=Backoff(0.05, 0.5)), desktop)
    tray.controller.on_snapshot = lambda snap: tray.snapshots.append((time.time(), snap))
    tray.controller.on_notify = tray.notifications.append
    return tray, asyncio.create_task(tray.controller.run())


@pytest.fixture
async def tray(daemon: Daemon) -> AsyncIterator[Tray]:
    started, task = await start_tray(daemon.paths)
    async with asyncio.timeout(TIMEOUT):
        await started.controller.wait_for(lambda state: state.running)
    yield started
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
