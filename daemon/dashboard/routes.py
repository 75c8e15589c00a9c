"""The dashboard's routes: its pages under /dashboard/ and the control endpoints only it needs.

The page is three static files (package data, read once); everything it shows comes from the
control API with the session cookie. No key ever leaves here: a workspace's key is reported as set
or not and where it is kept; a local token is sent only when the page asks to copy it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import time
from html import escape
from typing import Any

from aiohttp import web

from ..adapters import BackendRequest
from ..api.control import _json, _json_body, _only_fields, _optional_str
from ..appkeys import DASHBOARD_AUTH, RUNTIME
from ..config.settings import ConfigError, Workspace
from ..errors import CompanionError
from ..history import HistoryFilter
from ..runtime import Runtime
from .auth import (
    COOKIE_NAME,
    DashboardAuth,
    check_browser_context,
    clear_cookie,
    has_session,
    require_token,
    session_cookie,
)

# No inline script or style, nothing from elsewhere, never framed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# How long a backend probe's answer is reused, so a page reload does not hit every upstream again.
PROBE_TTL = 15.0
PROBE_TIMEOUT = 5.0
MAX_HISTORY_LIMIT = 2000
MAX_AUDIT_LIMIT = 1000


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = importlib.resources.files(__package__) / "static"
    files = {}
    for name in STATIC_TYPES:
        body = (folder / name).read_bytes()
        files[name] = (body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


STATIC = _load_static()


def page_response(body: bytes, content_type: str, *, status: int = 200, etag: str | None = None,
                  extra: dict[str, str] | None = None) -> web.Response:
    headers = dict(PAGE_HEADERS)
    headers["Cache-Control"] = "no-cache"
    if etag:
        headers["ETag"] = etag
    headers.update(extra or {})
    return web.Response(body=body, status=status, headers=headers, content_type=content_type, charset="utf-8")


def message_page(status: int, title: str, text: str) -> web.Response:
    """A plain page for the login's outcomes (no script: nothing to load it with)."""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<link rel="stylesheet" href="/dashboard/app.css"></head><body class="message"><main><h1>'
            f'{escape(title)}</h1><p>{escape(text)}</p></main></body></html>').encode()
    return page_response(body, "text/html", status=status, extra={"Cache-Control": "no-store"})


# -- pages ---------------------------------------------------------------------------------------


def redirect(status: int) -> web.Response:
    return web.Response(status=status, headers={**PAGE_HEADERS, "Location": "/dashboard/", "Cache-Control": "no-store"})


async def root_redirect(request: web.Request) -> web.StreamResponse:
    return redirect(302)


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    found = STATIC.get(name)
    if found is None:
        raise CompanionError(404, f"no dashboard file {name!r}", "not_found")
    if request.method not in ("GET", "HEAD"):
        raise CompanionError(405, "method not allowed", "method_not_allowed")
    body, etag = found
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={**PAGE_HEADERS, "ETag": etag})
    return page_response(body, STATIC_TYPES[name], etag=etag)


async def login(request: web.Request) -> web.StreamResponse:
    auth = request.app[DASHBOARD_AUTH]
    code = request.query.get("code", "")
    session = auth.redeem(code) if code and len(code) <= 128 else None
    if session is None:
        return message_page(403, "This login link cannot be used",
                            "A login link works once and for a minute. Run `llmtune-companion dashboard` "
                            "for a new one.")
    # A clean URL: the spent code leaves the address bar and the history.
    response = redirect(303)
    session_cookie(response, session, auth.session_ttl)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    check_browser_context(request)
    request.app[DASHBOARD_AUTH].end(request.cookies.get(COOKIE_NAME))
    response = web.Response(status=204, headers=PAGE_HEADERS)
    clear_cookie(response)
    return response


# -- control endpoints -----------------------------------------------------------------------------


async def make_link(request: web.Request) -> web.Response:
    require_token(request)
    code = request.app[DASHBOARD_AUTH].issue_code()
    host = request.headers.get("Host") or f"{request.url.host}:{request.url.port}"
    return _json({"url": f"http://{host}/dashboard/login?code={code}",
                  "expires_in": request.app[DASHBOARD_AUTH].code_ttl})


def _workspace(runtime: Runtime, name: str | None) -> Workspace:
    workspaces = runtime.config.workspaces
    if name is None:
        return next(iter(workspaces.values()))
    if name not in workspaces:
        raise CompanionError(404, f"no workspace named {name!r}", "workspace_not_found")
    return workspaces[name]


