"""Strands Agents on the companion: a real `Agent` with a Python `@tool` runs its whole tool loop
through the daemon (hosted stand-in's `tool-<name>` model), and offline on the built-in echo model."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from llmtune_companion.llm_client import LLMClient, LLMClientError, MissingExtraError
from llmtune_companion.llm_client.strands_model import CompanionStrandsModel
from pydantic import BaseModel
from strands import Agent, tool
from strands.types.exceptions import ModelThrottledException

from tests.conftest import Daemon, StandIn, StartDaemon

calls: list[str] = []


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    calls.append(text)
    return len(text.split())


def strands_model(daemon: Daemon, model: str | None = None, **params: Any) -> CompanionStrandsModel:
    built = LLMClient(daemon.url, daemon.token).get_model(format="strands", model=model, **params)
    assert isinstance(built, CompanionStrandsModel)
    return built


async def test_agent_runs_a_tool_loop_through_the_companion(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    calls.clear()
    agent = Agent(model=strands_model(daemon, "tool-word_count", temperature=0.2), tools=[word_count],
                  system_prompt="Use your tools.", callback_handler=None)
    result = await agent.invoke_async("the quick brown fox")
    assert calls == ["the quick brown fox"]
    assert str(result).strip() == "Tool said: 4"  # the final answer carries the tool's result
    assert result.stop_reason == "end_turn"
    assert result.metrics.accumulated_usage["inputTokens"] > 0
    chats = [r.json for r in standin.api.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 2
    first, second = chats
    assert first["messages"] == [{"role": "system", "content": "Use your tools."},
                                 {"role": "user", "content": "the quick brown fox"}]
    assert first["tools"][0]["function"]["name"] == "word_count" and first["temperature"] == 0.2
    call = second["messages"][2]["tool_calls"][0]
    assert call["function"]["name"] == "word_count"
    assert second["messages"][3] == {"role": "tool", "tool_call_id": call["id"], "content": "4"}
    # The agent keeps the conversation in Strands' own shape: tool use, tool result, answer.
    assert [list(block) for m in agent.messages for block in m["content"]] == [
        ["text"], ["toolUse"], ["toolResult"], ["text"]]


async def test_sync_agent_call_streams_text(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    seen: list[str] = []

    def handler(**event: Any) -> None:
        if "data" in event:
            seen.append(event["data"])

    agent = Agent(model=strands_model(daemon, "meta-llama/Llama-3.3-70B-Instruct"), callback_handler=handler)
    result = await asyncio.to_thread(agent, "hello there friend")  # the blocking call, as the Strands docs show
    assert seen == ["Echo:", " hello", " there", " friend"]
    assert str(result).strip() == "Echo: hello there friend"


async def test_echo_works_offline(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(key=None)
    agent = Agent(model=strands_model(daemon), tools=[word_count], callback_handler=None)  # default model: echo
    result = await agent.invoke_async("nothing leaves this machine")
    assert str(result).strip() == "nothing leaves this machine"

    class City(BaseModel):
        city: str

    # Structured output forces a tool call, which echo answers with the user's text.
    events = [e async for e in strands_model(daemon, "echo").structured_output(City, [
        {"role": "user", "content": [{"text": "Oslo"}]}])]
    assert events[-1] == {"output": City(city="Oslo")}


async def test_errors_reach_the_agent(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    agent = Agent(model=strands_model(daemon, "no-such/model"), callback_handler=None)
    with pytest.raises(LLMClientError) as caught:
        await agent.invoke_async("hi")
    assert caught.value.status == 404
    # A mid-stream failure is raised too, not taken for the end of the answer.
    standin.api.cut_stream_after(2)
    agent = Agent(model=strands_model(daemon, "meta-llama/Llama-3.3-70B-Instruct"), callback_handler=None)
    with pytest.raises(LLMClientError) as caught:
        await agent.invoke_async("one two three four")
    assert caught.value.code == "upstream_broken"
    # 429 becomes Strands' throttling exception, which its event loop retries.
    standin.api.fail_next(429, times=10, retry_after=60)
    model = strands_model(daemon, "meta-llama/Llama-3.3-70B-Instruct")
    with pytest.raises(ModelThrottledException):
        async for _ in model.stream([{"role": "user", "content": [{"text": "hi"}]}]):
            pass


def test_get_model_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    client = LLMClient("http://127.0.0.1:1", "lct_x")
    with pytest.raises(ValueError, match=r"unknown model format 'crewai'.*'strands', 'langchain'"):
        client.get_model(format="crewai")
    with pytest.raises(TypeError, match="top_k"):
        client.get_model(format="strands", top_k=3)
    monkeypatch.setitem(sys.modules, "strands", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'llmtune-companion\[strands\]'"):
        client.get_model(format="strands")
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(ImportError, match=r"pip install 'llmtune-companion\[langchain\]'"):
        client.get_model(format="langchain")
