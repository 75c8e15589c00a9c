"""LangChain on the companion: a real chat model with `bind_tools` returns the tool call, a second
turn with the ToolMessage gets the answer, `stream` yields text as it arrives; echo works offline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from llmtune_companion.llm_client import LLMClient, LLMClientError
from llmtune_companion.llm_client.langchain_model import ChatLLMTuneCompanion
from pydantic import BaseModel

from tests.conftest import Daemon, StandIn, StartDaemon

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"-3C in {city}"


def chat_model(daemon: Daemon, model: str | None = None, **params: Any) -> ChatLLMTuneCompanion:
    built = LLMClient(daemon.url, daemon.token).get_model(format="langchain", model=model, **params)
    assert isinstance(built, ChatLLMTuneCompanion)
    return built


async def test_bind_tools_tool_call_then_answer(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    model = chat_model(daemon, "tool-get_weather", max_tokens=100).bind_tools([get_weather])
    messages: list[Any] = [SystemMessage("Be brief."), HumanMessage("Oslo")]
    reply = await model.ainvoke(messages)
    assert isinstance(reply, AIMessage)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert reply.response_metadata["stop_reason"] == "tool_use"
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] > 0
    messages += [reply, get_weather.invoke(reply.tool_calls[0])]  # a ToolMessage, as LangChain's docs do it
    assert isinstance(messages[-1], ToolMessage)
    final = await asyncio.to_thread(model.invoke, messages)  # the blocking twin
    assert final.content == "Tool said: -3C in Oslo" and final.tool_calls == []
    sent = [r.json for r in standin.api.requests if r.path.endswith("/chat/completions")]
    assert sent[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent[0]["tools"][0]["function"]["name"] == "get_weather" and sent[0]["max_tokens"] == 100
    call_id = reply.tool_calls[0]["id"]
    assert sent[1]["messages"][2]["tool_calls"][0]["id"] == call_id
    assert sent[1]["messages"][3] == {"role": "tool", "tool_call_id": call_id, "content": "-3C in Oslo"}


async def test_stream_yields_text_as_it_arrives(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.stream_delay = 0.2
    model = chat_model(daemon, HOSTED)
    started = time.perf_counter()
    arrivals: list[tuple[float, AIMessageChunk]] = []
    async for chunk in model.astream("one two three four"):
        arrivals.append((time.perf_counter() - started, chunk))
    texts = [chunk.content for _, chunk in arrivals if chunk.content]
    assert texts == ["Echo:", " one", " two", " three", " four"]
    first = next(at for at, chunk in arrivals if chunk.content)
    assert arrivals[-1][0] - first >= 0.6  # the first word was there while the rest was still coming
    whole = sum((chunk for _, chunk in arrivals[1:]), arrivals[0][1])
    assert whole.content == "Echo: one two three four" and whole.usage_metadata is not None
    standin.api.stream_delay = 0.0
    chunks = await asyncio.to_thread(lambda: [c.content for c in model.stream("hi there")])
    assert "".join(str(c) for c in chunks) == "Echo: hi there" and len([c for c in chunks if c]) == 3


async def test_streamed_tool_call_chunks(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    model = chat_model(daemon, "tool-get_weather").bind_tools([get_weather])
    chunks = [chunk async for chunk in model.astream('{"city": "Bergen, a rainy city"}')]
    assert sum(len(c.tool_call_chunks) for c in chunks) >= 3  # name first, then argument fragments
    whole = sum(chunks[1:], chunks[0])
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [("get_weather", {"city": "Bergen, a rainy city"})]


async def test_echo_works_offline(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(key=None)
    model = chat_model(daemon)  # the companion's default model: echo
    reply = await model.ainvoke("nothing leaves this machine")
    assert reply.content == "nothing leaves this machine"
    assert reply.response_metadata["model_name"] == "echo"
    # Echo answers a forced tool choice with a call, so the whole tool round trip runs offline.
    forced = model.bind_tools([get_weather], tool_choice="get_weather")
    reply = await forced.ainvoke("Oslo")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]
    final = await model.ainvoke([HumanMessage("Oslo"), reply, get_weather.invoke(reply.tool_calls[0])])
    assert final.content == "Oslo"

    class City(BaseModel):
        city: str

    # LangChain's structured output binds the schema as a tool and forces it.
    assert await model.with_structured_output(City).ainvoke("Bergen") == City(city="Bergen")


async def test_errors(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    with pytest.raises(LLMClientError) as caught:
        await chat_model(daemon, "no-such/model").ainvoke("hi")
    assert caught.value.status == 404
    standin.api.cut_stream_after(2)
    with pytest.raises(LLMClientError) as caught:
        async for _ in chat_model(daemon, HOSTED).astream("one two three four"):
            pass
    assert caught.value.code == "upstream_broken"
    with pytest.raises(ValueError, match="stop sequences"):
        await chat_model(daemon, HOSTED).ainvoke("hi", stop=["x"])
    with pytest.raises(ValueError, match="tool_choice"):
        await chat_model(daemon, HOSTED).bind_tools([get_weather], tool_choice=3).ainvoke("hi")
