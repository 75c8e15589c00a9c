"""OpenAI's chat answer shapes, read and written in one place.

Reading: an SSE body -> chunk objects (`sse_events`) -> one assembled answer (`Turn`), whose tool
calls come out as `FunctionCall`s, the calls exactly as the model wrote them. Writing: one answer's
identity (id, created, model) -> `chat.completion.chunk` SSE events (`ChunkWriter`), or a whole
`chat.completion` (`completion`).

Users: the agent loop (reads answers in gate and execute mode, writes the client's stream), the LLM
routing API (reads answers to translate them), Bedrock and echo (write answers). The relay in
passthrough mode uses none of it: it passes bytes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .base import UpstreamBroken

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def sse_data(value: Any) -> bytes:
    """One SSE event carrying a JSON value."""
    return b"data: " + orjson.dumps(value) + b"\n\n"


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def wants_usage(payload: dict[str, Any]) -> bool:
    """Whether a streaming request asked for the usage chunk (`stream_options.include_usage`)."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def text_of(content: Any, separator: str = "") -> str:
    """A message's text, whether `content` is a string or an array of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return separator.join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A tool call as the model wrote it: `arguments` is its JSON text, unchecked.

    (tools.ToolCall is the same call once its arguments are parsed and normalised for our tools.)
    """

    id: str
    name: str
    arguments: str

    def to_wire(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's `tool_calls[]` entry (with `index`, a stream delta's)."""
        wire: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return wire if index is None else {"index": index, **wire}


def wire_calls(calls: list[FunctionCall]) -> list[dict[str, Any]]:
    return [call.to_wire() for call in calls]


def completion(model: str, message: dict[str, Any], finish_reason: str | None, *, ident: str | None = None,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A whole `chat.completion` answer with one choice."""
    body: dict[str, Any] = {"id": ident or new_id(), "object": "chat.completion", "created": int(time.time()),
                            "model": model,
                            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    if usage:
        body["usage"] = usage
    return body


class ChunkWriter:
    """One streamed answer's events: every chunk carries the same id, created time and model."""

    def __init__(self, model: str, *, ident: str | None = None, kind: str = "chat.completion.chunk") -> None:
        self.model = model
        self.kind = kind
        self.ident = ident or new_id("chatcmpl-" if kind == "chat.completion.chunk" else "cmpl-")
        self.created = int(time.time())

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({"id": self.ident, "object": self.kind, "created": self.created, "model": self.model,
                         "choices": choices, **extra})

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """A chunk of choice 0; `usage=` is only ever sent on its own chunk (see `usage`)."""
        return self.event([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def usage(self, usage: dict[str, Any]) -> bytes:
        """The usage chunk, with no choices, as `stream_options.include_usage` asks for."""
        return self.event([], usage=usage)


@dataclass(slots=True)
class Turn:
    """One model answer, assembled from a whole response or from stream chunks."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    ident: str | None = None

    def feed_chunk(self, chunk: dict[str, Any]) -> str | None:
        """Take one stream chunk; return its content delta, if any."""
        self.model = self.model or chunk.get("model")
        self.ident = self.ident or chunk.get("id")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text: str | None = None
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                text = delta["content"]
                self.content.append(text)
            for part in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                slot["id"] = part.get("id") or slot["id"]
                function = part.get("function") or {}
                slot["name"] = function.get("name") or slot["name"]
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return text

    def feed_message(self, body: dict[str, Any]) -> None:
        self.model, self.ident, self.usage = body.get("model"), body.get("id"), body.get("usage")
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            self.content.append(message["content"])
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            self.calls[index] = {"id": call.get("id") or "", "name": function.get("name") or "",
                                 "arguments": function.get("arguments") or ""}
        self.finish_reason = choice.get("finish_reason")

    def tool_calls(self) -> list[FunctionCall]:
        return [FunctionCall(c["id"] or new_call_id(), c["name"], c["arguments"] or "{}")
                for _, c in sorted(self.calls.items())]

    @property
    def text(self) -> str:
        return "".join(self.content)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any] | None]:
    """Parse an OpenAI SSE stream into chunk objects; None marks `[DONE]`; an error event raises UpstreamBroken."""
    buffer = b""
    async for data in chunks:
        buffer += data.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    yield None
                    continue
                try:
                    parsed = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    if "error" in parsed:
                        raise UpstreamBroken(str((parsed.get("error") or {}).get("message") or "upstream error"))
                    yield parsed
