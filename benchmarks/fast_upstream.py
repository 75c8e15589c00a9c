"""A fast upstream for the benchmark: the hosted stand-in's chat and models shapes, served as cheaply as we can.

The benchmark measures what the daemon (and a bare relay) add on top of an upstream. That only
works when the upstream is much faster than the thing measured: the faithful aiohttp stand-in
(tests/support/hosted_standin.py) answers in ~0.2 ms at ~4.6k req/s on one core, which is of the
same order as the proxies themselves, so its cost and noise would swamp theirs. This server speaks
minimal HTTP/1.1 on raw asyncio Protocols (uvloop when importable), parses with httptools, keeps
connections alive, and precomputes every byte it can.

`python -m benchmarks.fast_upstream --port 0 --api-key KEY [--loop asyncio]` prints
`READY http://127.0.0.1:PORT` once listening and serves until SIGTERM/SIGINT.

Served (every request needs exactly `Authorization: Bearer KEY`; errors use the stand-in's
`{"error": {"message", "code", "details"}}` shape):

* `POST /v1/chat/completions`, `POST /api/agent/v1/chat/completions`: a fixed short answer, or with
  `"stream": true` an SSE stream like the stand-in's benchmark mode: a role chunk, `x_standin_chunks`
  content chunks (default 8), a finish chunk and `data: [DONE]`, `x_standin_gap_ms` apart (default 0).
  Each event goes out as one HTTP chunk in one `transport.write`, as a token server would send it.
* `GET /api/agent/models`: the stand-in's default catalog (`?active=false` adds inactive models).

It does not check models against the catalog, and has none of the stand-in's scripting or
recording: it exists to be fast, not to be a test double.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import itertools
import signal
import sys
import time
from typing import Any, cast

import httptools
import orjson

DEFAULT_CHUNKS = 8
ANSWER = "Hello! How can I help you today?"
# The stand-in's benchmark mode cycles through these words ("alpha", " bravo", ...).
FILLER_WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)  # fmt: skip
# The stand-in's DEFAULT_MODELS; the last one is inactive.
MODELS: tuple[tuple[str, str, str, bool], ...] = (
    ("meta-llama/Llama-3.3-70B-Instruct", "Llama 3.3 70B", "Meta", True),
    ("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B", "Meta", True),
    ("Qwen/Qwen2.5-Coder-32B-Instruct", "Qwen 2.5 Coder 32B", "Qwen", True),
    ("workspace/model-v1", "Workspace model v1", "workspace", True),
    ("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3", "Mistral AI", False),
)
CHAT_PATHS = frozenset({b"/v1/chat/completions", b"/api/agent/v1/chat/completions"})
MODELS_PATH = b"/api/agent/models"
ERROR_CODES: dict[int, str] = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    500: "INTERNAL_ERROR",
}
REASONS: dict[int, bytes] = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
}
JSON_TYPE = b"application/json"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_HEAD_CLOSE = STREAM_HEAD[:-2] + b"Connection: close\r\n\r\n"
# [DONE] and the terminating zero-length chunk end the response together: one write.
DONE_AND_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
CHALLENGE = b'WWW-Authenticate: Bearer realm="llmtune"\r\n'


def error_body(status: int, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The stand-in's standard error shape."""
    code = ERROR_CODES.get(status, f"HTTP_{status}")
    return orjson.dumps({"error": {"message": message, "code": code, "details": details or {}}})


def response(
    status: int, body: bytes, *, close: bool = False, keep_alive_header: bool = False, extra: bytes = b""
) -> bytes:
    """A whole non-streamed response (status line, headers, body) as one bytes object, written once."""
    connection = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if keep_alive_header else b""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            % (status, REASONS.get(status, b"Error"), len(body)),
            connection,
            extra,
            b"\r\n",
            body,
        )
    )


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(obj: dict[str, Any]) -> bytes:
    """One SSE event already framed as one HTTP chunk."""
    return http_chunk(b"data: " + orjson.dumps(obj) + b"\n\n")


def models_body(include_inactive: bool) -> bytes:
    data = [{"id": i, "name": n, "owned_by": o} for i, n, o, active in MODELS if include_inactive or active]
    return orjson.dumps({"success": True, "data": data, "count": len(data)})


MODELS_ACTIVE = models_body(False)
MODELS_ALL = models_body(True)
ANSWER_TOKENS = len(ANSWER.split())


def _completion_parts() -> tuple[bytes, ...]:
    """The non-streamed chat.completion (the stand-in's field order) cut around its varying fields."""
    template = orjson.dumps(
        {
            "id": "chatcmpl-fast-@ID@",
            "object": "chat.completion",
            "created": "@CREATED@",
            "model": "@MODEL@",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": "@PROMPT@", "completion_tokens": ANSWER_TOKENS, "total_tokens": "@TOTAL@"},
        }
    )
    parts: list[bytes] = []
    for marker in (b"@ID@", b'"@CREATED@"', b'"@MODEL@"', b'"@PROMPT@"', b'"@TOTAL@"'):
        head, template = template.split(marker)
        parts.append(head)
    return (*parts, template)


