"""The hosted platform endpoints, passed through with the workspace key: inference, batch, fine-tune.

They always go to the hosted backend, through the same forward() and send_response() as chat
(retries before the first byte, timeouts, key injection, error scrubbing). The two creating POSTs
(`/v1/fine-tune`, `/v1/batch/inference`) carry an `Idempotency-Key`: the client's, or one made
here; every retry of the companion resends the same key, and a timeout or dropped connection
before the answer is retried once more, so a lost reply never creates a second job.

Fine-tune jobs created here are tracked (daemon/jobs.py); the control API lists them and adds one
by id under /companion/v1/jobs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from ..adapters import BackendRequest
from ..appkeys import JOBS, RUNTIME, WORKSPACE
from ..config.settings import DEFAULT_WORKSPACE, HOSTED_BACKEND, Workspace
from ..errors import CompanionError
from ..runtime import Runtime
from ..upstream.forwarding import Forwarded, forward
from ..upstream.ids import path_id
from ..upstream.jobs import JobTracker, check_job_id
from ..upstream.routing import Route
from .control import _json, _json_body, _optional_str
from .openai import FORWARDED_REQUEST_HEADERS, parse_object, read_body, send_response

log = logging.getLogger("llmtune_companion.requests")

IDEMPOTENCY_HEADER = "Idempotency-Key"
# forward() turns a timeout or a dropped connection before the status line into these.
RETRIED_ONCE = ("upstream_timeout", "upstream_unreachable")
# Longest fine-tune answer read to find the new job's id.
MAX_JOB_BODY = 1024 * 1024


def new_idempotency_key() -> str:
    return f"llmtune-companion-{uuid.uuid4()}"


async def _forward(runtime: Runtime, request: BackendRequest, workspace: Workspace, *, retry: bool) -> Forwarded:
    route = Route(HOSTED_BACKEND, "")
    try:
        return await forward(runtime, route, request, workspace)
    except CompanionError as exc:
        if not retry or exc.code not in RETRIED_ONCE:
            raise
        log.warning("%s %s: %s; retrying once (same Idempotency-Key)", request.method, request.path, exc.message)
        return await forward(runtime, route, request, workspace)


async def relay_platform(
    request: web.Request, path: str, *, method: str = "POST", idempotent: bool = False
) -> web.StreamResponse:
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    workspace = request[WORKSPACE]
    body = b""
    payload: dict[str, Any] | None = None
    if method == "POST":
        body = await read_body(request, runtime.config.settings.server.max_body_bytes)
        payload = parse_object(body)
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    if idempotent and not headers.get(IDEMPOTENCY_HEADER):
        headers[IDEMPOTENCY_HEADER] = new_idempotency_key()
    stream = payload is not None and payload.get("stream") is True
    upstream = BackendRequest("platform", body, stream, workspace.api_key, headers, payload, path=path,
                              method=method)
    # Safe to send twice: a GET, or a POST whose key makes the hosted API answer a repeat with the original.
    forwarded = await _forward(runtime, upstream, workspace, retry=idempotent or method == "GET")
    status = forwarded.response.status
    try:
        response = await send_response(request, forwarded)
    finally:
        if runtime.config.settings.server.log_requests:
            log.info("%s %r backend=%s status=%s %.1fms", request.method, request.raw_path, forwarded.backend,
                     status, (time.perf_counter() - started) * 1000)
    if idempotent and not response.prepared:
        response.headers[IDEMPOTENCY_HEADER] = headers[IDEMPOTENCY_HEADER]
    return response


def _json_answer(response: web.StreamResponse) -> dict[str, Any] | None:
    """The JSON object a successful, fully read answer carried, if it did."""
    if not isinstance(response, web.Response) or response.status != 200:
        return None
    body = response.body
    if not isinstance(body, bytes) or len(body) > MAX_JOB_BODY:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


# -- the platform endpoints --------------------------------------------------------------------


async def model_inference(request: web.Request) -> web.StreamResponse:
    path = "/v1/models/" + path_id(request.match_info["model"], "model", slashes=True) + "/inference"
    return await relay_platform(request, path)


async def playground_inference(request: web.Request) -> web.StreamResponse:
    return await relay_platform(request, "/v1/playground/inference")


async def batch_inference(request: web.Request) -> web.StreamResponse:
    return await relay_platform(request, "/v1/batch/inference", idempotent=True)


async def create_fine_tune(request: web.Request) -> web.StreamResponse:
    response = await relay_platform(request, "/v1/fine-tune", idempotent=True)
    job = _json_answer(response)
    if job is not None and isinstance(job.get("id"), str):
        try:
            request.app[JOBS].track(check_job_id(job["id"]), request[WORKSPACE].name, job)
        except ValueError as exc:
            log.warning("not tracking fine-tune job %r: %s", job["id"], exc)
    return response


async def get_fine_tune(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    try:
        check_job_id(job_id)
    except ValueError as exc:
        raise CompanionError(400, f"job id: {exc}", "invalid_job_id", {"field": "job_id"}) from None
    response = await relay_platform(request, "/v1/fine-tune/" + path_id(job_id, "job_id"), method="GET")
    job = _json_answer(response)
    if job is not None:
        await request.app[JOBS].observe(job_id, job)
    return response


# -- the control API ---------------------------------------------------------------------------


async def list_jobs(request: web.Request) -> web.Response:
    workspace = request.query.get("workspace") or None
    return _json({"jobs": request.app[JOBS].list(workspace)})


async def add_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    workspace = _optional_str(body, "workspace") or DEFAULT_WORKSPACE
    try:
        job_id = check_job_id(body.get("id"))
    except ValueError as exc:
        raise CompanionError(400, f"'id': {exc}", "invalid_body") from None
    if workspace not in request.app[RUNTIME].config.workspaces:
        raise CompanionError(404, f"no workspace named {workspace!r}", "workspace_not_found")
    tracked = request.app[JOBS].track(job_id, workspace)
    return _json({"job": tracked.to_dict()}, status=201)


async def remove_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    forgotten = request.app[JOBS].forget(job_id)
    if forgotten is None:
        raise CompanionError(404, f"no tracked fine-tune job {job_id!r} (see `llmtune-companion jobs`)",
                             "job_not_found")
    return _json({"removed": forgotten.to_dict()})


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the runtime's): the job tracker's polling for the app's lifetime."""
    tracker = JobTracker(app[RUNTIME])
    app[JOBS] = tracker
    tracker.start()
    yield
    await tracker.aclose()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/models/{model:.+}/inference", model_inference)
    app.router.add_post("/v1/playground/inference", playground_inference)
    app.router.add_post("/v1/batch/inference", batch_inference)
    app.router.add_post("/v1/fine-tune", create_fine_tune)
    app.router.add_get("/v1/fine-tune/{job_id}", get_fine_tune)
    app.router.add_get("/companion/v1/jobs", list_jobs)
    app.router.add_post("/companion/v1/jobs", add_job)
    app.router.add_delete("/companion/v1/jobs/{job_id}", remove_job)
    app.cleanup_ctx.append(jobs_ctx)
