"""The OpenAI-compatible backend (adapters/openai.py): static lists, and bytes relayed untouched.

Upstreams are real: the llama.cpp server, the hosted stand-in (its /v1 is OpenAI-compatible), and a
replay server on loopback that sends bytes captured from llama exactly as given, split at odd places.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from llmtune_companion.adapters import (
    AdapterContext,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    Endpoint,
    OpenAIBackend,
)
from llmtune_companion.adapters.http1 import ConnectionPool
from llmtune_companion.app import make_pool
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config

from tests.conftest import WORKSPACE_KEY, closed_port
from tests.support.hosted_standin import HostedStandIn
from tests.support.llama_server import LlamaServerProcess

ServerFactory = Callable[..., Awaitable[TestServer]]
BACKEND_KEY = "sk_local_backend_key_for_vllm"
MESSAGES = [{"role": "user", "content": "Say something, anything."}]


@pytest.fixture
async def pool(home: Paths) -> AsyncIterator[ConnectionPool]:
    pool = make_pool(load_config(home))  # the daemon's own pool settings
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
async def raw_http() -> AsyncIterator[aiohttp.ClientSession]:
    """An independent client that reads what the upstream really sends."""
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


def backend(pool: ConnectionPool, url: str, **options: Any) -> OpenAIBackend:
    return OpenAIBackend("local", AdapterContext(pool, read_timeout=5, first_byte_timeout=10), url=url, **options)


def request(endpoint: Endpoint, payload: dict[str, Any] | None = None, *, body: bytes | None = None,
            api_key: str | None = WORKSPACE_KEY) -> BackendRequest:
    raw = body if body is not None else orjson.dumps(payload or {})
    stream = bool(payload and payload.get("stream") is True)
    return BackendRequest(endpoint, raw, stream, api_key, {}, payload)


async def collect(response: BackendResponse) -> list[bytes]:
    try:
        return [chunk async for chunk in response.chunks()]
    finally:
        await response.aclose()


# -- static lists ---------------------------------------------------------------------------------


async def test_static_models_are_listed_without_the_network(pool: ConnectionPool) -> None:
    nowhere = backend(pool, f"http://127.0.0.1:{closed_port()}/v1", models=("qwen2.5-coder:7b", "llama3"))
    response = await nowhere.handle(request("models"))
    assert response.status == 200 and response.content_type == "application/json"
    listing = orjson.loads(b"".join(await collect(response)))
    assert listing == {
        "object": "list",
        "data": [
            {"id": "qwen2.5-coder:7b", "object": "model", "owned_by": "local"},
            {"id": "llama3", "object": "model", "owned_by": "local"},
        ],
    }
    with pytest.raises(BackendUnavailable):  # everything else does go to the (absent) server
        await nowhere.handle(request("chat", {"model": "llama3", "messages": MESSAGES}))


# -- llama.cpp ------------------------------------------------------------------------------------


async def test_llama_model_list_bytes_are_relayed_exactly(
    pool: ConnectionPool, raw_http: aiohttp.ClientSession, llama_server: LlamaServerProcess
) -> None:
    async with raw_http.get(llama_server.base_url + "/models") as direct:
        expected = await direct.read()
    response = await backend(pool, llama_server.base_url).handle(request("models"))
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(expected))
    assert b"".join(await collect(response)) == expected
    assert llama_server.alias in [m["id"] for m in orjson.loads(expected)["data"]]


async def test_llama_error_bytes_are_relayed_exactly(
    pool: ConnectionPool, raw_http: aiohttp.ClientSession, llama_server: LlamaServerProcess
) -> None:
    bad = b'{"model": "tiny-llama", "messages": "not a list"}'
    headers = {"Content-Type": "application/json"}
    async with raw_http.post(llama_server.base_url + "/chat/completions", data=bad, headers=headers) as direct:
        expected_status, expected = direct.status, await direct.read()
    assert expected_status >= 400
    response = await backend(pool, llama_server.base_url).handle(request("chat", body=bad))
    assert response.status == expected_status
    assert b"".join(await collect(response)) == expected


async def test_llama_chat_and_stream_through_the_adapter(
    pool: ConnectionPool, llama_server: LlamaServerProcess
) -> None:
    local = backend(pool, llama_server.base_url)
    payload = {"model": llama_server.alias, "messages": MESSAGES, "max_tokens": 8}
    response = await local.handle(request("chat", payload))
    assert response.status == 200 and response.content_type == "application/json"
    answer = orjson.loads(b"".join(await collect(response)))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < answer["usage"]["completion_tokens"] <= 8

    response = await local.handle(request("chat", {**payload, "stream": True}))
    assert response.status == 200 and response.content_type == "text/event-stream"
    raw = b"".join(await collect(response))
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")


async def capture_llama_stream(raw_http: aiohttp.ClientSession, llama: LlamaServerProcess) -> tuple[bytes, str]:
    body = {"model": llama.alias, "messages": MESSAGES, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    async with raw_http.post(llama.base_url + "/chat/completions", json=body) as direct:
        assert direct.status == 200
        return await direct.read(), direct.headers["Content-Type"]


async def replay_server(aiohttp_server: ServerFactory, body: bytes, content_type: str, *, gap: float = 0.0,
                        compress: bool = False, force_gzip: bool = False) -> TestServer:
    """Serves `body` at every POST path, in irregular pieces (mid-line, mid-UTF-8), `gap` apart."""
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if compress:
            response.enable_compression()  # only when the request accepts it, like real servers
        if force_gzip:
            response.enable_compression(web.ContentCoding.gzip)  # whatever the request accepts
        await response.prepare(request)
        sizes = [1, 7, 3, 64, 5]
        position = index = 0
        while position < len(body):
            size = sizes[index % len(sizes)]
            await response.write(body[position : position + size])
            position, index = position + size, index + 1
            if gap:
                await asyncio.sleep(gap)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    return await aiohttp_server(app)


async def test_llama_stream_bytes_are_relayed_exactly_and_as_they_arrive(
    pool: ConnectionPool, raw_http: aiohttp.ClientSession, llama_server: LlamaServerProcess,
    aiohttp_server: ServerFactory,
) -> None:
    captured, content_type = await capture_llama_stream(raw_http, llama_server)
    assert captured.endswith(b"data: [DONE]\n\n")
    server = await replay_server(aiohttp_server, captured, content_type, gap=0.002)
    response = await backend(pool, str(server.make_url("/v1"))).handle(
        request("chat", {"model": "tiny-llama", "messages": MESSAGES, "stream": True})
    )
    assert response.status == 200 and response.headers["Content-Type"] == content_type
    arrivals: list[tuple[float, bytes]] = []
    async for chunk in response.chunks():
        arrivals.append((time.perf_counter(), chunk))
    await response.aclose()
    assert b"".join(chunk for _, chunk in arrivals) == captured
    assert len(arrivals) > 3  # yielded piece by piece, not buffered into one
    assert arrivals[-1][0] - arrivals[0][0] > 0.01


async def test_compressible_answers_arrive_as_identity_bytes(
    pool: ConnectionPool, raw_http: aiohttp.ClientSession, llama_server: LlamaServerProcess,
    aiohttp_server: ServerFactory,
) -> None:
    # A hosted API behind a CDN gzips JSON when asked to. The relay passes bytes without re-encoding
    # and without Content-Encoding, so what it gets must be the identity bytes.
    async with raw_http.get(llama_server.base_url + "/models") as direct:
        expected = await direct.read()
    server = await replay_server(aiohttp_server, expected, "application/json", compress=True)
    response = await backend(pool, str(server.make_url("/v1"))).handle(request("chat", {"model": "x"}))
    assert response.status == 200
    assert "Content-Encoding" not in response.headers
    assert b"".join(await collect(response)) == expected


async def test_an_answer_gzipped_regardless_keeps_its_content_encoding(
    pool: ConnectionPool, aiohttp_server: ServerFactory
) -> None:
    expected = b'{"object": "list", "data": []}' * 50
    server = await replay_server(aiohttp_server, expected, "application/json", force_gzip=True)
    response = await backend(pool, str(server.make_url("/v1"))).handle(request("chat", {"model": "x"}))
    assert response.headers["Content-Encoding"] == "gzip"  # so the client downstream can decode it
    assert gzip.decompress(b"".join(await collect(response))) == expected


# -- an OpenAI-compatible server that checks keys (the stand-in's /v1) ----------------------------


@pytest.fixture
async def keyed(aiohttp_server: ServerFactory) -> tuple[HostedStandIn, str]:
    """The stand-in, accepting only the local backend's own key (as vLLM --api-key would)."""
    api = HostedStandIn(api_key=BACKEND_KEY)
    server = await aiohttp_server(api.app)
    return api, str(server.make_url("/v1"))