COMPLETION_PARTS = _completion_parts()


class BadRequest(Exception):
    """A 4xx answer in the standard shape."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(status, message, details)


class Request:
    __slots__ = ("auth", "body", "close", "http10", "method", "url")

    def __init__(self, method: bytes, url: bytes, auth: bytes | None, body: bytes, close: bool, http10: bool) -> None:
        self.method = method
        self.url = url
        self.auth = auth
        self.body = body
        self.close = close  # no keep-alive: close after answering
        self.http10 = http10  # HTTP/1.0 keep-alive must be confirmed with a header


class Server:
    """Shared state: the expected Authorization value, id counter, live connections."""

    def __init__(self, api_key: str) -> None:
        self.auth = b"Bearer " + api_key.encode()
        self.ids = itertools.count(1)
        self.connections: set[Connection] = set()

    def next_id(self) -> str:
        return f"chatcmpl-fast-{next(self.ids):06d}"


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(400, f"'{name}' must be a non-negative integer", {"field": name})
    return value


def _gap_field(body: dict[str, Any]) -> float:
    value = body.get("x_standin_gap_ms")
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise BadRequest(400, "'x_standin_gap_ms' must be a non-negative number", {"field": "x_standin_gap_ms"})
    return value / 1000.0


class Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order, stream without interleaving."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # Requests wait here while a (gapped or back-pressured) stream is still being written.
        self.pending: collections.deque[Request] = collections.deque()
        self.busy = False
        self.paused = False
        # The stream in flight: its events, the next one to write, the gap, and its timer.
        self.events: list[bytes] = []
        self.next_event = 0
        self.gap = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.stream_close = False
        # Per-message parse state.
        self.url_parts: list[bytes] = []
        self.body_parts: list[bytes] = []
        self.auth: bytes | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but it has the same API.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # The client went away (maybe mid-stream): stop writing, drop the timer and queue.
        self.transport = None
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.events = []
        self.pending.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.busy and self.timer is None:
            self._pump()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Upgrade is not supported")
            return
        except httptools.HttpParserError:
            self._fail(400, "Malformed HTTP request")
            return
        self._serve_pending()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.url_parts = []
        self.body_parts = []
        self.auth = None

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only Authorization matters; Connection/keep-alive is the parser's business.
        if len(name) == 13 and name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        # Only queue here: exceptions inside parser callbacks would be wrapped by httptools.
        parser = self.parser
        self.pending.append(
            Request(
                parser.get_method(),
                b"".join(self.url_parts),
                self.auth,
                b"".join(self.body_parts),
                not parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
            )
        )

    # ------------------------------------------------------------------ serving

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None:
            if not self.busy:  # never splice an error into a stream in flight
                self.transport.write(response(status, error_body(status, message), close=True))
            self.transport.close()

    def _serve_pending(self) -> None:
        while self.pending and not self.busy and self.transport is not None:
            request = self.pending.popleft()
            self._handle(request)
            if request.close and not self.busy and self.transport is not None:
                self.transport.close()
                self.pending.clear()  # the client asked to close: nothing after this is answered
                return

    def _handle(self, request: Request) -> None:
        assert self.transport is not None
        try:
            self._route(request)
        except BadRequest as exc:
            extra = CHALLENGE if exc.status == 401 else b""
            self.transport.write(
                response(exc.status, exc.body, close=request.close, keep_alive_header=request.http10, extra=extra)
            )

    def _route(self, request: Request) -> None:
        assert self.transport is not None
        auth = request.auth
        if auth != self.server.auth:
            # Same three cases and messages as the stand-in; never echo the token.
            if not auth:
                raise BadRequest(401, "Missing API key", {"reason": "missing_api_key"})
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                raise BadRequest(
                    401, "Authorization header must be 'Bearer <API key>'", {"reason": "invalid_authorization_scheme"}
                )
            raise BadRequest(401, "Invalid API key", {"reason": "invalid_api_key"})
        path, _, query = request.url.partition(b"?")
        if path in CHAT_PATHS:
            if request.method != b"POST":
                raise BadRequest(405, "Method Not Allowed")
            self._chat(request)
        elif path == MODELS_PATH:
            if request.method != b"GET":
                raise BadRequest(405, "Method Not Allowed")
            inactive = any(p in (b"active=false", b"active=0", b"active=no") for p in query.lower().split(b"&"))
            self.transport.write(
                response(
                    200,
                    MODELS_ALL if inactive else MODELS_ACTIVE,
                    close=request.close,
                    keep_alive_header=request.http10,
                )
            )
        else:
            raise BadRequest(404, "Not Found")

    def _chat(self, request: Request) -> None:
        assert self.transport is not None
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise BadRequest(400, "Request body is not valid JSON", {"reason": "invalid_json"}) from None
        if not isinstance(body, dict):
            raise BadRequest(400, "Request body must be a JSON object", {"reason": "not_an_object"})
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest(400, "'model' is required", {"field": "model"})
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest(400, "'stream' must be a boolean", {"field": "stream"})
        # A rough count (the stand-in counts words): accuracy is irrelevant here, speed is not.
        prompt_tokens = max(1, len(request.body) // 32)
        if not stream:
            # Splice the few varying fields into precomputed bytes: ~2x cheaper than building and dumping a dict.
            completion = b"%s%06d%s%d%s%s%s%d%s%d%s" % (
                COMPLETION_PARTS[0],
                next(self.server.ids),
                COMPLETION_PARTS[1],
                int(time.time()),
                COMPLETION_PARTS[2],
                orjson.dumps(model),
                COMPLETION_PARTS[3],
                prompt_tokens,
                COMPLETION_PARTS[4],
                prompt_tokens + ANSWER_TOKENS,
                COMPLETION_PARTS[5],
            )
            self.transport.write(response(200, completion, close=request.close, keep_alive_header=request.http10))
            return
        chunks = _int_field(body, "x_standin_chunks", DEFAULT_CHUNKS)
        gap = _gap_field(body)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._start_stream(self._stream_events(model, chunks, prompt_tokens, include_usage), gap, request)

    def _stream_events(self, model: str, chunks: int, prompt_tokens: int, include_usage: bool) -> list[bytes]:
        """Every event of the stream, each already framed as one HTTP chunk (the stand-in's field order)."""
        base: dict[str, Any] = {
            "id": self.server.next_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        if include_usage:
            base["usage"] = None

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj = dict(base)
            obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            return sse(obj)

        # Content chunks differ only by word: build each distinct one once and share the bytes.
        words = len(FILLER_WORDS)
        first = event({"content": FILLER_WORDS[0]})
        later = [event({"content": " " + w}) for w in FILLER_WORDS] if chunks > 1 else []
        events = [event({"role": "assistant", "content": ""})]
        if chunks:
            events.append(first)
            events.extend(later[i % words] for i in range(1, chunks))
        events.append(event({}, "stop"))
        if include_usage:
            final = dict(base)
            final["choices"] = []
            final["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": chunks,
                "total_tokens": prompt_tokens + chunks,
            }
            events.append(sse(final))
        events.append(DONE_AND_END)
        return events

    def _start_stream(self, events: list[bytes], gap: float, request: Request) -> None:
        assert self.transport is not None
        self.busy = True
        self.events = events
        self.gap = gap
        self.stream_close = request.close
        # The headers ride with the first event, as aiohttp sends them: one write, not two.
        head = STREAM_HEAD_CLOSE if request.close else STREAM_HEAD
        self.transport.write(head + events[0])
        self.next_event = 1
        if gap > 0:
            self.timer = asyncio.get_running_loop().call_later(gap, self._tick)
        else:
            self._pump()

    def _pump(self) -> None:
        """Gap 0: write events back to back, one write each, until done or the transport pushes back."""
        transport = self.transport
        events = self.events
        i = self.next_event
        n = len(events)
        if transport is None:
            return
        while i < n and not self.paused and not transport.is_closing():
            transport.write(events[i])
            i += 1
        self.next_event = i
        if i >= n and not transport.is_closing():
            self._end_stream()

    def _tick(self) -> None:
        """Gapped stream: one event per timer (back-pressure ignored: a gapped stream's buffer stays small)."""
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.events[self.next_event])
        self.next_event += 1
        if self.next_event >= len(self.events):
            self._end_stream()
        else:
            self.timer = asyncio.get_running_loop().call_later(self.gap, self._tick)

    def _end_stream(self) -> None:
        self.busy = False
        self.events = []
        if self.stream_close:
            if self.transport is not None:
                self.transport.close()
            return
        self._serve_pending()  # a request that arrived mid-stream is answered now


async def serve(port: int, api_key: str) -> None:
    """Serve on 127.0.0.1 until SIGTERM/SIGINT; prints `READY http://127.0.0.1:PORT` once listening."""
    loop = asyncio.get_running_loop()
    state = Server(api_key)
    server = await loop.create_server(lambda: Connection(state), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    for connection in list(state.connections):
        if connection.transport is not None:
            connection.transport.abort()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fast upstream stand-in for the benchmark on loopback.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one)")
    parser.add_argument("--api-key", required=True, help="the key to require as 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--loop", choices=("auto", "asyncio"), default="auto", help="auto: uvloop when importable, as the daemon does"
    )
    args = parser.parse_args(argv)
    coroutine = serve(args.port, args.api_key)
    if args.loop == "auto" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
