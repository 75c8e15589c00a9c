"""The LLM routing API's answers as typed values: the completion, the stream events of its event
table (content_delta, tool_use_start, tool_use_delta, tool_use_complete, message_stop, metadata,
plus our `error`), and the one exception for an error in our shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson

from ..errors import ERROR_TYPES


class LLMClientError(Exception):
    """An error answered by the companion (`{"error": {"message", "type", "code", "details"}}`),
    or one met on the way to it (`status` is None then: no daemon, refused connection, timeout)."""

    def __init__(self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}


def error_from_body(status: int, body: bytes) -> LLMClientError:
    """An HTTP error response as the exception, whatever shape its body has."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return error_from_object(status, error)
    text = body.decode("utf-8", "replace").strip()[:500]
    return LLMClientError(status, "http_error", f"the companion answered HTTP {status}" + (f": {text}" if text else ""))


def error_from_object(status: int, error: dict[str, Any]) -> LLMClientError:
    details = error.get("details")
    return LLMClientError(status, str(error.get("code") or "error"), str(error.get("message") or f"HTTP {status}"),
                          details if isinstance(details, dict) else {})


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """A completion's token counts, named as the `/completions` answer names them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    stop_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class ModelList:
    """`GET /models`: the ids the companion serves and the one it uses when a request names none."""

    models: list[str]
    default_model: str | None = None

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def __len__(self) -> int:
        return len(self.models)


# -- stream events (the seed's event table) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContentDelta:
    type: ClassVar[Literal["content_delta"]] = "content_delta"
    delta: str


@dataclass(frozen=True, slots=True)
class ToolUseStart:
    type: ClassVar[Literal["tool_use_start"]] = "tool_use_start"
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolUseDelta:
    type: ClassVar[Literal["tool_use_delta"]] = "tool_use_delta"
    id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ToolUseComplete:
    type: ClassVar[Literal["tool_use_complete"]] = "tool_use_complete"
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MessageStop:
    type: ClassVar[Literal["message_stop"]] = "message_stop"
    stop_reason: str
    model: str


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """The `metadata` event's token counts, named as the stream names them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Metadata:
    type: ClassVar[Literal["metadata"]] = "metadata"
    usage: StreamUsage


@dataclass(frozen=True, slots=True)
class StreamError:
    """The stream broke off after it began (the answer is incomplete); nothing follows it."""

    type: ClassVar[Literal["error"]] = "error"
    status: int | None
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def exception(self) -> LLMClientError:
        return LLMClientError(self.status, self.code, self.message, self.details)


StreamEvent = ContentDelta | ToolUseStart | ToolUseDelta | ToolUseComplete | MessageStop | Metadata | StreamError


def status_of_type(kind: Any) -> int:
    """An error event has no status line: its `type` (our error shape's) names the status it stands for."""
    return next((status for status, name in ERROR_TYPES.items() if name == kind), 502)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_event(data: str) -> StreamEvent | None:
    """One SSE `data:` payload as its event; an event type this client does not know is None (skipped)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return StreamError(None, "bad_event", f"the companion sent an event that is not JSON: {data[:200]!r}")
    if not isinstance(raw, dict):
        return StreamError(None, "bad_event", "the companion sent an event that is not a JSON object")
    kind = raw.get("type")
    if kind == "content_delta":
        return ContentDelta(_str(raw.get("delta")))
    if kind == "tool_use_start":
        return ToolUseStart(_str(raw.get("id")), _str(raw.get("name")))
    if kind == "tool_use_delta":
        return ToolUseDelta(_str(raw.get("id")), _str(raw.get("delta")))
    if kind == "tool_use_complete":
        return ToolUseComplete(_str(raw.get("id")), _str(raw.get("name")), _object(raw.get("input")))
    if kind == "message_stop":
        return MessageStop(_str(raw.get("stop_reason")) or "end_turn", _str(raw.get("model")))
    if kind == "metadata":
        usage = _object(raw.get("usage"))
        return Metadata(StreamUsage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens"))))
    if kind == "error":
        error = _object(raw.get("error"))
        return StreamError(status_of_type(error.get("type")), _str(error.get("code")) or "error",
                           _str(error.get("message")), _object(error.get("details")))
    return None


def parse_completion(body: dict[str, Any]) -> Completion:
    calls = [ToolCall(_str(c.get("id")), _str(c.get("name")), _object(c.get("input")))
             for c in body.get("tool_calls") or [] if isinstance(c, dict)]
    usage = _object(body.get("usage"))
    return Completion(
        content=_str(body.get("content")),
        model=_str(body.get("model")),
        stop_reason=_str(body.get("stop_reason")) or "end_turn",
        tool_calls=calls,
        usage=Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))),
    )


def parse_models(body: dict[str, Any]) -> ModelList:
    models = [m for m in body.get("models") or [] if isinstance(m, str)]
    default = body.get("default_model")
    return ModelList(models, default if isinstance(default, str) else None)
