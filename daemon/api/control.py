"""The control API under /companion/v1/, for the command line, the tray and the dashboard.

It is authenticated by the control token, which is not any workspace's token: a program holding
a workspace token can chat, but cannot see or steer the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from ..appkeys import RUNTIME, SHUTDOWN
from ..config.paths import Paths, write_private
from ..config.settings import ConfigError
from ..config.workspaces import set_workspace
from ..errors import CompanionError
from ..tools.journal import UndoError

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
    """The daemon's state; `?probe=1` also asks every backend now (reachable, latency, models, last error)."""
    runtime = request.app[RUNTIME]
    report = runtime.status()
    if request.query.get("probe") in ("1", "true"):
        from ..upstream.probe import probe_all

        report["probes"] = await probe_all(runtime)
    return web.Response(body=orjson.dumps(report), content_type="application/json")


async def reload(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    ok = runtime.reload()
    return web.Response(body=orjson.dumps({"reloaded": ok, "error": runtime.config_error}),
                        content_type="application/json", status=200 if ok else 422)


# How long after answering 202 the stop begins, so the answer reaches the caller first.
SHUTDOWN_DELAY_SECONDS = 0.05


async def shutdown(request: web.Request) -> web.Response:
    """Stop the daemon gracefully, the same way SIGTERM does (what `llmtune-companion stop` calls)."""
    stop = request.app.get(SHUTDOWN)
    if stop is None:
        raise CompanionError(409, "this daemon was not started by `llmtune-companion serve` and cannot stop "
                                  "itself; stop the program that runs it", "shutdown_unavailable")
    asyncio.get_running_loop().call_later(SHUTDOWN_DELAY_SECONDS, stop)
    return _json({"stopping": True, "pid": os.getpid()}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


# -- tool approvals, events and undo ---------------------------------------------------------

# How often an idle event stream gets a comment line, so proxies and clients see it is alive.
HEARTBEAT_SECONDS = 15.0
# How often an idle event stream checks whether its client went away.
DISCONNECT_POLL_SECONDS = 1.0
# The largest JSON body the approval and undo routes read.
MAX_CONTROL_BODY = 64 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), content_type="application/json", status=status)


