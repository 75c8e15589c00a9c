"""Re-read config.toml and secrets.json when they change, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import watchfiles
from aiohttp import web

from ..appkeys import RUNTIME

log = logging.getLogger(__name__)


async def watch_settings(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one watcher task for the app's lifetime."""
    runtime = app[RUNTIME]
    watched = {runtime.paths.config_file.name, runtime.paths.secrets_file.name}
    stop = asyncio.Event()

    async def watch() -> None:
        runtime.paths.root.mkdir(parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(runtime.paths.root, stop_event=stop, debounce=150, step=50,
                                               recursive=False):
            if any(path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] in watched for _, path in changes):
                runtime.reload()

    task = asyncio.get_running_loop().create_task(watch())
    yield
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
