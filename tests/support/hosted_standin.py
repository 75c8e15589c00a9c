"""A faithful loopback stand-in of the hosted LLMTune API, built from the seed documents.

What it serves (all endpoints require ``Authorization: Bearer <workspace key>``):

* ``GET  /api/agent/models`` -> ``{"success": true, "data": [{id, name, owned_by}], "count": N}``
  (``?active=false`` also lists inactive models).
* ``POST /v1/chat/completions`` and ``POST /api/agent/v1/chat/completions`` (OpenAI-compatible,
  defaults temperature 0.7 / max_tokens 512, SSE streaming ending with ``data: [DONE]``, tools).
* ``POST /v1/completions`` (legacy text completions) and ``POST /v1/embeddings``.
* Beyond the catalog, chat models named ``tool-<name>`` call the offered tool ``<name>`` and then
  answer from its result, so an agent framework's whole tool loop runs unscripted.
* ``POST /v1/models/{modelId}/inference``, ``POST /v1/playground/inference``,
  ``POST /v1/batch/inference``, ``POST /v1/fine-tune``, ``GET /v1/fine-tune/{jobId}``
  (``Idempotency-Key`` honoured on the batch and fine-tune creation endpoints).

Every error uses the seed's standard shape ``{"error": {"message", "code", "details"}}``.
Tests drive failure modes in-process through the scripting API (``fail_next``,
``cut_stream_after``, ``script_tool_call``, ...). ``python -m tests.support.hosted_standin``
serves it standalone for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import ipaddress
import itertools
import logging
import re
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sk_test_standin_key"
DEFAULT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
DEFAULT_TEMPERATURE = 0.7  # seed 002: "temperature ... (default 0.7)"
DEFAULT_MAX_TOKENS = 512  # seed 002: "max_tokens ... (default 512)"
DEFAULT_EMBEDDING_DIMENSIONS = 64
AGENT_TOOLS: tuple[str, ...] = (
    "read_file",
    "write_file",
    "list_directory",
    "run_terminal",
    "search_replace",
)
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "cancelled")

# The catalog the stand-in serves unless a test passes its own. The first entry and
# "workspace/model-v1" are the ids the seeds use; one model is inactive so that
# ``?active=false`` has something to reveal.
DEFAULT_MODELS: tuple[dict[str, Any], ...] = (
    {"id": "meta-llama/Llama-3.3-70B-Instruct", "name": "Llama 3.3 70B", "owned_by": "Meta", "active": True},
    {"id": "meta-llama/Llama-3.1-8B-Instruct", "name": "Llama 3.1 8B", "owned_by": "Meta", "active": True},
    {
        "id": "Qwen/Qwen2.5-Coder-32B-Instruct",
        "name": "Qwen 2.5 Coder 32B",
        "owned_by": "Qwen",
        "active": True,
    },
    {"id": "workspace/model-v1", "name": "Workspace model v1", "owned_by": "workspace", "active": True},
    {
        "id": "mistralai/Mistral-7B-Instruct-v0.3",
        "name": "Mistral 7B Instruct v0.3",
        "owned_by": "Mistral AI",
        "active": False,
    },
)

# Upper-case codes for the standard error shape (seed 001 status list, seed 000 adds 503).
ERROR_CODES: dict[int, str] = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDITS",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
ERROR_MESSAGES: dict[int, str] = {
    400: "Invalid request",
    401: "Invalid or missing API key",
    402: "Insufficient credits / payment required",
    403: "Forbidden",
    404: "Resource not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Unprocessable request",
    429: "Rate limit exceeded",
    500: "Unexpected server error",
    502: "Bad gateway",
    503: "Agent/inference service not configured",
    504: "Gateway timeout",
}

_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_FILLER_WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)  # fmt: skip
# A "word" is a run of non-space characters plus its leading whitespace; the last
# one also keeps trailing whitespace, so "".join(pieces) == text exactly.
_WORD_RE = re.compile(r"\s*\S+(?:\s+$)?")
# Models outside the catalog that call the one tool they name: "tool-get_weather" (test helpers, not in the seeds).
_TOOL_MODEL_RE = re.compile(r"^tool-([A-Za-z0-9_.-]{1,64})$")
_ARG_FRAGMENT = 8  # characters per streamed tool-call argument delta
_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"
# Typed per-request slots: the body is parsed once, shared by recording and handlers.
_RECORD_KEY = web.RequestKey("standin_record", object)
_JSON_KEY = web.RequestKey("standin_json", object)
_JSON_OK_KEY = web.RequestKey("standin_json_ok", bool)


def error_body(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The seed's standard error shape."""
    return {
        "error": {
            "message": message or ERROR_MESSAGES.get(status, f"HTTP {status}"),
            "code": code or ERROR_CODES.get(status, f"HTTP_{status}"),
            "details": details or {},
        }
    }


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON, headers=headers)