async def test_the_backend_key_is_sent_and_the_workspace_key_never(
    pool: ConnectionPool, keyed: tuple[HostedStandIn, str]
) -> None:
    api, url = keyed
    payload = {"model": "meta-llama/Llama-3.3-70B-Instruct", "messages": MESSAGES}
    response = await backend(pool, url, api_key=BACKEND_KEY).handle(request("chat", payload))
    assert response.status == 200
    await collect(response)
    (record,) = api.requests
    own_key = record.headers.get("Authorization") == f"Bearer {BACKEND_KEY}"
    assert own_key, "the backend's own key was not sent"
    leaked = WORKSPACE_KEY in repr(sorted(record.headers.items())) or WORKSPACE_KEY.encode() in record.body
    assert not leaked, "the workspace key reached a local backend"

    response = await backend(pool, url).handle(request("chat", payload))  # no key configured
    assert response.status == 401
    await collect(response)
    assert "Authorization" not in api.requests[-1].headers


async def test_embedding_bytes_are_relayed_exactly(
    pool: ConnectionPool, raw_http: aiohttp.ClientSession, keyed: tuple[HostedStandIn, str]
) -> None:
    _, url = keyed
    body = b'{"model": "meta-llama/Llama-3.3-70B-Instruct", "input": ["alpha", "beta"], "dimensions": 8}'
    headers = {"Authorization": f"Bearer {BACKEND_KEY}", "Content-Type": "application/json"}
    async with raw_http.post(url + "/embeddings", data=body, headers=headers) as direct:
        assert direct.status == 200
        expected = await direct.read()
    response = await backend(pool, url, api_key=BACKEND_KEY).handle(request("embeddings", body=body))
    assert response.status == 200
    assert b"".join(await collect(response)) == expected


async def test_completions_and_agent_chat_paths(
    pool: ConnectionPool, keyed: tuple[HostedStandIn, str]
) -> None:
    api, url = keyed
    local = backend(pool, url, api_key=BACKEND_KEY)
    model = "meta-llama/Llama-3.3-70B-Instruct"
    cases: list[tuple[Endpoint, dict[str, Any]]] = [
        ("completions", {"model": model, "prompt": "hi"}),
        ("agent_chat", {"model": model, "messages": MESSAGES}),
    ]
    for endpoint, payload in cases:
        response = await local.handle(request(endpoint, payload))
        assert response.status == 200
        await collect(response)
    # An OpenAI server has no agent path: agent chat is plain chat there.
    assert [r.path for r in api.requests] == ["/v1/completions", "/v1/chat/completions"]
