"""The control API under /companion/v1/, for the command line, the tray and the dashboard.

It is authenticated by the control token, which is not any workspace's token: a program holding
a workspace token can chat, but cannot see or steer the daemon.
"""

from __future__ import annotations

import secrets

import orjson
from aiohttp import web

from .keys import RUNTIME
from .paths import Paths, write_private

CONTROL_PREFIX = "ctl_"


def load_control_token(paths: Paths) -> str:
    """The control token from its 0600 file, created on first use."""
    path = paths.control_token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token.startswith(CONTROL_PREFIX) and len(token) >= 40:
            return token
    except FileNotFoundError:
        pass
    token = CONTROL_PREFIX + secrets.token_urlsafe(32)
    write_private(path, token.encode())
    return token


async def status(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.Response(body=orjson.dumps(runtime.status()), content_type="application/json")


async def reload(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    ok = runtime.reload()
    return web.Response(body=orjson.dumps({"reloaded": ok, "error": runtime.config_error}),
                        content_type="application/json", status=200 if ok else 422)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/companion/v1/status", status)
    app.router.add_post("/companion/v1/reload", reload)
