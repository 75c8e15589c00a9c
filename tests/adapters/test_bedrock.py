"""The AWS Bedrock backend (adapters/bedrock/) against a loopback Converse stand-in.

Nothing reaches AWS: every client is pointed at the stand-in (endpoint override), credentials are
dummies from the environment, the instance-metadata lookup is disabled and no AWS config file is read.
A real boto3 client decodes the stand-in's event-stream framing, so the stand-in is checked too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from llmtune_companion.adapters import BACKEND_TYPES, AdapterContext, BackendRequest, BedrockBackend
from llmtune_companion.adapters.bedrock.converse import ConverseStreamTranslator, from_converse, to_converse
from llmtune_companion.adapters.http1 import ConnectionPool

from tests.conftest import Daemon, StartDaemon
from tests.support.bedrock_standin import BedrockStandIn, encode_event

MODEL = "anthropic.claude-3-haiku"
PUBLIC = f"aws/{MODEL}"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDSTANDINEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "standin-secret-not-real",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(autouse=True)
def hermetic_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and no trace of the machine's own AWS setup."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
async def bedrock() -> AsyncIterator[tuple[BedrockStandIn, str]]:
    api = BedrockStandIn()
    server = TestServer(api.app)
    await server.start_server()
    try:
        yield api, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def boto_client(url: str) -> Any:
    return boto3.session.Session(region_name="us-east-1").client(
        "bedrock-runtime", endpoint_url=url, config=Config(retries={"total_max_attempts": 1})
    )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


# -- the stand-in, decoded by a real boto3 client ---------------------------------------------------


async def test_boto3_converse_against_standin(bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    client = boto_client(url)
    answer = await asyncio.to_thread(client.converse, modelId="anthropic.claude-3-haiku-20240307-v1:0",
                                     messages=user("hello there world"))
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": "hello there world"}]}
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["inputTokens"] == 3
    request = api.requests[-1]
    assert request.model_id == "anthropic.claude-3-haiku-20240307-v1:0"
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDSTANDINEXAMPLE/")


async def test_boto3_converse_stream_decodes_framing(bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    client = boto_client(url)
    api.script_tool_use("get_weather", {"city": "Paris"}, text="Let me look", tool_use_id="tooluse_1")
    answer = await asyncio.to_thread(client.converse_stream, modelId=MODEL, messages=user("weather?"))
    events = await asyncio.to_thread(lambda: list(answer["stream"]))
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)
    assert text == "Let me look"
    starts = [e["contentBlockStart"]["start"]["toolUse"] for e in events if "contentBlockStart" in e]
    assert starts == [{"toolUseId": "tooluse_1", "name": "get_weather"}]
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
              if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})]
    assert len(pieces) > 1 and orjson.loads("".join(pieces)) == {"city": "Paris"}
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}


async def test_boto3_sees_standin_errors(bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    client = boto_client(url)
    api.script_error(429, "ThrottlingException", "Too many requests")
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(client.converse, modelId=MODEL, messages=user("hi"))
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    api.script_stream_error("modelStreamErrorException", "the model broke", after_events=2)
    answer = await asyncio.to_thread(client.converse_stream, modelId=MODEL, messages=user("a b c"))
    with pytest.raises(EventStreamError):
        await asyncio.to_thread(lambda: list(answer["stream"]))


async def test_standin_requires_sigv4(bedrock: tuple[BedrockStandIn, str]) -> None:
    _, url = bedrock
    async with aiohttp.ClientSession() as session, session.post(f"{url}/model/{MODEL}/converse",
                                                                json={"messages": user("x")}) as response:
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")


# -- translation, both ways (pure functions) ------------------------------------------------------


def test_openai_request_to_converse() -> None:
    payload = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
    }
    kwargs = to_converse(payload, MODEL)
    assert kwargs["modelId"] == MODEL
    assert kwargs["system"] == [{"text": "Be brief."}]
    assert kwargs["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_1", "name": "get_weather",
                                                       "input": {"city": "Paris"}}}]},
        # The tool result and the next user text merge: Converse wants alternating roles.
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},
                                     {"text": "And tomorrow?"}]},
    ]
    assert kwargs["inferenceConfig"] == {"maxTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert kwargs["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                                "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]}}}],
        "toolChoice": {"any": {}},
    }


def test_tool_choice_variants() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    assert to_converse({**base, "tool_choice": "auto"}, MODEL)["toolConfig"]["toolChoice"] == {"auto": {}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert to_converse({**base, "tool_choice": named}, MODEL)["toolConfig"]["toolChoice"] == {
        "tool": {"name": "get_weather"}}
    assert "toolConfig" not in to_converse({**base, "tool_choice": "none"}, MODEL)
    assert "toolChoice" not in to_converse(base, MODEL)["toolConfig"]


def test_converse_response_to_openai() -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Checking."},
            {"toolUse": {"toolUseId": "tooluse_9", "name": "get_weather", "input": {"city": "Oslo"}}},
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 11, "outputTokens": 5, "totalTokens": 16},
    }
    completion = from_converse(answer, MODEL)
    assert completion["object"] == "chat.completion" and completion["model"] == MODEL
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "tooluse_9" and call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert completion["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    for stop, finish in (("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length")):
        text_only = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": stop, "usage": {}}
        assert from_converse(text_only, MODEL)["choices"][0]["finish_reason"] == finish


def test_stream_events_to_chunks() -> None:
    translator = ConverseStreamTranslator(MODEL, include_usage=True)
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Hi"}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"contentBlockStart": {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}},
        {"contentBlockStop": {"contentBlockIndex": 1}},
        {"messageStop": {"stopReason": "tool_use"}},
        {"metadata": {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}},
    ]
    lines = [line for event in events for line in translator.feed(event)] + translator.finish()
    assert lines[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(line[len(b"data: "):]) for line in lines[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"]
             and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7


def test_registered_and_event_encoder_shape() -> None:
    assert BACKEND_TYPES["bedrock"] is BedrockBackend
    frame = encode_event("messageStart", {"role": "assistant"})
    assert int.from_bytes(frame[:4], "big") == len(frame)


async def test_abandoned_stream_stops_its_reader(bedrock: tuple[BedrockStandIn, str]) -> None:
    """Closing the response mid-stream closes the event stream and ends the reading thread."""
    api, url = bedrock
    api.stream_delay = 0.02
    async with ConnectionPool() as pool:
        backend = BedrockBackend("aws", AdapterContext(pool), url=url, models=(MODEL,), region="us-east-1")
        payload = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "word " * 200}]}
        response = await backend.handle(BackendRequest("chat", stream=True, payload=payload))
        assert response.status == 200 and response.content_type == "text/event-stream"
        chunks = response.chunks()
        first = await chunks.__anext__()
        assert first.startswith(b"data: ")
        await chunks.aclose()
        await response.aclose()
        for _ in range(100):
            if not any(t.name == "bedrock-stream" and t.is_alive() for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)
        assert not any(t.name == "bedrock-stream" and t.is_alive() for t in threading.enumerate())


class StalledStream:
    """Behaves like botocore's EventStream over a socket with nothing more to read: iteration blocks,
    and close() waits for the blocked read (http.client's lock) before it can close the connection."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.closed = threading.Event()

    def __iter__(self) -> Any:
        yield {"messageStart": {"role": "assistant"}}
        self.released.wait(5)

    def close(self) -> None:
        self.released.wait(5)
        self.closed.set()


async def test_closing_a_stalled_stream_never_blocks_the_event_loop() -> None:
    from llmtune_companion.adapters.bedrock.backend import _EventPump

    stream = StalledStream()
    pump = _EventPump(stream, asyncio.get_running_loop())
    assert await asyncio.wait_for(pump.queue.get(), 5) == {"messageStart": {"role": "assistant"}}
    started = time.monotonic()
    pump.close()
    assert time.monotonic() - started < 0.5  # the loop is free at once, though the close itself waits
    stream.released.set()
    assert await asyncio.to_thread(stream.closed.wait, 5)  # and the stream does get closed


# -- through the daemon, with the openai SDK --------------------------------------------------------


async def start(start_daemon: StartDaemon, url: str, *, extra: str = "") -> Daemon:
    config = (f'[backends.aws]\ntype = "bedrock"\nurl = "{url}"\nregion = "us-east-1"\n'
              f'models = ["{MODEL}"]\n{extra}')
    return await start_daemon(config=config, env=AWS_ENV, key=None)


async def test_daemon_lists_and_chats(start_daemon: StartDaemon, bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    daemon = await start(start_daemon, url)
    client = daemon.openai()
    ids = [model.id async for model in client.models.list()]
    assert PUBLIC in ids
    completion = await client.chat.completions.create(
        model=PUBLIC, max_tokens=100, temperature=0.5,
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello bedrock"}])
    assert completion.choices[0].message.content == "hello bedrock"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 4
    sent = api.requests[-1]
    assert sent.model_id == MODEL and sent.operation == "converse"
    assert sent.body["system"] == [{"text": "Be kind."}]
    assert sent.body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.5}


async def test_daemon_streams(start_daemon: StartDaemon, bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    daemon = await start(start_daemon, url)
    stream = await daemon.openai().chat.completions.create(
        model=PUBLIC, messages=[{"role": "user", "content": "one two three four"}], stream=True,
        stream_options={"include_usage": True}, max_tokens=3)
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "one two three" and finish == "length"
    assert usage is not None and usage.completion_tokens == 3
    assert api.requests[-1].operation == "converse-stream"


async def test_daemon_tool_call(start_daemon: StartDaemon, bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    daemon = await start(start_daemon, url)
    client = daemon.openai()
    scripted = {"city": "Paris", "days": 3, "units": {"temp": "celsius"}}
    api.script_tool_use("get_weather", scripted, tool_use_id="tooluse_plain")
    completion = await client.chat.completions.create(
        model=PUBLIC, messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL],
        tool_choice="auto")
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and message.tool_calls[0].id == "tooluse_plain"
    assert orjson.loads(message.tool_calls[0].function.arguments) == scripted
    assert api.requests[-1].body["toolConfig"]["toolChoice"] == {"auto": {}}

    api.script_tool_use("get_weather", scripted, text="Looking", tool_use_id="tooluse_stream")
    stream = await client.chat.completions.create(
        model=PUBLIC, messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL],
        stream=True)
    arguments, names, ids, text, finish = "", [], [], "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            ids += [call.id] if call.id else []
            names += [call.function.name] if call.function and call.function.name else []
            arguments += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == "Looking" and ids == ["tooluse_stream"] and names == ["get_weather"]
    assert orjson.loads(arguments) == scripted and finish == "tool_calls"

    # The answer goes back: tool_calls become toolUse, the tool message a toolResult.
    followup = await client.chat.completions.create(model=PUBLIC, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_plain", "type": "function",
             "function": {"name": "get_weather", "arguments": orjson.dumps(scripted).decode()}}]},
        {"role": "tool", "tool_call_id": "tooluse_plain", "content": "sunny"},
    ])
    assert followup.choices[0].finish_reason == "stop"
    turns = api.requests[-1].body["messages"]
    assert turns[1]["content"][0]["toolUse"]["input"] == scripted
    assert turns[2]["content"][0]["toolResult"]["toolUseId"] == "tooluse_plain"


