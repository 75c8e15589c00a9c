"""LLMClient against the real daemon: typed results and events as the daemon really streams them,
errors before and during a stream, discovery of a running `serve`, time limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.llm_client import (
    Completion,
    ContentDelta,
    LLMClient,
    LLMClientError,
    MessageStop,
    Metadata,
    StreamError,
    StreamEvent,
    StreamUsage,
    ToolCall,
    ToolUseComplete,
    ToolUseDelta,
    ToolUseStart,
    Usage,
)
from llmtune_companion.llm_client.transport import SSEDecoder

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon, closed_port
from tests.daemon.llm_client.conftest import ServeDaemon

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client_for(daemon: Daemon, **options: Any) -> LLMClient:
    return LLMClient(daemon.url, daemon.token, **options)


async def collect(client: LLMClient, *args: Any, **kwargs: Any) -> list[StreamEvent]:
    return [event async for event in client.astream(*args, **kwargs)]


def collect_sync(client: LLMClient, *args: Any, **kwargs: Any) -> list[StreamEvent]:
    return list(client.stream(*args, **kwargs))


async def hosted(start_daemon: StartDaemon, standin: StandIn) -> Daemon:
    return await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})


# -- typed events -------------------------------------------------------------------------------


async def test_echo_text_stream_as_typed_events(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(key=None)
    expected: list[StreamEvent] = [
        ContentDelta("two"), ContentDelta(" plus"), ContentDelta(" two"),
        MessageStop("end_turn", "echo"), Metadata(StreamUsage(3, 3)),
    ]
    assert await collect(client_for(daemon), "two plus two", model="echo") == expected
    # The blocking twin reads the same stream (in a thread: the daemon serves on this loop).
    assert await asyncio.to_thread(collect_sync, client_for(daemon), "two plus two", model="echo") == expected
    assert [event.type for event in expected] == ["content_delta"] * 3 + ["message_stop", "metadata"]


async def test_tool_call_stream_as_typed_events(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await hosted(start_daemon, standin)
    arguments = {"city": "Oslo", "detail": "long enough to arrive in several fragments"}
    for run in (collect, lambda c, *a, **k: asyncio.to_thread(collect_sync, c, *a, **k)):
        standin.api.script_tool_call("get_weather", arguments, call_id="call_7")
        events = await run(client_for(daemon), "Weather?", model=HOSTED, tools=[WEATHER],
                           tool_choice={"type": "auto"})
        assert events[0] == ToolUseStart("call_7", "get_weather")
        deltas = [e for e in events if isinstance(e, ToolUseDelta)]
        assert len(deltas) >= 2 and {d.id for d in deltas} == {"call_7"}
        assert json.loads("".join(d.delta for d in deltas)) == arguments
        assert events[len(deltas) + 1:-1] == [ToolUseComplete("call_7", "get_weather", arguments),
                                              MessageStop("tool_use", HOSTED)]
        last = events[-1]
        assert isinstance(last, Metadata) and last.usage.input_tokens > 0 and last.usage.output_tokens > 0
    sent = standin.api.requests[-1].json
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"


async def test_complete_returns_a_typed_result(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await hosted(start_daemon, standin)
    client = client_for(daemon)
    answer = await client.acomplete("What is 2+2?", model=HOSTED, system="Be terse.", max_tokens=50,
                                    temperature=0.1)
    assert answer == Completion("Echo: What is 2+2?", HOSTED, "end_turn", [], Usage(answer.usage.prompt_tokens, 4))
    assert answer.usage.prompt_tokens > 0
    sent = standin.api.requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.1
    standin.api.script_tool_call("get_weather", {"city": "Oslo"}, call_id="call_42")
    answer = await asyncio.to_thread(client.complete, [{"role": "user", "content": "Weather in Oslo?"}],
                                     model=HOSTED, tools=[WEATHER])
    assert answer.stop_reason == "tool_use" and answer.content == ""
    assert answer.tool_calls == [ToolCall("call_42", "get_weather", {"city": "Oslo"})]


async def test_models(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(config=f'[llm_api]\ndefault_model = "{HOSTED}"\n',
                                env={"LLMTUNE_BASE_URL": standin.url})
    listing = await client_for(daemon).amodels()
    assert "echo" in listing and HOSTED in listing.models and listing.default_model == HOSTED
    assert await asyncio.to_thread(client_for(daemon).models) == listing


# -- errors -------------------------------------------------------------------------------------


async def test_error_mid_stream_is_the_last_event(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await hosted(start_daemon, standin)
    for run in (collect, lambda c, *a, **k: asyncio.to_thread(collect_sync, c, *a, **k)):
        standin.api.cut_stream_after(2)
        events = await run(client_for(daemon), "one two three four five", model=HOSTED)
        assert events[:-1] == [ContentDelta("Echo:")]
        last = events[-1]
        assert isinstance(last, StreamError) and last.status == 502 and last.code == "upstream_broken"
        assert "incomplete" in last.message
        error = last.exception()
        assert isinstance(error, LLMClientError) and (error.status, error.code) == (502, "upstream_broken")


async def test_errors_before_the_stream_raise(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await hosted(start_daemon, standin)
    cases: list[tuple[LLMClient, dict[str, Any], int, str]] = [
        (LLMClient(daemon.url, "lct_wrong"), {}, 401, "invalid_token"),
        (client_for(daemon), {"model": "no-such/model"}, 404, "model_not_found"),
        (client_for(daemon), {"max_tokens": 0}, 400, "invalid_request"),
    ]
    for client, options, status, code in cases:
        with pytest.raises(LLMClientError) as caught:
            await collect(client, "hi", **options)
        assert (caught.value.status, caught.value.code) == (status, code), (options, caught.value)
        assert caught.value.message
        with pytest.raises(LLMClientError) as caught:
            await asyncio.to_thread(collect_sync, client, "hi", **options)
        assert (caught.value.status, caught.value.code) == (status, code)
        with pytest.raises(LLMClientError) as caught:
            await client.acomplete("hi", **options)
        assert (caught.value.status, caught.value.code) == (status, code)
    standin.api.fail_next(402)
    with pytest.raises(LLMClientError) as caught:
        await asyncio.to_thread(client_for(daemon).complete, "hi", model=HOSTED)
    assert caught.value.status == 402 and caught.value.details["upstream_status"] == 402
    assert WORKSPACE_KEY not in str(caught.value) and daemon.token not in str(caught.value)


async def test_unreachable_daemon_and_time_limits(start_daemon: StartDaemon, standin: StandIn) -> None:
    nobody = LLMClient(f"http://127.0.0.1:{closed_port()}", "lct_x", connect_timeout=2)
    for call in (nobody.acomplete("hi"), collect(nobody, "hi"), asyncio.to_thread(nobody.models)):
        with pytest.raises(LLMClientError) as caught:
            await call
        assert caught.value.status is None and caught.value.code == "daemon_unreachable"
    daemon = await hosted(start_daemon, standin)
    impatient = client_for(daemon, timeout=0.3)
    standin.api.first_byte_delay = 2.0
    with pytest.raises(LLMClientError) as caught:
        await impatient.acomplete("hi", model=HOSTED)
    assert caught.value.code == "timeout"
    with pytest.raises(LLMClientError) as caught:
        await asyncio.to_thread(impatient.complete, "hi", model=HOSTED)
    assert caught.value.code == "timeout"
    # Silence in the middle of a stream ends it with an error event.
    standin.api.first_byte_delay = 0.0
    standin.api.stream_delay = 2.0
    events = await collect(impatient, "one two three", model=HOSTED)
    assert isinstance(events[-1], StreamError) and events[-1].code == "timeout"


def test_sse_decoder() -> None:
    decoder = SSEDecoder(limit=64)
    assert decoder.feed(b"data: {\"a\"") == []
    assert decoder.feed(b": 1}\n\n: a comment\r\nevent: x\r\ndata: one\r\ndata:two\r\n\r\n") == ['{"a": 1}', "one\ntwo"]
    wire = b'data: {"type": "content_delta", "delta": "x"}\n\ndata: [1]\n\n'
    whole = SSEDecoder()
    assert [d for byte in range(len(wire)) for d in whole.feed(wire[byte:byte + 1])] == [
        '{"type": "content_delta", "delta": "x"}', "[1]"]
    with pytest.raises(LLMClientError) as caught:
        decoder.feed(b"data: " + b"x" * 30)
        decoder.feed(b"x" * 40)
    assert caught.value.code == "event_too_large"


# -- discovery ----------------------------------------------------------------------------------


async def test_no_arguments_finds_a_running_serve(serve_daemon: ServeDaemon, home: Paths) -> None:
    with pytest.raises(LLMClientError) as caught:
        LLMClient().complete("hi")
    assert caught.value.code == "daemon_not_running" and "llmtune-companion serve" in caught.value.message
    served = await serve_daemon()
    client = LLMClient()
    assert client.base_url == served.url
    answer = await asyncio.to_thread(client.complete, "hello there", model="echo")
    assert answer.content == "hello there" and answer.model == "echo"
    events = [e async for e in client.astream("hi", model="echo")]
    assert events[0] == ContentDelta("hi") and isinstance(events[-1], Metadata)
    assert "echo" in await client.amodels()
    with pytest.raises(LLMClientError) as caught:
        LLMClient(workspace="nobody").complete("hi")
    assert caught.value.code == "unknown_workspace"
    token = load_config(home).workspaces["default"].token
    assert token not in repr(client) and token not in str(caught.value)