def _only_fields(body: dict[str, Any], field: str) -> None:
    """Refuse a body carrying anything but `field`: a typo must not pass as a no-op."""
    unknown = sorted(set(body) - {field})
    if unknown:
        raise CompanionError(400, f"unknown field(s) {', '.join(map(repr, unknown))} (expected {field!r})",
                             "invalid_body")


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; `{}` for an empty body when `optional`."""
    raw = await request.content.read(MAX_CONTROL_BODY + 1)
    if len(raw) > MAX_CONTROL_BODY:
        raise CompanionError(413, "the request body is too large", "body_too_large")
    if not raw.strip():
        if optional:
            return {}
        raise CompanionError(400, "a JSON object body is required", "invalid_body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CompanionError(400, "the body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise CompanionError(400, "the body must be a JSON object", "invalid_body")
    return body


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise CompanionError(400, f"{key!r} must be a string", "invalid_body")
    return value


def _optional_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise CompanionError(400, f"{key!r} must be true or false", "invalid_body")
    return value


async def list_approvals(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    workspace = request.query.get("workspace") or None
    return _json({"approvals": runtime.approvals.pending(workspace)})


async def resolve_approval(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    approval_id = request.match_info["id"]
    body = await _json_body(request)
    decision = body.get("decision")
    if decision not in ("allow", "deny"):
        raise CompanionError(400, "'decision' must be \"allow\" or \"deny\"", "invalid_body")
    remember = _optional_bool(body, "remember")
    reason = _optional_str(body, "reason")
    approval = runtime.approvals.get(approval_id)
    if approval is None or not runtime.approvals.resolve(approval_id, decision == "allow", remember=remember,
                                                         reason=reason, by="user"):
        raise CompanionError(404, f"no pending approval {approval_id!r} (it may have been decided or timed out)",
                             "approval_not_found")
    return _json({"id": approval_id, "decision": decision, "remember": remember and decision == "allow",
                  "reason": reason, "workspace": approval["workspace"], "tool": approval["tool"]})


def _sse_event(event: dict[str, Any]) -> bytes:
    kind = str(event.get("type") or "message").replace("\n", " ").replace("\r", " ")
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event, default=str) + b"\n\n"


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from the approval broker until the client goes away or the daemon stops."""
    runtime = request.app[RUNTIME]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    subscription = runtime.approvals.subscribe()
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        last_write = time.monotonic()
        iterator = aiter(subscription)
        while True:
            try:
                async with asyncio.timeout(DISCONNECT_POLL_SECONDS):  # not wait_for: see jobs.JobTracker._run
                    event = await anext(iterator)
            except TimeoutError:
                if _gone(request):
                    break
                if time.monotonic() - last_write >= HEARTBEAT_SECONDS:
                    await response.write(b": ping\n\n")
                    last_write = time.monotonic()
                continue
            except StopAsyncIteration:
                break
            await response.write(_sse_event(event))
            last_write = time.monotonic()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        subscription.close()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def list_undo(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    workspace = request.query.get("workspace") or None
    include_undone = request.query.get("all", "").lower() in ("1", "true", "yes")
    entries = runtime.journal.list(workspace, include_undone=include_undone)
    return _json({"entries": [entry.to_dict() for entry in entries]})


async def undo(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = await _json_body(request, optional=True)
    entry_id = _optional_str(body, "id")
    workspace = _optional_str(body, "workspace")
    force = _optional_bool(body, "force")
    try:
        entry = await runtime.journal.undo(entry_id, workspace=workspace, force=force)
    except UndoError as exc:
        raise CompanionError(409, str(exc), "undo_failed") from None
    return _json({"undone": entry.to_dict()})


TOOL_MODES = ("passthrough", "gate", "execute")


async def set_workspace_tools(request: web.Request) -> web.Response:
    """Change a workspace's tool mode: written to config.toml (comments kept), then reloaded at once."""
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    body = await _json_body(request)
    _only_fields(body, "tools")
    tools = body.get("tools")
    if tools not in TOOL_MODES:
        raise CompanionError(400, "'tools' must be \"passthrough\", \"gate\" or \"execute\"", "invalid_body")
    if name not in runtime.config.workspaces:
        raise CompanionError(404, f"no workspace named {name!r}", "workspace_not_found")
    try:
        set_workspace(runtime.paths, name, tools=tools)
    except ConfigError as exc:
        # A mode the workspace cannot have (gate/execute without a root), or a config.toml already broken.
        raise CompanionError(409, str(exc), "invalid_settings") from None
    if not runtime.reload():
        raise CompanionError(409, f"saved, but the settings do not load: {runtime.config_error}", "invalid_settings")
    workspace = runtime.config.workspaces[name]
    return _json({"workspace": name, "tools": workspace.settings.tools, "root": workspace.settings.root})


async def _close_approvals(app: web.Application) -> None:
    """On shutdown: deny what is pending and end every event stream, so no handler hangs."""
    runtime = app.get(RUNTIME)
    if runtime is not None:
        runtime.approvals.close()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/companion/v1/status", status)
    app.router.add_post("/companion/v1/reload", reload)
    app.router.add_post("/companion/v1/shutdown", shutdown)
    app.router.add_get("/companion/v1/approvals", list_approvals)
    app.router.add_post("/companion/v1/approvals/{id}", resolve_approval)
    app.router.add_get("/companion/v1/events", events)
    app.router.add_get("/companion/v1/undo", list_undo)
    app.router.add_post("/companion/v1/undo", undo)
    app.router.add_post("/companion/v1/workspaces/{name}", set_workspace_tools)
    app.on_shutdown.append(_close_approvals)