def _format_retry_after(value: float | int) -> str:
    # Integers stay HTTP-standard delay-seconds; fractional values are kept so tests can
    # back off for sub-second delays without slowing the suite down.
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class StandInError(Exception):
    """Raised by handlers; the middleware turns it into the standard error response."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or ERROR_MESSAGES.get(status, ""))
        self.status = status
        self.body = error_body(status, message, code=code, details=details)
        self.headers = headers

    def response(self) -> web.Response:
        return _json_response(self.body, self.status, self.headers)


@dataclass
class RecordedRequest:
    """One request as the stand-in received it (what "upstream saw")."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any | None
    # Parameters after defaults were applied (chat-style endpoints only), so tests can
    # check e.g. that an omitted temperature became 0.7 upstream.
    effective: dict[str, Any] | None = None


@dataclass
class ScriptedToolCall:
    name: str
    arguments: dict[str, Any] | str  # a str is sent verbatim (lets tests send malformed JSON)
    id: str | None = None


@dataclass
class ScriptedReply:
    """One queued chat answer: either text (``content``) or tool calls."""

    content: str | None = None
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class _Failure:
    status: int
    remaining: int
    retry_after: float | int | None
    body: dict[str, Any] | None
    path_prefix: str | None
    processed: bool


@dataclass
class _ChatParams:
    model: str
    messages: list[dict[str, Any]]
    temperature: float
    max_tokens: int
    stream: bool
    include_usage: bool
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    stop: list[str]
    x_chunks: int | None
    x_gap: float | None

    def effective(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            "include_usage": self.include_usage,
            "tool_choice": self.tool_choice,
            "stop": self.stop,
        }


