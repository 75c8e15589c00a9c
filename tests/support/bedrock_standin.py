"""A loopback stand-in of AWS Bedrock runtime's Converse and ConverseStream, from AWS's API reference.

What it serves (written from botocore's bedrock-runtime service model, ``2023-09-30``):

* ``POST /model/{modelId}/converse`` -> ``{"output": {"message": {role, content}}, "stopReason",
  "usage": {inputTokens, outputTokens, totalTokens}, "metrics": {latencyMs}}``.
* ``POST /model/{modelId}/converse-stream`` -> ``application/vnd.amazon.eventstream``: AWS's binary
  event-stream framing (prelude with total and header lengths and its CRC32, string headers
  ``:event-type`` / ``:content-type`` / ``:message-type``, a JSON payload, the message CRC32) carrying
  messageStart, contentBlockStart, contentBlockDelta, contentBlockStop, messageStop and metadata.

Every request must carry a SigV4 ``Authorization`` header (present, not verified). Errors are AWS's
rest-json shape: the status, ``x-amzn-ErrorType: <Code>:<namespace>`` and ``{"message": ...}``.

Replies are scripted: by default the last user text is echoed word by word (cut to
``inferenceConfig.maxTokens`` words with stopReason ``max_tokens``); ``script_text``,
``script_tool_use``, ``script_error`` and ``script_stream_error`` queue one-off answers.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
EVENTSTREAM = "application/vnd.amazon.eventstream"


# -- AWS event-stream framing ---------------------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    # name length (1 byte), name, value type 7 = string, value length (2 bytes), value.
    return struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude, prelude CRC, headers, payload, message CRC (all big-endian)."""
    raw_headers = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + raw_headers + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def encode_event(event_type: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, orjson.dumps(body))


def encode_exception(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json",
               ":message-type": "exception"}
    return encode_message(headers, orjson.dumps({"message": message}))


# -- scripting ------------------------------------------------------------------------------------


@dataclass
class Scripted:
    """One queued answer: text and/or a toolUse, an HTTP error, or an exception event mid-stream."""

    text: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None
    tool_use_id: str = ""
    error: tuple[int, str, str] | None = None  # status, error type, message
    stream_error: tuple[str, str, int] | None = None  # exception type, message, events sent before it


@dataclass
class Recorded:
    operation: str  # "converse" or "converse-stream"
    model_id: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _text_of(message: dict[str, Any]) -> str:
    return " ".join(str(block["text"]) for block in message.get("content", []) if "text" in block)


def _split_words(text: str) -> list[str]:
    pieces = text.split(" ")
    return [piece if index == 0 else " " + piece for index, piece in enumerate(pieces)]


