"""LLMClient: the routing API (/api/v1/llm) of the running companion, blocking and async."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE
from .discovery import find_daemon, find_token
from .transport import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    StreamBroken,
    Target,
    Timeouts,
    request_async,
    request_sync,
    stream_async,
    stream_sync,
)
from .types import (
    Completion,
    LLMClientError,
    MessageStop,
    ModelList,
    StreamError,
    StreamEvent,
    parse_completion,
    parse_event,
    parse_models,
)

PREFIX = "/api/v1/llm"
# A conversation: a list of `{"role", "content"}` messages (content a string or content blocks in
# OpenAI's, Anthropic's or Bedrock's style), or a string as one user message.
Messages = str | Sequence[Mapping[str, Any]]


def request_body(
    messages: Messages,
    model: str | None = None,
    system: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> bytes:
    """The routing API's request body; fields left None are left out, so the daemon's defaults apply."""
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    body: dict[str, Any] = {"messages": listed}
    optional: dict[str, Any] = {"model": model, "system": system, "tools": None if tools is None else list(tools),
                                "tool_choice": tool_choice, "max_tokens": max_tokens, "temperature": temperature}
    body.update({name: value for name, value in optional.items() if value is not None})
    return orjson.dumps(body)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise LLMClientError(None, "bad_response", "the companion's answer is not a JSON object")
    return parsed


def typed_events(payloads: Iterable[str]) -> Iterator[StreamEvent]:
    """SSE payloads as events; a stream that breaks off or ends early ends with a StreamError."""
    stopped = False
    try:
        for data in payloads:
            event = parse_event(data)
            if event is None:
                continue
            yield event
            if isinstance(event, StreamError):
                return
            stopped = stopped or isinstance(event, MessageStop)
    except StreamBroken as exc:
        yield StreamError(exc.status, exc.code, exc.message, exc.details)
        return
    if not stopped:
        yield StreamError(None, "stream_incomplete", "the stream ended before the answer did")


async def atyped_events(payloads: AsyncIterator[str]) -> AsyncIterator[StreamEvent]:
    stopped = False
    try:
        async for data in payloads:
            event = parse_event(data)
            if event is None:
                continue
            yield event
            if isinstance(event, StreamError):
                return
            stopped = stopped or isinstance(event, MessageStop)
    except StreamBroken as exc:
        yield StreamError(exc.status, exc.code, exc.message, exc.details)
        return
    if not stopped:
        yield StreamError(None, "stream_incomplete", "the stream ended before the answer did")


class LLMClient:
    """The companion's LLM routing API.

    With no arguments it talks to the daemon running for this settings directory (daemon.json)
    with the workspace's local token; both are looked up again on each call, so a restarted daemon
    or a rotated token is picked up. `timeout` is the longest silence tolerated while waiting.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        workspace: str = DEFAULT_WORKSPACE,
        *,
        timeout: float = READ_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        paths: Paths | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/") if base_url else None
        self._token = token
        self.workspace = workspace
        self.timeouts = Timeouts(connect=connect_timeout, read=timeout)
        self._paths = paths

    def __repr__(self) -> str:  # never the token
        return f"LLMClient(base_url={self._base_url!r}, workspace={self.workspace!r})"

    @property
    def paths(self) -> Paths:
        return self._paths or Paths.from_env()

    @property
    def base_url(self) -> str:
        """The daemon's root URL (found in daemon.json unless one was given)."""
        return self._base_url or find_daemon(self.paths)

    def _target(self, path: str) -> Target:
        url = self.base_url + PREFIX + path  # first: "no daemon running" says more than "no token"
        return Target(url, self._token or find_token(self.paths, self.workspace))

    # -- blocking ---------------------------------------------------------------------------------

    def complete(self, messages: Messages, model: str | None = None, system: str | None = None,
                 tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: str | Mapping[str, Any] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None) -> Completion:
        body = request_body(messages, model, system, tools, tool_choice, max_tokens, temperature)
        return parse_completion(_json_object(request_sync("POST", self._target("/completions"), body, self.timeouts)))

    def stream(self, messages: Messages, model: str | None = None, system: str | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: str | Mapping[str, Any] | None = None,
               max_tokens: int | None = None, temperature: float | None = None) -> Iterator[StreamEvent]:
        """The answer's events as they arrive. An error before the stream begins (bad token, unknown
        model ...) raises LLMClientError; one after it began is the last event, a StreamError."""
        body = request_body(messages, model, system, tools, tool_choice, max_tokens, temperature)
        yield from typed_events(stream_sync(self._target("/completions/stream"), body, self.timeouts))

    def models(self, *, refresh: bool = False) -> ModelList:
        target = self._target("/models" + ("?refresh=1" if refresh else ""))
        return parse_models(_json_object(request_sync("GET", target, None, self.timeouts)))

    # -- async ------------------------------------------------------------------------------------

    async def acomplete(self, messages: Messages, model: str | None = None, system: str | None = None,
                        tools: Sequence[Mapping[str, Any]] | None = None,
                        tool_choice: str | Mapping[str, Any] | None = None,
                        max_tokens: int | None = None, temperature: float | None = None) -> Completion:
        body = request_body(messages, model, system, tools, tool_choice, max_tokens, temperature)
        data = await request_async("POST", self._target("/completions"), body, self.timeouts)
        return parse_completion(_json_object(data))

    async def astream(self, messages: Messages, model: str | None = None, system: str | None = None,
                      tools: Sequence[Mapping[str, Any]] | None = None,
                      tool_choice: str | Mapping[str, Any] | None = None,
                      max_tokens: int | None = None, temperature: float | None = None) -> AsyncIterator[StreamEvent]:
        body = request_body(messages, model, system, tools, tool_choice, max_tokens, temperature)
        async for event in atyped_events(stream_async(self._target("/completions/stream"), body, self.timeouts)):
            yield event

    async def amodels(self, *, refresh: bool = False) -> ModelList:
        target = self._target("/models" + ("?refresh=1" if refresh else ""))
        return parse_models(_json_object(await request_async("GET", target, None, self.timeouts)))

    # -- agent frameworks -------------------------------------------------------------------------

    def get_model(self, format: str = "strands", model: str | None = None, **params: Any) -> Any:
        """A model object for an agent framework, routed through this client's streaming endpoint:
        `format="strands"` (Strands Agents; `pip install 'llmtune-companion[strands]'`) or
        `format="langchain"` (a LangChain chat model; `pip install 'llmtune-companion[langchain]'`).
        `params` are the request options (temperature, max_tokens)."""
        from .frameworks import build_model

        return build_model(self, format, model, params)
