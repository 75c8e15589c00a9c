"""The client-side API (daemon/proxy.py) end to end, against real parts on loopback.

The official `openai` SDK talks to the real daemon; behind it are the hosted stand-in and a real
llama.cpp server with a tiny random model (so llama answers are checked for shape, never words).
Error paths use raw aiohttp so the exact status and body can be read.

Secrets: the workspace key and the local token are only ever compared into booleans, so a failing
assertion cannot print them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon
from tests.support.hosted_standin import AGENT_TOOLS, RecordedRequest
from tests.support.llama_server import LlamaServerProcess

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
OTHER_HOSTED = "meta-llama/Llama-3.1-8B-Instruct"
INACTIVE_HOSTED = "mistralai/Mistral-7B-Instruct-v0.3"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there companion"}]
LOCAL_MAX_TOKENS = 8
WAIT = 5.0  # no single step of a test may take longer than this: a hang fails, it does not stall

# The five Agent tools of the seed, each with arguments a coding agent would send.
TOOL_ARGUMENTS: dict[str, dict[str, Any]] = {
    "read_file": {"path": "src/index.ts"},
    "write_file": {"path": "src/new.ts", "content": "export const x = 1;\n// ünïcödé \"quoted\"\n"},
    "list_directory": {"path": "src"},
    "run_terminal": {"command": "npm test -- --watch=false"},
    "search_replace": {"path": "src/index.ts", "search": "foo(", "replace": "bar("},
}


def tool(name: str) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }


ALL_TOOLS = [tool(name) for name in AGENT_TOOLS]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def hosted(standin: StandIn, start_daemon: StartDaemon) -> Daemon:
    return await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})


@pytest.fixture
async def both(standin: StandIn, start_daemon: StartDaemon, llama_server: LlamaServerProcess) -> Daemon:
    return await start_daemon(env={"LLMTUNE_BASE_URL": standin.url, "LLMTUNE_LOCAL_URL": llama_server.base_url})


def chats(standin: StandIn, path: str = "/v1/chat/completions") -> list[RecordedRequest]:
    return [r for r in standin.api.requests if r.path == path]


def assert_key_only_upstream(standin: StandIn, daemon: Daemon) -> None:
    """Every upstream request carried the workspace key, and nothing anywhere carried the local token."""
    assert standin.api.requests, "the stand-in saw no request"
    expected = f"Bearer {WORKSPACE_KEY}"
    for record in standin.api.requests:
        authorized = record.headers.get("Authorization") == expected
        assert authorized, f"{record.path}: the stand-in did not get the workspace key as a Bearer token"
        token_leaked = daemon.token in repr(sorted(record.headers.items())) or daemon.token.encode() in record.body
        assert not token_leaked, f"{record.path}: the local token reached the hosted API"
        key_in_body = WORKSPACE_KEY.encode() in record.body
        assert not key_in_body, f"{record.path}: the key was put in the body"


def assert_our_error(payload: Any, code: str, type_: str) -> None:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "code", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code, error
    assert error["type"] == type_, error
    assert isinstance(error["details"], dict)


async def post_raw(
    http: aiohttp.ClientSession,
    daemon: Daemon,
    path: str,
    data: bytes | AsyncIterator[bytes],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    sent = {"Content-Type": "application/json", **daemon.auth(), **(headers or {})}
    async with http.post(daemon.url + path, data=data, headers=sent) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def _collect(stream: openai.AsyncStream[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


# -- listing models -----------------------------------------------------------------------------


async def test_models_list_merges_hosted_local_and_echo(both: Daemon, llama_server: LlamaServerProcess) -> None:
    async with both.openai() as client:
        listed = {m.id: m async for m in client.models.list()}
        assert {HOSTED, OTHER_HOSTED, "workspace/model-v1"} <= set(listed)
        assert INACTIVE_HOSTED not in listed  # the Agent list's default hides inactive models
        assert f"local/{llama_server.alias}" in listed
        assert llama_server.alias not in listed  # local models are only listed under their prefix
        assert "echo" in listed
        assert all(m.object == "model" for m in listed.values())
        assert listed[HOSTED].owned_by == "Meta"
        assert listed[f"local/{llama_server.alias}"].owned_by
        one = await client.models.retrieve(f"local/{llama_server.alias}")
        assert one.id == f"local/{llama_server.alias}"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("local/no-such-model")


async def test_agent_models_keeps_the_agent_shape(both: Daemon, http: aiohttp.ClientSession) -> None:
    async with http.get(both.url + "/api/agent/models", headers=both.auth()) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        payload = await resp.json()
    assert set(payload) == {"success", "data", "count"}
    assert payload["success"] is True
    assert payload["count"] == len(payload["data"]) > 0
    ids = [m["id"] for m in payload["data"]]
    assert HOSTED in ids and "echo" in ids and any(i.startswith("local/") for i in ids)
    for model in payload["data"]:
        assert set(model) == {"id", "name", "owned_by"}
        assert isinstance(model["name"], str) and model["name"]
    hosted_entry = next(m for m in payload["data"] if m["id"] == HOSTED)
    assert hosted_entry == {"id": HOSTED, "name": "Llama 3.3 70B", "owned_by": "Meta"}


# -- chat, completions, embeddings with the SDK ---------------------------------------------------


async def test_hosted_chat_non_stream(hosted: Daemon, standin: StandIn) -> None:
    async with hosted.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model=HOSTED, messages=HELLO)
        assert raw.headers["X-Companion-Backend"] == "llmtune"
        reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == HOSTED
    assert reply.choices[0].message.content == "Echo: hello there companion"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == reply.usage.prompt_tokens + 4
    assert len(chats(standin)) == 1
    assert_key_only_upstream(standin, hosted)


async def test_hosted_chat_stream(hosted: Daemon, standin: StandIn) -> None:
    async with hosted.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=HOSTED, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        assert raw.headers["X-Companion-Backend"] == "llmtune"
        assert raw.headers["Content-Type"].startswith("text/event-stream")
        stream = raw.parse()
        chunks = await asyncio.wait_for(_collect(stream), WAIT)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there companion"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert_key_only_upstream(standin, hosted)


async def test_local_chat_non_stream(both: Daemon, standin: StandIn, llama_server: LlamaServerProcess) -> None:
    async with both.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"local/{llama_server.alias}", messages=HELLO, max_tokens=LOCAL_MAX_TOKENS, seed=1
        )
        assert raw.headers["X-Companion-Backend"] == "local"
        reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == llama_server.alias  # llama was sent the bare id
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= LOCAL_MAX_TOKENS
    assert not chats(standin), "a local model must not reach the hosted API"


async def test_local_chat_stream(both: Daemon, standin: StandIn, llama_server: LlamaServerProcess) -> None:
    async with both.openai() as client:
        stream = await client.chat.completions.create(
            model=f"local/{llama_server.alias}",
            messages=HELLO,
            max_tokens=LOCAL_MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = await asyncio.wait_for(_collect(stream), WAIT)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= LOCAL_MAX_TOKENS
    assert not chats(standin)


async def test_local_completions_non_stream_and_stream(both: Daemon, llama_server: LlamaServerProcess) -> None:
    model = f"local/{llama_server.alias}"
    async with both.openai() as client:
        raw = await client.completions.with_raw_response.create(model=model, prompt="Once upon a time", max_tokens=6)
        assert raw.headers["X-Companion-Backend"] == "local"
        reply = raw.parse()
        assert reply.object == "text_completion"
        assert len(reply.choices) == 1 and isinstance(reply.choices[0].text, str)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
        stream = await client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, stream=True)
        chunks = await asyncio.wait_for(_collect(stream), WAIT)
    assert chunks and all(c.object == "text_completion" for c in chunks)
    assert any(c.choices and c.choices[0].text for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")


async def test_echo_chat_and_completions(hosted: Daemon, standin: StandIn) -> None:
    async with hosted.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model="echo", messages=HELLO, max_tokens=2)
        assert raw.headers["X-Companion-Backend"] == "echo"
        reply = raw.parse()
        assert reply.choices[0].message.content == "hello there"
        assert reply.choices[0].finish_reason == "length"
        stream = await client.chat.completions.create(model="echo", messages=HELLO, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in await _collect(stream) if c.choices)
        assert text == "hello there companion"
        completion = await client.completions.create(model="echo", prompt="one two three")
        assert completion.choices[0].text == "one two three"
    assert not standin.api.requests


async def test_embeddings_via_hosted_and_echo(hosted: Daemon, standin: StandIn) -> None:
    async with hosted.openai() as client:
        raw = await client.embeddings.with_raw_response.create(model=HOSTED, input=["alpha", "beta"])
        assert raw.headers["X-Companion-Backend"] == "llmtune"
        upstream = raw.parse()
        assert [d.index for d in upstream.data] == [0, 1]
        assert all(len(d.embedding) == 64 for d in upstream.data)
        assert upstream.usage.prompt_tokens == 2
        echo = await client.embeddings.create(model="echo", input="alpha")
        assert echo.model == "echo" and len(echo.data) == 1 and len(echo.data[0].embedding) == 64
        norm = sum(v * v for v in echo.data[0].embedding) ** 0.5
        assert abs(norm - 1.0) < 1e-6
    assert [r.path for r in standin.api.requests] == ["/v1/embeddings"]
    assert_key_only_upstream(standin, hosted)


# -- tool calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AGENT_TOOLS)
async def test_tool_call_returned_intact(hosted: Daemon, standin: StandIn, name: str) -> None:
    standin.api.script_tool_call(name, TOOL_ARGUMENTS[name], call_id=f"call_{name}")
    async with hosted.openai() as client:
        reply = await client.chat.completions.create(
            model=HOSTED, messages=HELLO, tools=ALL_TOOLS, tool_choice="auto"
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.id == f"call_{name}"
    assert call.function.name == name
    assert call.function.arguments == json.dumps(TOOL_ARGUMENTS[name], ensure_ascii=False, separators=(",", ":"))
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS[name]
    # The tools went upstream as the client sent them.
    sent = chats(standin)[0].json
    assert isinstance(sent, dict) and sent["tools"] == ALL_TOOLS


@pytest.mark.parametrize("name", AGENT_TOOLS)
async def test_tool_call_streamed_intact(hosted: Daemon, standin: StandIn, name: str) -> None:
    standin.api.script_tool_call(name, TOOL_ARGUMENTS[name], call_id=f"call_{name}")
    async with hosted.openai() as client:
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, tools=ALL_TOOLS, stream=True)
        chunks = await asyncio.wait_for(_collect(stream), WAIT)
    ids, names, arguments = [], [], ""
    for chunk in chunks:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert delta_call.index == 0
            if delta_call.id:
                ids.append(delta_call.id)
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
            if delta_call.function and delta_call.function.arguments:
                arguments += delta_call.function.arguments
    assert ids == [f"call_{name}"] and names == [name]
    assert json.loads(arguments) == TOOL_ARGUMENTS[name]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


async def test_parallel_tool_calls_returned_intact(hosted: Daemon, standin: StandIn) -> None:
    standin.api.script_tool_calls((name, TOOL_ARGUMENTS[name]) for name in AGENT_TOOLS)
    async with hosted.openai() as client:
        reply = await client.chat.completions.create(model=HOSTED, messages=HELLO, tools=ALL_TOOLS)
    returned = reply.choices[0].message.tool_calls or []
    calls = [c for c in returned if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert len(calls) == len(returned)
    assert [c.function.name for c in calls] == list(AGENT_TOOLS)
    assert [json.loads(c.function.arguments) for c in calls] == [TOOL_ARGUMENTS[n] for n in AGENT_TOOLS]


async def test_agent_chat_goes_to_the_agent_path(hosted: Daemon, standin: StandIn) -> None:
    standin.api.script_tool_call("read_file", TOOL_ARGUMENTS["read_file"])
    async with openai.AsyncOpenAI(
        base_url=hosted.url + "/api/agent/v1", api_key=hosted.token, max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=HOSTED, messages=HELLO, tools=ALL_TOOLS, tool_choice="auto", temperature=0.7, max_tokens=1000
        )
        assert raw.headers["X-Companion-Backend"] == "llmtune"
        reply = raw.parse()
        listed = [m.id async for m in client.models.list()]
    calls = reply.choices[0].message.tool_calls or []
    assert calls and isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
    assert calls[0].function.name == "read_file"
    assert HOSTED in listed and "echo" in listed
    assert [r.path for r in standin.api.requests if r.method == "POST"] == ["/api/agent/v1/chat/completions"]
    assert_key_only_upstream(standin, hosted)


# -- the body goes upstream untouched -------------------------------------------------------------


async def test_unknown_fields_pass_through_untouched(hosted: Daemon, standin: StandIn) -> None:
    extra: dict[str, Any] = {
        "stream_options": {"include_usage": True},
        "parallel_tool_calls": False,
        "max_completion_tokens": 64,
        "metadata": {"ticket": "T-1", "nested": {"a": [1, 2.5, None, True]}},
        "prediction": {"type": "content", "content": "export const x = 1;"},
    }
    vendor = {"x_vendor_field": {"keep": ["me", 1, 1.25e-7, {"deep": None}]}, "user": "ünïcödé"}
    async with hosted.openai() as client:
        stream = await client.chat.completions.create(
            model=HOSTED, messages=HELLO, stream=True, tools=ALL_TOOLS, extra_body=vendor, **extra
        )
        await asyncio.wait_for(_collect(stream), WAIT)
    sent = chats(standin)[0].json
    assert isinstance(sent, dict)
    for field, value in {**extra, **vendor}.items():
        assert orjson.dumps(sent[field]) == orjson.dumps(value), field
    assert sent["model"] == HOSTED and sent["messages"] == HELLO and sent["tools"] == ALL_TOOLS


async def test_body_bytes_are_relayed_byte_for_byte(
    hosted: Daemon, standin: StandIn, http: aiohttp.ClientSession
) -> None:
    # Odd spacing, key order, escapes and a float the JSON parser would reformat: all kept as sent.
    body = (
        b'{ "messages" : [ {"role":"user", "content":"caf\\u00e9  \\"x\\""} ],\n'
        b'  "model":"' + HOSTED.encode() + b'", "temperature": 0.70, "metadata": {"b":1,"a":2} }'
    )
    sent_headers = {"Idempotency-Key": "idem-42", "X-Client-Secret": "not for upstream", "Cookie": "a=b"}
    status, headers, answer = await post_raw(http, hosted, "/v1/chat/completions", body, sent_headers)
    assert status == 200, answer
    assert headers["X-Companion-Backend"] == "llmtune"
    record = chats(standin)[0]
    assert record.body == body
    assert record.headers["Idempotency-Key"] == "idem-42"  # worth forwarding
    assert "X-Client-Secret" not in record.headers and "Cookie" not in record.headers  # the rest stays here
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == 'Echo: café  "x"'


async def test_route_rewrites_only_the_model(standin: StandIn, start_daemon: StartDaemon) -> None:
    # A second openai-type backend in front of the stand-in, so the rewritten body can be read there.
    config = f"""
