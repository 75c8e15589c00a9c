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
from typing import Any, ClassVar

import orjson

from .base import Backend, BackendRequest, BackendResponse, BytesResponse
from .errors import error_reply
from .openai_stream import DONE, SSE_HEADERS, ChunkWriter, FunctionCall, completion, new_id, text_of, wants_usage

JSON = {"Content-Type": "application/json"}
EMBEDDING_DIMENSIONS = 64


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
    return text_of(content, " ")  # parts joined by spaces, as the words are echoed


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
    serves_any_model: ClassVar[bool] = True

    async def handle(self, request: BackendRequest) -> BackendResponse:
        try:
            return self._handle(request)
        except InvalidField as exc:
            return error_reply(400, str(exc), "invalid_field", {"field": exc.field})

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
            return error_reply(400, "'messages' must be a non-empty array", "invalid_messages")
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
        call = FunctionCall("call_echo_" + uuid.uuid4().hex[:16], name, arguments)
        prompt_tokens = len(text.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": [call.to_wire()]}
            return BytesResponse(200, orjson.dumps(completion(model, message, "tool_calls", usage=usage)), JSON)
        include_usage = wants_usage(payload)
        half = len(arguments) // 2
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": None, "tool_calls": [FunctionCall(call.id, name, "").to_wire(0)]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
        ]

        async def events() -> AsyncIterator[bytes]:
            chunks = ChunkWriter(model)
            for delta in deltas:
                yield chunks.delta(delta)
            yield chunks.delta({}, "tool_calls")
            if include_usage:
                yield chunks.usage(usage)
            yield DONE

        return BytesResponse(200, events(), SSE_HEADERS)

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
        if not stream:
            if not chat:
                choice = {"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": finish}
                body = {"id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time()),
                        "model": model, "choices": [choice], "usage": usage}
                return BytesResponse(200, orjson.dumps(body), JSON)
            message = {"role": "assistant", "content": "".join(words)}
            return BytesResponse(200, orjson.dumps(completion(model, message, finish, usage=usage)), JSON)
        chunks = ChunkWriter(model, kind="chat.completion.chunk" if chat else "text_completion")
        return BytesResponse(200, self._stream(chunks, words, finish, usage, chat=chat,
                                               include_usage=wants_usage(payload)), SSE_HEADERS)

    async def _stream(self, chunks: ChunkWriter, words: list[str], finish: str, usage: dict[str, int], *,
                      chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        if chat:
            yield chunks.delta({"role": "assistant", "content": ""})
        for word in words:
            yield chunks.delta({"content": word}) if chat else chunks.event([{"index": 0, "text": word,
                                                                              "finish_reason": None}])
        yield chunks.delta({}, finish) if chat else chunks.event([{"index": 0, "text": "", "finish_reason": finish}])
        if include_usage:
            yield chunks.usage(usage)
        yield DONE

    def _embeddings(self, payload: dict[str, Any]) -> BackendResponse:
        raw = payload.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
            inputs = raw
        else:
            return error_reply(400, "'input' must be a string or an array of strings", "invalid_input")
        data = [{"object": "embedding", "index": i, "embedding": _vector(text)} for i, text in enumerate(inputs)]
        tokens = sum(len(text.split()) for text in inputs)
        body = {"object": "list", "data": data, "model": str(payload.get("model") or "echo"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return BytesResponse(200, orjson.dumps(body), JSON)
