"""Sending one request to its backend: retries before the first byte, then fallback.

Retries and fallback decide on the status line alone, so the body is still relayed as it arrives.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass, replace

import orjson

from ..adapters import Backend, BackendRequest, BackendResponse, BackendUnavailable, PoolTimeout, UpstreamBroken
from ..config.settings import HOSTED_BACKEND, UpstreamSettings, Workspace
from ..errors import CompanionError
from ..logs import redact
from ..runtime import Runtime
from .routing import Route, missing_key_message, not_configured_message

log = logging.getLogger(__name__)


# The OpenAI SDKs retry a 5xx or 429 unless the answer says not to; after our own retries they must not
# (3 SDK tries x 3 of ours = 9 upstream calls for one failed turn).
SHOULD_RETRY_HEADER = "x-should-retry"

# Endpoints whose hosted 404 means "no such model" (a platform path's 404 is about a job or a path).
MODEL_ENDPOINTS = frozenset({"chat", "agent_chat", "completions", "embeddings"})
# Longest hosted 404 body read to quote its message.
NOT_FOUND_BODY_LIMIT = 64 * 1024


async def unknown_hosted_model(runtime: Runtime, route: Route, response: BackendResponse) -> CompanionError:
    """The hosted API does not know the id (nor lists it): say it went there because nothing local claims it.

    The upstream's own error is kept in `details.upstream`."""
    try:
        body = await response.read(NOT_FOUND_BODY_LIMIT)
    except Exception:
        body = b""
    finally:
        await response.aclose()
    upstream: object = None
    try:
        upstream = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    said = upstream.get("message") if isinstance(upstream, dict) else None
    quoted = f" ({redact(said)})" if isinstance(said, str) else ""
    return CompanionError(404, f"the hosted LLMTune API answered 404{quoted}: "
                               f"{runtime.router.sent_to_hosted(route.model)}",
                          "model_not_found", {"model": route.model, "backend": HOSTED_BACKEND,
                                              "upstream_status": 404, "upstream": upstream})


@dataclass(slots=True)
class Forwarded:
    response: BackendResponse
    backend: str
    fallback_from: str | None = None
    retries: int = 0
    # (prompt, completion) tokens when the answer reported usage; set while it is relayed.
    usage: tuple[int | None, int | None] = (None, None)

    def client_headers(self) -> dict[str, str]:
        """Headers of ours for the client's answer: `x-should-retry: false` once we retried a failure."""
        status = self.response.status
        if self.retries and (status >= 500 or status == 429):
            return {SHOULD_RETRY_HEADER: "false"}
        return {}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def send_with_retries(
    backend: Backend, request: BackendRequest, policy: UpstreamSettings
) -> tuple[BackendResponse, int]:
    attempt = 0
    while True:
        response = await backend.handle(request)
        status = response.status
        # 501: the backend cannot do this at all (boto3 missing ...); asking again cannot help.
        if attempt >= policy.max_retries or not (status == 429 or (status >= 500 and status != 501)):
            return response, attempt
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        if status == 429 and wait is None:
            return response, attempt  # no hint how long to wait: the client's own backoff decides
        if wait is None:
            wait = policy.backoff_base * (2**attempt)
        if wait > policy.retry_max_wait:
            return response, attempt  # a long wait is the client's call, with Retry-After intact
        await response.aclose()
        log.info("backend %r answered %d; retry %d in %.2fs", backend.name, status, attempt + 1, wait)
        await asyncio.sleep(wait)
        attempt += 1


