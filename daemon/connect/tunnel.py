"""`connect cursor`: a public tunnel in front of the restricted listener, for as long as the command runs.

Cursor sends its model requests from Cursor's servers, so its base URL must be reachable from the
internet. The tunnel token lives in `<settings>/tunnel-token` (0600) and survives restarts, so Cursor's
settings stay valid; `--rotate` replaces it and `--stop` deletes it (the listener re-reads the file,
so both act on the next request). While a tunnel runs, `<settings>/tunnel.json` says where (no secret).
The public side is a `Forwarder`: ngrok's Python package in real use, any other in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ..api.tunnel import RateLimiter, TunnelCredentials, create_tunnel_app, read_credentials
from ..appkeys import RUNTIME
from ..config.paths import Paths, write_private
from ..config.settings import Config

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lctt_"  # noqa: S105 (a prefix, not a secret)
NGROK_TOKEN_ENV = "NGROK_AUTHTOKEN"  # noqa: S105 (a variable's name)
CONNECT_TIMEOUT = 30.0  # seconds to open the public side


class TunnelError(Exception):
    """The tunnel cannot be opened; the message says what to install, set or change."""


def token_file(paths: Paths) -> Path:
    return paths.root / "tunnel-token"


def state_file(paths: Paths) -> Path:
    return paths.root / "tunnel.json"


def current_token(paths: Paths) -> tuple[str, str] | None:
    """(token, workspace) of the tunnel, or None when there is none (never issued, or revoked)."""
    return read_credentials(token_file(paths))


def issue_token(paths: Paths, workspace: str, *, rotate: bool = False) -> str:
    """The tunnel token for `workspace`: kept when it exists (and is for that workspace) unless `rotate`."""
    existing = current_token(paths)
    if existing is not None and not rotate and existing[1] == workspace:
        return existing[0]
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    write_private(token_file(paths), orjson.dumps({"token": token, "workspace": workspace}))
    return token


def revoke_token(paths: Paths) -> bool:
    """Delete the tunnel token; whether there was one."""
    try:
        token_file(paths).unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RunningTunnel:
    pid: int
    local_url: str
    public_url: str


def running_tunnel(paths: Paths) -> RunningTunnel | None:
    """The tunnel a `connect cursor` process serves now, if any."""
    try:
        data = orjson.loads(state_file(paths).read_bytes())
        tunnel = RunningTunnel(int(data["pid"]), str(data["local_url"]), str(data["public_url"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    try:
        os.kill(tunnel.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    # A pid can be reused after a crash: the process counts only while its listener still answers.
    return tunnel if _listening(tunnel.local_url) else None


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def stop_running(paths: Paths) -> RunningTunnel | None:
    """Ask a running `connect cursor` to close its tunnel (SIGTERM); the tunnel it was serving, if any."""
    tunnel = running_tunnel(paths)
    if tunnel is not None and tunnel.pid != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(tunnel.pid, signal.SIGTERM)
    return tunnel


# -- the public side ------------------------------------------------------------------------------


class Forwarder(Protocol):
    """Makes a local URL reachable from the internet; `open` returns the public URL."""

    async def open(self, local_url: str) -> str: ...

    async def close(self) -> None: ...


class NgrokForwarder:
    """ngrok's Python package (the `[tunnel]` extra): the agent is in the package, nothing is downloaded."""

    def __init__(self, authtoken: str) -> None:
        self._authtoken = authtoken
        self._session: Any = None
        self._listener: Any = None

    async def open(self, local_url: str) -> str:
        import ngrok

        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self._session = await ngrok.SessionBuilder().authtoken(self._authtoken).connect()
                self._listener = await self._session.http_endpoint().listen_and_forward(local_url)
        except TimeoutError:
            raise TunnelError(f"ngrok did not answer within {CONNECT_TIMEOUT:.0f}s; is this machine online?") from None
        except ValueError as exc:  # ngrok reports a refused token or an unreachable service this way
            detail = " ".join(str(part) for part in exc.args)
            raise TunnelError(f"ngrok refused to open the tunnel: {detail}; check {NGROK_TOKEN_ENV} "
                              "(https://dashboard.ngrok.com/get-started/your-authtoken)") from None
        return str(self._listener.url())

    async def close(self) -> None:
        for closable in (self._listener, self._session):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.close()
        self._listener = self._session = None


def ngrok_forwarder(environ: dict[str, str] | os._Environ[str] | None = None) -> NgrokForwarder:
    """The ngrok forwarder, or exactly what to install and set for it (everything missing at once)."""
    import importlib.util

    env = os.environ if environ is None else environ
    authtoken = env.get(NGROK_TOKEN_ENV, "").strip()
    needed = []
    if importlib.util.find_spec("ngrok") is None:
        needed.append("ngrok's Python package: python -m pip install 'llmtune-companion[tunnel]'")
    if not authtoken:
        needed.append(f"an ngrok authtoken in {NGROK_TOKEN_ENV}: sign up at https://ngrok.com, copy the token from "
                      f"https://dashboard.ngrok.com/get-started/your-authtoken, then export {NGROK_TOKEN_ENV}=...")
    if needed:
        raise TunnelError("the tunnel needs " + "; and ".join(needed))
    return NgrokForwarder(authtoken)


# -- the restricted listener behind it -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    local_url: str
    public_url: str


async def serve_tunnel(paths: Paths, config: Config, forwarder: Forwarder, *,
                       ready: Callable[[Opened], None], stop: asyncio.Event | None = None) -> None:
    """Serve the restricted listener on loopback, open the public side in front of it, and keep both until
    `stop` is set (or SIGINT/SIGTERM); then close the public side first."""
    from ..app import make_session, runner_options
    from ..runtime import Runtime
    from ..server import display_url

    stop = stop or asyncio.Event()
    settings = config.settings.tunnel
    async with make_session(config) as session:
        runtime = Runtime(paths, config, session)
        runtime.detect_in_background()
        app = create_tunnel_app(TunnelCredentials(token_file(paths)), RateLimiter(settings.requests_per_minute))
        app[RUNTIME] = runtime
        runner = web.AppRunner(app, **runner_options())
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", settings.port)
            try:
                await site.start()
            except OSError as exc:
                raise TunnelError(f"cannot listen on 127.0.0.1:{settings.port} ({exc}); change [tunnel] port") from None
            local_url = display_url("127.0.0.1", int(runner.addresses[0][1]))
            public_url = await forwarder.open(local_url)
            try:
                write_private(state_file(paths), orjson.dumps({"pid": os.getpid(), "local_url": local_url,
                                                               "public_url": public_url, "started_at": time.time()}))
                handled = _on_signals(stop)
                try:
                    ready(Opened(local_url, public_url))
                    await stop.wait()
                finally:
                    for sig in handled:
                        asyncio.get_running_loop().remove_signal_handler(sig)
            finally:
                await forwarder.close()
                current = running_tunnel(paths)
                if current is not None and current.pid == os.getpid():
                    state_file(paths).unlink(missing_ok=True)
        finally:
            runtime.request_log.flush()
            await runner.cleanup()
            await runtime.aclose()


def _on_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """SIGINT and SIGTERM set `stop` (`--stop` from another terminal sends SIGTERM); the ones handled."""
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt still ends it
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    return handled
