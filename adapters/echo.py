"""The built-in backend: no network, no key, no GPU (the seed's no-op provider).

It answers in OpenAI's shapes by echoing the last user message, so the very first run works and
every client feature (streaming, usage, embeddings) can be tried before anything is configured.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .base import Backend, BackendRequest, BackendResponse, BytesResponse

JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
EMBEDDING_DIMENSIONS = 64


def _error(status: int, message: str, code: str, field: str | None = None) -> BytesResponse:
    details = {"field": field} if field else {}
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "details": details}}
    return BytesResponse(status, orjson.dumps(body), JSON)


class InvalidField(ValueError):
    """A request field of the wrong shape; answered 400 naming the field."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"'{field}' must be {expected}")
        self.field = field


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(part, str | int) for part in prompt):
        return " ".join(map(str, prompt))  # several prompts, or token ids
    raise InvalidField("prompt", "a string or an array of strings")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _words(text: str) -> list[str]:
    # Keep the spaces with the words, so the chunks join back into the exact text.
    pieces = text.split(" ")
    return [piece if index == 0 else " " + piece for index, piece in enumerate(pieces)]


def _forced_tool(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The function a request forces (`tool_choice` naming one, or "required": the first), if any."""
    functions = [t["function"] for t in payload.get("tools") or []
                 if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")]
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidField("tool_choice.function", 'an object with a "name"')
    elif choice not in (None, "auto", "none", "required"):
        raise InvalidField("tool_choice", '"auto", "none", "required" or an object naming a function')
    if not functions or choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return dict(functions[0])
    wanted = choice["function"]["name"] if isinstance(choice, dict) else None
    return next((dict(f) for f in functions if f["name"] == wanted), None)


def _placeholder_arguments(schema: Any, text: str) -> dict[str, Any]:
    """Arguments that satisfy a JSON schema's required fields: strings get the user's message."""
    if not isinstance(schema, dict):
        return {}
    properties: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
    placeholders: dict[str, Any] = {"string": text, "integer": 0, "number": 0, "boolean": False,
                                    "array": [], "object": {}}
    arguments: dict[str, Any] = {}
    required = schema.get("required") or []
    if not isinstance(required, list):
        raise InvalidField("tools[].function.parameters.required", "an array of property names")
    for name in required:
        spec = properties.get(name)
        kind = spec.get("type", "string") if isinstance(spec, dict) else "string"
        arguments[str(name)] = placeholders.get(kind if isinstance(kind, str) else "string", text)
    return arguments


def _vector(text: str) -> list[float]:
    digest = hashlib.sha512(text.encode()).digest()
    raw = [value / 128.0 for value in struct.unpack("64b", digest)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]


class EchoBackend(Backend):
    kind = "echo"

    async def handle(self, request: BackendRequest) -> BackendResponse:
        try:
            return self._handle(request)
        except InvalidField as exc:
            return _error(400, str(exc), "invalid_field", exc.field)

    def _handle(self, request: BackendRequest) -> BackendResponse:
        payload = request.payload or {}
        if request.endpoint == "models":
            listing = [{"id": "echo", "object": "model", "created": 0, "owned_by": "llmtune-companion"}]
            return BytesResponse(200, orjson.dumps({"object": "list", "data": listing}), JSON)
        if request.endpoint == "embeddings":
            return self._embeddings(payload)
        if request.endpoint == "completions":
            text = _prompt_text(payload.get("prompt", ""))
            return self._answer(payload, text, chat=False, stream=request.stream)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array", "invalid_messages")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = _text_of(users[-1].get("content")) if users else ""
        tool = _forced_tool(payload)
        if tool is not None:
            return self._tool_call(payload, tool, text, stream=request.stream)
        return self._answer(payload, text, chat=True, stream=request.stream)

    def _tool_call(self, payload: dict[str, Any], tool: dict[str, Any], text: str, *, stream: bool) -> BackendResponse:
        """A forced tool choice is answered with a call to that tool, so clients' tool handling can be
        tried offline; the arguments fill the schema's required fields from the user's message."""
        model = str(payload.get("model") or "echo")
        name = str(tool.get("name"))
        arguments = orjson.dumps(_placeholder_arguments(tool.get("parameters"), text)).decode()
        call_id = "call_echo_" + uuid.uuid4().hex[:16]
        ident = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        prompt_tokens = len(text.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}
            body = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}], "usage": usage}
            return BytesResponse(200, orjson.dumps(body), JSON)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        half = len(arguments) // 2
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
        ]

        async def events() -> AsyncIterator[bytes]:
            def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
                chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": choices, **extra}
                return b"data: " + orjson.dumps(chunk) + b"\n\n"

            for delta in deltas:
                yield event([{"index": 0, "delta": delta, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
            if include_usage:
                yield event([], usage=usage)
            yield b"data: [DONE]\n\n"

        return BytesResponse(200, events(), SSE)

    def _answer(self, payload: dict[str, Any], text: str, *, chat: bool, stream: bool) -> BackendResponse:
        model = str(payload.get("model") or "echo")
        max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
        words = _words(text) if text else []
        finish = "stop"
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words, finish = words[:max_tokens], "length"
        prompt_tokens = len(text.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not stream:
            choice: dict[str, Any]
            if chat:
                content = "".join(words)
                choice = {"index": 0, "message": {"role": "assistant", "content": content}}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": "".join(words), "logprobs": None}
                obj = "text_completion"
            choice["finish_reason"] = finish
            body = {"id": ident, "object": obj, "created": created, "model": model,
                    "choices": [choice], "usage": usage}
            return BytesResponse(200, orjson.dumps(body), JSON)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return BytesResponse(200, self._stream(ident, created, model, words, finish, usage,
                                               chat=chat, include_usage=include_usage), SSE)

    async def _stream(self, ident: str, created: int, model: str, words: list[str], finish: str,
                      usage: dict[str, int], *, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {"id": ident, "object": obj, "created": created, "model": model, "choices": choices, **extra}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        if chat:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for word in words:
            delta: dict[str, Any] = {"delta": {"content": word}} if chat else {"text": word}
            yield event([{"index": 0, **delta, "finish_reason": None}])
        final: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        yield event([{"index": 0, **final, "finish_reason": finish}])
        if include_usage:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    def _embeddings(self, payload: dict[str, Any]) -> BackendResponse:
        raw = payload.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
            inputs = raw
        else:
            return _error(400, "'input' must be a string or an array of strings", "invalid_input")
        data = [{"object": "embedding", "index": i, "embedding": _vector(text)} for i, text in enumerate(inputs)]
        tokens = sum(len(text.split()) for text in inputs)
        body = {"object": "list", "data": data, "model": str(payload.get("model") or "echo"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return BytesResponse(200, orjson.dumps(body), JSON)
