"""The LLM routing API, a second front door at /api/v1/llm: completions, streamed completions, models.

Requests are translated to OpenAI chat at the edge (llm_translate) and sent through forward(), so
every backend, retry and fallback the OpenAI API has serves this API too. Auth is the guard's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ..adapters import BackendRequest, BackendResponse, UpstreamBroken
from ..adapters.openai_stream import sse_data, sse_events
from ..appkeys import RUNTIME, WORKSPACE
from ..config.settings import Workspace
from ..errors import CompanionError
from ..runtime import Runtime
from ..upstream.forwarding import Forwarded, forward, require_listed
from ..upstream.routing import Route
from .llm_translate import (
    RoutingStreamTranslator,
    error_event,
    from_openai_response,
    to_openai_request,
    upstream_error_message,
)
from .openai import BACKEND_HEADER, ERROR_BODY_LIMIT, log_request, parse_object, read_body, wants_refresh

log = logging.getLogger("llmtune_companion.requests")

PREFIX = "/api/v1/llm"


@dataclass(slots=True)
class Prepared:
    runtime: Runtime
    workspace: Workspace
    model: str  # the id the client used (or the default)
    route: Route
    payload: dict[str, Any]  # the OpenAI chat request


async def prepare(request: web.Request, *, stream: bool) -> Prepared:
    runtime = request.app[RUNTIME]
    workspace = request[WORKSPACE]
    body = parse_object(await read_body(request, runtime.config.settings.server.max_body_bytes))
    model = body.get("model")
    if model is None:
        model = runtime.config.settings.llm_api.default_model
    if not isinstance(model, str) or not model:
        raise CompanionError(400, "'model' must be a model id from GET /api/v1/llm/models", "invalid_model")
    if body.get("tools") and workspace.settings.tools != "passthrough":
        # Tool calls returned here reach the client unchecked: a gated workspace must not be loosened.
        raise CompanionError(403, f"this workspace's tool mode is {workspace.settings.tools}; the LLM routing "
                                  "API returns tool calls to the client unchecked, so it takes no 'tools' here",
                             "tool_mode_not_allowed")
    route = runtime.router.resolve(model)
    payload = to_openai_request(body, route.model, stream=stream)
    await require_listed(runtime, route, model, workspace, f"{PREFIX}/models")
    return Prepared(runtime, workspace, model, route, payload)


async def send(prepared: Prepared, *, stream: bool) -> Forwarded:
    upstream = BackendRequest("chat", orjson.dumps(prepared.payload), stream, prepared.workspace.api_key, {},
                              prepared.payload)
    return await forward(prepared.runtime, prepared.route, upstream, prepared.workspace)


async def upstream_failure(response: BackendResponse, forwarded: Forwarded) -> CompanionError:
    """An upstream's HTTP error as our error shape, with its status (and Retry-After)."""
    try:
        body = await response.read(ERROR_BODY_LIMIT)
    except UpstreamBroken:
        body = b""
    message, details = upstream_error_message(body, response.status)
    details["backend"] = forwarded.backend
    headers = {BACKEND_HEADER: forwarded.backend, **forwarded.client_headers()}
    if "Retry-After" in response.headers:
        headers["Retry-After"] = response.headers["Retry-After"]
    return CompanionError(response.status, message, "upstream_error", details, headers)


@contextlib.asynccontextmanager
async def answer(request: web.Request, *, stream: bool) -> AsyncIterator[tuple[Prepared, Forwarded]]:
    """The upstream's successful answer to a routing-API request, closed and logged when done.

    An upstream error becomes our error response here: nothing was sent to the client yet.
    """
    started = time.perf_counter()
    prepared = await prepare(request, stream=stream)
    forwarded = await send(prepared, stream=stream)
    try:
        if forwarded.response.status >= 400:
            raise await upstream_failure(forwarded.response, forwarded)
        yield prepared, forwarded
    finally:
        await forwarded.response.aclose()
        log_request(request, prepared.model, forwarded, started)


async def completions(request: web.Request) -> web.Response:
    async with answer(request, stream=False) as (prepared, forwarded):
        response = forwarded.response
        try:
            parsed = orjson.loads(await response.read())
        except (orjson.JSONDecodeError, UpstreamBroken) as exc:
            raise CompanionError(502, f"the model's answer could not be read: {exc}", "upstream_broken",
                                 {"backend": forwarded.backend}) from None
        if not isinstance(parsed, dict):
            raise CompanionError(502, "the model's answer is not a JSON object", "upstream_broken",
                                 {"backend": forwarded.backend})
        translated = from_openai_response(parsed, prepared.model)
    return web.Response(body=orjson.dumps(translated), content_type="application/json",
                        headers={BACKEND_HEADER: forwarded.backend})


async def completions_stream(request: web.Request) -> web.StreamResponse:
    async with answer(request, stream=True) as (prepared, forwarded):
        upstream = forwarded.response
        out = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
            BACKEND_HEADER: forwarded.backend,
        })
        await out.prepare(request)
        translator = RoutingStreamTranslator(prepared.model)
        try:
            if upstream.content_type == "application/json":  # a backend that answered whole
                whole = orjson.loads(await upstream.read())
                if not isinstance(whole, dict):
                    raise UpstreamBroken("the model's answer is not a JSON object")
                events = translator.feed_message(whole)
                for event in events + translator.finish():
                    await out.write(sse_data(event))
            else:
                await relay_events(upstream, translator, out)
        except (UpstreamBroken, orjson.JSONDecodeError) as exc:
            log.warning("stream from backend %r broke off: %s", forwarded.backend, exc)
            await out.write(sse_data(error_event(502, f"{exc}; the answer is incomplete", "upstream_broken")))
        await out.write_eof()
        return out


async def relay_events(upstream: BackendResponse, translator: RoutingStreamTranslator,
                       out: web.StreamResponse) -> None:
    done = False
    async for chunk in sse_events(upstream.chunks()):
        if chunk is None:
            done = True
            break
        for event in translator.feed(chunk):
            await out.write(sse_data(event))
    if not (done or translator.stopped):
        raise UpstreamBroken("the upstream stream ended before the answer did")
    for event in translator.finish():
        await out.write(sse_data(event))


async def models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    listed = await runtime.list_models(request[WORKSPACE], refresh=wants_refresh(request))
    body = {"models": [model["id"] for model in listed],
            "default_model": runtime.config.settings.llm_api.default_model}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/completions", completions)
    app.router.add_post(f"{PREFIX}/completions/stream", completions_stream)
    app.router.add_get(f"{PREFIX}/models", models)
