"""The client-side OpenAI API: parse only what routing needs, relay the rest as bytes."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from aiohttp import web

from ..adapters import BackendRequest, Endpoint, UpstreamBroken
from ..adapters.openai_stream import DONE
from ..appkeys import RUNTIME, WORKSPACE
from ..errors import CompanionError, sse_error_event
from ..history import RequestRecord, prompt_text, usage_from_bytes
from ..tools.agent_loop import MODE_HEADER, AgentLoop, RunnerHost, choose_mode
from ..upstream.forwarding import Forwarded, forward, require_listed, with_model

log = logging.getLogger("llmtune_companion.requests")

BACKEND_HEADER = "X-Companion-Backend"
FALLBACK_HEADER = "X-Companion-Fallback-From"
# Client headers passed upstream; everything else (their Authorization above all) stays here.
FORWARDED_REQUEST_HEADERS = ("Idempotency-Key", "OpenAI-Beta")
# A whole non-streamed body up to this size is read and sent in one piece (cheapest for small JSON).
WHOLE_BODY_LIMIT = 1024 * 1024
# Longest error body read from an upstream (read whole, so egress.py can scrub the key out of it).
ERROR_BODY_LIMIT = 1024 * 1024


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise CompanionError(413, f"request body is {length} bytes; the limit is {limit}", "body_too_large",
                             {"limit": limit})
    if length is not None:
        return await request.read()
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise CompanionError(413, f"request body is over the limit of {limit} bytes", "body_too_large",
                                 {"limit": limit})
        parts.append(chunk)
    return b"".join(parts)


def parse_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise CompanionError(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CompanionError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(payload, dict):
        raise CompanionError(400, "request body must be a JSON object", "invalid_json")
    return payload


async def relay(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    workspace = request[WORKSPACE]
    body = await read_body(request, runtime.config.settings.server.max_body_bytes)
    payload = parse_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise CompanionError(400, "'model' is required: a model id from GET /v1/models", "model_required")
    if endpoint in ("chat", "agent_chat"):
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise CompanionError(400, "'messages' must be a non-empty array", "invalid_messages")
    route = runtime.router.resolve(model)
    await require_listed(runtime, route, model, workspace, "/v1/models")
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    if endpoint in ("chat", "agent_chat"):
        mode = choose_mode(workspace.settings.tools, request.headers.get(MODE_HEADER))
        if mode != "passthrough":
            runner = runtime.tool_runner(workspace.name)
            if runner is None:
                raise CompanionError(400, f"tool mode {mode!r} needs the workspace's root: run `llmtune-companion "
                                          f"workspace set {workspace.name} --root DIR`", "workspace_root_required")
            loop = AgentLoop(runtime, RunnerHost(runner), workspace, route, request, endpoint,
                             mode, workspace.settings.max_steps, model)
            status = 500
            try:
                answer = await loop.run(payload, headers)
                status = answer.status
                return answer
            except CompanionError as exc:
                status = exc.status
                raise
            finally:
                usage = (loop.usage.get("prompt_tokens"), loop.usage.get("completion_tokens"))
                record_request(request, model, loop.backend, status, started, usage=usage, payload=payload)
    stream = payload.get("stream") is True
    upstream_request = with_model(
        BackendRequest(endpoint, body, stream, workspace.api_key, headers, payload), route.model
    )
    forwarded = await forward(runtime, route, upstream_request, workspace)
    try:
        response = await send_response(request, forwarded)
    finally:
        log_request(request, model, forwarded, started, payload)
    return response


def log_request(request: web.Request, model: str, forwarded: Forwarded, started: float,
                payload: dict[str, Any] | None = None) -> None:
    record_request(request, model, forwarded.backend, forwarded.response.status, started, usage=forwarded.usage,
                   fallback_from=forwarded.fallback_from, payload=payload)


def record_request(request: web.Request, model: str, backend: str | None, status: int, started: float, *,
                   usage: tuple[int | None, int | None] = (None, None), fallback_from: str | None = None,
                   payload: dict[str, Any] | None = None) -> None:
    """The request log line and the history entry (the dashboard's Activity) of one finished request."""
    runtime = request.app[RUNTIME]
    settings = runtime.config.settings
    workspace = request.get(WORKSPACE)
    # raw_path: a client's newline cannot forge a log line (the model is shown with repr).
    runtime.request_log.record(RequestRecord(
        time.time(), request.method, request.raw_path, workspace.name if workspace else "", model, backend, status,
        round((time.perf_counter() - started) * 1000, 2), usage[0], usage[1], fallback_from,
        prompt_text(payload) if settings.history.store_content else None,
    ), line=settings.server.log_requests)


async def send_response(request: web.Request, forwarded: Forwarded) -> web.StreamResponse:
    upstream = forwarded.response
    headers = dict(upstream.headers)
    headers[BACKEND_HEADER] = forwarded.backend
    if forwarded.retries:
        headers.update(forwarded.client_headers())
    if forwarded.fallback_from:
        headers[FALLBACK_HEADER] = forwarded.fallback_from
    is_sse = upstream.content_type == "text/event-stream"
    length = upstream.content_length
    is_error = upstream.status >= 400
    if is_error or (not is_sse and length is not None and length <= WHOLE_BODY_LIMIT):
        try:
            body = await upstream.read(ERROR_BODY_LIMIT if is_error else WHOLE_BODY_LIMIT)
        except UpstreamBroken as exc:
            raise CompanionError(502, str(exc), "upstream_broken", {"backend": forwarded.backend}) from None
        finally:
            await upstream.aclose()
        headers.pop("Content-Length", None)
        if not is_error:
            forwarded.usage = usage_from_bytes(body)
        return web.Response(status=upstream.status, body=body,
                            headers=headers)
    return await stream_response(request, forwarded, headers, is_sse)


async def stream_response(
    request: web.Request, forwarded: Forwarded, headers: dict[str, str], is_sse: bool
) -> web.StreamResponse:
    upstream = forwarded.response
    if is_sse:
        headers.pop("Content-Length", None)
        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
    out = web.StreamResponse(status=upstream.status, headers=headers)
    try:
        await out.prepare(request)
        ended = False
        # The usage of a stream is in its last event or two: keep the last two pieces to look there.
        previous = last = b""
        try:
            async for chunk in upstream.chunks():
                previous, last = last, chunk
                if upstream.at_end:
                    # The last piece and the end of the body in one write: one wake-up less for the client.
                    await out.write_eof(chunk)
                    ended = True
                else:
                    await out.write(chunk)
        except UpstreamBroken as exc:
            log.warning("stream from backend %r broke off: %s", forwarded.backend, exc)
            if not is_sse:
                raise  # the connection is dropped: a truncated JSON body must not look complete
            await out.write(sse_error_event(f"{exc}; the answer is incomplete", exc.code))
            await out.write(DONE)
        if not ended:
            await out.write_eof()
        if b"usage" in last or b"usage" in previous:
            forwarded.usage = usage_from_bytes(previous + last)
    finally:
        await upstream.aclose()
    return out


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await relay(request, "chat")


async def agent_chat_completions(request: web.Request) -> web.StreamResponse:
    return await relay(request, "agent_chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await relay(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await relay(request, "embeddings")


def wants_refresh(request: web.Request) -> bool:
    return "no-cache" in request.headers.get("Cache-Control", "") or request.query.get("refresh") in ("1", "true")


async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = await runtime.models_listing(request[WORKSPACE], refresh=wants_refresh(request))
    return web.Response(body=body, content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    wanted = request.match_info["model"]
    for model in await runtime.list_models(request[WORKSPACE]):
        if model["id"] == wanted:
            return web.Response(body=orjson.dumps(model), content_type="application/json")
    raise CompanionError(404, f"model {wanted!r} not found", "model_not_found", {"model": wanted})


async def agent_models(request: web.Request) -> web.Response:
    """The Agent API's own list shape, `{success, data, count}`, for clients set up for it."""
    runtime = request.app[RUNTIME]
    models = await runtime.list_models(request[WORKSPACE], refresh=wants_refresh(request))
    data = [{"id": m["id"], "name": m.get("name") or m["id"], "owned_by": m.get("owned_by")} for m in models]
    return web.Response(body=orjson.dumps({"success": True, "data": data, "count": len(data)}),
                        content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    app.router.add_get("/api/agent/models", agent_models)
    app.router.add_post("/api/agent/v1/chat/completions", agent_chat_completions)
    app.router.add_get("/api/agent/v1/models", list_models)