async def test_daemon_maps_errors(start_daemon: StartDaemon, bedrock: tuple[BedrockStandIn, str]) -> None:
    api, url = bedrock
    daemon = await start(start_daemon, url, extra="[upstream]\nmax_retries = 0\n")
    client = daemon.openai()
    messages = [{"role": "user", "content": "hi"}]
    cases = [
        (429, "ThrottlingException", openai.RateLimitError, 429),
        (400, "ValidationException", openai.BadRequestError, 400),
        (403, "AccessDeniedException", openai.PermissionDeniedError, 403),
        (503, "ServiceUnavailableException", openai.InternalServerError, 503),
        (429, "ModelNotReadyException", openai.InternalServerError, 503),
    ]
    for status, error_type, exception, expected in cases:
        api.script_error(status, error_type, f"scripted {error_type}")
        with pytest.raises(exception) as caught:
            await client.chat.completions.create(model=PUBLIC, messages=messages)
        assert caught.value.status_code == expected, error_type
        assert f"scripted {error_type}" in caught.value.message
    api.script_error(429, "ThrottlingException", "slow down")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=PUBLIC, messages=messages, stream=True)
    # An exception event before any content still becomes a status.
    api.script_stream_error("throttlingException", "stream throttled", after_events=0)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=PUBLIC, messages=messages, stream=True)
    # Later, it ends the SSE stream with an error event.
    api.script_stream_error("modelStreamErrorException", "broke mid-way", after_events=2)
    response = await client.chat.completions.with_raw_response.create(
        model=PUBLIC, messages=messages, stream=True)
    raw = await response.http_response.aread()
    assert b"broke mid-way" in raw and raw.endswith(b"data: [DONE]\n\n")