class Prober:
    """Each backend's reachability and latency, asked at most every PROBE_TTL seconds."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[float, dict[str, Any]]] = {}

    async def probe(self, runtime: Runtime, name: str, workspace: Workspace) -> dict[str, Any]:
        cached = self.results.get(name)
        if cached is not None and time.monotonic() - cached[0] < PROBE_TTL:
            return cached[1]
        backend = runtime.backends[name]
        result: dict[str, Any]
        if backend.kind == "llmtune" and not workspace.has_key:
            result = {"reachable": None, "latency_ms": None, "error": "no LLMTune key set"}
        else:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    response = await backend.handle(BackendRequest("models", api_key=workspace.api_key))
                    try:
                        await response.read(1024 * 1024)
                    finally:
                        await response.aclose()
                ok = response.status < 400
                result = {"reachable": ok, "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                          "error": None if ok else f"HTTP {response.status}"}
            except Exception as exc:  # any failure is this backend's state, shown as such
                result = {"reachable": False, "latency_ms": None, "error": str(exc) or type(exc).__name__}
        self.results[name] = (time.monotonic(), result)
        return result


PROBER = web.AppKey("dashboard_prober", Prober)


async def overview(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    workspace = _workspace(runtime, request.query.get("workspace") or None)
    status = runtime.status()
    prober = request.app[PROBER]
    names = list(runtime.backends)
    probes = await asyncio.gather(*(prober.probe(runtime, name, workspace) for name in names))
    backends = [{**runtime.backends[name].describe(), **probe} for name, probe in zip(names, probes, strict=True)]
    models: list[dict[str, Any]] = []
    for name in names:
        backend = runtime.backends[name]
        if backend.kind == "llmtune" and not workspace.has_key:
            continue
        listed = await runtime.backend_models(backend, workspace)
        if listed is None:
            continue
        age = None if listed.fetched_at is None else round(time.time() - listed.fetched_at, 1)
        for model in listed.models:
            models.append({"id": runtime.router.public_id(name, model["id"]), "backend": name,
                           "cache_age_seconds": age, "stale": listed.stale})
    workspaces = [
        {"name": ws.name, "has_key": ws.has_key, "key_source": ws.key_source, "tools": ws.settings.tools,
         "root": ws.settings.root}
        for ws in runtime.config.workspaces.values()
    ]
    return _json({
        "version": status["version"],
        "started_at": runtime.started_at,
        "uptime_seconds": status["uptime_seconds"],
        "settings_dir": status["settings_dir"],
        "config": status["config"],
        "backends": backends,
        "models": models,
        "model_cache": status["model_cache"],
        "workspaces": workspaces,
        "workspace": workspace.name,
        "pending_approvals": len(runtime.approvals.pending()),
        "history": {"store_content": runtime.history.store_content, "persisted": runtime.history.path is not None,
                    "error": runtime.history.error},
    })


def _limit(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CompanionError(400, "'limit' must be a whole number", "invalid_query") from None
    if not 1 <= value <= maximum:
        raise CompanionError(400, f"'limit' must be between 1 and {maximum}", "invalid_query")
    return value


async def history(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    query = request.query
    status = query.get("status") or None
    if status is not None and status not in ("ok", "error") and not (status.isdigit() and len(status) == 3):
        raise CompanionError(400, "'status' must be ok, error or an HTTP status", "invalid_query")
    where = HistoryFilter(workspace=query.get("workspace") or None, model=query.get("model") or None,
                          backend=query.get("backend") or None, status=status)
    return _json({"requests": runtime.history.recent(where, _limit(request, 200, MAX_HISTORY_LIMIT))})


async def history_stats(request: web.Request) -> web.Response:
    return _json(await request.app[RUNTIME].history.stats())


async def audit(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    limit = _limit(request, 100, MAX_AUDIT_LIMIT)
    records = await asyncio.to_thread(runtime.audit.tail, limit)
    return _json({"entries": list(reversed(records))})


async def copy_token(request: web.Request) -> web.Response:
    """A workspace's local token, only on an explicit POST (the Connect page's copy button)."""
    body = await _json_body(request, optional=True)
    workspace = _workspace(request.app[RUNTIME], _optional_str(body, "workspace"))
    return _json({"workspace": workspace.name, "token": workspace.token})


async def set_key(request: web.Request) -> web.Response:
    """Write-only: store a workspace's LLMTune key; the answer says only that it is set."""
    from ..config.workspaces import add_workspace

    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    body = await _json_body(request)
    _only_fields(body, "api_key")
    key = body.get("api_key")
    if not isinstance(key, str) or not key.strip().startswith("sk_") or len(key.strip()) > 512 \
            or any(ch.isspace() for ch in key.strip()):
        raise CompanionError(400, "'api_key' must be an LLMTune key (sk_...)", "invalid_body")
    if name not in runtime.config.workspaces:
        raise CompanionError(404, f"no workspace named {name!r}", "workspace_not_found")
    try:
        await asyncio.to_thread(add_workspace, runtime.paths, name, key)
    except ConfigError as exc:
        raise CompanionError(409, str(exc), "invalid_settings") from None
    if not runtime.reload():
        raise CompanionError(409, f"saved, but the settings do not load: {runtime.config_error}", "invalid_settings")
    request.app[PROBER].results.clear()
    workspace = runtime.config.workspaces[name]
    return _json({"workspace": name, "has_key": workspace.has_key, "key_source": workspace.key_source})


async def session_state(request: web.Request) -> web.Response:
    """Whether the browser holds a live session (the page's first call; answers without one too)."""
    response = _json({"session": has_session(request)})
    response.headers.update(PAGE_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


def add_routes(app: web.Application) -> None:
    app[DASHBOARD_AUTH] = DashboardAuth()
    app[PROBER] = Prober()
    app.router.add_get("/dashboard", root_redirect)
    app.router.add_get("/dashboard/", static_file)
    app.router.add_get("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/session", session_state)
    app.router.add_get("/dashboard/{name}", static_file)
    app.router.add_post("/companion/v1/dashboard/link", make_link)
    app.router.add_get("/companion/v1/dashboard/overview", overview)
    app.router.add_post("/companion/v1/dashboard/token", copy_token)
    app.router.add_get("/companion/v1/history", history)
    app.router.add_get("/companion/v1/history/stats", history_stats)
    app.router.add_get("/companion/v1/audit", audit)
    app.router.add_post("/companion/v1/workspaces/{name}/key", set_key)

