"""The hosted platform endpoints through the daemon (daemon/platform.py), end to end on loopback.

The hosted API is the stand-in; its recorded requests show what the companion really sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from llmtune_companion.api.platform import IDEMPOTENCY_HEADER
from llmtune_companion.config.settings import ENV_BASE_URL

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
FAST = "[upstream]\nbackoff_base = 0.01\nmax_retries = 2\nretry_max_wait = 2.0\n"
FINE_TUNE = {"base_model": HOSTED, "dataset": "s3://bucket/train.jsonl", "hyperparameters": {"epochs": 1}}
BATCH = {"requests": [{"custom_id": "a", "model": HOSTED, "messages": [{"role": "user", "content": "hi"}]}]}


@pytest.fixture
async def daemon(start_daemon: StartDaemon, standin: StandIn) -> Daemon:
    return await start_daemon(config=FAST, env={ENV_BASE_URL: standin.url})


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    options: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.request(method, path, headers=headers, **options) as response:
        return response.status, dict(response.headers), await response.json()


def last(standin: StandIn, path: str) -> Any:
    return [r for r in standin.api.requests if r.path == path][-1]


@pytest.mark.parametrize("path", [f"/v1/models/{HOSTED}/inference", "/v1/playground/inference"])
async def test_inference_endpoints_inject_the_workspace_key(http: aiohttp.ClientSession, standin: StandIn,
                                                            daemon: Daemon, path: str) -> None:
    standin.api.script_reply("platform hello")
    status, headers, body = await call(http, "POST", path, {"model": HOSTED, "messages": [
        {"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert body["text"] == "platform hello" and body["tokens"] >= 1 and "latency" in body
    assert headers["X-Companion-Backend"] == "llmtune"
    sent = last(standin, path)
    assert sent.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}"
    assert daemon.token not in str(dict(sent.headers))
    assert IDEMPOTENCY_HEADER not in sent.headers  # plain inference is not made idempotent


async def test_model_inference_streams(http: aiohttp.ClientSession, standin: StandIn) -> None:
    body = {"messages": [{"role": "user", "content": "stream me"}], "stream": True}
    async with http.post(f"/v1/models/{HOSTED}/inference", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
    assert text.rstrip().endswith("data: [DONE]")


async def test_batch_gets_an_idempotency_key(http: aiohttp.ClientSession, standin: StandIn) -> None:
    status, headers, body = await call(http, "POST", "/v1/batch/inference", BATCH)
    assert status == 200, body
    assert body["object"] == "batch" and body["succeeded"] == 1
    sent = last(standin, "/v1/batch/inference")
    key = sent.headers[IDEMPOTENCY_HEADER]
    assert key.startswith("llmtune-companion-") and headers[IDEMPOTENCY_HEADER] == key
    assert sent.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}"


async def test_a_client_idempotency_key_is_kept(http: aiohttp.ClientSession, standin: StandIn) -> None:
    for _ in range(2):
        status, headers, body = await call(http, "POST", "/v1/fine-tune", FINE_TUNE,
                                           {IDEMPOTENCY_HEADER: "client-key-1"})
        assert status == 200, body
        assert headers[IDEMPOTENCY_HEADER] == "client-key-1"
    assert [r.headers[IDEMPOTENCY_HEADER] for r in standin.api.requests if r.path == "/v1/fine-tune"] == [
        "client-key-1", "client-key-1"]
    assert len(standin.api.jobs) == 1  # the repeat got the original answer


async def test_fine_tune_create_and_get(http: aiohttp.ClientSession, standin: StandIn) -> None:
    status, _, job = await call(http, "POST", "/v1/fine-tune", FINE_TUNE)
    assert status == 200 and job["status"] == "queued"
    standin.api.advance_job(job["id"], "running")
    status, _, fetched = await call(http, "GET", f"/v1/fine-tune/{job['id']}")
    assert status == 200 and fetched["id"] == job["id"] and fetched["status"] == "running"
    sent = last(standin, f"/v1/fine-tune/{job['id']}")
    assert sent.method == "GET" and sent.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}"


async def test_errors_pass_through(http: aiohttp.ClientSession, standin: StandIn) -> None:
    status, _, body = await call(http, "GET", "/v1/fine-tune/ft_missing")
    assert status == 404 and "ft_missing" in body["error"]["message"]
    status, _, body = await call(http, "POST", "/v1/fine-tune", {"base_model": "no/such-model", "dataset": "x"})
    assert status == 404 and body["error"]["details"] == {"model": "no/such-model"}
    standin.api.fail_next(402, path_prefix="/v1/playground")
    status, _, body = await call(http, "POST", "/v1/playground/inference", {"model": HOSTED, "prompt": "hi"})
    assert status == 402
    status, _, body = await call(http, "POST", "/v1/batch/inference", b"not json")
    assert status == 400


async def test_the_key_never_reaches_the_client(http: aiohttp.ClientSession, standin: StandIn) -> None:
    standin.api.fail_next(400, body={"error": {"message": f"bad key {WORKSPACE_KEY}", "code": "X"}})
    status, _, body = await call(http, "POST", "/v1/playground/inference", {"model": HOSTED, "prompt": "hi"})
    assert status == 400 and WORKSPACE_KEY not in str(body) and "[redacted]" in body["error"]["message"]


async def test_platform_routes_need_a_workspace_token(daemon: Daemon) -> None:
    async with aiohttp.ClientSession(daemon.url) as session:
        async with session.post("/v1/fine-tune", json=FINE_TUNE) as response:
            assert response.status == 401
        async with session.get("/v1/fine-tune/x", headers=daemon.auth(daemon.control_token)) as response:
            assert response.status == 401


async def test_a_retried_fine_tune_creates_one_job(http: aiohttp.ClientSession, standin: StandIn) -> None:
    standin.api.fail_next(500, processed=True, path_prefix="/v1/fine-tune")  # created, reply lost
    status, _, job = await call(http, "POST", "/v1/fine-tune", FINE_TUNE)
    assert status == 200, job
    assert len(standin.api.jobs) == 1 and job["id"] in standin.api.jobs
    keys = {r.headers[IDEMPOTENCY_HEADER] for r in standin.api.requests if r.path == "/v1/fine-tune"}
    assert standin.api.calls_by_path["/v1/fine-tune"] == 2 and len(keys) == 1


async def test_a_retried_batch_submits_once(http: aiohttp.ClientSession, standin: StandIn) -> None:
    standin.api.fail_next(503, processed=True, path_prefix="/v1/batch")
    status, _, body = await call(http, "POST", "/v1/batch/inference", BATCH)
    assert status == 200, body
    assert len(standin.api.batches) == 1


@pytest.mark.parametrize("how", ["timeout", "drop"])
async def test_a_lost_reply_is_retried_once_with_the_same_key(start_daemon: StartDaemon, aiohttp_server: Any,
                                                              how: str) -> None:
    """A timeout or a dropped connection before the first byte: sent again once, with the same key."""
    seen: list[str] = []

    async def fine_tune(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers[IDEMPOTENCY_HEADER])
        if len(seen) == 1:
            if how == "drop":
                assert request.transport is not None
                request.transport.close()
            await asyncio.sleep(2)
        return web.json_response({"id": "ft_remote_1", "status": "queued"})

    upstream = web.Application()
    upstream.router.add_post("/v1/fine-tune", fine_tune)
    server: TestServer = await aiohttp_server(upstream)
    config = FAST + "first_byte_timeout = 0.3\n"
    daemon = await start_daemon(config=config, env={ENV_BASE_URL: str(server.make_url("")).rstrip("/")})
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        status, _, body = await call(http, "POST", "/v1/fine-tune", FINE_TUNE)
    assert status == 200 and body["id"] == "ft_remote_1"
    assert len(seen) == 2 and seen[0] == seen[1]


async def test_chat_is_not_retried_on_timeout(start_daemon: StartDaemon, aiohttp_server: Any) -> None:
    """Plain inference is not idempotent: a timeout is the client's answer, nothing is sent twice."""
    seen: list[int] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        seen.append(1)
        await asyncio.sleep(2)
        return web.json_response({})

    upstream = web.Application()
    upstream.router.add_post("/v1/playground/inference", slow)
    server: TestServer = await aiohttp_server(upstream)
    daemon = await start_daemon(config=FAST + "first_byte_timeout = 0.3\n",
                                env={ENV_BASE_URL: str(server.make_url("")).rstrip("/")})
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        status, _, body = await call(http, "POST", "/v1/playground/inference", {"prompt": "hi"})
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert len(seen) == 1


async def test_missing_key_is_a_clear_error(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={ENV_BASE_URL: standin.url}, key=None)
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        status, _, body = await call(http, "POST", "/v1/fine-tune", FINE_TUNE)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert standin.api.calls_by_path["/v1/fine-tune"] == 0