[backends.mirror]
type = "openai"
url = "{standin.url}/v1"
api_key_env = "MIRROR_KEY"

[[routes]]
match = "alias-*"
backend = "mirror"
model = "{OTHER_HOSTED}"

[[routes]]
match = "hosted-alias"
backend = "llmtune"
model = "{HOSTED}"
"""
    daemon = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url, "MIRROR_KEY": WORKSPACE_KEY})
    extra: dict[str, Any] = {"metadata": {"k": "v"}, "parallel_tool_calls": True, "max_completion_tokens": 32}
    async with daemon.openai() as client:
        for model, backend in (("alias-fast", "mirror"), ("hosted-alias", "llmtune"), (f"mirror/{HOSTED}", "mirror")):
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=HELLO, tools=ALL_TOOLS, metadata={"k": "v"}, parallel_tool_calls=True,
                max_completion_tokens=32,
            )
            assert raw.headers["X-Companion-Backend"] == backend
    sent: list[dict[str, Any]] = [r.json for r in chats(standin) if isinstance(r.json, dict)]
    assert len(sent) == 3
    assert [s["model"] for s in sent] == [OTHER_HOSTED, HOSTED, HOSTED]
    for body in sent:
        rest = {k: v for k, v in body.items() if k != "model"}
        assert rest == {"messages": HELLO, "tools": ALL_TOOLS, **extra}


async def test_route_to_local_model(
    standin: StandIn, start_daemon: StartDaemon, llama_server: LlamaServerProcess
) -> None:
    config = f'[[routes]]\nmatch = "alias-*"\nbackend = "local"\nmodel = "{llama_server.alias}"\n'
    daemon = await start_daemon(
        config=config, env={"LLMTUNE_BASE_URL": standin.url, "LLMTUNE_LOCAL_URL": llama_server.base_url}
    )
    async with daemon.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="alias-small", messages=HELLO, max_tokens=4
        )
        assert raw.headers["X-Companion-Backend"] == "local"
        reply = raw.parse()
    assert reply.model == llama_server.alias
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4
    assert not standin.api.requests


# -- our own errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "echo", "messages": [', "invalid_json"),
        (b"", "invalid_json"),
        (b'[{"model": "echo"}]', "invalid_json"),
        (b'"just a string"', "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model_required"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "model_required"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model_required"),
        (b'{"model": "echo", "messages": []}', "invalid_messages"),
        (b'{"model": "echo"}', "invalid_messages"),
        (b'{"model": "echo", "messages": {"role": "user"}}', "invalid_messages"),
    ],
)
async def test_bad_requests_are_400_in_our_shape(
    hosted: Daemon, standin: StandIn, http: aiohttp.ClientSession, body: bytes, code: str
) -> None:
    status, headers, answer = await post_raw(http, hosted, "/v1/chat/completions", body)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert_our_error(orjson.loads(answer), code, "invalid_request_error")
    assert not standin.api.requests


async def test_bad_requests_raise_sdk_exceptions(both: Daemon, standin: StandIn) -> None:
    async with both.openai() as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="echo", messages=[])
        assert bad.value.status_code == 400 and bad.value.code == "invalid_messages"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="local/no-such-model", messages=HELLO)
        assert missing.value.code == "model_not_found"
        assert_our_error(missing.value.response.json(), "model_not_found", "not_found_error")
        assert missing.value.response.json()["error"]["details"] == {"model": "local/no-such-model"}
    async with openai.AsyncOpenAI(base_url=both.base_url, api_key="lct_wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as auth:
            await client.chat.completions.create(model="echo", messages=HELLO)
        assert auth.value.code == "invalid_token"
    assert not chats(standin)


async def test_unknown_local_model_is_404_for_every_endpoint(
    both: Daemon, http: aiohttp.ClientSession
) -> None:
    for path, body in (
        ("/v1/chat/completions", {"model": "local/nope", "messages": HELLO}),
        ("/v1/completions", {"model": "local/nope", "prompt": "x"}),
        ("/v1/embeddings", {"model": "local/nope", "input": "x"}),
    ):
        status, _, answer = await post_raw(http, both, path, orjson.dumps(body))
        assert status == 404, path
        assert_our_error(orjson.loads(answer), "model_not_found", "not_found_error")


async def test_missing_and_bad_token_are_401(hosted: Daemon, standin: StandIn, http: aiohttp.ClientSession) -> None:
    body = orjson.dumps({"model": HOSTED, "messages": HELLO})
    async with http.post(hosted.base_url + "/chat/completions", data=body) as resp:
        assert resp.status == 401
        assert_our_error(await resp.json(), "missing_token", "authentication_error")
    for headers in ({"Authorization": "Bearer lct_not_a_token"}, {"Authorization": "Basic abc"}, {"x-api-key": "x"}):
        async with http.post(hosted.base_url + "/chat/completions", data=body, headers=headers) as resp:
            assert resp.status == 401
            payload = await resp.json()
            assert payload["error"]["code"] in ("invalid_token", "missing_token")
            assert_our_error(payload, payload["error"]["code"], "authentication_error")
    async with http.get(hosted.base_url + "/models", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401
    # The workspace key is not a local token either.
    async with http.post(
        hosted.base_url + "/chat/completions", data=body, headers={"Authorization": f"Bearer {WORKSPACE_KEY}"}
    ) as resp:
        assert resp.status == 401
    assert not standin.api.requests


async def test_workspace_without_key_asking_hosted_is_401(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url}, key=None)
    status, _, answer = await post_raw(
        http, daemon, "/v1/chat/completions", orjson.dumps({"model": HOSTED, "messages": HELLO})
    )
    assert status == 401
    assert_our_error(orjson.loads(answer), "missing_api_key", "authentication_error")
    async with daemon.openai() as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
        # echo still works, and the model list simply has no hosted models
        reply = await client.chat.completions.create(model="echo", messages=HELLO)
        assert reply.choices[0].message.content == "hello there companion"
        assert [m.id async for m in client.models.list()] == ["echo"]
    assert not standin.api.requests


async def test_body_over_the_limit_is_413(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config="[server]\nmax_body_bytes = 2048\n", env={"LLMTUNE_BASE_URL": standin.url})
    big = orjson.dumps({"model": HOSTED, "messages": [{"role": "user", "content": "x" * 3000}]})
    status, _, answer = await post_raw(http, daemon, "/v1/chat/completions", big)
    assert status == 413
    assert_our_error(orjson.loads(answer), "body_too_large", "invalid_request_error")
    assert orjson.loads(answer)["error"]["details"] == {"limit": 2048}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    status, _, answer = await post_raw(http, daemon, "/v1/chat/completions", chunked())
    assert status == 413
    assert_our_error(orjson.loads(answer), "body_too_large", "invalid_request_error")
    async with daemon.openai() as client:
        with pytest.raises(openai.APIStatusError) as too_big:
            await client.chat.completions.create(model=HOSTED, messages=[{"role": "user", "content": "x" * 3000}])
        assert too_big.value.status_code == 413
        small = await client.chat.completions.create(model=HOSTED, messages=[{"role": "user", "content": "x" * 1500}])
        assert small.choices[0].message.content
    assert len(standin.api.requests) == 1  # only the small one went upstream


async def test_unknown_paths_and_methods_answer_in_our_shape(hosted: Daemon, http: aiohttp.ClientSession) -> None:
    async with http.get(hosted.base_url + "/chat/completions", headers=hosted.auth()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert_our_error(await resp.json(), "method_not_allowed", "invalid_request_error")
    async with http.post(hosted.base_url + "/no/such/endpoint", headers=hosted.auth(), data=b"{}") as resp:
        assert resp.status == 404
        assert_our_error(await resp.json(), "not_found", "not_found_error")


async def test_x_api_key_header_is_accepted(hosted: Daemon, http: aiohttp.ClientSession) -> None:
    body = orjson.dumps({"model": "echo", "messages": HELLO})
    async with http.post(hosted.base_url + "/chat/completions", data=body, headers={"x-api-key": hosted.token}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Companion-Backend"] == "echo"


# -- upstream errors pass through -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "sdk_error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (402, openai.APIStatusError),
        (404, openai.NotFoundError),
        (503, openai.InternalServerError),
    ],
)
async def test_upstream_error_passes_through(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession, status: int, sdk_error: type[Exception]
) -> None:
    daemon = await start_daemon(config="[upstream]\nmax_retries = 0\n", env={"LLMTUNE_BASE_URL": standin.url})
    body = {"error": {"message": f"upstream says {status}", "code": f"UP_{status}", "details": {"n": status}}}
    standin.api.fail_next(status, body=body)
    got, headers, answer = await post_raw(
        http, daemon, "/v1/chat/completions", orjson.dumps({"model": HOSTED, "messages": HELLO})
    )
    assert got == status
    assert answer == orjson.dumps(body)
    assert headers["X-Companion-Backend"] == "llmtune"
    assert headers["Content-Type"].startswith("application/json")
    standin.api.fail_next(status, body=body)
    async with daemon.openai() as client:
        with pytest.raises(sdk_error) as raised:
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
    assert isinstance(raised.value, openai.APIStatusError) and raised.value.status_code == status
    assert raised.value.body == body["error"]


async def test_real_upstream_errors_pass_through(hosted: Daemon, standin: StandIn) -> None:
    async with hosted.openai() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no/such-model", messages=HELLO)
        # An id nothing local claims and the hosted list lacks: the answer says where it went and why.
        error = missing.value.response.json()["error"]
        assert error["code"] == "model_not_found" and error["details"]["model"] == "no/such-model"
        assert "hosted LLMTune API answered 404 (Model 'no/such-model' not found)" in error["message"]
        assert error["details"]["upstream"]["details"] == {"model": "no/such-model"}
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=HOSTED, messages=HELLO, temperature=5)
        assert bad.value.response.json()["error"]["code"] == "INVALID_REQUEST"
        standin.api.api_key = "sk_rotated_elsewhere"  # the workspace key no longer works upstream
        with pytest.raises(openai.AuthenticationError) as auth:
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
        assert auth.value.response.json()["error"]["details"] == {"reason": "invalid_api_key"}


async def test_upstream_error_quoting_the_key_is_scrubbed(
    hosted: Daemon, standin: StandIn, http: aiohttp.ClientSession
) -> None:
    quoted = {"error": {"message": f"key {WORKSPACE_KEY} is over quota", "code": "QUOTA",
                        "details": {"api_key": WORKSPACE_KEY}}}
    standin.api.fail_next(402, body=quoted)
    status, headers, answer = await post_raw(
        http, hosted, "/v1/chat/completions", orjson.dumps({"model": HOSTED, "messages": HELLO})
    )
    assert status == 402
    leaked = WORKSPACE_KEY.encode() in answer or WORKSPACE_KEY in repr(headers)
    assert not leaked, "the workspace key reached the client"
    payload = orjson.loads(answer)
    assert payload["error"]["message"] == "key [redacted] is over quota"
    assert payload["error"]["details"] == {"api_key": "[redacted]"}


# -- streams --------------------------------------------------------------------------------------


async def test_stream_cut_midway_ends_with_an_sse_error(
    hosted: Daemon, standin: StandIn, http: aiohttp.ClientSession
) -> None:
    standin.api.script_reply("one two three four five six")
    standin.api.cut_stream_after(3)
    async with hosted.openai() as client:
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, stream=True)
        received: list[str] = []

        async def consume() -> None:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError) as broken:
            await asyncio.wait_for(consume(), WAIT)
    assert not isinstance(broken.value, openai.APIConnectionError)
    assert "".join(received) == "one two"  # the 3 events before the cut arrived
    assert isinstance(broken.value.body, dict) and broken.value.body["code"] == "upstream_broken"

    standin.api.cut_stream_after(2)
    body = orjson.dumps({"model": HOSTED, "messages": HELLO, "stream": True})
    status, _, raw = await asyncio.wait_for(post_raw(http, hosted, "/v1/chat/completions", body), WAIT)
    assert status == 200
    events = [line for line in raw.split(b"\n\n") if line]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))
    assert_our_error(error, "upstream_broken", "upstream_error")
    assert len(events) == 2 + 2


async def test_chunks_are_relayed_as_they_arrive(hosted: Daemon, standin: StandIn) -> None:
    standin.api.script_reply("a b c d")
    standin.api.stream_delay = 0.2  # 6 events: role, 4 words, finish -> ~1 s from first to last
    arrivals: list[float] = []
    async with hosted.openai() as client:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, stream=True)

        async def consume() -> None:
            async for _ in stream:
                arrivals.append(time.perf_counter() - started)

        await asyncio.wait_for(consume(), WAIT)
    assert len(arrivals) == 6
    assert arrivals[0] < 0.5, arrivals
    assert arrivals[-1] - arrivals[0] > 0.8, arrivals  # not buffered until the end
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > 0.1 for gap in gaps), gaps


async def test_upstream_silent_mid_stream_ends_with_sse_error(
    standin: StandIn, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon(config="[upstream]\nread_timeout = 0.5\n", env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.script_reply("slow words here")
    standin.api.stream_delay = 3.0
    async with daemon.openai() as client:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, stream=True)
        received: list[Any] = []

        async def consume() -> None:
            async for chunk in stream:
                received.append(chunk)

        with pytest.raises(openai.APIError) as silent:
            await asyncio.wait_for(consume(), WAIT)
        elapsed = time.perf_counter() - started
    assert len(received) == 1  # the role chunk, then silence
    assert isinstance(silent.value.body, dict) and silent.value.body["code"] == "upstream_broken"
    assert "silent" in silent.value.message
    assert 0.4 < elapsed < 2.0, elapsed


async def test_client_disconnect_cancels_the_upstream_stream(hosted: Daemon, standin: StandIn) -> None:
    standin.api.script_reply(" ".join(["word"] * 20))
    # Long gaps: only a cancelled relay (not one that notices at its next write) closes upstream in time.
    standin.api.stream_delay = 2.0
    assert standin.server.runner is not None and standin.server.runner.server is not None
    server = standin.server.runner.server
    async with hosted.openai() as client:
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, stream=True)
        first = await asyncio.wait_for(stream.__anext__(), WAIT)
        assert first.choices[0].delta.role == "assistant"
        assert len(server.connections) == 1  # the one upstream stream
        await stream.close()  # the client goes away mid-stream
        closed_at = time.perf_counter()
        # The stand-in's connection closes and its handler ends (aiohttp drops it from `connections`
        # only when the handler task is done).
        while server.connections:
            assert time.perf_counter() - closed_at < 0.5, "the upstream stream kept running"
            await asyncio.sleep(0.01)
    # The daemon is fine afterwards.
    async with hosted.openai() as client:
        reply = await client.chat.completions.create(model=HOSTED, messages=HELLO)
        assert reply.choices[0].message.content
