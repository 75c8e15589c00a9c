"""AWS Bedrock through the Converse and ConverseStream APIs (the seed's BedrockConverseProvider).

The translation is in converse.py; this file is the boto3 side. boto3 is synchronous, so calls
run in a thread and a stream is read by its own thread into an asyncio.Queue: the event loop never
waits on AWS. Errors come back in the one error shape (adapters/errors.py).

Credentials come from AWS's standard chain (environment, profile, SSO, instance role); the region
and model ids from config.toml; `url` overrides the endpoint. boto3 is an optional extra
(`pip install 'llmtune-companion[bedrock]'`) imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson

from ..base import (
    AdapterContext,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendSettings,
    BackendUnavailable,
    BytesResponse,
    UpstreamBroken,
)
from ..errors import error_reply
from ..openai_stream import SSE_HEADERS, wants_usage
from .converse import ConverseStreamTranslator, TranslationError, from_converse, to_converse

JSON = {"Content-Type": "application/json"}

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


class BedrockSettings(BackendSettings):
    # AWS region; unset, the AWS chain decides (AWS_REGION, the profile).
    region: str | None = None


class BedrockBackend(Backend):
    kind = "bedrock"
    settings_model: ClassVar[type[BackendSettings]] = BedrockSettings

    def __init__(self, name: str, context: AdapterContext, *, region: str | None = None, **options: Any) -> None:
        super().__init__(name, context, **options)
        self.region = region
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, name: str, context: AdapterContext, settings: BackendSettings) -> Backend:
        assert isinstance(settings, BedrockSettings)
        return cls(name, context, url=settings.url, models=settings.models, region=settings.region)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "region": self.region}

    def missing_dependency(self) -> str | None:
        if importlib.util.find_spec("boto3") is None:
            return "boto3 is not installed: pip install boto3 (in a checkout: pip install -e '.[bedrock]')"
        return None

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
            return error_reply(400, f"/{request.endpoint} is not supported by the bedrock backend; "
                                       "use /v1/chat/completions", "unsupported_endpoint")
        payload = request.payload if request.payload is not None else orjson.loads(request.body or b"{}")
        model = str(payload.get("model") or "")
        try:
            kwargs = to_converse(payload, model)
        except TranslationError as exc:
            return error_reply(400, str(exc), "unsupported_request", {"backend": self.name})
        try:
            client = await self.client()
        except ImportError:
            return error_reply(501, "the bedrock backend needs boto3, which is not installed: pip install boto3 "
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
        translator = ConverseStreamTranslator(model, include_usage=wants_usage(payload))
        return BytesResponse(200, self._relay(pump, first, translator), SSE_HEADERS)

    async def _relay(self, pump: _EventPump, first: Any, translator: ConverseStreamTranslator) -> AsyncIterator[bytes]:
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
            return error_reply(status, f"Bedrock: {message}", _snake(code), details)
        if isinstance(exc, aws.NoCredentialsError | aws.PartialCredentialsError):
            return error_reply(401, "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                       "AWS_PROFILE, or sign in with `aws sso login`", "aws_credentials_missing",
                                  details)
        if isinstance(exc, aws.NoRegionError):
            return error_reply(400, f"no AWS region: set region in [backends.{self.name}] or AWS_REGION",
                                  "aws_region_missing", details)
        if isinstance(exc, aws.ParamValidationError):
            return error_reply(400, f"Bedrock: {exc}", "validation_exception", details)
        if isinstance(exc, aws.ConnectTimeoutError | aws.ReadTimeoutError):
            raise BackendUnavailable(f"backend {self.name!r} did not answer in time", timeout=True) from exc
        if isinstance(exc, aws.EndpointConnectionError | aws.ConnectionClosedError | aws.HTTPClientError):
            raise BackendUnavailable(f"backend {self.name!r} cannot be reached ({type(exc).__name__})") from exc
        if isinstance(exc, aws.BotoCoreError):
            return error_reply(502, f"Bedrock: {exc}", "upstream_error", details)
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
