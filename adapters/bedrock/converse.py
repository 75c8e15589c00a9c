"""OpenAI chat <-> AWS Bedrock Converse, both ways, as pure functions (no boto3, no I/O).

An OpenAI chat request becomes the keyword arguments of Converse / ConverseStream (messages,
system, toolConfig, inferenceConfig); Converse's answer becomes a chat.completion, and
ConverseStream's events become chat.completion.chunk SSE, written with the one OpenAI stream
model (adapters/openai_stream.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from ..openai_stream import DONE, ChunkWriter, FunctionCall, completion, new_call_id, new_id, text_of

# Converse stopReason -> OpenAI finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")


class TranslationError(ValueError):
    """The OpenAI request has something Converse cannot express."""


# -- OpenAI -> Converse ---------------------------------------------------------------------------


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise TranslationError("the bedrock backend takes images as data: URLs (data:image/png;base64,...)")
    header, data = url.split(",", 1)
    fmt = header[len("data:image/"):].split(";", 1)[0].lower().replace("jpg", "jpeg")
    if fmt not in IMAGE_FORMATS:
        raise TranslationError(f"image format {fmt!r} is not supported by Bedrock (png, jpeg, gif, webp)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TranslationError("an image data: URL is not valid base64") from exc
    return {"image": {"format": fmt, "source": {"bytes": raw}}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("message content must be a string or an array of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise TranslationError("content parts must be objects")
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise TranslationError(f"content part type {kind!r} is not supported by the bedrock backend")
    return blocks


def _tool_use_blocks(tool_calls: Any) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise TranslationError("'tool_calls' must be an array")
    blocks: list[dict[str, Any]] = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError("each tool call needs function.name")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError as exc:
            raise TranslationError(f"tool call {function['name']!r}: arguments are not JSON") from exc
        if not isinstance(parsed, dict):
            raise TranslationError(f"tool call {function['name']!r}: arguments must be a JSON object")
        ident = call.get("id") or new_call_id()
        blocks.append({"toolUse": {"toolUseId": str(ident), "name": function["name"], "input": parsed}})
    return blocks


def _tool_config(payload: dict[str, Any], history_has_tools: bool) -> dict[str, Any] | None:
    tools = payload.get("tools")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array")
    specs: list[dict[str, Any]] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise TranslationError("only function tools are supported by the bedrock backend")
        if not isinstance(function.get("name"), str):
            raise TranslationError("each tool needs function.name")
        spec: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            spec["description"] = str(function["description"])
        spec["inputSchema"] = {"json": function.get("parameters") or {"type": "object", "properties": {}}}
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    choice = payload.get("tool_choice")
    if choice == "none":
        # Converse has no "none": leave the tools out, unless the history uses them (then they must be there).
        return config if history_has_tools else None
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError("tool_choice must be 'auto', 'none', 'required' or "
                                   "{type: function, function: {name}}")
        config["toolChoice"] = {"tool": {"name": function["name"]}}
    elif choice is not None:
        raise TranslationError(f"tool_choice {choice!r} is not supported")
    return config


def to_converse(payload: dict[str, Any], model_id: str) -> dict[str, Any]:
    """An OpenAI chat request as the keyword arguments of boto3's converse / converse_stream."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Converse wants user and assistant turns to alternate
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if not isinstance(message, dict):
            raise TranslationError("each message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _content_blocks(message.get("content")))
        elif role == "assistant":
            blocks = [{"text": text_of(message.get("content"))}] if text_of(message.get("content")) else []
            if message.get("tool_calls"):
                blocks.extend(_tool_use_blocks(message["tool_calls"]))
            add("assistant", blocks)
        elif role == "tool":
            text = text_of(message.get("content"))
            result = {"toolUseId": str(message.get("tool_call_id") or ""), "content": [{"text": text or " "}]}
            add("user", [{"toolResult": result}])
        else:
            raise TranslationError(f"message role {role!r} is not supported by the bedrock backend")
    if not turns:
        raise TranslationError("the conversation has no user message")

    kwargs: dict[str, Any] = {"modelId": model_id, "messages": turns}
    if system:
        kwargs["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if payload.get(ours) is not None:
            inference[theirs] = payload[ours]
    stop = payload.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        kwargs["inferenceConfig"] = inference
    history_has_tools = any("toolUse" in block or "toolResult" in block for turn in turns for block in turn["content"])
    tool_config = _tool_config(payload, history_has_tools)
    if tool_config is not None:
        kwargs["toolConfig"] = tool_config
    return kwargs


# -- Converse -> OpenAI ---------------------------------------------------------------------------


# -- Converse -> OpenAI ---------------------------------------------------------------------------


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("totalTokens") or prompt + completion)}


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def from_converse(response: dict[str, Any], model: str, ident: str | None = None) -> dict[str, Any]:
    """A Converse answer as an OpenAI chat.completion."""
    message = (response.get("output") or {}).get("message") or {}
    texts: list[str] = []
    calls: list[FunctionCall] = []
    for block in message.get("content") or []:
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(FunctionCall(str(use.get("toolUseId") or new_call_id()), str(use.get("name")),
                                      orjson.dumps(use.get("input") or {}).decode()))
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = [call.to_wire() for call in calls]
    return completion(model, out, finish_reason(response.get("stopReason")), ident=ident,
                      usage=_usage(response.get("usage")))


class ConverseStreamTranslator:
    """ConverseStream events (as boto3 yields them) -> chat.completion.chunk SSE lines."""

    def __init__(self, model: str, *, include_usage: bool, ident: str | None = None) -> None:
        self.chunks = ChunkWriter(model, ident=ident or new_id())
        self.include_usage = include_usage
        self.stopped = False
        self._usage: dict[str, int] | None = None
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool_calls index
        self._started = False

    def _role(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self.chunks.delta({"role": "assistant", "content": ""})]

    def _tool_index(self, block: int) -> int:
        return self._tools.setdefault(block, len(self._tools))

    def feed(self, event: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if "messageStart" in event:
            out += self._role()
        elif "contentBlockStart" in event:
            start = event["contentBlockStart"]
            use = (start.get("start") or {}).get("toolUse")
            if use is not None:
                out += self._role()
                index = self._tool_index(int(start.get("contentBlockIndex", 0)))
                call = FunctionCall(str(use.get("toolUseId") or new_call_id()), str(use.get("name")), "")
                out.append(self.chunks.delta({"tool_calls": [call.to_wire(index)]}))
        elif "contentBlockDelta" in event:
            body = event["contentBlockDelta"]
            delta = body.get("delta") or {}
            if "text" in delta:
                out += self._role()
                out.append(self.chunks.delta({"content": delta["text"]}))
            elif "toolUse" in delta:
                out += self._role()
                index = self._tool_index(int(body.get("contentBlockIndex", 0)))
                fragment = {"index": index, "function": {"arguments": (delta["toolUse"] or {}).get("input", "")}}
                out.append(self.chunks.delta({"tool_calls": [fragment]}))
        elif "messageStop" in event:
            out += self._role()
            self.stopped = True
            out.append(self.chunks.delta({}, finish_reason(event["messageStop"].get("stopReason"))))
        elif "metadata" in event:
            self._usage = _usage(event["metadata"].get("usage"))
        return out

    def finish(self) -> list[bytes]:
        out: list[bytes] = []
        if self.include_usage and self._usage is not None:
            out.append(self.chunks.usage(self._usage))
        out.append(DONE)
        return out
