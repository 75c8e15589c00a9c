"""A LangChain chat model served by the companion: LangChain messages and tools go to
`/api/v1/llm/completions/stream`, its events come back as message chunks (text as it arrives,
tool calls as LangChain tool call chunks). `invoke` gathers the same stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from .client import LLMClient
from .types import (
    ContentDelta,
    MessageStop,
    Metadata,
    StreamEvent,
    ToolUseComplete,
    ToolUseDelta,
    ToolUseStart,
)

ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool


def _content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    """LangChain content (a string or content blocks) as routing-API content."""
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            blocks.append({"type": "text", "text": block})
        elif isinstance(block, dict) and block.get("type") == "text":
            blocks.append({"type": "text", "text": str(block.get("text", ""))})
        elif isinstance(block, dict) and block.get("type") == "image_url":
            blocks.append({"type": "image_url", "image_url": block["image_url"]})
        elif isinstance(block, dict) and block.get("type") == "image" and block.get("base64"):
            blocks.append({"type": "image", "source": {"type": "base64", "data": block["base64"],
                                                       "media_type": block.get("mime_type", "image/png")}})
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call", "reasoning"):
            continue  # an AI message's tool calls are sent from .tool_calls; reasoning is not sent back
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"content block {kind!r} is not supported by the companion's routing API")
    return blocks


def format_messages(messages: Sequence[BaseMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt and the routing-API messages for a LangChain conversation."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            system.append(message.text)
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _content(message.content)})
        elif isinstance(message, AIMessage):
            if not message.tool_calls:
                out.append({"role": "assistant", "content": _content(message.content)})
                continue
            blocks: list[dict[str, Any]] = [{"type": "text", "text": message.text}] if message.text else []
            blocks += [{"type": "tool_use", "id": call["id"] or f"call_{index}", "name": call["name"],
                        "input": call["args"]} for index, call in enumerate(message.tool_calls)]
            out.append({"role": "assistant", "content": blocks})
        elif isinstance(message, ToolMessage):
            text = message.text if message.text or not message.content else orjson.dumps(message.content).decode()
            out.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": message.tool_call_id,
                                                     "content": text, "is_error": message.status == "error"}]})
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": _content(message.content)})
        else:
            raise ValueError(f"{type(message).__name__} is not supported by the companion's routing API")
    return ("\n\n".join(system) or None), out


def format_tool_choice(choice: Any) -> dict[str, Any] | None:
    """LangChain's tool_choice ("auto", "any"/"required"/True, "none", a tool's name, a dict)."""
    if choice is None or choice is False:
        return None
    if choice is True or choice in ("any", "required"):
        return {"type": "any"}
    if choice in ("auto", "none"):
        return {"type": choice}
    if isinstance(choice, str):
        return {"type": "tool", "name": choice}
    if isinstance(choice, dict):
        return choice
    raise ValueError(f"tool_choice {choice!r}: expected 'auto', 'any', 'none', a tool's name or a dict")


@dataclass
class _Chunks:
    """Routing-API events -> LangChain chunks, with each tool call's index in the message."""

    model: str | None
    index: dict[str, int] = field(default_factory=dict)
    streamed: set[str] = field(default_factory=set)  # calls whose arguments came as deltas

    def chunk(self, event: StreamEvent) -> ChatGenerationChunk | None:
        message: AIMessageChunk
        if isinstance(event, ContentDelta):
            message = AIMessageChunk(content=event.delta)
        elif isinstance(event, ToolUseStart):
            self.index[event.id] = len(self.index)
            message = AIMessageChunk(content="", tool_call_chunks=[
                tool_call_chunk(name=event.name, args="", id=event.id, index=self.index[event.id])])
        elif isinstance(event, ToolUseDelta):
            self.streamed.add(event.id)
            message = AIMessageChunk(content="", tool_call_chunks=[
                tool_call_chunk(args=event.delta, index=self.index.get(event.id, 0))])
        elif isinstance(event, ToolUseComplete):
            if event.id in self.streamed or not event.input:
                return None
            # Arguments that never came as deltas (a backend that answered whole) come in one piece.
            message = AIMessageChunk(content="", tool_call_chunks=[
                tool_call_chunk(args=orjson.dumps(event.input).decode(), index=self.index.get(event.id, 0))])
        elif isinstance(event, MessageStop):
            message = AIMessageChunk(content="", response_metadata={
                "stop_reason": event.stop_reason, "model_name": event.model or self.model or ""})
        elif isinstance(event, Metadata):
            usage = event.usage
            message = AIMessageChunk(content="", usage_metadata={
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens})
        else:
            raise event.exception()
        return ChatGenerationChunk(message=message)


class ChatLLMTuneCompanion(BaseChatModel):
    """`LLMClient().get_model(format="langchain")`: a chat model with invoke, stream, their async
    twins and bind_tools, routed through the companion."""

    client: LLMClient = Field(default_factory=LLMClient, exclude=True)
    model: str | None = None
    """A model id from `GET /api/v1/llm/models`; None: the companion's default model."""
    temperature: float | None = None
    max_tokens: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llmtune-companion"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if stop:
            raise ValueError("the companion's routing API takes no stop sequences")
        unknown = {k for k in kwargs if not k.startswith("ls_")} - {"tools", "tool_choice", "model", "temperature",
                                                                     "max_tokens"}
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}: expected tools, tool_choice, model, temperature, "
                            "max_tokens")
        system, converted = format_messages(messages)
        return {"messages": converted, "system": system, "model": kwargs.get("model", self.model),
                "tools": kwargs.get("tools") or None, "tool_choice": format_tool_choice(kwargs.get("tool_choice")),
                "max_tokens": kwargs.get("max_tokens", self.max_tokens),
                "temperature": kwargs.get("temperature", self.temperature)}

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        chunks = _Chunks(self.model)
        for event in self.client.stream(**self._request(messages, stop, kwargs)):
            chunk = chunks.chunk(event)
            if chunk is not None:
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        chunks = _Chunks(self.model)
        async for event in self.client.astream(**self._request(messages, stop, kwargs)):
            chunk = chunks.chunk(event)
            if chunk is not None:
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def bind_tools(self, tools: Sequence[ToolLike], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)
