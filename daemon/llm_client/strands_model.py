"""A Strands Agents model served by the companion: Strands' Bedrock-style messages and tool specs go
to `/api/v1/llm/completions/stream`, its events come back as Strands stream events.

Tool calls are emitted whole, as each completes (as Strands' OpenAI provider does), so parallel
calls never interleave inside one content block.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncGenerator
from typing import Any, TypedDict, TypeVar, cast

import orjson
from pydantic import BaseModel
from strands.event_loop import streaming
from strands.models.model import Model
from strands.tools import convert_pydantic_to_tool_spec
from strands.types.content import ContentBlock, Messages, SystemContentBlock
from strands.types.event_loop import StopReason
from strands.types.exceptions import ContextWindowOverflowException, ModelThrottledException
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolChoice, ToolSpec
from typing_extensions import Unpack, override

from .client import LLMClient
from .types import (
    ContentDelta,
    LLMClientError,
    MessageStop,
    Metadata,
    StreamError,
    ToolUseComplete,
    ToolUseDelta,
)

T = TypeVar("T", bound=BaseModel)

STOP_REASONS: frozenset[str] = frozenset({"content_filtered", "end_turn", "max_tokens", "stop_sequence", "tool_use"})


class CompanionStrandsConfig(TypedDict, total=False):
    """model_id: a model id from `GET /api/v1/llm/models` (None: the companion's default model);
    params: request options (temperature, max_tokens)."""

    model_id: str | None
    params: dict[str, Any]


def strands_error(error: LLMClientError) -> Exception:
    """Our error as the exception Strands' event loop acts on (it retries a throttled request)."""
    if error.status == 429:
        return ModelThrottledException(error.message)
    upstream = str(error.details.get("upstream_code", ""))
    if "context_length" in upstream or "context window" in error.message.lower():
        return ContextWindowOverflowException(error.message)
    return error


def _block(block: ContentBlock | dict[str, Any]) -> dict[str, Any] | None:
    """One Strands content block in the routing API's (Anthropic-style) shape; None: not sent."""
    if "text" in block:
        return {"type": "text", "text": block["text"]}
    if "toolUse" in block:
        use = block["toolUse"]
        return {"type": "tool_use", "id": use["toolUseId"], "name": use["name"], "input": use["input"]}
    if "toolResult" in block:
        result = block["toolResult"]
        parts: list[dict[str, Any]] = []
        for item in result.get("content", []):
            if "text" in item:
                parts.append({"type": "text", "text": item["text"]})
            elif "json" in item:
                parts.append({"type": "text", "text": orjson.dumps(item["json"]).decode()})
            else:
                raise ValueError(f"a tool result carries {sorted(item)}: the companion's routing API takes "
                                 "text and json tool results only")
        return {"type": "tool_result", "tool_use_id": result["toolUseId"], "content": parts,
                "is_error": result.get("status") == "error"}
    if "image" in block:
        image = block["image"]
        source = cast(dict[str, Any], image.get("source", {}))
        if "bytes" not in source:
            raise ValueError("an image must carry its bytes for the companion's routing API")
        data = base64.b64encode(source["bytes"]).decode()
        return {"type": "image", "source": {"type": "base64", "media_type": f"image/{image['format']}", "data": data}}
    if "reasoningContent" in block or "cachePoint" in block:
        return None  # the model's own reasoning and cache hints are not sent back
    raise ValueError(f"content block {sorted(block)} is not supported by the companion's routing API")


def format_messages(messages: Messages) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        blocks = [b for b in (_block(block) for block in message["content"]) if b is not None]
        if blocks:
            out.append({"role": message["role"], "content": blocks})
    return out


def format_tools(tool_specs: list[ToolSpec] | None) -> list[dict[str, Any]] | None:
    if not tool_specs:
        return None
    tools = []
    for spec in tool_specs:
        schema = spec["inputSchema"]
        tools.append({"name": spec["name"], "description": spec.get("description", ""),
                      "input_schema": schema.get("json", schema)})
    return tools


def format_tool_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    if not choice:
        return None
    if "tool" in choice:
        return {"type": "tool", "name": cast(dict[str, Any], choice)["tool"]["name"]}
    return {"type": "any" if "any" in choice else "auto"}


def format_system(system_prompt: str | None, content: list[SystemContentBlock] | None) -> str | None:
    if content:
        texts = [block["text"] for block in content if "text" in block]
        return "\n".join(texts) or None
    return system_prompt or None


class CompanionStrandsModel(Model):
    """`LLMClient().get_model(format="strands")`: pass it to `strands.Agent(model=...)`."""

    def __init__(self, client: LLMClient, **model_config: Unpack[CompanionStrandsConfig]) -> None:
        self.client = client
        self.config: CompanionStrandsConfig = {"model_id": None, "params": {}}
        self.update_config(**model_config)

    @override
    def update_config(self, **model_config: Unpack[CompanionStrandsConfig]) -> None:  # type: ignore[override]
        unknown = set(model_config) - set(CompanionStrandsConfig.__annotations__)
        if unknown:
            raise TypeError(f"unknown model config {sorted(unknown)}: expected model_id, params")
        self.config.update(model_config)

    @override
    def get_config(self) -> CompanionStrandsConfig:
        return self.config

    @override
    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        tool_choice: ToolChoice | None = None,
        system_prompt_content: list[SystemContentBlock] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        started = time.perf_counter()
        params = self.config.get("params") or {}
        events = self.client.astream(
            format_messages(messages),
            model=self.config.get("model_id"),
            system=format_system(system_prompt, system_prompt_content),
            tools=format_tools(tool_specs),
            tool_choice=format_tool_choice(tool_choice) if tool_specs else None,
            max_tokens=params.get("max_tokens"),
            temperature=params.get("temperature"),
        )
        text_open = False
        arguments: dict[str, list[str]] = {}  # call id -> its streamed argument fragments
        try:
            yield {"messageStart": {"role": "assistant"}}
            async for event in events:
                if isinstance(event, ContentDelta):
                    if not text_open:
                        text_open = True
                        yield {"contentBlockStart": {"start": {}}}
                    yield {"contentBlockDelta": {"delta": {"text": event.delta}}}
                    continue
                if text_open and isinstance(event, ToolUseComplete | MessageStop):
                    text_open = False
                    yield {"contentBlockStop": {}}
                if isinstance(event, ToolUseDelta):
                    arguments.setdefault(event.id, []).append(event.delta)
                elif isinstance(event, ToolUseComplete):
                    streamed = "".join(arguments.pop(event.id, []))
                    yield {"contentBlockStart": {"start": {"toolUse": {"name": event.name, "toolUseId": event.id}}}}
                    yield {"contentBlockDelta": {"delta": {"toolUse": {
                        "input": streamed if streamed.strip() else orjson.dumps(event.input).decode()}}}}
                    yield {"contentBlockStop": {}}
                elif isinstance(event, MessageStop):
                    reason = event.stop_reason if event.stop_reason in STOP_REASONS else "end_turn"
                    yield {"messageStop": {"stopReason": cast(StopReason, reason)}}
                elif isinstance(event, Metadata):
                    usage = event.usage
                    yield {"metadata": {
                        "usage": {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens,
                                  "totalTokens": usage.input_tokens + usage.output_tokens},
                        "metrics": {"latencyMs": int((time.perf_counter() - started) * 1000)}}}
                elif isinstance(event, StreamError):
                    raise event.exception()
        except LLMClientError as exc:
            raise strands_error(exc) from None

    @override
    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """The answer as `output_model`, by forcing a call to a tool whose input schema is that model."""
        tool_spec = convert_pydantic_to_tool_spec(output_model)
        forced = cast(ToolChoice, {"tool": {"name": tool_spec["name"]}})
        response = self.stream(prompt, [tool_spec], system_prompt, tool_choice=forced, **kwargs)
        event: dict[str, Any] = {}
        async for event in streaming.process_stream(response):
            yield event
        stop_reason, message, _, _ = event["stop"]
        if stop_reason != "tool_use":
            raise ValueError(f"the model answered with stop_reason {stop_reason!r} instead of a tool call")
        for block in message["content"]:
            use = block.get("toolUse")
            if use is not None and use["name"] == tool_spec["name"]:
                yield {"output": output_model(**use["input"])}
                return
        raise ValueError(f"the model did not call {tool_spec['name']!r}")