async def test_daemon_unsupported_endpoints_and_unreachable(start_daemon: StartDaemon) -> None:
    daemon = await start(start_daemon, "http://127.0.0.1:9", extra="[upstream]\nmax_retries = 0\n")
    client = daemon.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=PUBLIC, input="x")
    assert "not supported by the bedrock backend" in caught.value.message
    with pytest.raises(openai.APIStatusError) as unreachable:
        await client.chat.completions.create(model=PUBLIC, messages=[{"role": "user", "content": "hi"}])
    assert unreachable.value.status_code == 502


def test_settings_for_bedrock() -> None:
    from llmtune_companion.config.settings import BackendSettings
    from pydantic import ValidationError

    spec = BackendSettings(type="bedrock", region="eu-west-1", models=(MODEL,))
    assert spec.url is None and spec.region == "eu-west-1"  # url is only an endpoint override
    with pytest.raises(ValidationError, match="region is only read by a bedrock backend"):
        BackendSettings(type="openai", url="http://127.0.0.1:8080/v1", region="us-east-1")


async def test_status_describes_region(start_daemon: StartDaemon, bedrock: tuple[BedrockStandIn, str]) -> None:
    _, url = bedrock
    daemon = await start(start_daemon, url)
    described = {b["name"]: b for b in daemon.runtime.status()["backends"]}
    assert described["aws"] == {"name": "aws", "type": "bedrock", "url": url, "region": "us-east-1"}
