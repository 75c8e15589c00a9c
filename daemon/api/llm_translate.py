"""The LLM routing API's shapes <-> OpenAI chat: the one place they are translated, all pure functions.

A routing-API request (`{model?, messages, system?, tools?, tool_choice?, max_tokens?, temperature?}`,
messages and tools in OpenAI's, Anthropic's or Bedrock Converse's style) becomes an OpenAI chat
request, which every backend speaks through forward(). The OpenAI answer comes back as
`{content, model, stop_reason, tool_calls, usage}`, or, streamed, as the routing API's events
(`content_delta`, `tool_use_start`, `tool_use_delta`, `tool_use_complete`, `message_stop`, `metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..adapters.openai_stream import FunctionCall, Turn, new_call_id
from ..errors import CompanionError, error_body

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# OpenAI finish_reason -> routing-API stop_reason; anything else passes through as it came.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filtered",
}

Event = dict[str, Any]


def _bad(message: str, code: str = "invalid_request") -> CompanionError:
    return CompanionError(400, message, code)


# -- request ------------------------------------------------------------------------------------


def to_openai_request(body: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The OpenAI chat request for a routing-API body; a malformed body is a 400 CompanionError."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "invalid_messages")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("'system' must be a string")
    payload: dict[str, Any] = {"model": model, "messages": messages_to_openai(messages, system)}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array", "invalid_tools")
        if tools:
            payload["tools"] = [tool_to_openai(tool, index) for index, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        payload["tool_choice"] = tool_choice_to_openai(choice)
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _bad("'max_tokens' must be a positive integer")
        payload["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise _bad("'temperature' must be a number")
        payload["temperature"] = temperature
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def messages_to_openai(messages: list[Any], system: str | list[Any] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        text = system if isinstance(system, str) else _joined_text(system, "system")
        out.append({"role": "system", "content": text})
    for index, message in enumerate(messages):
        out.extend(message_to_openai(message, index))
    return out


def message_to_openai(message: Any, index: int = 0) -> list[dict[str, Any]]:
    """One message as OpenAI messages: a user turn of tool results becomes one `tool` message each."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _bad(f"{where} must be an object with 'role' and 'content'", "invalid_messages")
    role = message.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}", "invalid_messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return [dict(message)]  # already OpenAI-shaped (tool_calls, tool_call_id ... kept)
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or an array of content blocks", "invalid_messages")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        spot = f"{where}.content[{number}]"
        if not isinstance(block, dict):
            raise _bad(f"{spot} must be an object", "invalid_messages")
        kind = block.get("type")
        if kind == "text" or (kind is None and isinstance(block.get("text"), str)):
            parts.append({"type": "text", "text": _string(block.get("text"), f"{spot}.text")})
        elif kind == "tool_use" or "toolUse" in block:
            use = block if kind == "tool_use" else block["toolUse"]
            calls.append(_tool_call(use, spot))
        elif kind == "tool_result" or "toolResult" in block:
            results.append(_tool_result(block if kind == "tool_result" else block["toolResult"], spot))
        elif kind == "image_url":
            parts.append(block)
        elif kind == "image":
            parts.append(_image(block, spot))
        else:
            raise _bad(f"{spot}: unsupported content block type {kind!r}", "invalid_messages")
    out: list[dict[str, Any]] = list(results)
    if calls:
        if role != "assistant":
            raise _bad(f"{where}: tool_use blocks belong in an assistant message", "invalid_messages")
        out.append({"role": "assistant", "content": _collapse(parts) if parts else None, "tool_calls": calls})
    elif parts or not results:
        out.append({"role": role, "content": _collapse(parts)})
    return out


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string", "invalid_messages")
    return value


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content becomes a plain string: every OpenAI-compatible server reads that."""
    if all(part.get("type") == "text" for part in parts):
        return "\n".join(str(part["text"]) for part in parts)
    return parts


def _joined_text(blocks: list[Any], where: str) -> str:
    texts = []
    for block in blocks:
        if isinstance(block, str):
            texts.append(block)
        elif isinstance(block, dict) and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block, dict) and "json" in block:
            texts.append(orjson.dumps(block["json"]).decode())
        else:
            raise _bad(f"{where}: only text blocks are accepted here", "invalid_messages")
    return "\n".join(texts)


def _tool_call(use: Any, where: str) -> dict[str, Any]:
    if not isinstance(use, dict):
        raise _bad(f"{where} must be an object", "invalid_messages")
    ident = use.get("id") or use.get("toolUseId")
    name = use.get("name")
    if not isinstance(ident, str) or not ident or not isinstance(name, str) or not name:
        raise _bad(f"{where}: a tool_use block needs 'id' and 'name'", "invalid_messages")
    arguments = use.get("input", {})
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return FunctionCall(ident, name, text).to_wire()


def _tool_result(result: Any, where: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise _bad(f"{where} must be an object", "invalid_messages")
    ident = result.get("tool_use_id") or result.get("toolUseId")
    if not isinstance(ident, str) or not ident:
        raise _bad(f"{where}: a tool_result block needs 'tool_use_id'", "invalid_messages")
    content = result.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = _joined_text(content, where)
    else:
        text = orjson.dumps(content).decode()
    if result.get("is_error") is True or result.get("status") == "error":
        text = "[error] " + text
    return {"role": "tool", "tool_call_id": ident, "content": text}


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad(f"{where}: an image block needs a base64 or url source", "invalid_messages")
    return {"type": "image_url", "image_url": {"url": url}}


def tool_to_openai(tool: Any, index: int = 0) -> dict[str, Any]:
    """OpenAI function tools pass; Anthropic `{name, description, input_schema}` and Bedrock
    `{toolSpec: {name, description, inputSchema: {json}}}` become function tools."""
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise _bad(f"{where} must be an object", "invalid_tools")
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        if not isinstance(tool["function"].get("name"), str) or not tool["function"]["name"]:
            raise _bad(f"{where}.function.name is required", "invalid_tools")
        return tool
    spec: dict[str, Any] = tool["toolSpec"] if isinstance(tool.get("toolSpec"), dict) else tool
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}: a tool needs a 'name'", "invalid_tools")
    schema = spec.get("input_schema", spec.get("parameters"))
    if schema is None and isinstance(spec.get("inputSchema"), dict):
        schema = spec["inputSchema"].get("json", spec["inputSchema"])
    function: dict[str, Any] = {"name": name, "parameters": schema or {"type": "object", "properties": {}}}
    if isinstance(spec.get("description"), str):
        function["description"] = spec["description"]
    return {"type": "function", "function": function}


def tool_choice_to_openai(choice: Any) -> str | dict[str, Any]:
    """`{"type": "auto"|"any"|"none"|"tool", "name"}` (or Bedrock's `{"auto": {}}` ...) as OpenAI's."""
    if isinstance(choice, str):
        if choice in ("auto", "none", "required"):
            return choice
        if choice == "any":
            return "required"
    elif isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("function"), dict):
            return choice
        if kind is None and len(choice) == 1:  # Bedrock: {"auto": {}}, {"any": {}}, {"tool": {"name"}}
            kind, inner = next(iter(choice.items()))
            choice = {"type": kind, **(inner if isinstance(inner, dict) else {})}
        if kind == "auto":
            return "auto"
        if kind == "any":
            return "required"
        if kind == "none":
            return "none"
        if kind == "tool" and isinstance(choice.get("name"), str) and choice["name"]:
            return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("'tool_choice' must be {\"type\": \"auto\"|\"any\"|\"none\"} or {\"type\": \"tool\", \"name\": ...}",
               "invalid_tool_choice")


# -- response -----------------------------------------------------------------------------------


def stop_reason(finish_reason: str | None, has_tool_calls: bool = False) -> str:
    if has_tool_calls and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"  # some servers say "stop" after a tool call
    if not finish_reason:
        return "end_turn"
    return STOP_REASONS.get(finish_reason, finish_reason)


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's JSON arguments as a dict; text that is not a JSON object is kept under `_raw`."""
    if not text.strip():
        return {}
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return parsed if isinstance(parsed, dict) else {"_raw": text}


def _usage(usage: dict[str, Any] | None) -> tuple[int, int]:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0), (completion if isinstance(completion, int) else 0)


