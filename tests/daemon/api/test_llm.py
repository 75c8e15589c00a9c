"""The LLM routing API (/api/v1/llm): the pure translation, then end to end against the echo backend,
the hosted stand-in and a real llama.cpp server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.api.llm_translate import (
    RoutingStreamTranslator,
    from_openai_response,
    parse_arguments,
    stop_reason,
    to_openai_request,
    tool_choice_to_openai,
    tool_to_openai,
)
from llmtune_companion.errors import CompanionError

from tests.conftest import Daemon, StandIn, StartDaemon
from tests.support.llama_server import LlamaServerProcess

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                "parameters": WEATHER_SCHEMA}}


# -- pure translation ---------------------------------------------------------------------------


def test_request_system_tools_choice_and_options() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "system": "be brief", "tools": [ANTHROPIC_TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather"}, "max_tokens": 5, "temperature": 0.2}
    payload = to_openai_request(body, "m", stream=False)
    assert payload == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "tools": [OPENAI_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 5,
        "temperature": 0.2,
    }
    streamed = to_openai_request({"messages": [{"role": "user", "content": "x"}]}, "m", stream=True)
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    assert "tools" not in streamed and "tool_choice" not in streamed


def test_tools_in_every_style_become_openai_function_tools() -> None:
    assert tool_to_openai(OPENAI_TOOL) == OPENAI_TOOL
    assert tool_to_openai(ANTHROPIC_TOOL) == OPENAI_TOOL
    bedrock = {"toolSpec": {"name": "get_weather", "description": "Weather for a city",
                            "inputSchema": {"json": WEATHER_SCHEMA}}}
    assert tool_to_openai(bedrock) == OPENAI_TOOL
    bare = tool_to_openai({"name": "ping"})
    assert bare == {"type": "function", "function": {"name": "ping", "parameters": {"type": "object",
                                                                                    "properties": {}}}}
    with pytest.raises(CompanionError) as caught:
        tool_to_openai({"description": "no name"})
    assert caught.value.status == 400 and caught.value.code == "invalid_tools"


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ({"auto": {}}, "auto"),
    ({"any": {}}, "required"),
    ({"tool": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}),
    ("auto", "auto"),
    ("required", "required"),
    ({"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}),
])
def test_tool_choice(choice: Any, expected: Any) -> None:
    assert tool_choice_to_openai(choice) == expected


@pytest.mark.parametrize("choice", ["sometimes", {"type": "tool"}, {"type": "weird"}, 3])
def test_bad_tool_choice_is_400(choice: Any) -> None:
    with pytest.raises(CompanionError) as caught:
        tool_choice_to_openai(choice)
    assert caught.value.status == 400 and caught.value.code == "invalid_tool_choice"


def test_content_blocks_tool_use_and_tool_result_become_openai_messages() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3C"}]},
            {"type": "text", "text": "And tomorrow?"},
        ]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t2", "name": "get_weather",
                                                       "input": {"city": "Bergen"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t2", "content": [{"json": {"c": 5}}],
                                                     "status": "error"}}]},
    ]
    out = to_openai_request({"messages": messages}, "m", stream=False)["messages"]
    assert out == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}},
        ]},
        {"role": "tool", "tool_call_id": "t2", "content": '[error] {"c":5}'},
    ]


def test_openai_shaped_messages_pass_through() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "AAAA"}}]},
    ]
    out = to_openai_request({"messages": messages}, "m", stream=False)["messages"]
    assert out[:2] == messages[:2]
    assert out[2] == {"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}


@pytest.mark.parametrize(("body", "code"), [
    ({}, "invalid_messages"),
    ({"messages": []}, "invalid_messages"),
    ({"messages": "hi"}, "invalid_messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_messages"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "invalid_messages"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f"}]}]},
     "invalid_messages"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": {"name": "f"}}, "invalid_tools"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "invalid_request"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "invalid_request"),
])
def test_bad_requests_are_400(body: dict[str, Any], code: str) -> None:
    with pytest.raises(CompanionError) as caught:
        to_openai_request(body, "m", stream=False)
    assert caught.value.status == 400 and caught.value.code == code


def test_stop_reasons_and_arguments() -> None:
    assert [stop_reason(r) for r in ("stop", "length", "tool_calls", None, "content_filter", "odd")] == [
        "end_turn", "max_tokens", "tool_use", "end_turn", "content_filtered", "odd"]
    assert stop_reason("stop", has_tool_calls=True) == "tool_use"
    assert stop_reason("length", has_tool_calls=True) == "max_tokens"
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {}
    assert parse_arguments('{"a": ') == {"_raw": '{"a": '}


def test_response_translation() -> None:
    text = {"model": "up", "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                                        "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 15, "completion_tokens": 8, "total_tokens": 23}}
    assert from_openai_response(text, "mine") == {
        "content": "4", "model": "mine", "stop_reason": "end_turn", "tool_calls": [],
        "usage": {"prompt_tokens": 15, "completion_tokens": 8}}
    call = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}]}}]}
    assert from_openai_response(call, "mine") == {
        "content": "", "model": "mine", "stop_reason": "tool_use",
        "tool_calls": [{"id": "c1", "name": "f", "input": {"x": 2}}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c", "model": "up", "choices": [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


def test_stream_translation_text() -> None:
    t = RoutingStreamTranslator("mine")
    events = [e for c in [chunk({"role": "assistant", "content": ""}), chunk({"content": "2 + 2"}),
                          chunk({"content": " = 4"}), chunk({}, "stop"),
                          chunk(None, usage={"prompt_tokens": 15, "completion_tokens": 8})] for e in t.feed(c)]
    events += t.finish()
    assert events == [
        {"type": "content_delta", "delta": "2 + 2"},
        {"type": "content_delta", "delta": " = 4"},
        {"type": "message_stop", "stop_reason": "end_turn", "model": "mine"},
        {"type": "metadata", "usage": {"input_tokens": 15, "output_tokens": 8}},
    ]


def test_stream_translation_tool_calls() -> None:
    t = RoutingStreamTranslator("mine")
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}),
        # A second call whose name arrives after its first argument fragment.
        chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"arguments": "{"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events = [e for c in chunks for e in t.feed(c)] + t.finish()
    assert events == [
        {"type": "tool_use_start", "id": "c1", "name": "f"},
        {"type": "tool_use_delta", "id": "c1", "delta": '{"x"'},
        {"type": "tool_use_delta", "id": "c1", "delta": ": 2}"},
        {"type": "tool_use_start", "id": "c2", "name": "g"},
        {"type": "tool_use_delta", "id": "c2", "delta": "{}"},
        {"type": "tool_use_complete", "id": "c1", "name": "f", "input": {"x": 2}},
        {"type": "tool_use_complete", "id": "c2", "name": "g", "input": {}},
        {"type": "message_stop", "stop_reason": "tool_use", "model": "mine"},
        {"type": "metadata", "usage": {"input_tokens": 0, "output_tokens": 0}},
    ]


def test_stream_translation_without_finish_reason_stops_at_finish() -> None:
    t = RoutingStreamTranslator("mine")
    assert t.feed(chunk({"content": "hi"})) == [{"type": "content_delta", "delta": "hi"}]
    assert [e["type"] for e in t.finish()] == ["message_stop", "metadata"]


def test_stream_translation_of_a_whole_answer() -> None:
    """A backend that answered a stream request whole still gives the client the event sequence."""
    t = RoutingStreamTranslator("mine")
    body = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6}}
    assert t.feed_message(body) + t.finish() == [
        {"type": "content_delta", "delta": "Checking."},
        {"type": "tool_use_start", "id": "c1", "name": "f"},
        {"type": "tool_use_delta", "id": "c1", "delta": '{"x": 1}'},
        {"type": "tool_use_complete", "id": "c1", "name": "f", "input": {"x": 1}},
        {"type": "message_stop", "stop_reason": "tool_use", "model": "mine"},
        {"type": "metadata", "usage": {"input_tokens": 4, "output_tokens": 6}},
    ]


# -- end to end ---------------------------------------------------------------------------------


async def call(daemon: Daemon, path: str, body: Any, *, raw: bytes | None = None,
               token: str | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {token or daemon.token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(
            f"{daemon.url}/api/v1/llm{path}", data=data, headers=headers) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def stream(daemon: Daemon, body: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {daemon.token}"}
    async with aiohttp.ClientSession() as session, session.post(
            f"{daemon.url}/api/v1/llm/completions/stream", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        text = (await response.read()).decode()
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n"):
        if block:
            assert block.startswith("data: ")
            events.append(json.loads(block[6:]))
    return events


def hello(text: str = "What is 2+2?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat_requests(standin: StandIn) -> list[dict[str, Any]]:
    return [r.json for r in standin.api.requests if r.path.endswith("/chat/completions") and isinstance(r.json, dict)]


async def test_echo_completion_with_default_model(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    status, headers, body = await call(daemon, "/completions", {"messages": hello("hello there companion")})
    assert status == 200 and headers["X-Companion-Backend"] == "echo"
    assert body == {"content": "hello there companion", "model": "echo", "stop_reason": "end_turn",
                    "tool_calls": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    status, _, body = await call(daemon, "/completions", {"model": "echo", "messages": hello("a b c"),
                                                          "max_tokens": 2})
    assert status == 200 and body["content"] == "a b" and body["stop_reason"] == "max_tokens"


async def test_echo_stream_events(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    events = await stream(daemon, {"messages": hello("two plus two")})
    assert events == [
        {"type": "content_delta", "delta": "two"},
        {"type": "content_delta", "delta": " plus"},
        {"type": "content_delta", "delta": " two"},
        {"type": "message_stop", "stop_reason": "end_turn", "model": "echo"},
        {"type": "metadata", "usage": {"input_tokens": 3, "output_tokens": 3}},
    ]


async def test_echo_tool_call_events_and_answer(start_daemon: StartDaemon) -> None:
    """The built-in backend answers a forced tool choice with a call, so the whole tool flow works offline."""
    daemon = await start_daemon()
    body = {"messages": hello("Oslo"), "tools": [ANTHROPIC_TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather"}}
    events = await stream(daemon, body)
    types = [e["type"] for e in events]
    assert types[0] == "tool_use_start" and events[0]["name"] == "get_weather"
    assert types[1:-3] == ["tool_use_delta"] * (len(types) - 4) and len(types) - 4 >= 2
    assert types[-3:] == ["tool_use_complete", "message_stop", "metadata"]
    call_id = events[0]["id"]
    assert all(e["id"] == call_id for e in events[:-2])
    expected = {"city": "Oslo"}  # the schema's required string, filled from the user's message
    assert json.loads("".join(e["delta"] for e in events if e["type"] == "tool_use_delta")) == expected
    assert events[-3] == {"type": "tool_use_complete", "id": call_id, "name": "get_weather", "input": expected}
    assert events[-2] == {"type": "message_stop", "stop_reason": "tool_use", "model": "echo"}
    status, _, answer = await call(daemon, "/completions", body)
    assert status == 200
    assert answer["stop_reason"] == "tool_use" and answer["tool_calls"][0]["input"] == expected
    # Without a forced choice, echo just echoes.
    status, _, answer = await call(daemon, "/completions", {"messages": hello("Oslo"), "tools": [ANTHROPIC_TOOL]})
    assert answer["tool_calls"] == [] and answer["content"] == "Oslo"


async def test_models_and_configured_default(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(config=f'[llm_api]\ndefault_model = "{HOSTED}"\n',
                                env={"LLMTUNE_BASE_URL": standin.url})
    headers = {"Authorization": f"Bearer {daemon.token}"}
    async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.url}/api/v1/llm/models", headers=headers) as response:
        assert response.status == 200
        listing = await response.json()
    assert listing["default_model"] == HOSTED
    assert "echo" in listing["models"] and HOSTED in listing["models"]
    status, _, body = await call(daemon, "/completions", {"messages": hello()})
    assert status == 200 and body["model"] == HOSTED and body["content"] == "Echo: What is 2+2?"
    assert chat_requests(standin)[-1]["model"] == HOSTED


async def test_bad_input_and_auth(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    for path in ("/completions", "/completions/stream"):
        status, _, body = await call(daemon, path, {"model": "echo"})
        assert status == 400 and body["error"]["code"] == "invalid_messages"
        assert set(body["error"]) == {"message", "type", "code", "details"}
        status, _, body = await call(daemon, path, None, raw=b"{not json")
        assert status == 400 and body["error"]["code"] == "invalid_json"
        status, _, body = await call(daemon, path, {"model": "", "messages": hello()})
        assert status == 400 and body["error"]["code"] == "invalid_model"
        status, _, body = await call(daemon, path, {"messages": hello()}, token="wrong")
        assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_hosted_text_with_system_prompt(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    status, headers, body = await call(daemon, "/completions", {
        "model": HOSTED, "system": "You are terse.", "messages": hello(), "temperature": 0.1, "max_tokens": 50})
    assert status == 200 and headers["X-Companion-Backend"] == "llmtune"
    assert body["content"] == "Echo: What is 2+2?" and body["stop_reason"] == "end_turn"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] == 4
    sent = chat_requests(standin)[-1]
    assert sent["messages"] == [{"role": "system", "content": "You are terse."}, hello()[0]]
    assert sent["temperature"] == 0.1 and sent["max_tokens"] == 50 and "stream" not in sent


async def test_hosted_tool_call_non_stream(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.script_tool_call("get_weather", {"city": "Oslo"}, call_id="call_42")
    status, _, body = await call(daemon, "/completions", {
        "model": HOSTED, "messages": hello("Weather in Oslo?"), "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "auto"}})
    assert status == 200
    assert body["stop_reason"] == "tool_use" and body["content"] == ""
    assert body["tool_calls"] == [{"id": "call_42", "name": "get_weather", "input": {"city": "Oslo"}}]
    sent = chat_requests(standin)[-1]
    assert sent["tools"] == [OPENAI_TOOL] and sent["tool_choice"] == "auto"


async def test_hosted_tool_call_stream(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    arguments = {"city": "Oslo", "units": "metric", "detail": "a longer value to split into fragments"}
    standin.api.script_tool_call("get_weather", arguments, call_id="call_7")
    events = await stream(daemon, {"model": HOSTED, "messages": hello("Weather?"), "tools": [OPENAI_TOOL]})
    assert events[0] == {"type": "tool_use_start", "id": "call_7", "name": "get_weather"}
    deltas = [e for e in events if e["type"] == "tool_use_delta"]
    assert len(deltas) >= 2 and all(e["id"] == "call_7" for e in deltas)
    assert json.loads("".join(e["delta"] for e in deltas)) == arguments
    assert [e["type"] for e in events] == ["tool_use_start", *["tool_use_delta"] * len(deltas),
                                           "tool_use_complete", "message_stop", "metadata"]
    assert events[-3] == {"type": "tool_use_complete", "id": "call_7", "name": "get_weather", "input": arguments}
    assert events[-2] == {"type": "message_stop", "stop_reason": "tool_use", "model": HOSTED}
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    sent = chat_requests(standin)[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_hosted_text_stream(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    events = await stream(daemon, {"model": HOSTED, "messages": hello("hi there")})
    assert events == [
        {"type": "content_delta", "delta": "Echo:"},
        {"type": "content_delta", "delta": " hi"},
        {"type": "content_delta", "delta": " there"},
        {"type": "message_stop", "stop_reason": "end_turn", "model": HOSTED},
        {"type": "metadata", "usage": {"input_tokens": 2, "output_tokens": 3}},
    ]


async def test_tool_result_reaches_the_model_as_a_tool_message(start_daemon: StartDaemon,
                                                               standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"}]},
    ]
    status, _, body = await call(daemon, "/completions", {"model": HOSTED, "messages": messages,
                                                          "tools": [ANTHROPIC_TOOL]})
    assert status == 200 and body["content"] == "Tool said: -3C" and body["stop_reason"] == "end_turn"
    sent = chat_requests(standin)[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"}


async def test_upstream_errors_keep_their_status(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    for path in ("/completions", "/completions/stream"):
        standin.api.fail_next(402)
        status, headers, body = await call(daemon, path, {"model": HOSTED, "messages": hello()})
        assert status == 402 and headers["X-Companion-Backend"] == "llmtune"
        assert body["error"]["code"] == "upstream_error"
        assert body["error"]["details"]["upstream_status"] == 402
        assert "sk_test" not in json.dumps(body)


async def test_broken_stream_ends_with_an_error_event(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.cut_stream_after(2)
    events = await stream(daemon, {"model": HOSTED, "messages": hello("one two three four five")})
    assert [e["type"] for e in events[:-1]] == ["content_delta"]
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "upstream_broken"


async def test_gated_workspace_refuses_tools(start_daemon: StartDaemon, tmp_path: Path) -> None:
    daemon = await start_daemon(config=f'[workspaces.default]\nroot = "{tmp_path}"\ntools = "gate"\n')
    status, _, body = await call(daemon, "/completions", {"messages": hello(), "tools": [ANTHROPIC_TOOL]})
    assert status == 403 and body["error"]["code"] == "tool_mode_not_allowed"
    status, _, body = await call(daemon, "/completions", {"messages": hello("plain")})
    assert status == 200 and body["content"] == "plain"


@pytest.fixture
async def local(start_daemon: StartDaemon, llama_server: LlamaServerProcess) -> Daemon:
    return await start_daemon(env={"LLMTUNE_LOCAL_URL": llama_server.base_url})


async def test_local_llama_completion(local: Daemon, llama_server: LlamaServerProcess) -> None:
    model = f"local/{llama_server.alias}"
    status, headers, body = await call(local, "/completions", {"model": model, "messages": hello(),
                                                               "max_tokens": 8})
    assert status == 200 and headers["X-Companion-Backend"] == "local"
    assert set(body) == {"content", "model", "stop_reason", "tool_calls", "usage"}
    assert isinstance(body["content"], str) and body["model"] == model and body["tool_calls"] == []
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 8


async def test_local_llama_stream(local: Daemon, llama_server: LlamaServerProcess) -> None:
    model = f"local/{llama_server.alias}"
    events = await stream(local, {"model": model, "messages": hello(), "max_tokens": 8})
    types = [e["type"] for e in events]
    assert types[-2:] == ["message_stop", "metadata"]
    assert set(types[:-2]) <= {"content_delta"}
    assert events[-2]["model"] == model and events[-2]["stop_reason"] in ("end_turn", "max_tokens")
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 8


# -- the Bedrock stand-in (AWS Converse / ConverseStream through the bedrock backend) ----------


async def bedrock_daemon(start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch, aiohttp_server: Any,
                         tmp_path: Path) -> tuple[Daemon, Any]:
    from tests.adapters.test_bedrock import AWS_ENV, MODEL
    from tests.support.bedrock_standin import BedrockStandIn

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    api = BedrockStandIn()
    server = await aiohttp_server(api.app)
    url = str(server.make_url("")).rstrip("/")
    config = (f'[backends.aws]\ntype = "bedrock"\nurl = "{url}"\nregion = "us-east-1"\nmodels = ["{MODEL}"]\n'
              f'[llm_api]\ndefault_model = "aws/{MODEL}"\n')
    return await start_daemon(config=config, env=AWS_ENV, key=None), api


async def test_bedrock_text_and_tool_call_events(start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch,
                                                 aiohttp_server: Any, tmp_path: Path) -> None:
    daemon, api = await bedrock_daemon(start_daemon, monkeypatch, aiohttp_server, tmp_path)
    # A plain answer, model defaulted to the Bedrock one, streamed: deltas, message_stop, metadata.
    api.script_text("2 + 2 = 4")
    events = await stream(daemon, {"messages": hello()})
    types = [e["type"] for e in events]
    assert types[-2:] == ["message_stop", "metadata"] and set(types[:-2]) == {"content_delta"}
    assert "".join(e["delta"] for e in events if e["type"] == "content_delta") == "2 + 2 = 4"
    assert events[-2]["stop_reason"] == "end_turn"
    assert events[-1]["usage"]["input_tokens"] > 0
    # A tool call, streamed: start, argument deltas, complete with the parsed input, stop with tool_use.
    arguments = {"city": "Oslo", "units": "metric"}
    api.script_tool_use("get_weather", arguments, tool_use_id="tooluse_1")
    events = await stream(daemon, {"messages": hello("Weather?"), "tools": [ANTHROPIC_TOOL]})
    types = [e["type"] for e in events]
    assert types[0] == "tool_use_start" and events[0] == {"type": "tool_use_start", "id": "tooluse_1",
                                                          "name": "get_weather"}
    assert types[-3:] == ["tool_use_complete", "message_stop", "metadata"]
    deltas = [e["delta"] for e in events if e["type"] == "tool_use_delta"]
    assert json.loads("".join(deltas)) == arguments
    assert events[-3]["input"] == arguments and events[-2]["stop_reason"] == "tool_use"
    # And not streamed.
    api.script_tool_use("get_weather", arguments, tool_use_id="tooluse_2")
    status, _, body = await call(daemon, "/completions", {"messages": hello("Weather?"), "tools": [ANTHROPIC_TOOL]})
    assert status == 200, body
    assert body["stop_reason"] == "tool_use"
    assert body["tool_calls"] == [{"id": "tooluse_2", "name": "get_weather", "input": arguments}]