async def forward(
    runtime: Runtime, route: Route, request: BackendRequest, workspace: Workspace
) -> Forwarded:
    """Send to the route's backend; on unreachable, 5xx or 402 try the route's fallback model once."""
    policy = runtime.config.settings.upstream
    fallback_from: str | None = None
    while True:
        backend = runtime.backends.get(route.backend)
        failure: CompanionError | None = None
        if backend is None:
            named = f"{route.backend}/{route.model}" if route.prefixed else route.model
            failure = CompanionError(404, not_configured_message(named, route.backend, runtime.backends),
                                     "backend_not_found", {"backend": route.backend})
        elif backend.injects_workspace_key and not request.api_key:
            message = missing_key_message(workspace.name)
            if runtime.router.suggestion(route.model) is not None:
                message += f" ({runtime.router.sent_to_hosted(route.model)})"
            failure = CompanionError(401, message, "missing_api_key")
        else:
            try:
                response, retries = await send_with_retries(backend, request, policy)
            except PoolTimeout as exc:
                failure = CompanionError(503, str(exc), "upstream_pool_timeout", {"backend": backend.name})
            except BackendUnavailable as exc:
                code = "upstream_timeout" if exc.timeout else "upstream_unreachable"
                message = str(exc)
                if backend.injects_workspace_key and runtime.router.suggestion(route.model) is not None:
                    message += f" ({runtime.router.sent_to_hosted(route.model)})"
                failure = CompanionError(504 if exc.timeout else 502, message, code, {"backend": backend.name})
            except UpstreamBroken as exc:
                failure = CompanionError(502, str(exc), "upstream_broken", {"backend": backend.name})
            else:
                if (response.status == 404 and backend.injects_workspace_key and request.endpoint in MODEL_ENDPOINTS
                        and await runtime.model_is_listed(backend, route.model, workspace) is False):
                    raise await unknown_hosted_model(runtime, route, response)
                bad = response.status >= 500 or response.status == 402
                if not (bad and route.fallback and fallback_from is None):
                    if backend.kind == "llmtune" and not bad:
                        hosted_answered(runtime)
                    return Forwarded(response, backend.name, fallback_from, retries)
                await response.aclose()
                log.warning("backend %r answered %d; falling back to %r", backend.name, response.status,
                            route.fallback)
        # Only an upstream that failed (502/504) falls back; a setup error (no key, no backend) is the answer.
        if failure is not None and (failure.status < 500 or not (route.fallback and fallback_from is None)):
            raise failure
        assert route.fallback is not None
        if failure is not None:
            log.warning("%s; falling back to %r", failure.message, route.fallback)
        fallback_from = route.backend
        if backend is not None and backend.kind == "llmtune":
            error = failure.code if failure is not None else ("insufficient_quota" if response.status == 402
                                                              else "upstream_error")
            hosted_fell_back(runtime, backend.name, route.fallback, error)
        target = runtime.router.resolve(route.fallback)
        route = replace(target, fallback=None)
        request = with_model(request, route.model)


# Events on the control API's stream (the tray shows them): the hosted API failed and a request fell
# back, or it answers again after that.
HOSTED_FALLBACK = "hosted.fallback"
HOSTED_RECOVERED = "hosted.recovered"


def hosted_fell_back(runtime: Runtime, backend: str, fallback: str, error: str) -> None:
    runtime.hosted_degraded = True
    runtime.approvals.publish({"type": HOSTED_FALLBACK, "backend": backend, "fallback": fallback, "error": error})


def hosted_answered(runtime: Runtime) -> None:
    if runtime.hosted_degraded:
        runtime.hosted_degraded = False
        runtime.approvals.publish({"type": HOSTED_RECOVERED, "backend": "llmtune"})


async def require_listed(runtime: Runtime, route: Route, model: str, workspace: Workspace, listing: str) -> None:
    """A `backend/model` id must be in that backend's list (when the list is known); `listing` is the
    endpoint the 404 points the client to."""
    backend = runtime.backends.get(route.backend)
    if backend is None or not route.prefixed:
        return
    if await runtime.model_is_listed(backend, route.model, workspace) is False:
        raise CompanionError(404, f"model {model!r} not found on backend {route.backend!r}; "
                                  f"GET {listing} lists what is served", "model_not_found", {"model": model})


def with_model(request: BackendRequest, model: str) -> BackendRequest:
    """The same request for another model id: the only rewrite the relay makes to a body."""
    if (request.payload or {}).get("model") == model:
        return request
    payload = dict(request.payload or {})
    payload["model"] = model
    return replace(request, body=orjson.dumps(payload), payload=payload)
