"""AWS Bedrock through the Converse and ConverseStream APIs (the seed's BedrockConverseProvider).

Translated at the edge, both ways: an OpenAI chat request becomes Converse's messages, system,
toolConfig and inferenceConfig; Converse's answer becomes a chat.completion, and ConverseStream's
events become chat.completion.chunk SSE. boto3 is synchronous, so calls run in a thread and a
stream is read by its own thread into an asyncio.Queue: the event loop never waits on AWS.

Credentials come from AWS's standard chain (environment, profile, SSO, instance role); the region
and model ids from config.toml; `url` overrides the endpoint. boto3 is an optional extra
(`pip install 'llmtune-companion[bedrock]'`) imported on first use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from .base import (
    AdapterContext,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    BytesResponse,
    UpstreamBroken,
)

JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

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

# AWS error code -> the status the client sees; codes not listed keep AWS's HTTP status.
ERROR_STATUS = {
    "ValidationException": 400,
    "UnrecognizedClientException": 401,
    "InvalidSignatureException": 401,
    "ExpiredTokenException": 401,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ModelNotReadyException": 503,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
    "ModelTimeoutException": 504,
    "ModelErrorException": 502,
    "ModelStreamErrorException": 502,
}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable"}
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")


class TranslationError(ValueError):
    """The OpenAI request has something Converse cannot express."""


def error_response(status: int, message: str, code: str, details: dict[str, Any] | None = None) -> BytesResponse:
    error = {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "code": code, "details": details or {}}
    return BytesResponse(status, orjson.dumps({"error": error}), JSON)


# -- OpenAI -> Converse ---------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


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
        ident = call.get("id") or "call_" + uuid.uuid4().hex[:24]
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
            text = _text_of(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _content_blocks(message.get("content")))
        elif role == "assistant":
            blocks = [{"text": _text_of(message.get("content"))}] if _text_of(message.get("content")) else []
            if message.get("tool_calls"):
                blocks.extend(_tool_use_blocks(message["tool_calls"]))
            add("assistant", blocks)
        elif role == "tool":
            text = _text_of(message.get("content"))
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
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            tool_calls.append({"id": use.get("toolUseId"), "type": "function",
                               "function": {"name": use.get("name"), "arguments": arguments}})
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        out["tool_calls"] = tool_calls
    return {
        "id": ident or "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": out, "finish_reason": finish_reason(response.get("stopReason")),
                     "logprobs": None}],
        "usage": _usage(response.get("usage")),
    }


class StreamTranslator:
    """ConverseStream events (as boto3 yields them) -> chat.completion.chunk SSE lines."""

    def __init__(self, model: str, *, include_usage: bool, ident: str | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.ident = ident or "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.stopped = False
        self._usage: dict[str, int] | None = None
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool_calls index
        self._started = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {"id": self.ident, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def _role(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._delta({"role": "assistant", "content": ""})]

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
                call = {"index": index, "id": use.get("toolUseId"), "type": "function",
                        "function": {"name": use.get("name"), "arguments": ""}}
                out.append(self._delta({"tool_calls": [call]}))
        elif "contentBlockDelta" in event:
            body = event["contentBlockDelta"]
            delta = body.get("delta") or {}
            if "text" in delta:
                out += self._role()
                out.append(self._delta({"content": delta["text"]}))
            elif "toolUse" in delta:
                out += self._role()
                index = self._tool_index(int(body.get("contentBlockIndex", 0)))
                call = {"index": index, "function": {"arguments": (delta["toolUse"] or {}).get("input", "")}}
                out.append(self._delta({"tool_calls": [call]}))
        elif "messageStop" in event:
            out += self._role()
            self.stopped = True
            out.append(self._delta({}, finish_reason(event["messageStop"].get("stopReason"))))
        elif "metadata" in event:
            self._usage = _usage(event["metadata"].get("usage"))
        return out

    def finish(self) -> list[bytes]:
        out: list[bytes] = []
        if self.include_usage and self._usage is not None:
            out.append(self._chunk([], usage=self._usage))
        out.append(b"data: [DONE]\n\n")
        return out


# -- the backend ----------------------------------------------------------------------------------

_END = object()


class _EventPump:
    """Reads a boto3 EventStream on its own thread into an asyncio.Queue; close() stops it."""

    def __init__(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bedrock-stream", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        try:
            for event in self._stream:
                if self._stop.is_set():
                    return
                self._put(event)
        except Exception as exc:
            if not self._stop.is_set():
                self._put(exc)
            return
        self._put(_END)

    def close(self) -> None:
        """Never blocks: closing the stream waits for the reader thread's socket read (until the next
        event arrives), so it is done on a thread of its own, not on the event loop."""
        self._stop.set()
        threading.Thread(target=self._close_stream, name="bedrock-stream-close", daemon=True).start()

    def _close_stream(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()


class BedrockBackend(Backend):
    kind = "bedrock"

    def __init__(
        self,
        name: str,
        context: AdapterContext,
        *,
        url: str | None = None,
        api_key: str | None = None,
        models: tuple[str, ...] = (),
        region: str | None = None,
    ) -> None:
        super().__init__(name, context, url=url, api_key=api_key, models=models)
        self.region = region
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "region": self.region}

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.context.connect_timeout,
            # One socket read may wait for the first token; the daemon itself retries, boto3 does not.
            read_timeout=max(self.context.first_byte_timeout, self.context.read_timeout),
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=50,
            user_agent_extra="llmtune-companion",
        )
        session = boto3.session.Session(region_name=self.region)
        return session.client("bedrock-runtime", endpoint_url=self.url, config=config)

    async def client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._make_client)
        return self._client

    async def handle(self, request: BackendRequest) -> BackendResponse:
        if request.endpoint == "models":
            listing = [{"id": model, "object": "model", "created": 0, "owned_by": self.name}
                       for model in self.static_models]
            return BytesResponse(200, orjson.dumps({"object": "list", "data": listing}), JSON)
        if request.endpoint not in ("chat", "agent_chat"):
            return error_response(400, f"/{request.endpoint} is not supported by the bedrock backend; "
                                       "use /v1/chat/completions", "unsupported_endpoint")
        payload = request.payload if request.payload is not None else orjson.loads(request.body or b"{}")
        model = str(payload.get("model") or "")
        try:
            kwargs = to_converse(payload, model)
        except TranslationError as exc:
            return error_response(400, str(exc), "unsupported_request", {"backend": self.name})
        try:
            client = await self.client()
        except ImportError:
            return error_response(501, "the bedrock backend needs boto3, which is not installed: pip install boto3 "
                                       "(in a checkout: pip install -e '.[bedrock]'), then restart the daemon",
                                  "bedrock_unavailable", {"backend": self.name})
        except Exception as exc:
            return self._failure(exc)
        if request.stream:
            return await self._stream(client, kwargs, payload, model)
        try:
            answer = await _in_thread(lambda: client.converse(**kwargs))
        except Exception as exc:
            return self._failure(exc)
        return BytesResponse(200, orjson.dumps(from_converse(answer, model)), JSON)

    async def _stream(self, client: Any, kwargs: dict[str, Any], payload: dict[str, Any],
                      model: str) -> BackendResponse:
        try:
            answer = await _in_thread(lambda: client.converse_stream(**kwargs),
                                      on_orphan=lambda late: late["stream"].close())
        except Exception as exc:
            return self._failure(exc)
        pump = _EventPump(answer["stream"], asyncio.get_running_loop())
        try:
            # The first event decides the status: an exception before any byte is still an error status.
            first = await pump.queue.get()
        except BaseException:
            pump.close()
            raise
        if isinstance(first, Exception):
            pump.close()
            return self._failure(first)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        translator = StreamTranslator(model, include_usage=include_usage)
        return BytesResponse(200, self._relay(pump, first, translator), SSE)

    async def _relay(self, pump: _EventPump, first: Any, translator: StreamTranslator) -> AsyncIterator[bytes]:
        try:
            item = first
            while item is not _END:
                if isinstance(item, Exception):
                    raise UpstreamBroken(f"Bedrock stream broke off: {_describe(item)}")
                for line in translator.feed(item):
                    yield line
                item = await pump.queue.get()
            if not translator.stopped:
                raise UpstreamBroken("Bedrock stream ended before messageStop")
            for line in translator.finish():
                yield line
        finally:
            pump.close()

    def _failure(self, exc: BaseException) -> BytesResponse:
        """A botocore exception as an OpenAI-style error; an unreachable endpoint raises BackendUnavailable."""
        from botocore import exceptions as aws

        details: dict[str, Any] = {"backend": self.name}
        if isinstance(exc, aws.ClientError):
            error = exc.response.get("Error") or {}
            code = str(error.get("Code") or "UnknownError")
            # In-stream exceptions are named in camelCase (throttlingException): match them too.
            code = code[:1].upper() + code[1:]
            metadata = exc.response.get("ResponseMetadata") or {}
            status = ERROR_STATUS.get(code) or int(metadata.get("HTTPStatusCode") or 502)
            request_id = metadata.get("RequestId")
            details["aws_error"] = code
            if request_id:
                details["request_id"] = request_id
            message = str(error.get("Message") or code)
            return error_response(status, f"Bedrock: {message}", _snake(code), details)
        if isinstance(exc, aws.NoCredentialsError | aws.PartialCredentialsError):
            return error_response(401, "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                       "AWS_PROFILE, or sign in with `aws sso login`", "aws_credentials_missing",
                                  details)
        if isinstance(exc, aws.NoRegionError):
            return error_response(400, f"no AWS region: set region in [backends.{self.name}] or AWS_REGION",
                                  "aws_region_missing", details)
        if isinstance(exc, aws.ParamValidationError):
            return error_response(400, f"Bedrock: {exc}", "validation_exception", details)
        if isinstance(exc, aws.ConnectTimeoutError | aws.ReadTimeoutError):
            raise BackendUnavailable(f"backend {self.name!r} did not answer in time", timeout=True) from exc
        if isinstance(exc, aws.EndpointConnectionError | aws.ConnectionClosedError | aws.HTTPClientError):
            raise BackendUnavailable(f"backend {self.name!r} cannot be reached ({type(exc).__name__})") from exc
        if isinstance(exc, aws.BotoCoreError):
            return error_response(502, f"Bedrock: {exc}", "upstream_error", details)
        raise exc


def _snake(code: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(code))


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code')}: {error.get('Message')}"
    return type(exc).__name__


async def _in_thread(call: Callable[[], Any], on_orphan: Callable[[Any], None] | None = None) -> Any:
    """Run a blocking boto3 call in a thread; if we are cancelled meanwhile, clean its result up later."""
    future = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_orphan is not None:
            cleanup = on_orphan

            def _late(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    with contextlib.suppress(Exception):
                        cleanup(done.result())

            future.add_done_callback(_late)
        raise
