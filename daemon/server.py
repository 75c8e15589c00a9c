"""Running the daemon in the foreground: bind loopback, say where, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from .app import create_app, runner_options
from .appkeys import SHUTDOWN
from .config.paths import Paths, write_private
from .config.settings import Config, is_loopback_host
from .instance import AlreadyRunning, InstanceLock, read_daemon_file

__all__ = ["AlreadyRunning", "PortBusy", "read_daemon_file", "run", "serve"]


class PortBusy(Exception):
    pass


def display_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    paths: Paths,
    config: Config,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    if not is_loopback_host(host):
        raise ValueError(f"refusing to listen on {host}: the companion serves loopback only")
    stop = stop or asyncio.Event()
    app = create_app(paths, config)
    app[SHUTDOWN] = stop.set  # POST /companion/v1/shutdown stops the daemon the way SIGTERM does
    runner = web.AppRunner(app, **runner_options())
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            raise PortBusy(port) from None
        raise
    bound = int(runner.addresses[0][1])  # the real port when 0 was asked for
    url = display_url(host, bound)
    write_private(paths.daemon_file, orjson.dumps({"pid": os.getpid(), "url": url, "host": host, "port": bound,
                                                    "started_at": time.time()}))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt still ends the loop
            pass
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        current = read_daemon_file(paths)
        if current is not None and current.get("pid") == os.getpid():
            paths.daemon_file.unlink(missing_ok=True)
        await runner.cleanup()


def run(paths: Paths, config: Config, host: str, port: int, ready: Callable[[str], None]) -> int:
    # Before anything is bound or written: a second daemon on this directory leaves the first's files alone.
    lock = InstanceLock(paths)
    lock.acquire()
    coroutine = serve(paths, config, host, port, ready=ready)
    try:
        try:
            import uvloop  # measurably quicker on the request path (not on Windows)
        except ImportError:
            asyncio.run(coroutine)
        else:
            uvloop.run(coroutine)
    except KeyboardInterrupt:
        return 0
    finally:
        lock.release()
    return 0
