"""The restricted listener a public tunnel forwards to (`connect cursor`): Cursor's three endpoints only.

It is its own aiohttp app on its own loopback port, never the daemon's: whatever reaches it came from
the internet. So it serves `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`
and nothing else (no control API, no platform or embeddings routes); it takes only the tunnel token,
never a workspace's local token, and re-reads it from its file so `--rotate` and `--stop` act at once;
it runs no local tool whatever the workspace's tool mode (passthrough: tool calls go back to the
client); and it answers a fixed number of requests per minute, whoever sends them.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from ..appkeys import RUNTIME, WORKSPACE
from ..config.settings import Workspace
from ..errors import CompanionError, error_response
from ..tools.agent_loop import MODE_HEADER
from . import openai
from .guard import presented_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WINDOW = 60.0  # seconds: the cap is per minute
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/chat/completions", openai.chat_completions),
    ("POST", "/v1/completions", openai.completions),
    ("GET", "/v1/models", openai.list_models),
)


class TunnelCredentials:
    """The tunnel token and the workspace it stands for, from their 0600 file; None once revoked.

    The file is stat'ed on every request and read again when it changed, so a rotation or a
    revocation from another process applies to the next request.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._value: tuple[str, str] | None = None

    def current(self) -> tuple[str, str] | None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._value = None, None
            return None
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            self._seen, self._value = seen, read_credentials(self.path)
        return self._value


def read_credentials(path: Path) -> tuple[str, str] | None:
    """(token, workspace) from the tunnel token file; None when it is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    token, workspace = data.get("token"), data.get("workspace")
    if isinstance(token, str) and len(token) >= 32 and isinstance(workspace, str):
        return token, workspace
    return None


class RateLimiter:
    """At most `per_minute` requests in any 60 seconds (a sliding window of their times)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._times: deque[float] = deque()

    def admit(self) -> float | None:
        """None when the request may go ahead, else the seconds until one may."""
        now = self._clock()
        while self._times and now - self._times[0] >= WINDOW:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return WINDOW - (now - self._times[0])
        self._times.append(now)
        return None


CREDENTIALS = web.AppKey("tunnel_credentials", TunnelCredentials)
LIMITER = web.AppKey("tunnel_limiter", RateLimiter)


def passthrough(workspace: Workspace) -> Workspace:
    """The workspace as the tunnel serves it: tool calls always go back to the client."""
    return dataclasses.replace(workspace, settings=workspace.settings.model_copy(update={"tools": "passthrough"}))


@web.middleware
async def tunnel_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        wait = request.app[LIMITER].admit()
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise CompanionError(429, f"the tunnel answers {request.app[LIMITER].per_minute} requests per minute; "
                                      f"try again in {seconds}s", "rate_limited", {"retry_after": seconds},
                                 {"Retry-After": str(seconds)})
        credentials = request.app[CREDENTIALS].current()
        token = presented_token(request)
        if credentials is None:
            raise CompanionError(401, "the tunnel token was revoked (`llmtune-companion connect cursor --stop`)",
                                 "invalid_token")
        if token is None:
            raise CompanionError(401, "missing tunnel token: send 'Authorization: Bearer <token>'", "missing_token")
        expected, workspace_name = credentials
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise CompanionError(401, "invalid tunnel token", "invalid_token")
        if MODE_HEADER in request.headers:
            raise CompanionError(400, f"{MODE_HEADER} is not accepted through the tunnel: it never runs local tools",
                                 "tool_mode_not_allowed")
        workspace = request.app[RUNTIME].config.workspaces.get(workspace_name)
        if workspace is None:
            raise CompanionError(503, f"the tunnel's workspace {workspace_name!r} no longer exists",
                                 "workspace_not_found")
        request[WORKSPACE] = passthrough(workspace)
        return await handler(request)
    except CompanionError as exc:
        return exc.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        message = "the tunnel serves only POST /v1/chat/completions, POST /v1/completions and GET /v1/models"
        return error_response(exc.status, message if exc.status in (404, 405) else exc.reason, code)


def create_tunnel_app(credentials: TunnelCredentials, limiter: RateLimiter) -> web.Application:
    """The restricted app; the caller sets `app[RUNTIME]` to the runtime it serves from."""
    # Bodies are read (and limited) by the relay's own reader, as on the main port.
    app = web.Application(middlewares=[tunnel_guard], client_max_size=2**40)
    app[CREDENTIALS] = credentials
    app[LIMITER] = limiter
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