@dataclass
class _Plan:
    """What the "model" answers: text pieces or tool calls, plus accounting."""

    pieces: list[str]
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments json string)
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def content(self) -> str | None:
        return None if self.tool_calls else "".join(self.pieces)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _schema_arguments(schema: Any, text: str) -> dict[str, Any]:
    """Values for a JSON schema's required fields: strings get ``text``, other types a zero value."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    zeros: dict[str, Any] = {"string": text, "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
    arguments: dict[str, Any] = {}
    for field_name in schema.get("required") or []:
        spec = properties.get(field_name) if isinstance(properties, dict) else None
        kind = spec.get("type", "string") if isinstance(spec, dict) else "string"
        arguments[str(field_name)] = zeros.get(kind, text) if isinstance(kind, str) else text
    return arguments


def _split_words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text parts carry words
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _count_words(text: str) -> int:
    return len(text.split())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class HostedStandIn:
    """In-process stand-in of the hosted LLMTune API, with a scripting API for tests."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        models: list[dict[str, Any]] | None = None,
        record: bool = True,
    ) -> None:
        self.api_key = api_key  # mutable on purpose: tests can "rotate" the upstream key
        self.record = record
        self._initial_models = [dict(m) for m in (models if models is not None else DEFAULT_MODELS)]
        self.models: list[dict[str, Any]] = []
        self._model_index: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.calls_by_path: collections.Counter[str] = collections.Counter()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []  # webhook events that would have been sent
        self.stream_delay: float = 0.0
        self.first_byte_delay: float = 0.0
        self._failures: list[_Failure] = []
        self._replies: collections.deque[ScriptedReply] = collections.deque()
        self._cuts: collections.deque[int] = collections.deque()
        self._idempotency: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._ids = itertools.count(1)
        self._restore_models()
        self.app: web.Application = self.make_app()

    # ------------------------------------------------------------------ scripting API

    def reset(self) -> None:
        """Forget scripts, failures, delays, recordings, jobs and catalog changes."""
        self.requests.clear()
        self.calls_by_path.clear()
        self.jobs.clear()
        self.batches.clear()
        self.events.clear()
        self.stream_delay = 0.0
        self.first_byte_delay = 0.0
        self._failures.clear()
        self._replies.clear()
        self._cuts.clear()
        self._idempotency.clear()
        self._restore_models()

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | int | None = None,
        body: dict[str, Any] | None = None,
        path_prefix: str | None = None,
        processed: bool = False,
    ) -> None:
        """Answer the next ``times`` authenticated requests (optionally only under
        ``path_prefix``) with ``status`` in the standard error shape.

        ``body`` replaces the whole JSON body. ``retry_after`` adds a ``Retry-After`` header.
        ``processed=True`` runs the real handler first (side effects such as job creation
        happen) and only then replaces its response: "the server did it, the reply was
        lost". Use it with non-streaming requests.
        """
        if status < 400:
            raise ValueError("fail_next needs an error status (>= 400)")
        if times < 1:
            raise ValueError("times must be >= 1")
        self._failures.append(_Failure(status, times, retry_after, body, path_prefix, processed))

    def cut_stream_after(self, n_chunks: int, times: int = 1) -> None:
        """The next ``times`` streamed responses send ``n_chunks`` SSE events, then the
        TCP connection is closed mid-body (never ``[DONE]``, no terminating chunk)."""
        if n_chunks < 0 or times < 1:
            raise ValueError("n_chunks must be >= 0 and times >= 1")
        self._cuts.extend([n_chunks] * times)

    def script_reply(self, content: str, *, times: int = 1, finish_reason: str | None = None) -> None:
        """Queue a literal text answer for the next chat completion(s)."""
        for _ in range(times):
            self._replies.append(ScriptedReply(content=content, finish_reason=finish_reason))

    def script_tool_call(
        self,
        name: str,
        arguments: dict[str, Any] | str,
        *,
        times: int = 1,
        call_id: str | None = None,
    ) -> None:
        """Queue a tool-call answer. It fires on the next chat completion that offers
        ``tools`` (and not ``tool_choice: "none"``); requests without tools skip it."""
        for _ in range(times):
            self._replies.append(ScriptedReply(tool_calls=[ScriptedToolCall(name, arguments, call_id)]))

    def script_tool_calls(self, calls: Iterable[tuple[str, dict[str, Any] | str]]) -> None:
        """Queue one answer carrying several parallel tool calls."""
        self._replies.append(ScriptedReply(tool_calls=[ScriptedToolCall(n, a) for n, a in calls]))

    @property
    def pending_replies(self) -> int:
        return len(self._replies)

    def set_model_active(self, model_id: str, active: bool) -> None:
        self._model_index[model_id]["active"] = active

    def add_model(
        self, model_id: str, name: str | None = None, owned_by: str = "workspace", *, active: bool = True
    ) -> None:
        entry = {"id": model_id, "name": name or model_id, "owned_by": owned_by, "active": active}
        self.models.append(entry)
        self._model_index[model_id] = entry

    def advance_job(
        self,
        job_id: str,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Move a fine-tune job to ``status`` and record the matching webhook event."""
        if status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {JOB_STATUSES}")
        job = self.jobs[job_id]
        job["status"] = status
        job["updated_at"] = int(time.time())
        if status == "running":
            job["metrics"] = metrics if metrics is not None else {"step": 0, "train_loss": None}
            self._emit("training.started", job)
        elif status == "completed":
            job["metrics"] = metrics if metrics is not None else {"step": 100, "train_loss": 0.42, "eval_loss": 0.47}
            job["fine_tuned_model"] = f"workspace/{job_id}"
            self._emit("training.completed", job)
        elif status == "failed":
            job["error"] = error if error is not None else {"message": "Training failed", "code": "TRAINING_FAILED"}
            self._emit("training.failed", job)
        elif metrics is not None:
            job["metrics"] = metrics
        return job

    def deploy_job(self, job_id: str) -> str:
        """Deploy a completed job's model into the catalog (``model.deployed``)."""
        job = self.jobs[job_id]
        if job["status"] != "completed":
            raise ValueError("only completed jobs can be deployed")
        model_id = str(job["fine_tuned_model"])
        if model_id not in self._model_index:
            self.add_model(model_id, model_id, "workspace")
        self._emit("model.deployed", {"model": model_id, "job_id": job_id})
        return model_id

    # ------------------------------------------------------------------ app wiring

    def make_app(self) -> web.Application:
        standin = self

        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            return await standin._dispatch(request, handler)

        # Generous body limit: agents forward whole files through write_file arguments.
        app = web.Application(middlewares=[middleware], client_max_size=32 * 1024 * 1024)
        app.router.add_get("/api/agent/models", self._handle_agent_models)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_post("/api/agent/v1/chat/completions", self._handle_chat)
        app.router.add_post("/v1/completions", self._handle_completions)
        app.router.add_post("/v1/embeddings", self._handle_embeddings)
        # Model ids contain "/" ("meta-llama/Llama-3.3-70B-Instruct"), hence the regex.
        app.router.add_post(r"/v1/models/{model_id:.+}/inference", self._handle_model_inference)
        app.router.add_post("/v1/playground/inference", self._handle_playground)
        app.router.add_post("/v1/batch/inference", self._handle_batch)
        app.router.add_post("/v1/fine-tune", self._handle_fine_tune_create)
        app.router.add_get("/v1/fine-tune/{job_id}", self._handle_fine_tune_get)
        return app

    async def _dispatch(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.calls_by_path[request.path] += 1
        try:
            if self.record:
                body = await request.read()
                record = RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=CIMultiDict(request.headers),
                    body=body,
                    json=self._parsed_json(request, body),
                )
                request[_RECORD_KEY] = record
                self.requests.append(record)
            if self.first_byte_delay > 0:
                await asyncio.sleep(self.first_byte_delay)
            self._check_auth(request)
            failure = self._take_failure(request.path)
            if failure is not None and not failure.processed:
                return self._failure_response(failure)
            response = await handler(request)
            if failure is not None:
                return self._failure_response(failure)
            return response
        except StandInError as exc:
            return exc.response()
        except web.HTTPException as exc:  # unknown route, 405, 413: keep the standard shape
            if exc.status < 400:
                raise
            return StandInError(exc.status, exc.reason).response()
        except Exception:  # a stand-in bug must still look like the hosted 500
            log.exception("hosted stand-in handler failed")
            return StandInError(500).response()

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        challenge = {"WWW-Authenticate": 'Bearer realm="llmtune"'}
        if not header:
            raise StandInError(401, "Missing API key", details={"reason": "missing_api_key"}, headers=challenge)
        scheme, _, token = header.partition(" ")
        # Never put the presented token in the message: error bodies end up in logs.
        if scheme.lower() != "bearer" or not token.strip():
            raise StandInError(
                401,
                "Authorization header must be 'Bearer <API key>'",
                details={"reason": "invalid_authorization_scheme"},
                headers=challenge,
            )
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise StandInError(401, "Invalid API key", details={"reason": "invalid_api_key"}, headers=challenge)

    def _take_failure(self, path: str) -> _Failure | None:
        for i, failure in enumerate(self._failures):
            if failure.path_prefix is None or path.startswith(failure.path_prefix):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    del self._failures[i]
                return failure
        return None

    @staticmethod
    def _failure_response(failure: _Failure) -> web.Response:
        headers: dict[str, str] = {}
        details: dict[str, Any] = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = _format_retry_after(failure.retry_after)
            details["retry_after"] = failure.retry_after
        body = failure.body if failure.body is not None else error_body(failure.status, details=details)
        return _json_response(body, failure.status, headers)

    # ------------------------------------------------------------------ helpers

    def _restore_models(self) -> None:
        self.models = [dict(m, active=m.get("active", True)) for m in self._initial_models]
        self._model_index = {m["id"]: m for m in self.models}

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append({"type": event_type, "created_at": int(time.time()), "data": dict(data)})

    @staticmethod
    def _parsed_json(request: web.Request, body: bytes) -> Any | None:
        # Cached on the request so recording and the handler parse the body once.
        if _JSON_OK_KEY not in request:
            try:
                request[_JSON_KEY] = orjson.loads(body) if body else None
                request[_JSON_OK_KEY] = bool(body)
            except orjson.JSONDecodeError:
                request[_JSON_KEY] = None
                request[_JSON_OK_KEY] = False
        return request[_JSON_KEY]

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        value = self._parsed_json(request, body)
        if not request[_JSON_OK_KEY]:
            raise StandInError(400, "Request body is not valid JSON", details={"reason": "invalid_json"})
        if not isinstance(value, dict):
            raise StandInError(400, "Request body must be a JSON object", details={"reason": "not_an_object"})
        return value

    def _require_model(self, model_id: Any, field_name: str = "model") -> str:
        if not isinstance(model_id, str) or not model_id:
            raise StandInError(400, f"'{field_name}' is required", details={"field": field_name})
        if _TOOL_MODEL_RE.match(model_id):
            return model_id  # a model that calls one tool (see _tool_model_plan)
        entry = self._model_index.get(model_id)
        if entry is None:
            raise StandInError(404, f"Model '{model_id}' not found", details={"model": model_id})
        if not entry.get("active", True):
            raise StandInError(404, f"Model '{model_id}' is not active", details={"model": model_id, "active": False})
        return model_id

    def _note_effective(self, request: web.Request, params: _ChatParams) -> None:
        record = request.get(_RECORD_KEY)
        if isinstance(record, RecordedRequest):
            record.effective = params.effective()

    def _claim_cut(self) -> int | None:
        return self._cuts.popleft() if self._cuts else None

    # ------------------------------------------------------------------ chat core

    def _chat_params(
        self, body: dict[str, Any], *, model: str | None = None, allow_prompt: bool = False
    ) -> _ChatParams:
        model = self._require_model(model if model is not None else body.get("model"))
        messages = body.get("messages")
        if messages is None and allow_prompt and isinstance(body.get("prompt"), str):
            messages = [{"role": "user", "content": body["prompt"]}]
        if not isinstance(messages, list) or not messages:
            raise StandInError(400, "'messages' must be a non-empty array", details={"field": "messages"})
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _CHAT_ROLES:
                raise StandInError(400, f"messages[{i}] needs a valid 'role'", details={"field": f"messages[{i}].role"})
            content = message.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise StandInError(
                    400, f"messages[{i}].content is invalid", details={"field": f"messages[{i}].content"}
                )
            if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
                raise StandInError(
                    400,
                    f"messages[{i}] with role 'tool' needs 'tool_call_id'",
                    details={"field": f"messages[{i}].tool_call_id"},
                )

        temperature = body.get("temperature")
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE
        elif not _is_number(temperature) or not 0 <= temperature <= 2:
            raise StandInError(400, "'temperature' must be a number between 0 and 2", details={"field": "temperature"})

        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        elif not _is_int(max_tokens) or max_tokens < 1:
            raise StandInError(400, "'max_tokens' must be a positive integer", details={"field": "max_tokens"})

        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise StandInError(400, "'stream' must be a boolean", details={"field": "stream"})
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list) or not all(
                isinstance(t, dict)
                and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str)
                for t in tools
            ):
                raise StandInError(400, "'tools' must be an array of function tools", details={"field": "tools"})
        tool_choice = body.get("tool_choice")

        stop = body.get("stop")
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = stop
        else:
            raise StandInError(400, "'stop' must be a string or an array of strings", details={"field": "stop"})

        x_chunks = body.get("x_standin_chunks")
        if x_chunks is not None and (not _is_int(x_chunks) or x_chunks < 0):
            raise StandInError(
                400,
                "'x_standin_chunks' must be a non-negative integer",
                details={"field": "x_standin_chunks"},
            )
        x_gap = body.get("x_standin_gap_ms")
        if x_gap is not None and (not _is_number(x_gap) or x_gap < 0):
            raise StandInError(
                400, "'x_standin_gap_ms' must be a non-negative number", details={"field": "x_standin_gap_ms"}
            )

        return _ChatParams(
            model=model,
            messages=messages,
            temperature=float(temperature),
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            tools=tools or None,
            tool_choice=tool_choice,
            stop=stops,
            x_chunks=x_chunks,
            x_gap=None if x_gap is None else x_gap / 1000.0,
        )

    def _plan_chat(self, p: _ChatParams, *, use_scripts: bool = True) -> _Plan:
        prompt_tokens = max(1, sum(_count_words(_content_text(m.get("content"))) for m in p.messages))
        tools_offered = p.tools is not None and p.tool_choice != "none"

        reply: ScriptedReply | None = None
        if use_scripts and self._replies:
            head = self._replies[0]
            # A scripted tool call waits for a request that actually offers tools.
            if not head.tool_calls or tools_offered:
                reply = self._replies.popleft()

        if reply is not None and reply.tool_calls:
            return self._tool_plan([(c.id, c.name, c.arguments) for c in reply.tool_calls], prompt_tokens)
        if reply is None and tools_offered:
            tool_model = self._tool_model_plan(p, prompt_tokens)
            if tool_model is not None:
                return tool_model
        if reply is None and tools_offered and p.tools is not None and p.tool_choice not in (None, "auto"):
            # Forced tool use without a script: call the named (or first) tool with {}.
            forced = p.tool_choice
            name = (
                forced["function"]["name"]
                if isinstance(forced, dict) and isinstance(forced.get("function"), dict)
                else p.tools[0]["function"]["name"]
            )
            return self._tool_plan([(None, str(name), {})], prompt_tokens)

        if reply is not None:
            text = reply.content or ""
        elif p.x_chunks is not None:
            # Benchmark mode: exactly N short content chunks, independent of max_tokens.
            pieces = [(" " if i else "") + _FILLER_WORDS[i % len(_FILLER_WORDS)] for i in range(p.x_chunks)]
            return _Plan(pieces, [], "stop", prompt_tokens, len(pieces))
        else:
            text = self._default_text(p.messages)

        finish = reply.finish_reason if reply is not None and reply.finish_reason else "stop"
        for s in p.stop:
            idx = text.find(s) if s else -1
            if idx >= 0:
                text = text[:idx]
        pieces = _split_words(text)
        if len(pieces) > p.max_tokens:
            pieces = pieces[: p.max_tokens]
            finish = "length"
        return _Plan(pieces, [], finish, prompt_tokens, len(pieces))

    def _tool_model_plan(self, p: _ChatParams, prompt_tokens: int) -> _Plan | None:
        """Model ``tool-<name>``: while the conversation does not end with a tool result, it calls the
        offered tool ``<name>``; then it answers from the result ("Tool said: ..."), so an agent's whole
        tool loop runs with no script. The arguments are the user's last message when that is a JSON
        object, else the tool schema's required fields filled from it (strings get the text)."""
        match = _TOOL_MODEL_RE.match(p.model)
        if match is None or p.messages[-1].get("role") == "tool":
            return None
        name = match.group(1)
        tool = next((t["function"] for t in p.tools or [] if t["function"].get("name") == name), None)
        if tool is None:
            return None
        users = [m for m in p.messages if m.get("role") == "user"]
        text = _content_text(users[-1].get("content")) if users else ""
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        arguments = parsed if isinstance(parsed, dict) else _schema_arguments(tool.get("parameters"), text)
        return self._tool_plan([(None, name, arguments)], prompt_tokens)

    def _tool_plan(self, calls: list[tuple[str | None, str, dict[str, Any] | str]], prompt_tokens: int) -> _Plan:
        resolved: list[tuple[str, str, str]] = []
        for call_id, name, arguments in calls:
            args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            resolved.append((call_id or self._next_id("call_standin_"), name, args))
        completion_tokens = sum(max(1, len(args) // 4) for _, _, args in resolved)
        return _Plan([], resolved, "tool_calls", prompt_tokens, completion_tokens)

    @staticmethod
    def _default_text(messages: list[dict[str, Any]]) -> str:
        last = messages[-1]
        if last.get("role") == "tool":
            return "Tool said: " + _content_text(last.get("content"))
        for message in reversed(messages):
            if message.get("role") == "user":
                text = _content_text(message.get("content"))
                return "Echo: " + text if text else "Echo:"
        return "Echo:"

    def _chat_completion(self, p: _ChatParams, plan: _Plan) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": plan.content}
        if plan.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in plan.tool_calls
            ]
        return {
            "id": self._next_id("chatcmpl-standin-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": p.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": plan.usage(),
        }

    def _chat_chunks(self, p: _ChatParams, plan: _Plan) -> list[bytes]:
        base: dict[str, Any] = {
            "id": self._next_id("chatcmpl-standin-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": p.model,
        }
        if p.include_usage:
            base["usage"] = None  # OpenAI sends usage: null on every chunk but the last

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj = dict(base)
            obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        events: list[bytes] = []
        if plan.tool_calls:
            events.append(chunk({"role": "assistant", "content": None}))
            for index, (cid, name, args) in enumerate(plan.tool_calls):
                # OpenAI: id/type/name only in the first delta of a call, then argument fragments.
                events.append(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": cid,
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                )
                for start in range(0, len(args), _ARG_FRAGMENT):
                    fragment = args[start : start + _ARG_FRAGMENT]
                    events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        else:
            events.append(chunk({"role": "assistant", "content": ""}))
            events.extend(chunk({"content": piece}) for piece in plan.pieces)
        events.append(chunk({}, plan.finish_reason))
        if p.include_usage:
            final = dict(base)
            final["choices"] = []
            final["usage"] = plan.usage()
            events.append(b"data: " + orjson.dumps(final) + b"\n\n")
        return events

    async def _stream(self, request: web.Request, events: list[bytes], gap: float | None) -> web.StreamResponse:
        delay = self.stream_delay if gap is None else gap
        cut = self._claim_cut()
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for i, event in enumerate(events):
                if cut is not None and i >= cut:
                    break
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await response.write(event)
            if cut is not None:
                # close() flushes what was written, then FINs without the terminating
                # zero-length chunk: the client sees a truncated body, not a clean end.
                transport = request.transport
                if transport is not None:
                    transport.close()
                return response
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(_DONE)
        except ConnectionError:
            pass  # the client went away; nothing left to tell it
        return response

    # ------------------------------------------------------------------ handlers

    async def _handle_agent_models(self, request: web.Request) -> web.Response:
        include_inactive = request.query.get("active", "").strip().lower() in ("false", "0", "no")
        data = [
            {"id": m["id"], "name": m["name"], "owned_by": m["owned_by"]}
            for m in self.models
            if include_inactive or m.get("active", True)
        ]
        return _json_response({"success": True, "data": data, "count": len(data)})

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        params = self._chat_params(await self._json_object(request))
        self._note_effective(request, params)
        plan = self._plan_chat(params)
        if params.stream:
            return await self._stream(request, self._chat_chunks(params, plan), params.x_gap)
        return _json_response(self._chat_completion(params, plan))

    async def _inference(self, request: web.Request, body: dict[str, Any], model: str | None) -> web.StreamResponse:
        started = time.perf_counter()
        params = self._chat_params(body, model=model, allow_prompt=True)
        self._note_effective(request, params)
        plan = self._plan_chat(params)
        if params.stream:
            return await self._stream(request, self._chat_chunks(params, plan), params.x_gap)
        result = self._chat_completion(params, plan)
        # Seed 001: inference responses carry domain fields such as text, tokens, latency.
        result["text"] = plan.content or ""
        result["tokens"] = plan.completion_tokens
        result["latency"] = round((time.perf_counter() - started) * 1000.0, 3)
        return _json_response(result)

    async def _handle_model_inference(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_object(request)
        return await self._inference(request, body, request.match_info["model_id"])

    async def _handle_playground(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, await self._json_object(request), None)

    async def _handle_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_object(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(x, str) for x in prompts):
            raise StandInError(400, "'prompt' must be a string or an array of strings", details={"field": "prompt"})
        chat_body = dict(body)
        chat_body["messages"] = [{"role": "user", "content": prompts[0]}]
        params = self._chat_params(chat_body)
        self._note_effective(request, params)
        plans = []
        for text in prompts:
            params.messages = [{"role": "user", "content": text}]
            plans.append(self._plan_chat(params, use_scripts=False))
        usage = {
            "prompt_tokens": sum(pl.prompt_tokens for pl in plans),
            "completion_tokens": sum(pl.completion_tokens for pl in plans),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base: dict[str, Any] = {
            "id": self._next_id("cmpl-standin-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": params.model,
        }
        if not params.stream:
            choices = [
                {"text": pl.content or "", "index": i, "logprobs": None, "finish_reason": pl.finish_reason}
                for i, pl in enumerate(plans)
            ]
            return _json_response({**base, "choices": choices, "usage": usage})

        def chunk(index: int, text: str, finish_reason: str | None) -> bytes:
            obj = dict(base)
            obj["choices"] = [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        events: list[bytes] = []
        for i, pl in enumerate(plans):
            events.extend(chunk(i, piece, None) for piece in pl.pieces)
            events.append(chunk(i, "", pl.finish_reason))
        if params.include_usage:
            events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        return await self._stream(request, events, params.x_gap)

    async def _handle_embeddings(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        model = self._require_model(body.get("model"))
        raw = body.get("input")
        inputs: list[Any]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(_is_int(x) for x in raw):
            inputs = [raw]  # a single pre-tokenised input
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = raw
        else:
            raise StandInError(400, "'input' must be a non-empty string or array", details={"field": "input"})
        if any(x == "" or x == [] for x in inputs):
            raise StandInError(400, "'input' must not contain empty items", details={"field": "input"})
        dims = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if not _is_int(dims) or not 1 <= dims <= 4096:
            raise StandInError(400, "'dimensions' must be an integer in 1..4096", details={"field": "dimensions"})
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise StandInError(
                400, "'encoding_format' must be 'float' or 'base64'", details={"field": "encoding_format"}
            )
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else orjson.dumps(item).decode()
            tokens += max(1, _count_words(text)) if isinstance(item, str) else len(item)
            vector = embedding_vector(model, text, dims)
            value: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if encoding == "base64" else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        return _json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _idempotent_replay(self, request: web.Request) -> tuple[tuple[str, str] | None, web.Response | None]:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return None, None
        slot = (request.path, key)
        stored = self._idempotency.get(slot)
        if stored is None:
            return slot, None
        status, body = stored
        return slot, web.Response(body=body, status=status, content_type=_JSON, headers={"Idempotent-Replayed": "true"})

    def _remember(self, slot: tuple[str, str] | None, status: int, payload: dict[str, Any]) -> web.Response:
        body = orjson.dumps(payload)
        if slot is not None:  # only successes are stored, so a fixed-up retry can still go through
            self._idempotency[slot] = (status, body)
        return web.Response(body=body, status=status, content_type=_JSON)

    async def _handle_batch(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        # No await between the replay check and _remember: concurrent duplicates can't both run.
        slot, replay = self._idempotent_replay(request)
        if replay is not None:
            return replay
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise StandInError(400, "'requests' must be a non-empty array", details={"field": "requests"})
        results: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise StandInError(400, f"requests[{i}] must be an object", details={"field": f"requests[{i}]"})
                params = self._chat_params(item, allow_prompt=True)
                plan = self._plan_chat(params, use_scripts=False)
                results.append(
                    {
                        "index": i,
                        "custom_id": custom_id,
                        "status": 200,
                        "response": self._chat_completion(params, plan),
                    }
                )
            except StandInError as exc:
                results.append({"index": i, "custom_id": custom_id, "status": exc.status, **exc.body})
        failed = sum(1 for r in results if r["status"] != 200)
        batch_id = self._next_id("batch_standin_")
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "status": "completed",
            "created_at": int(time.time()),
            "count": len(results),
            "succeeded": len(results) - failed,
            "failed": failed,
            "webhook_url": body.get("webhook_url", body.get("webhookUrl")),
            "results": results,
        }
        self.batches[batch_id] = batch
        return self._remember(slot, 200, batch)

    async def _handle_fine_tune_create(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        slot, replay = self._idempotent_replay(request)
        if replay is not None:
            return replay
        base_model = body.get("base_model", body.get("baseModel", body.get("model")))
        if not isinstance(base_model, str) or not base_model:
            raise StandInError(400, "'base_model' is required", details={"field": "base_model"})
        if base_model not in self._model_index:
            raise StandInError(404, f"Model '{base_model}' not found", details={"model": base_model})
        dataset = body.get("dataset", body.get("dataset_url", body.get("datasetUrl", body.get("training_file"))))
        if not dataset or not isinstance(dataset, (str, dict)):
            raise StandInError(400, "'dataset' is required", details={"field": "dataset"})
        hyperparameters = body.get("hyperparameters", {})
        if not isinstance(hyperparameters, dict):
            raise StandInError(400, "'hyperparameters' must be an object", details={"field": "hyperparameters"})
        now = int(time.time())
        job_id = self._next_id("ft_job_standin_")
        job: dict[str, Any] = {
            "id": job_id,
            "object": "fine_tune.job",
            "status": "queued",
            "base_model": base_model,
            "dataset": dataset,
            "hyperparameters": hyperparameters,
            "fine_tuned_model": None,
            "metrics": {},
            "error": None,
            "created_at": now,
            "updated_at": now,
        }
        self.jobs[job_id] = job
        return self._remember(slot, 200, job)

    async def _handle_fine_tune_get(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = self.jobs.get(job_id)
        if job is None:
            raise StandInError(404, f"Fine-tune job '{job_id}' not found", details={"job_id": job_id})
        return _json_response(job)


def embedding_vector(model: str, text: str, dims: int) -> list[float]:
    """Deterministic unit vector derived from a hash of (model, text)."""
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        block = hashlib.blake2b(seed + counter.to_bytes(4, "little"), digest_size=64).digest()
        raw.extend(b / 127.5 - 1.0 for b in block)
        counter += 1
    del raw[dims:]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    # Round-trip through float32 so the float and base64 encodings carry identical values.
    packed = struct.pack(f"<{dims}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dims}f", packed))


# ---------------------------------------------------------------------- standalone server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(host: str, port: int, api_key: str, record: bool) -> None:
    """Serve until SIGTERM/SIGINT; prints ``READY http://host:port`` once listening."""
    standin = HostedStandIn(api_key, record=record)
    runner = web.AppRunner(standin.app, access_log=None)  # access logs would skew the benchmark
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = runner.addresses[0]
    real_host = address[0]
    shown_host = f"[{real_host}]" if ":" in real_host else real_host
    print(f"READY http://{shown_host}:{address[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the hosted LLMTune stand-in on loopback.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the workspace key to accept")
    parser.add_argument("--no-record", action="store_true", help="do not keep a request log")
    args = parser.parse_args(argv)
    if not _is_loopback(args.host):
        parser.error("--host must be a loopback address")
    asyncio.run(serve(args.host, args.port, args.api_key, not args.no_record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
