"""Tests for the hosted LLMTune stand-in: each would fail if the stand-in drifted from the seeds."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from aiohttp.web import Application
from openai import AsyncOpenAI

from tests.support.hosted_standin import (
    AGENT_TOOLS,
    DEFAULT_API_KEY,
    DEFAULT_MODEL,
    DEFAULT_MODELS,
    HostedStandIn,
    embedding_vector,
)

pytestmark = pytest.mark.asyncio  # works whether or not asyncio_mode=auto is configured

ServerFactory = Callable[[Application], Awaitable[TestServer]]
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def standin() -> HostedStandIn:
    return HostedStandIn()


@pytest_asyncio.fixture  # explicit so the module also runs under asyncio_mode=strict
async def server(standin: HostedStandIn, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(standin.app)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


_OPEN_CLIENTS: list[AsyncOpenAI] = []


@pytest_asyncio.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    # SDK clients own httpx connection pools; close them so no socket outlives its test.
    yield
    while _OPEN_CLIENTS:
        await _OPEN_CLIENTS.pop().close()


def sdk(server: TestServer, base: str = "/v1", api_key: str = DEFAULT_API_KEY) -> AsyncOpenAI:
    # max_retries=0: scripted failures must surface, not be retried away by the SDK.
    client = AsyncOpenAI(base_url=str(server.make_url(base)), api_key=api_key, max_retries=0)
    _OPEN_CLIENTS.append(client)
    return client


def chat_body(content: str = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def sse_events(resp: aiohttp.ClientResponse) -> list[str]:
    """Raw `data:` payloads in order (including the final "[DONE]")."""
    text = await resp.text()
    assert text.endswith("\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


# ---------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk_wrong_secret_1234"},
        {"Authorization": "Basic sk_wrong_secret_1234"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/agent/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/agent/v1/chat/completions"),
        ("POST", "/v1/fine-tune"),
        ("GET", "/v1/fine-tune/ft_nope"),
        ("POST", "/v1/embeddings"),
    ],
)
async def test_auth_required_with_standard_shape_and_key_not_echoed(
    server: TestServer, http: aiohttp.ClientSession, headers: dict[str, str], method: str, path: str
) -> None:
    async with http.request(method, server.make_url(path), headers=headers, json=chat_body()) as resp:
        raw = await resp.text()
        assert resp.status == 401
        assert resp.content_type == "application/json"
    body = json.loads(raw)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "code", "details"}
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert isinstance(body["error"]["details"], dict)
    assert "sk_wrong_secret_1234" not in raw
    assert DEFAULT_API_KEY not in raw


async def test_custom_key_and_key_rotation(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    standin = HostedStandIn("sk_workspace_abc")
    server = await aiohttp_server(standin.app)
    url = server.make_url("/api/agent/models")
    async with http.get(url, headers={"Authorization": "Bearer sk_workspace_abc"}) as resp:
        assert resp.status == 200
    async with http.get(url, headers=AUTH) as resp:
        assert resp.status == 401
    standin.api_key = "sk_rotated"
    async with http.get(url, headers={"Authorization": "Bearer sk_workspace_abc"}) as resp:
        assert resp.status == 401
    # The request log shows what the upstream actually saw.
    assert [r.headers["Authorization"] for r in standin.requests] == [
        "Bearer sk_workspace_abc",
        f"Bearer {DEFAULT_API_KEY}",
        "Bearer sk_workspace_abc",
    ]


# ---------------------------------------------------------------------------- models


async def test_agent_models_shape_and_active_filter(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(server.make_url("/api/agent/models"), headers=AUTH) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["success"] is True
    assert body["count"] == len(body["data"])
    assert all(set(m) == {"id", "name", "owned_by"} for m in body["data"])
    active_ids = [m["id"] for m in DEFAULT_MODELS if m["active"]]
    assert [m["id"] for m in body["data"]] == active_ids
    assert body["data"][0] == {"id": DEFAULT_MODEL, "name": "Llama 3.3 70B", "owned_by": "Meta"}

    async with http.get(server.make_url("/api/agent/models?active=false"), headers=AUTH) as resp:
        everything = await resp.json()
    assert [m["id"] for m in everything["data"]] == [m["id"] for m in DEFAULT_MODELS]
    assert everything["count"] == len(DEFAULT_MODELS) > body["count"]

    standin.set_model_active(DEFAULT_MODEL, False)
    async with http.get(server.make_url("/api/agent/models"), headers=AUTH) as resp:
        assert DEFAULT_MODEL not in [m["id"] for m in (await resp.json())["data"]]
    recorded = standin.requests[1]
    assert recorded.method == "GET" and recorded.query == {"active": "false"}


async def test_custom_catalog(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    standin = HostedStandIn(models=[{"id": "acme/one", "name": "One", "owned_by": "Acme"}])
    server = await aiohttp_server(standin.app)
    async with http.get(server.make_url("/api/agent/models"), headers=AUTH) as resp:
        assert await resp.json() == {
            "success": True,
            "data": [{"id": "acme/one", "name": "One", "owned_by": "Acme"}],
            "count": 1,
        }


# ---------------------------------------------------------------------------- chat


@pytest.mark.parametrize("base", ["/v1", "/api/agent/v1"])
async def test_chat_non_stream_shape_and_defaults(standin: HostedStandIn, server: TestServer, base: str) -> None:
    client = sdk(server, base)
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello   big world"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == DEFAULT_MODEL
    assert completion.id and completion.created > 0
    choice = completion.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello   big world"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.total_tokens == 10

    recorded = standin.requests[-1]
    assert recorded.path == f"{base}/chat/completions"
    assert recorded.headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert recorded.json is not None and recorded.json["model"] == DEFAULT_MODEL
    assert json.loads(recorded.body) == recorded.json
    assert recorded.effective is not None
    assert recorded.effective["temperature"] == 0.7
    assert recorded.effective["max_tokens"] == 512
    assert standin.calls_by_path[f"{base}/chat/completions"] == 1


async def test_chat_raw_json_keys(server: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body()) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        body = await resp.json()
    assert {"id", "object", "created", "model", "choices", "usage"} <= set(body)
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello world"}


async def test_default_max_tokens_512_truncates_with_length(server: TestServer) -> None:
    client = sdk(server)
    long_text = " ".join(f"w{i}" for i in range(600))
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": long_text}]
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 512
    short = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "a b c d e"}], max_tokens=3
    )
    assert short.choices[0].message.content == "Echo: a b"
    assert short.choices[0].finish_reason == "length"


async def test_explicit_params_are_honoured(standin: HostedStandIn, server: TestServer) -> None:
    client = sdk(server)
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "one two STOP three"}],
        temperature=0.1,
        max_tokens=100,
        stop=[" STOP"],
        extra_body={"metadata": {"trace": "t-1"}},
    )
    assert completion.choices[0].message.content == "Echo: one two"
    effective = standin.requests[-1].effective
    assert effective is not None and effective["temperature"] == 0.1 and effective["max_tokens"] == 100
    assert standin.requests[-1].json is not None
    assert standin.requests[-1].json["metadata"] == {"trace": "t-1"}


@pytest.mark.parametrize("base", ["/v1", "/api/agent/v1"])
async def test_stream_reassembles_to_non_stream_text(server: TestServer, base: str) -> None:
    client = sdk(server, base)
    prompt = "stream me\nthese  words please"
    full = await client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}])
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    roles: list[str] = []
    finish: list[str] = []
    usage = None
    n_chunks = 0
    async for chunk in stream:
        n_chunks += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == DEFAULT_MODEL
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == full.choices[0].message.content == "Echo: " + prompt
    assert len(pieces) == 6  # one delta per word
    assert roles == ["assistant"]
    assert finish == ["stop"]
    assert usage is not None and full.usage is not None
    assert usage.model_dump() == full.usage.model_dump() | {
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }


async def test_stream_wire_format(server: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.post(
        server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body("a b", stream=True)
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Echo:", " a", " b"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1
    assert "usage" not in chunks[-1]  # no usage chunk unless stream_options.include_usage


async def test_x_standin_chunks_gives_exactly_n_content_chunks(server: TestServer, http: aiohttp.ClientSession) -> None:
    body = chat_body(stream=True, x_standin_chunks=37, x_standin_gap_ms=1)
    started = time.perf_counter()
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=body) as resp:
        events = await sse_events(resp)
    assert time.perf_counter() - started >= 0.036
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1] if e != "[DONE]"]
    non_empty = [c for c in contents if c]
    assert len(non_empty) == 37
    assert all(len(c.split()) == 1 for c in non_empty)
    async with http.post(
        server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body(x_standin_chunks=5)
    ) as resp:
        full = await resp.json()
    assert full["choices"][0]["message"]["content"] == "".join(non_empty[:5])
    assert full["usage"]["completion_tokens"] == 5


async def test_stream_delay_and_first_byte_delay(standin: HostedStandIn, server: TestServer) -> None:
    client = sdk(server)
    standin.first_byte_delay = 0.2
    started = time.perf_counter()
    await client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}])
    assert time.perf_counter() - started >= 0.2
    standin.first_byte_delay = 0.0
    standin.stream_delay = 0.05
    started = time.perf_counter()
    stamps: list[float] = []
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    async for _ in stream:
        stamps.append(time.perf_counter() - started)
    # role + 4 words + finish = 6 chunks, 0.05 s apart.
    assert len(stamps) == 6
    assert stamps[-1] - stamps[0] >= 0.2


# ---------------------------------------------------------------------------- tools

READ_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read file contents",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}


def tool_spec(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


async def test_scripted_tool_call_non_stream(standin: HostedStandIn, server: TestServer) -> None:
    standin.script_tool_call("read_file", {"path": "src/index.ts"})
    completion = await sdk(server, "/api/agent/v1").chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Read src/index.ts"}],
        tools=[READ_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "read_file"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"path": "src/index.ts"}  # type: ignore[union-attr]
    assert standin.pending_replies == 0


@pytest.mark.parametrize("name", AGENT_TOOLS)
async def test_streamed_tool_call_deltas_reassemble(standin: HostedStandIn, server: TestServer, name: str) -> None:
    arguments = {"path": "src/app.py", "content": "print('hi')\n" * 3, "nested": {"n": [1, 2, 3]}}
    standin.script_tool_call(name, arguments, call_id="call_fixed_1")
    stream = await sdk(server).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": f"please use {name}"}],
        tools=[tool_spec(t) for t in AGENT_TOOLS],  # type: ignore[misc]
        stream=True,
    )
    tool_deltas = []
    finish = None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.tool_calls:
            tool_deltas.extend(delta.tool_calls)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        assert not delta.content
    assert finish == "tool_calls"
    first, rest = tool_deltas[0], tool_deltas[1:]
    assert first.index == 0 and first.id == "call_fixed_1" and first.type == "function"
    assert first.function is not None and first.function.name == name
    assert len(rest) >= 3  # arguments really are split across several deltas
    assert all(d.index == 0 and d.id is None for d in rest)
    assert all(d.function is not None and d.function.name is None for d in rest)
    joined = "".join((d.function.arguments or "") for d in tool_deltas if d.function)
    assert json.loads(joined) == arguments


async def test_parallel_tool_calls_stream_indices(standin: HostedStandIn, server: TestServer) -> None:
    standin.script_tool_calls([("list_directory", {"path": "."}), ("run_terminal", {"command": "ls -la"})])
    stream = await sdk(server).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "look around"}],
        tools=[tool_spec("list_directory"), tool_spec("run_terminal")],  # type: ignore[list-item]
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
            if d.function and d.function.name:
                slot["name"] = d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
    assert calls[0]["name"] == "list_directory" and json.loads(calls[0]["arguments"]) == {"path": "."}
    assert calls[1]["name"] == "run_terminal" and json.loads(calls[1]["arguments"]) == {"command": "ls -la"}


async def test_multi_turn_tool_then_text(standin: HostedStandIn, server: TestServer) -> None:
    client = sdk(server)
    standin.script_tool_call("read_file", {"path": "README.md"})
    messages: list[Any] = [{"role": "user", "content": "What does README.md say?"}]
    first = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        tools=[READ_TOOL],  # type: ignore[list-item]
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "# Companion readme"})
    second = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        tools=[READ_TOOL],  # type: ignore[list-item]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool said: # Companion readme"

    # A queue: tool call, then a literal scripted text.
    standin.script_tool_call("write_file", {"path": "a.txt", "content": "x"})
    standin.script_reply("All done.")
    third = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        tools=[tool_spec("write_file")],  # type: ignore[list-item]
    )
    assert third.choices[0].message.tool_calls is not None
    fourth = await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages)
    assert fourth.choices[0].message.content == "All done."


async def test_tool_models_call_their_tool_then_answer_from_the_result(server: TestServer) -> None:
    client = sdk(server)
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"]}}}
    messages: list[Any] = [{"role": "user", "content": "Oslo"}]
    first = await client.chat.completions.create(
        model="tool-get_weather", messages=messages, tools=[READ_TOOL, weather],  # type: ignore[list-item]
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 0}  # type: ignore[union-attr]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "-3C"}]
    second = await client.chat.completions.create(
        model="tool-get_weather", messages=messages, tools=[weather],  # type: ignore[list-item]
    )
    assert second.choices[0].message.content == "Tool said: -3C"
    # A user message that is a JSON object is taken as the arguments.
    direct = await client.chat.completions.create(
        model="tool-get_weather", messages=[{"role": "user", "content": '{"city": "Bergen", "days": 2}'}],
        tools=[weather],  # type: ignore[list-item]
    )
    arguments = direct.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]
    assert json.loads(arguments) == {"city": "Bergen", "days": 2}
    # Without its tool on offer it just answers.
    plain = await client.chat.completions.create(model="tool-get_weather", messages=messages[:1])
    assert plain.choices[0].message.content == "Echo: Oslo"


async def test_scripted_tool_call_waits_for_a_request_with_tools(standin: HostedStandIn, server: TestServer) -> None:
    client = sdk(server)
    standin.script_tool_call("read_file", {"path": "x"})
    plain = await client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert plain.choices[0].message.content == "Echo: hi"
    refused = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=[READ_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert refused.choices[0].message.tool_calls is None
    assert standin.pending_replies == 1
    used = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=[READ_TOOL],  # type: ignore[list-item]
    )
    assert used.choices[0].message.tool_calls is not None


# ---------------------------------------------------------------------------- scripted failures

EXPECTED_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDITS",
    404: "NOT_FOUND",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


@pytest.mark.parametrize(("status", "code"), sorted(EXPECTED_CODES.items()))
async def test_fail_next_status_and_shape(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession, status: int, code: str
) -> None:
    standin.fail_next(status)
    url = server.make_url("/v1/chat/completions")
    async with http.post(url, headers=AUTH, json=chat_body()) as resp:
        assert resp.status == status
        assert "Retry-After" not in resp.headers
        body = await resp.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    async with http.post(url, headers=AUTH, json=chat_body()) as resp:  # only once
        assert resp.status == 200


@pytest.mark.parametrize(("retry_after", "header"), [(3, "3"), (0.25, "0.25"), (2.0, "2")])
async def test_fail_next_429_retry_after(
    standin: HostedStandIn, server: TestServer, retry_after: float, header: str
) -> None:
    standin.fail_next(429, retry_after=retry_after, times=2)
    client = sdk(server)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 429
        assert info.value.response.headers["Retry-After"] == header
        assert info.value.body == {  # the SDK unwraps the "error" envelope
            "message": "Rate limit exceeded",
            "code": "RATE_LIMITED",
            "details": {"retry_after": retry_after},
        }
    await client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}])


async def test_fail_next_path_prefix_custom_body_and_stream_endpoint(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    standin.fail_next(503, path_prefix="/api/agent/", body={"error": {"message": "down", "code": "X", "details": {}}})
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body()) as resp:
        assert resp.status == 200  # not under the prefix, failure stays queued
    async with http.get(server.make_url("/api/agent/models"), headers=AUTH) as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": {"message": "down", "code": "X", "details": {}}}
    standin.fail_next(500)
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body(stream=True)) as resp:
        assert resp.status == 500 and resp.content_type == "application/json"


async def test_unauthenticated_requests_do_not_consume_failures(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    standin.fail_next(500)
    async with http.get(server.make_url("/api/agent/models")) as resp:
        assert resp.status == 401
    async with http.get(server.make_url("/api/agent/models"), headers=AUTH) as resp:
        assert resp.status == 500


# ---------------------------------------------------------------------------- broken streams


async def test_cut_stream_really_breaks_the_connection(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    standin.cut_stream_after(3)
    url = server.make_url("/v1/chat/completions")
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url, headers=AUTH, json=chat_body("one two three four five", stream=True)) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    received.append(line)
    assert len(received) == 3
    assert b"data: [DONE]\n" not in received
    # times=1: the next stream is whole again.
    async with http.post(url, headers=AUTH, json=chat_body("again", stream=True)) as resp:
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"


async def test_cut_stream_surfaces_through_the_sdk(standin: HostedStandIn, server: TestServer) -> None:
    standin.cut_stream_after(0)
    stream = await sdk(server).chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps httpx's incomplete-body error
        async for _ in stream:
            pass


# ---------------------------------------------------------------------------- validation


async def test_unknown_and_inactive_model_404(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    for model in ("nope/unknown-model", "mistralai/Mistral-7B-Instruct-v0.3"):
        body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=body) as resp:
            assert resp.status == 404
            err = (await resp.json())["error"]
        assert err["code"] == "NOT_FOUND" and err["details"]["model"] == model
    with pytest.raises(openai.NotFoundError):
        await sdk(server).chat.completions.create(
            model="nope/unknown-model", messages=[{"role": "user", "content": "x"}]
        )


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": DEFAULT_MODEL}).encode(), "messages"),
        (json.dumps({"model": DEFAULT_MODEL, "messages": []}).encode(), "messages"),
        (json.dumps(chat_body(temperature="hot")).encode(), "temperature"),
        (json.dumps(chat_body(max_tokens=0)).encode(), "max_tokens"),
        (
            json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "tool", "content": "x"}]}).encode(),
            "messages[0].tool_call_id",
        ),
    ],
)
async def test_bad_requests_400(
    server: TestServer, http: aiohttp.ClientSession, payload: bytes, field: str | None
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(server.make_url("/v1/chat/completions"), headers=headers, data=payload) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["code"] == "INVALID_REQUEST"
    if field is not None:
        assert err["details"]["field"] == field


async def test_unknown_route_and_method_use_standard_shape(server: TestServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.make_url("/v1/nothing-here"), headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    async with http.get(server.make_url("/v1/chat/completions"), headers=AUTH) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


# ---------------------------------------------------------------------------- other endpoints


async def test_embeddings_deterministic(server: TestServer, http: aiohttp.ClientSession) -> None:
    client = sdk(server)
    a1 = await client.embeddings.create(model=DEFAULT_MODEL, input="hello")
    a2 = await client.embeddings.create(model=DEFAULT_MODEL, input=["hello", "world"])
    assert a1.data[0].embedding == a2.data[0].embedding  # SDK asked for base64 and decoded it
    assert a2.data[0].embedding != a2.data[1].embedding
    assert [d.index for d in a2.data] == [0, 1]
    assert len(a1.data[0].embedding) == 64
    assert abs(sum(v * v for v in a1.data[0].embedding) - 1.0) < 1e-5
    assert a1.data[0].embedding == embedding_vector(DEFAULT_MODEL, "hello", 64)

    body = {"model": DEFAULT_MODEL, "input": "hello", "encoding_format": "float", "dimensions": 8}
    async with http.post(server.make_url("/v1/embeddings"), headers=AUTH, json=body) as resp:
        raw = await resp.json()
    assert raw["object"] == "list" and raw["model"] == DEFAULT_MODEL
    assert raw["data"][0]["object"] == "embedding"
    assert raw["data"][0]["embedding"] == embedding_vector(DEFAULT_MODEL, "hello", 8)
    assert raw["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    for bad in ({"model": DEFAULT_MODEL, "input": ""}, {"model": DEFAULT_MODEL}):
        async with http.post(server.make_url("/v1/embeddings"), headers=AUTH, json=bad) as resp:
            assert resp.status == 400


async def test_legacy_completions(server: TestServer) -> None:
    client = sdk(server)
    completion = await client.completions.create(model=DEFAULT_MODEL, prompt="say this")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Echo: say this"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 3
    stream = await client.completions.create(model=DEFAULT_MODEL, prompt="say this", stream=True)
    text = ""
    async for chunk in stream:
        text += chunk.choices[0].text
    assert text == "Echo: say this"


async def test_model_inference_and_playground(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    url = server.make_url(f"/v1/models/{DEFAULT_MODEL}/inference")
    async with http.post(url, headers=AUTH, json={"messages": [{"role": "user", "content": "hi there"}]}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["model"] == DEFAULT_MODEL
    assert body["choices"][0]["message"]["content"] == body["text"] == "Echo: hi there"
    assert body["tokens"] == 3 and isinstance(body["latency"], float)
    async with http.post(
        server.make_url("/v1/models/acme/missing/inference"), headers=AUTH, json={"prompt": "x"}
    ) as resp:
        assert resp.status == 404
    async with http.post(
        server.make_url("/v1/playground/inference"),
        headers=AUTH,
        json={"model": DEFAULT_MODEL, "prompt": "ping"},
    ) as resp:
        assert (await resp.json())["text"] == "Echo: ping"
    async with http.post(url, headers=AUTH, json={"prompt": "a b", "stream": True}) as resp:
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    assert standin.calls_by_path[f"/v1/models/{DEFAULT_MODEL}/inference"] == 2


async def test_batch_inference_and_idempotency(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    body = {
        "requests": [
            {"custom_id": "a", "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "one"}]},
            {"custom_id": "b", "model": "nope/x", "prompt": "two"},
        ],
        "webhook_url": "http://127.0.0.1:9/hook",
    }
    headers = {**AUTH, "Idempotency-Key": "batch-1"}
    async with http.post(server.make_url("/v1/batch/inference"), headers=headers, json=body) as resp:
        first = await resp.json()
    assert first["count"] == 2 and first["succeeded"] == 1 and first["failed"] == 1
    assert first["results"][0]["response"]["choices"][0]["message"]["content"] == "Echo: one"
    assert first["results"][1]["status"] == 404 and first["results"][1]["error"]["code"] == "NOT_FOUND"
    async with http.post(server.make_url("/v1/batch/inference"), headers=headers, json=body) as resp:
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert await resp.json() == first
    assert len(standin.batches) == 1


async def test_fine_tune_idempotent_creation_and_lifecycle(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    url = server.make_url("/v1/fine-tune")
    body = {
        "base_model": DEFAULT_MODEL,
        "dataset": "s3://bucket/train.jsonl",
        "hyperparameters": {"epochs": 2},
    }
    headers = {**AUTH, "Idempotency-Key": "ft-key-1"}
    results = await asyncio.gather(*(http.post(url, headers=headers, json=body) for _ in range(3)))
    payloads = []
    for resp in results:
        assert resp.status == 200
        payloads.append(await resp.json())
        resp.release()
    assert len({p["id"] for p in payloads}) == 1
    assert len(standin.jobs) == 1
    job_id = payloads[0]["id"]
    assert payloads[0]["status"] == "queued" and payloads[0]["hyperparameters"] == {"epochs": 2}

    async with http.post(url, headers={**AUTH, "Idempotency-Key": "ft-key-2"}, json=body) as resp:
        assert (await resp.json())["id"] != job_id
    async with http.post(url, headers=AUTH, json=body) as resp:  # no key: always a new job
        assert resp.status == 200
    assert len(standin.jobs) == 3

    standin.advance_job(job_id, "running")
    standin.advance_job(job_id, "completed")
    async with http.get(server.make_url(f"/v1/fine-tune/{job_id}"), headers=AUTH) as resp:
        job = await resp.json()
    assert job["status"] == "completed" and job["fine_tuned_model"]
    assert [e["type"] for e in standin.events] == ["training.started", "training.completed"]
    model_id = standin.deploy_job(job_id)
    assert standin.events[-1]["type"] == "model.deployed"
    completion = await sdk(server).chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
    assert completion.model == model_id

    async with http.get(server.make_url("/v1/fine-tune/ft_missing"), headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    async with http.post(url, headers=AUTH, json={"base_model": DEFAULT_MODEL}) as resp:
        assert resp.status == 400


async def test_fine_tune_retry_after_lost_response_creates_one_job(
    standin: HostedStandIn, server: TestServer, http: aiohttp.ClientSession
) -> None:
    standin.fail_next(500, processed=True, path_prefix="/v1/fine-tune")
    url = server.make_url("/v1/fine-tune")
    body = {"base_model": DEFAULT_MODEL, "dataset": "s3://b/d.jsonl"}
    headers = {**AUTH, "Idempotency-Key": "retry-me"}
    async with http.post(url, headers=headers, json=body) as resp:
        assert resp.status == 500
    async with http.post(url, headers=headers, json=body) as resp:
        assert resp.status == 200
        job = await resp.json()
    assert list(standin.jobs) == [job["id"]]


# ---------------------------------------------------------------------------- bookkeeping


async def test_record_false_and_reset(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    standin = HostedStandIn(record=False)
    server = await aiohttp_server(standin.app)
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body()) as resp:
        assert resp.status == 200
    async with http.post(server.make_url("/v1/chat/completions"), headers=AUTH, data=b"{bad") as resp:
        assert resp.status == 400
    assert standin.requests == []
    assert standin.calls_by_path["/v1/chat/completions"] == 2

    standin.record = True
    standin.fail_next(500)
    standin.cut_stream_after(1)
    standin.script_reply("scripted")
    standin.stream_delay = 1.0
    standin.set_model_active(DEFAULT_MODEL, False)
    standin.reset()
    assert not standin.calls_by_path and standin.pending_replies == 0 and standin.stream_delay == 0
    async with http.post(
        server.make_url("/v1/chat/completions"), headers=AUTH, json=chat_body("z", stream=True)
    ) as resp:
        assert resp.status == 200
        assert (await sse_events(resp))[-1] == "[DONE]"
    assert len(standin.requests) == 1


async def test_standalone_main_serves_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "tests.support.hosted_standin", "--port", "0"]
    command += ["--api-key", "sk_cli", "--no-record"]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=20)
            assert line.startswith("READY http://127.0.0.1:"), line
            base = line.split()[1]
            assert not base.endswith(":0")
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": "Bearer sk_cli"}
                async with session.get(f"{base}/api/agent/models", headers=headers) as resp:
                    assert resp.status == 200
                async with session.get(f"{base}/api/agent/models", headers=AUTH) as resp:
                    assert resp.status == 401
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_standalone_main_refuses_non_loopback_host() -> None:
    command = [sys.executable, "-m", "tests.support.hosted_standin", "--host", "0.0.0.0"]  # noqa: S104
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2
    assert b"loopback" in stderr
