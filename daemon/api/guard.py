"""The guard in front of every request: Host allow-list, foreign Origins, local tokens, one error shape.

The Host check defeats DNS rebinding (a web page whose name re-resolves to 127.0.0.1 still sends its
own name as Host: this is how Ollama fixed CVE-2024-28224); the Origin check stops a page the user
visits from driving the API from the browser; the token keeps every other local program out.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..appkeys import CONTROL_TOKEN, CORS_ORIGIN, RUNTIME, WORKSPACE
from ..config.settings import is_loopback_host
from ..dashboard.auth import COOKIE_NAME as SESSION_COOKIE
from ..dashboard.auth import check_session
from ..errors import CompanionError, error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz"})
CONTROL_PREFIX = "/companion/"
# The dashboard's pages check its session themselves (the login page cannot need one).
DASHBOARD_PREFIX = "/dashboard"


def split_host(value: str) -> str:
    """`[::1]:8742` -> `::1`, `localhost:8742` -> `localhost`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


# Pure in its arguments, and a client sends the same Host on every request: parsing an IP address for
# each one cost more than the rest of the guard. Bounded, so varied Host headers only churn it.
@functools.lru_cache(maxsize=256)
def host_allowed(host_header: str | None, extra: tuple[str, ...]) -> bool:
    if host_header is None:
        return True  # HTTP/1.0 without Host: not a browser, and the socket is loopback anyway
    host = split_host(host_header)
    # Names compare like the header: case-insensitive, an entry's port (`mybox.lan:8742`) ignored.
    return is_loopback_host(host) or host in {split_host(name) for name in extra}


def origin_allowed(origin: str, host_header: str | None, extra: tuple[str, ...]) -> bool:
    if origin in extra:
        return True
    parts = urlsplit(origin)
    # Same origin only: the daemon's own pages (served under the Host the browser used).
    return parts.scheme == "http" and host_header is not None and parts.netloc == host_header.lower()


def presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    # Continue (and Anthropic-style clients) send the key as x-api-key.
    return request.headers.get("x-api-key") or None


EXPOSED_HEADERS = "X-Companion-Backend, X-Companion-Fallback-From, Retry-After"
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Api-Key, Idempotency-Key, OpenAI-Beta, "
                                    "X-Companion-Tools, Cache-Control",
    "Access-Control-Max-Age": "600",
}


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs before headers go out, so streamed answers get them too."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


# OpenAI paths a client may send without the /v1 its base URL should end in.
OPENAI_PATHS = ("/chat/completions", "/completions", "/embeddings", "/models")


def not_found_message(path: str) -> str:
    if path in OPENAI_PATHS or path.startswith("/models/"):
        return (f"no such path {path}: the OpenAI-compatible API is under /v1 (POST /v1{path}); set your "
                "client's base URL to http://127.0.0.1:PORT/v1")
    return f"no such path {path} (the API is under /v1, the control API under /companion/v1)"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    runtime.in_flight += 1  # graceful shutdown waits for this to reach 0 (server.py)
    try:
        server = runtime.config.settings.server
        host = request.headers.get("Host")
        if not host_allowed(host, server.allowed_hosts):
            raise CompanionError(403, "requests must address the companion by a loopback name "
                                      "(127.0.0.1, localhost or ::1)", "host_not_allowed")
        origin = request.headers.get("Origin")
        if origin is not None:
            if not origin_allowed(origin, host, server.allowed_origins):
                raise CompanionError(403, "cross-origin browser requests are refused; add the origin to "
                                          "server.allowed_origins to allow it", "origin_not_allowed")
            if origin in server.allowed_origins:
                request[CORS_ORIGIN] = origin
                if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                    # A preflight carries no token; it only asks which methods and headers may follow.
                    return web.Response(status=204, headers=PREFLIGHT_HEADERS)
        path = request.path
        if path not in OPEN_PATHS:
            token = presented_token(request)
            if token is None and path.startswith(DASHBOARD_PREFIX):
                return await handler(request)
            if token is None and path.startswith(CONTROL_PREFIX) and SESSION_COOKIE in request.cookies:
                check_session(request)  # the dashboard's cookie stands in for the control token, never for /v1
                return await handler(request)
            if token is None:
                raise CompanionError(401, "missing local token: send 'Authorization: Bearer <token>' "
                                          "(see `llmtune-companion token`)", "missing_token")
            if path.startswith(CONTROL_PREFIX):
                if not hmac.compare_digest(token.encode(), request.app[CONTROL_TOKEN].encode()):
                    raise CompanionError(401, "invalid control token", "invalid_token")
            else:
                workspace = runtime.authenticate(token)
                if workspace is None:
                    raise CompanionError(401, "invalid local token (see `llmtune-companion token`)",
                                         "invalid_token")
                request[WORKSPACE] = workspace
        return await handler(request)
    except CompanionError as exc:
        return exc.to_response()
    except (HttpProcessingError, RequestPayloadError) as exc:
        # A body aiohttp could not decode (a false Content-Encoding, a broken chunked body): the client's fault.
        cause = exc.__cause__ or exc
        reason = " ".join((cause.message if isinstance(cause, HttpProcessingError) else str(cause)).split())
        log.info("refused a malformed request body in %s %r: %s", request.method, request.raw_path, reason)
        response = error_response(400, f"the request body could not be read: {reason}", "invalid_body")
        response.force_close()  # the rest of that body cannot be read either: no keep-alive
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        message = not_found_message(request.path) if exc.status == 404 else exc.reason
        return error_response(exc.status, message, code, headers={"Allow": exc.headers["Allow"]}
                              if "Allow" in exc.headers else None)
    except Exception as exc:
        # Logged here, once, with its traceback (to companion.log too); the server's handler skips it.
        log.exception("unhandled error in %s %r", request.method, request.raw_path)
        exc.companion_logged = True  # type: ignore[attr-defined]
        if request.writer.output_size > 0:
            raise  # the answer had begun: the connection is dropped
        return error_response(500, "internal error; see the companion's log", "internal_error")
    finally:
        runtime.in_flight -= 1
        if runtime.drained is not None and not runtime.in_flight:
            runtime.drained.set()
