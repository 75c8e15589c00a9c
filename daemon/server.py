"""Running the daemon in the foreground: bind loopback, say where, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .app import create_app, runner_options
from .appkeys import RUNTIME, SHUTDOWN
from .config.paths import Paths, write_private
from .config.settings import Config, is_loopback_host
from .errors import ERROR_CODES, error_response
from .instance import AlreadyRunning, InstanceLock, read_daemon_file

log = logging.getLogger(__name__)


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what its own parser refuses in our JSON error shape.

    A 20 KB header, a 100 KB URL or 5,000 headers never reach the app: aiohttp answers them itself,
    in plain text, and logs a traceback. Junk traffic gets one line at INFO here instead.
    """

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            if not getattr(exc, "companion_logged", False):
                log.error("unhandled error in %s %r", request.method, request.raw_path,
                          exc_info=exc if exc is not None else False)
            message = "internal error; see the companion's log"
        else:
            log.info("refused a malformed request (HTTP %d): %s", status, (message or str(exc))[:200])
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; the connection is dropped")
        response = error_response(status, message or "malformed request", ERROR_CODES.get(status, "bad_request"))
        response.force_close()
        return response


    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            # The rest of a body that could not be decoded, read off after our 400: junk, not a fault.
            log.info("dropped the rest of a malformed request body: %s", " ".join(str(exc).split())[:200])
            return
        if exc is None or not getattr(exc, "companion_logged", False):
            log.error(*args, **kwargs)


class JsonErrorServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class CompanionRunner(web.AppRunner):
    """AppRunner whose connections answer parser errors in our error shape (JsonErrorHandler)."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same layout, one method more; aiohttp offers no factory hook
        return server


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
    # Whatever is left after drain() is cut off quickly: drain already gave it the grace period.
    runner = CompanionRunner(app, shutdown_timeout=FINAL_WRITE_SECONDS, **runner_options())
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
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
            return
        # A second signal: the person does not want to wait for the grace period.
        log.warning("second signal: exiting at once")
        _forget_daemon_file(paths)
        os._exit(EXIT_INTERRUPTED)

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt still ends the loop
            pass
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
        await drain(app, site, config.settings.server.shutdown_grace)
    finally:
        try:
            await runner.cleanup()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            # Last: while daemon.json exists, `status` says the daemon is running, and it still is.
            _forget_daemon_file(paths)


# Exit status when a second signal cut the graceful shutdown short.
EXIT_INTERRUPTED = 130
# After the grace, how long ended streams get to write their error event before connections close.
FINAL_WRITE_SECONDS = 2.0


def _forget_daemon_file(paths: Paths) -> None:
    current = read_daemon_file(paths)
    if current is not None and current.get("pid") == os.getpid():
        paths.daemon_file.unlink(missing_ok=True)


async def drain(app: web.Application, site: web.BaseSite, grace: float) -> None:
    """Stop accepting, let running requests finish for up to `grace` seconds, then end the rest.

    Streams still running then get an SSE error event (code `shutting_down`) and `[DONE]`: their
    upstream connections are ended, and each relay writes the event as for any broken upstream.
    """
    runtime = app[RUNTIME]
    await site.stop()
    runtime.approvals.close()  # ends event streams; pending approvals are denied ("shutting down")
    runtime.drained = asyncio.Event()
    if not await _drained(runtime.drained, runtime.in_flight, grace):
        log.info("shutting down: ending %d request(s) still running after %gs", runtime.in_flight, grace)
        runtime.abort_upstreams("the companion is shutting down")
        await _drained(runtime.drained, runtime.in_flight, FINAL_WRITE_SECONDS)


async def _drained(event: asyncio.Event, in_flight: int, timeout: float) -> bool:  # noqa: ASYNC109
    if not in_flight:
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


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