def from_openai_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat.completion as the routing API's answer; `model` is the id the client used."""
    turn = Turn()
    turn.feed_message(body)
    calls = turn.tool_calls()
    prompt, completion = _usage(turn.usage)
    return {
        "content": turn.text,
        "model": model,
        "stop_reason": stop_reason(turn.finish_reason, bool(calls)),
        "tool_calls": [{"id": c.id, "name": c.name, "input": parse_arguments(c.arguments)} for c in calls],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def upstream_error_message(body: bytes, status: int) -> tuple[str, dict[str, Any]]:
    """The message (and code) out of an upstream's error body, whatever its shape."""
    details: dict[str, Any] = {"upstream_status": status}
    message = f"the model's backend answered HTTP {status}"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (f"{message}: {text[:500]}" if text else message), details
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = f"{message}: {error['message']}"
        if isinstance(error.get("code"), str | int):
            details["upstream_code"] = error["code"]
    elif isinstance(error, str):
        message = f"{message}: {error}"
    elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        message = f"{message}: {parsed['message']}"
    return message, details


# -- stream -------------------------------------------------------------------------------------


def error_event(status: int, message: str, code: str) -> Event:
    error = orjson.loads(error_body(status, message, code))["error"]
    return {"type": "error", "error": error}


@dataclass(slots=True)
class RoutingStreamTranslator:
    """OpenAI chat chunks in, routing-API events out; `model` is the id the client used.

    Feed each chunk to `feed()`, then call `finish()` once the stream ended: tool calls complete and
    `message_stop` go out on the chunk carrying finish_reason, `metadata` (usage) at the very end.
    """

    model: str
    turn: Turn = field(default_factory=Turn)
    started: dict[int, str] = field(default_factory=dict)  # call index -> the id its events carry
    stopped: bool = False

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        text = self.turn.feed_chunk(chunk)
        if text:
            events.append({"type": "content_delta", "delta": text})
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            for part in (choice.get("delta") or {}).get("tool_calls") or []:
                events.extend(self._tool_part(part))
        if self.turn.finish_reason and not self.stopped:
            events.extend(self._stop())
        return events

    def _tool_part(self, part: dict[str, Any]) -> list[Event]:
        index = int(part.get("index", 0))
        slot = self.turn.calls[index]
        fragment = (part.get("function") or {}).get("arguments") or ""
        if index not in self.started:
            if not slot["name"]:
                return []  # no name yet: start once it is known, with the arguments so far
            self.started[index] = slot["id"] or new_call_id()
            events: list[Event] = [{"type": "tool_use_start", "id": self.started[index], "name": slot["name"]}]
            if slot["arguments"]:
                events.append({"type": "tool_use_delta", "id": self.started[index], "delta": slot["arguments"]})
            return events
        return [{"type": "tool_use_delta", "id": self.started[index], "delta": fragment}] if fragment else []

    def _stop(self) -> list[Event]:
        self.stopped = True
        events: list[Event] = []
        for index, slot in sorted(self.turn.calls.items()):
            if index not in self.started:  # a call that never got a name: announce it now
                self.started[index] = slot["id"] or new_call_id()
                events.append({"type": "tool_use_start", "id": self.started[index], "name": slot["name"]})
                if slot["arguments"]:
                    events.append({"type": "tool_use_delta", "id": self.started[index], "delta": slot["arguments"]})
            events.append({"type": "tool_use_complete", "id": self.started[index], "name": slot["name"],
                           "input": parse_arguments(slot["arguments"])})
        events.append({"type": "message_stop", "stop_reason": stop_reason(self.turn.finish_reason,
                                                                          bool(self.turn.calls)),
                       "model": self.model})
        return events

    def finish(self) -> list[Event]:
        """The closing events once the upstream stream ended cleanly (finish_reason or `[DONE]`)."""
        events = [] if self.stopped else self._stop()
        prompt, completion = _usage(self.turn.usage)
        events.append({"type": "metadata", "usage": {"input_tokens": prompt, "output_tokens": completion}})
        return events

    def feed_message(self, body: dict[str, Any]) -> list[Event]:
        """A whole chat.completion (a backend that did not stream) as the same event sequence."""
        turn = Turn()
        turn.feed_message(body)
        events: list[Event] = []
        if turn.text:
            events.append({"type": "content_delta", "delta": turn.text})
        self.turn.usage = turn.usage
        self.turn.finish_reason = turn.finish_reason
        for index, slot in sorted(turn.calls.items()):
            self.turn.calls[index] = slot
        return events + self._stop()