class BedrockStandIn:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        # Seconds slept between two writes of a stream, to hold one open.
        self.stream_delay = 0.0
        self._script: list[Scripted] = []
        self.app = web.Application()
        self.app.router.add_post("/model/{model_id}/converse", self._converse)
        self.app.router.add_post("/model/{model_id}/converse-stream", self._converse_stream)

    # scripting API

    def script_text(self, text: str) -> None:
        self._script.append(Scripted(text=text))

    def script_tool_use(self, name: str, tool_input: dict[str, Any], *, text: str | None = None,
                        tool_use_id: str | None = None) -> str:
        ident = tool_use_id or "tooluse_" + uuid.uuid4().hex[:20]
        self._script.append(Scripted(text=text, tool_name=name, tool_input=tool_input, tool_use_id=ident))
        return ident

    def script_error(self, status: int, error_type: str, message: str, *, times: int = 1) -> None:
        for _ in range(times):
            self._script.append(Scripted(error=(status, error_type, message)))

    def script_stream_error(self, exception_type: str, message: str, *, after_events: int = 0) -> None:
        """The next stream answers 200, sends `after_events` events, then an exception message."""
        self._script.append(Scripted(stream_error=(exception_type, message, after_events)))

    # handlers

    async def _accept(self, request: web.Request, operation: str) -> tuple[Recorded, Scripted] | web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 Credential=") or "X-Amz-Date" not in request.headers:
            return self._error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(400, "SerializationException", "request body is not JSON")
        recorded = Recorded(operation, request.match_info["model_id"], body, dict(request.headers))
        self.requests.append(recorded)
        scripted = self._script.pop(0) if self._script else Scripted()
        if scripted.error is not None:
            return self._error(*scripted.error)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "ValidationException", "messages must not be empty")
        roles = [message.get("role") for message in messages]
        if any(a == b for a, b in itertools.pairwise(roles)) or roles[0] != "user":
            return self._error(400, "ValidationException",
                               "A conversation must start with a user message and alternate roles")
        return recorded, scripted

    def _error(self, status: int, error_type: str, message: str) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"message": message}),
                            headers={"x-amzn-ErrorType": f"{error_type}:{ERROR_NAMESPACE}",
                                     "x-amzn-RequestId": str(uuid.uuid4()), "Content-Type": "application/json"})

    def _plan(self, recorded: Recorded, scripted: Scripted) -> tuple[list[str], dict[str, Any] | None, str, int]:
        """The reply's text pieces, its toolUse block, its stopReason and the input token count."""
        body = recorded.body
        users = [m for m in body["messages"] if m.get("role") == "user"]
        prompt = _text_of(users[-1]) if users else ""
        input_tokens = sum(len(_text_of(m).split()) for m in body["messages"])
        input_tokens += sum(len(str(block.get("text", "")).split()) for block in body.get("system", []))
        if scripted.tool_name is not None:
            words = _split_words(scripted.text) if scripted.text else []
            tool = {"toolUseId": scripted.tool_use_id, "name": scripted.tool_name, "input": scripted.tool_input or {}}
            return words, tool, "tool_use", input_tokens
        text = scripted.text if scripted.text is not None else prompt
        words = _split_words(text) if text else []
        stop = "end_turn"
        max_tokens = body.get("inferenceConfig", {}).get("maxTokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words, stop = words[:max_tokens], "max_tokens"
        return words, None, stop, input_tokens

    async def _converse(self, request: web.Request) -> web.Response:
        accepted = await self._accept(request, "converse")
        if isinstance(accepted, web.Response):
            return accepted
        words, tool, stop, input_tokens = self._plan(*accepted)
        content: list[dict[str, Any]] = []
        if words:
            content.append({"text": "".join(words)})
        if tool is not None:
            content.append({"toolUse": tool})
        output_tokens = len(words) + (len(orjson.dumps(tool["input"])) // 4 if tool else 0)
        reply = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens,
                      "totalTokens": input_tokens + output_tokens},
            "metrics": {"latencyMs": 7},
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json",
                            headers={"x-amzn-RequestId": str(uuid.uuid4())})

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, "converse-stream")
        if isinstance(accepted, web.Response):
            return accepted
        recorded, scripted = accepted
        words, tool, stop, input_tokens = self._plan(recorded, scripted)
        events: list[bytes] = [encode_event("messageStart", {"role": "assistant"})]
        index = 0
        if words:
            for word in words:
                events.append(encode_event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": word}}))
            events.append(encode_event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        output_tokens = len(words)
        if tool is not None:
            start = {"toolUse": {"toolUseId": tool["toolUseId"], "name": tool["name"]}}
            events.append(encode_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            arguments = orjson.dumps(tool["input"]).decode()
            # The input arrives as JSON text cut anywhere, as models stream it.
            for offset in range(0, len(arguments), 7):
                delta = {"toolUse": {"input": arguments[offset:offset + 7]}}
                events.append(encode_event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            events.append(encode_event("contentBlockStop", {"contentBlockIndex": index}))
            output_tokens += len(arguments) // 4
        events.append(encode_event("messageStop", {"stopReason": stop}))
        usage = {"inputTokens": input_tokens, "outputTokens": output_tokens,
                 "totalTokens": input_tokens + output_tokens}
        events.append(encode_event("metadata", {"usage": usage, "metrics": {"latencyMs": 7}}))
        if scripted.stream_error is not None:
            exception_type, message, after = scripted.stream_error
            events = [*events[:after], encode_exception(exception_type, message)]
        response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM, "x-amzn-RequestId": str(uuid.uuid4())})
        await response.prepare(request)
        # Frames are written cut at odd places, so a decoder must reassemble them.
        data = b"".join(events)
        for offset in range(0, len(data), 37):
            await response.write(data[offset:offset + 37])
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        await response.write_eof()
        return response
