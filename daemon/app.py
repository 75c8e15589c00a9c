"""The application factory: `create_app(paths)` builds the whole daemon, resources in cleanup_ctx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from .adapters.http1 import ConnectionPool
from .api import control, llm, openai, platform
from .api.egress import scrub_response
from .api.guard import add_cors_headers, guard
from .appkeys import CONTROL_TOKEN, RUNTIME
from .config.paths import Paths
from .config.reload import watch_settings
from .config.settings import Config, load_config
from .dashboard import routes as dashboard
from .runtime import Runtime

log = logging.getLogger(__name__)


def make_pool(config: Config) -> ConnectionPool:
    """One backend's loopback connections as the daemon sets them up (upstream/connections.py)."""
    upstream = config.settings.upstream
    return ConnectionPool(limit=upstream.pool_size, keepalive=60.0, max_header_bytes=upstream.max_header_bytes,
                          pool_timeout=upstream.pool_timeout)


def make_session(config: Config) -> aiohttp.ClientSession:
    """For the daemon's own calls off the relay path (job webhooks)."""
    connector = aiohttp.TCPConnector(
        limit=config.settings.upstream.pool_size,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    # No session-wide timeout: each request sets its own (connect, first byte, between chunks).
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,  # relay bytes as they came; the client decodes
        # No skip_auto_headers: the User-Agent below already replaces aiohttp's, and a session-wide skip
        # list sends every request down aiohttp's slow header path (same bytes on the wire, more work).
        # Bytes are relayed without Content-Encoding, so ask for them unencoded (aiohttp asks for gzip).
        headers={"User-Agent": "llmtune-companion", "Accept-Encoding": "identity"},
        trust_env=False,
    )


def create_app(paths: Paths, config: Config | None = None, *, watch: bool = True) -> web.Application:
    paths.ensure()
    config = config or load_config(paths)
    # Body limits are enforced by our own reader, which follows config reloads.
    app = web.Application(middlewares=[guard], client_max_size=2**40)
    app[CONTROL_TOKEN] = control.load_control_token(paths)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        session = make_session(config)
        runtime = Runtime(paths, config, session)
        app[RUNTIME] = runtime
        await runtime.history.open()
        runtime.detect_in_background()
        yield
        await runtime.aclose()
        await session.close()

    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(scrub_response)
    app.cleanup_ctx.append(runtime_ctx)
    if watch:
        app.cleanup_ctx.append(watch_settings)
    openai.add_routes(app)
    platform.add_routes(app)
    control.add_routes(app)
    llm.add_routes(app)
    dashboard.add_routes(app)
    return app


def runner_options() -> dict[str, Any]:
    """Options for AppRunner / TestServer: a client that disconnects cancels its upstream request."""
    return {"handler_cancellation": True, "access_log": None}


