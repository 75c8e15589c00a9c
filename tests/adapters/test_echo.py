"""The built-in echo backend (adapters/echo.py): OpenAI shapes, with no network and no key."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from llmtune_companion.adapters import AdapterContext, BackendRequest, BackendResponse, EchoBackend, Endpoint
from llmtune_companion.app import make_pool
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk


@pytest.fixture
async def echo(home: Paths) -> AsyncIterator[EchoBackend]:
    pool = make_pool(load_config(home))  # the pool the daemon uses; echo never touches it
    try:
        yield EchoBackend("echo", AdapterContext(pool))
    finally:
        await pool.aclose()


async def ask(backend: EchoBackend, endpoint: Endpoint, payload: dict[str, Any]) -> BackendResponse:
    body = orjson.dumps(payload)
    return await backend.handle(BackendRequest(endpoint, body, payload.get("stream") is True, None, {}, payload))


async def read_json(response: BackendResponse) -> Any:
    try:
        body = await response.read()
    finally:
        await response.aclose()
    assert response.headers["Content-Length"] == str(len(body))
    assert response.content_type == "application/json"
    return orjson.loads(body)


async def read_events(response: BackendResponse) -> list[Any]:
    """The SSE body as parsed events ("[DONE]" kept as a string); every event is one `data:` line."""
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert "Content-Length" not in response.headers
    raw = b"".join([chunk async for chunk in response.chunks()])
    await response.aclose()
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), raw
    return [e[6:].decode() if e == b"data: [DONE]" else orjson.loads(e[6:]) for e in events]


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def test_chat_echoes_the_last_user_message(echo: EchoBackend) -> None:
    messages = [{"role": "system", "content": "be brief"}, user("first"), {"role": "assistant", "content": "ok"},
                user("the second message")]
    response = await ask(echo, "chat", {"model": "echo", "messages": messages})
    assert response.status == 200
    body = await read_json(response)
    reply = ChatCompletion.model_validate(body)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "echo"
    assert len(reply.choices) == 1
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "the second message"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 3, 6)


async def test_chat_reads_content_parts_and_keeps_the_model_name(echo: EchoBackend) -> None:
    parts = [{"type": "text", "text": "look at"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "this"}]
    body = await read_json(await ask(echo, "chat", {"model": "echo/anything", "messages": [user(parts)]}))
    assert body["model"] == "echo/anything"
    assert body["choices"][0]["message"]["content"].split() == ["look", "at", "this"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(echo: EchoBackend, field: str) -> None:
    payload = {"model": "echo", "messages": [user("one two three four five")], field: 2}
    body = await read_json(await ask(echo, "chat", payload))
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    payload[field] = 5  # exactly enough: a normal stop
    body = await read_json(await ask(echo, "chat", payload))
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "one two three four five"


async def test_stream_chunks_join_to_the_text(echo: EchoBackend) -> None:
    text = "spaces  kept,\tand ünïcödé  "
    events = await read_events(await ask(echo, "chat", {"model": "echo", "messages": [user(text)], "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert len(chunks) > 3  # one chunk per word, not one blob
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"] and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_stream_with_usage_and_max_tokens(echo: EchoBackend) -> None:
    payload = {"model": "echo", "messages": [user("a b c d")], "stream": True, "max_tokens": 3,
               "stream_options": {"include_usage": True}}
    events = await read_events(await ask(echo, "chat", payload))
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 3)


async def test_completions_shapes(echo: EchoBackend) -> None:
    body = await read_json(await ask(echo, "completions", {"model": "echo", "prompt": "once upon a time"}))
    completion = Completion.model_validate(body)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text == "once upon a time"
    assert completion.choices[0].finish_reason == "stop"
    body = await read_json(await ask(echo, "completions", {"model": "echo", "prompt": ["a", "b c"], "max_tokens": 2}))
    assert body["choices"][0]["text"] == "a b" and body["choices"][0]["finish_reason"] == "length"
    events = await read_events(await ask(echo, "completions", {"model": "echo", "prompt": "x y z", "stream": True}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]  # (the SDK's Completion type has no None finish_reason, as streamed chunks do)
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "x y z"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]


async def test_embeddings_shape(echo: EchoBackend) -> None:
    body = await read_json(await ask(echo, "embeddings", {"model": "echo", "input": ["alpha", "beta gamma"]}))
    result = CreateEmbeddingResponse.model_validate(body)
    assert result.object == "list" and result.model == "echo"
    assert [d.index for d in result.data] == [0, 1]
    for item in result.data:
        assert item.object == "embedding" and len(item.embedding) == 64
        assert math.isclose(math.sqrt(sum(v * v for v in item.embedding)), 1.0, rel_tol=1e-9)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3
    again = await read_json(await ask(echo, "embeddings", {"model": "echo", "input": "alpha"}))
    assert again["data"][0]["embedding"] == body["data"][0]["embedding"]  # deterministic


@pytest.mark.parametrize("value", [None, 42, [], [1, 2], ["ok", 3]])
async def test_embeddings_bad_input_is_400(echo: EchoBackend, value: Any) -> None:
    response = await ask(echo, "embeddings", {"model": "echo", "input": value})
    assert response.status == 400
    body = await read_json(response)
    assert set(body["error"]) == {"message", "type", "code", "details"}
    assert body["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("messages", [None, [], "hi"])
async def test_chat_without_messages_is_400(echo: EchoBackend, messages: Any) -> None:
    response = await ask(echo, "chat", {"model": "echo", "messages": messages})
    assert response.status == 400
    assert (await read_json(response))["error"]["code"] == "invalid_messages"


async def test_models_and_describe(echo: EchoBackend) -> None:
    body = await read_json(await echo.handle(BackendRequest("models")))
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["echo"]
    assert echo.describe() == {"name": "echo", "type": "echo", "url": None}


async def test_an_abandoned_stream_can_be_closed(echo: EchoBackend) -> None:
    response = await ask(echo, "chat", {"model": "echo", "messages": [user("a b c d e")], "stream": True})
    chunks = response.chunks()
    first = await chunks.__anext__()
    assert first.startswith(b"data: ")
    await chunks.aclose()
    await response.aclose()  # releases the generator without reading the rest


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"]}}}
OTHER = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(("choice", "name"), [
    ({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
    ("required", "other"),
])
async def test_forced_tool_choice_gets_a_tool_call(echo: EchoBackend, choice: Any, name: str) -> None:
    payload = {"model": "echo", "messages": [user("Oslo")], "tools": [OTHER, WEATHER], "tool_choice": choice}
    parsed = ChatCompletion.model_validate(await read_json(await ask(echo, "chat", payload)))
    calls = parsed.choices[0].message.tool_calls or []
    assert parsed.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == [name]
    expected = {"city": "Oslo", "days": 0} if name == "get_weather" else {}
    assert orjson.loads(calls[0].function.arguments) == expected
    events = await read_events(await ask(echo, "chat", {**payload, "stream": True}))
    chunks = [ChatCompletionChunk.model_validate(e) for e in events if e != "[DONE]"]
    arguments = "".join(tc.function.arguments or "" for c in chunks for ch in c.choices
                        for tc in ch.delta.tool_calls or [] if tc.function)
    assert orjson.loads(arguments) == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and events[-1] == "[DONE]"


async def test_auto_tool_choice_still_echoes(echo: EchoBackend) -> None:
    payload = {"model": "echo", "messages": [user("Oslo")], "tools": [WEATHER], "tool_choice": "auto"}
    body = await read_json(await ask(echo, "chat", payload))
    assert body["choices"][0]["message"]["content"] == "Oslo" and "tool_calls" not in body["choices"][0]["message"]
