"""The hosted backend (adapters/llmtune.py) against the hosted stand-in on loopback.

The adapter is driven directly with the connection pool the daemon builds; the stand-in records what it
received, so "the key is only in Authorization" is checked on the wire.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from llmtune_companion.adapters import (
    AdapterContext,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    Endpoint,
    LLMTuneBackend,
    UpstreamBroken,
)
from llmtune_companion.adapters.http1 import ConnectionPool
from llmtune_companion.adapters.llmtune import agent_models_to_openai
from llmtune_companion.app import make_pool
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.support.hosted_standin import RecordedRequest

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
MakeBackend = Callable[..., LLMTuneBackend]


@pytest.fixture
async def pool(home: Paths) -> AsyncIterator[ConnectionPool]:
    pool = make_pool(load_config(home))
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
def make_backend(pool: ConnectionPool, standin: StandIn) -> MakeBackend:
    def make(url: str | None = None, **timeouts: float) -> LLMTuneBackend:
        return LLMTuneBackend("llmtune", AdapterContext(pool, **timeouts), url=url or standin.url)

    return make


def chat_request(
    endpoint: Endpoint = "chat", api_key: str | None = WORKSPACE_KEY, headers: dict[str, str] | None = None,
    **extra: Any,
) -> BackendRequest:
    payload = {"model": HOSTED, "messages": [{"role": "user", "content": "hi there"}], **extra}
    return BackendRequest(endpoint, orjson.dumps(payload), payload.get("stream") is True, api_key, headers or {},
                          payload)


async def body_of(response: BackendResponse) -> bytes:
    try:
        body: bytes = await response.read()
        return body
    finally:
        await response.aclose()


def assert_key_only_in_authorization(record: RecordedRequest) -> None:
    authorized = record.headers.get("Authorization") == f"Bearer {WORKSPACE_KEY}"
    assert authorized, f"{record.path}: no Bearer workspace key"
    others = [value for name, value in record.headers.items() if name.lower() != "authorization"]
    elsewhere = (
        any(WORKSPACE_KEY in value for value in others)
        or WORKSPACE_KEY.encode() in record.body
        or WORKSPACE_KEY in record.path
        or any(WORKSPACE_KEY in k or WORKSPACE_KEY in v for k, v in record.query.items())
    )
    assert not elsewhere, f"{record.path}: the workspace key was sent outside Authorization"
    assert len(record.headers.getall("Authorization")) == 1


# -- the Agent model list -------------------------------------------------------------------------


def test_agent_models_translation() -> None:
    agent = {
        "success": True,
        "data": [
            {"id": "meta-llama/Llama-3.3-70B-Instruct", "name": "Llama 3.3 70B", "owned_by": "Meta"},
            {"id": "bare"},
            {"name": "no id"},
            "not an object",
            {"id": 7},
            {"id": "dated", "owned_by": None, "created": 1700000000},
        ],
        "count": 6,
    }
    translated = orjson.loads(agent_models_to_openai(orjson.dumps(agent)))
    assert translated == {
        "object": "list",
        "data": [
            {"id": "meta-llama/Llama-3.3-70B-Instruct", "object": "model", "created": 0, "owned_by": "Meta",
             "name": "Llama 3.3 70B"},
            {"id": "bare", "object": "model", "created": 0, "owned_by": "llmtune"},
            {"id": "dated", "object": "model", "created": 1700000000, "owned_by": "llmtune"},
        ],
    }


@pytest.mark.parametrize("body", [b'{"success": true}', b'{"data": {"id": "x"}}', b"[1, 2]"])
def test_agent_models_without_a_data_array_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="data"):
        agent_models_to_openai(body)


async def test_models_come_from_the_agent_list_in_openai_shape(make_backend: MakeBackend, standin: StandIn) -> None:
    response = await make_backend().handle(BackendRequest("models", api_key=WORKSPACE_KEY))
    assert response.status == 200 and response.content_type == "application/json"
    listing = orjson.loads(await body_of(response))
    active = [m for m in standin.api.models if m["active"]]
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [m["id"] for m in active]
    for model, source in zip(listing["data"], active, strict=True):
        assert model == {"id": source["id"], "object": "model", "created": 0, "owned_by": source["owned_by"],
                         "name": source["name"]}
    (record,) = standin.api.requests
    assert (record.method, record.path, record.query) == ("GET", "/api/agent/models", {})
    assert_key_only_in_authorization(record)


async def test_model_list_errors_keep_their_status(make_backend: MakeBackend, standin: StandIn) -> None:
    response = await make_backend().handle(BackendRequest("models", api_key="sk_wrong"))
    assert response.status == 401
    assert orjson.loads(await body_of(response))["error"]["details"] == {"reason": "invalid_api_key"}
    standin.api.fail_next(503)
    response = await make_backend().handle(BackendRequest("models", api_key=WORKSPACE_KEY))
    assert response.status == 503
    assert orjson.loads(await body_of(response))["error"]["code"] == "SERVICE_UNAVAILABLE"


# -- relaying requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("chat", "/v1/chat/completions"),
        ("agent_chat", "/api/agent/v1/chat/completions"),
        ("completions", "/v1/completions"),
        ("embeddings", "/v1/embeddings"),
    ],
)
async def test_each_endpoint_goes_to_its_path_with_the_key(
    make_backend: MakeBackend, standin: StandIn, endpoint: Endpoint, path: str
) -> None:
    extra: dict[str, Any] = {"prompt": "hi there"} if endpoint == "completions" else {}
    if endpoint == "embeddings":
        extra = {"input": "hi there"}
    request = chat_request(endpoint, headers={"Idempotency-Key": "idem-1"}, **extra)
    response = await make_backend().handle(request)
    assert response.status == 200, await body_of(response)
    assert response.content_type == "application/json"
    answer = orjson.loads(await body_of(response))
    assert answer["object"] in ("chat.completion", "text_completion", "list")
    (record,) = standin.api.requests
    assert (record.method, record.path) == ("POST", path)
    assert record.body == request.body  # the bytes as given
    assert record.headers["Content-Type"] == "application/json"
    assert record.headers["Idempotency-Key"] == "idem-1"
    assert_key_only_in_authorization(record)


async def test_without_a_key_no_authorization_is_sent(make_backend: MakeBackend, standin: StandIn) -> None:
    response = await make_backend().handle(chat_request(api_key=None))
    assert response.status == 401
    assert response.headers.get("Content-Type", "").startswith("application/json")
    assert orjson.loads(await body_of(response))["error"]["details"] == {"reason": "missing_api_key"}
    assert "Authorization" not in standin.api.requests[0].headers


async def test_a_client_authorization_header_never_replaces_the_key(
    make_backend: MakeBackend, standin: StandIn
) -> None:
    request = chat_request(headers={"Authorization": "Bearer lct_local_token"})
    response = await make_backend().handle(request)
    assert response.status == 200
    await body_of(response)
    assert_key_only_in_authorization(standin.api.requests[0])


async def test_rate_limit_headers_are_kept(make_backend: MakeBackend, standin: StandIn) -> None:
    standin.api.fail_next(429, retry_after=12)
    response = await make_backend().handle(chat_request())
    assert response.status == 429
    assert response.headers["Retry-After"] == "12"
    assert "WWW-Authenticate" not in response.headers and "Server" not in response.headers
    await body_of(response)


async def test_stream_is_yielded_as_it_arrives(make_backend: MakeBackend, standin: StandIn) -> None:
    standin.api.script_reply("one two three")
    response = await make_backend().handle(chat_request(stream=True))
    assert response.status == 200 and response.content_type == "text/event-stream"
    chunks = [chunk async for chunk in response.chunks()]
    await response.aclose()
    raw = b"".join(chunks)
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "one two three"


async def test_a_cut_stream_raises_upstream_broken(make_backend: MakeBackend, standin: StandIn) -> None:
    standin.api.cut_stream_after(2)
    response = await make_backend().handle(chat_request(stream=True))
    received: list[bytes] = []
    with pytest.raises(UpstreamBroken, match="broke"):
        async for chunk in response.chunks():
            received.append(chunk)
    await response.aclose()
    assert b"".join(received).count(b"data: ") == 2


async def test_silence_mid_stream_raises_upstream_broken(make_backend: MakeBackend, standin: StandIn) -> None:
    standin.api.stream_delay = 2.0
    response = await make_backend(read_timeout=0.3).handle(chat_request(stream=True))
    received: list[bytes] = []
    with pytest.raises(UpstreamBroken, match="silent"):
        async for chunk in response.chunks():
            received.append(chunk)
    await response.aclose()
    assert b"".join(received).count(b"data: ") == 1  # the first event, then 0.3 s of silence


async def test_first_byte_timeout_is_unavailable(make_backend: MakeBackend, standin: StandIn) -> None:
    standin.api.first_byte_delay = 2.0
    with pytest.raises(BackendUnavailable) as late:
        await make_backend(first_byte_timeout=0.2).handle(chat_request())
    assert late.value.timeout is True


async def test_unreachable_is_unavailable(make_backend: MakeBackend) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendUnavailable) as down:
        await make_backend(url=f"http://127.0.0.1:{port}").handle(chat_request())
    assert down.value.timeout is False
    assert "hosted LLMTune API" in str(down.value)
    unreachable = WORKSPACE_KEY in str(down.value)
    assert not unreachable, "the key is in the error message"


async def test_describe_has_no_key(make_backend: MakeBackend) -> None:
    backend = make_backend()
    assert backend.kind == "llmtune" and backend.per_workspace_models is True
    described = backend.describe()
    assert set(described) == {"name", "type", "url"}
    assert described["type"] == "llmtune"
