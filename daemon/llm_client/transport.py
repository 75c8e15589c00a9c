"""HTTP to the companion, twice: urllib for the blocking methods (no event loop or thread to own),
aiohttp for the async ones. Both time-limit the connect and every silence, size-limit what they
read, never use a proxy (the daemon is on loopback), and turn every failure into LLMClientError.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from http.client import HTTPConnection, HTTPException, HTTPResponse
from typing import Any, Protocol

import aiohttp

from .types import LLMClientError, error_from_body

MAX_BODY = 64 * 1024 * 1024  # a whole answer (a tool call may carry a whole file)
MAX_EVENT = 16 * 1024 * 1024  # one SSE event
ERROR_BODY = 1024 * 1024
READ_SIZE = 64 * 1024


CONNECT_TIMEOUT = 10.0
# Longest silence: above the daemon's own first-byte timeout (300 s), so its error arrives first.
READ_TIMEOUT = 330.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # the full endpoint URL
    token: str = ""

    def headers(self, *, body: bool, stream: bool = False) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream" if stream else
                   "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        return headers


class SSEDecoder:
    """Bytes in, the `data:` payload of each complete event out (multi-line data joined by newlines)."""

    def __init__(self, limit: int = MAX_EVENT) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline (a long line arrives in many reads)
        self._data: list[bytes] = []
        self._size = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        out: list[str] = []
        start = 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data).decode("utf-8", "replace"))
                self._data, self._size = [], 0
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                self._size += len(value)
            # comments (":"), event:, id: and retry: lines carry nothing this API uses
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._size + len(self._buffer) > self._limit:
            raise LLMClientError(None, "event_too_large", f"an event from the companion exceeds {self._limit} bytes")
        return out


class StreamBroken(LLMClientError):
    """The stream began (HTTP 200) and then failed: the events so far stand, the answer is incomplete."""


def _unreachable(url: str, reason: object) -> LLMClientError:
    return LLMClientError(None, "daemon_unreachable", f"cannot reach the companion at {url}: {reason}; "
                                                      "is `llmtune-companion serve` running?")


def _timed_out(what: str, seconds: float) -> LLMClientError:
    return LLMClientError(None, "timeout", f"the companion did not answer {what} within {seconds:g} s")


# -- blocking (urllib) --------------------------------------------------------------------------

class _Connection(HTTPConnection):
    """Connects within the connect timeout, then reads with the read timeout (urllib has one for both)."""

    def __init__(self, host: str, *, read_timeout: float, **options: Any) -> None:
        super().__init__(host, **options)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        if self.sock is not None:
            self.sock.settimeout(self._read_timeout)


class _Handler(urllib.request.HTTPHandler):
    def __init__(self, timeouts: Timeouts) -> None:
        super().__init__()
        self._timeouts = timeouts

    def http_open(self, req: urllib.request.Request) -> HTTPResponse:
        return self.do_open(partial(_Connection, read_timeout=self._timeouts.read), req)


def _opener(timeouts: Timeouts) -> urllib.request.OpenerDirector:
    # No ProxyHandler entries: an HTTP(S)_PROXY in the environment must not see the local token.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _Handler(timeouts))


class _Readable(Protocol):
    def read(self, amount: int, /) -> bytes: ...


def _read_limited(source: _Readable, limit: int) -> bytes:
    data = source.read(limit + 1)
    if len(data) > limit:
        raise LLMClientError(None, "response_too_large", f"the companion's answer exceeds {limit} bytes")
    return data


def _open(method: str, target: Target, body: bytes | None, timeouts: Timeouts, *, stream: bool) -> HTTPResponse:
    if not target.url.startswith(("http://", "https://")):
        raise LLMClientError(None, "invalid_url", f"not an http(s) URL: {target.url!r}")
    request = urllib.request.Request(target.url, data=body, method=method,  # noqa: S310 (scheme checked above)
                                     headers=target.headers(body=body is not None, stream=stream))
    try:
        # The request's timeout is the connect's (http) or that of the connect and every read (https).
        http = target.url.startswith("http://")
        response: HTTPResponse = _opener(timeouts).open(request, timeout=timeouts.connect if http else timeouts.read)
    except urllib.error.HTTPError as exc:
        with exc:
            raise error_from_body(exc.code, _read_limited(exc, ERROR_BODY)) from None
    except TimeoutError:
        raise _timed_out(f"{method} {target.url}", timeouts.read) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(target.url, getattr(exc, "reason", exc)) from None
    return response


def request_sync(method: str, target: Target, body: bytes | None, timeouts: Timeouts) -> bytes:
    response = _open(method, target, body, timeouts, stream=False)
    try:
        return _read_limited(response, MAX_BODY)
    except TimeoutError:
        raise _timed_out(f"{method} {target.url}", timeouts.read) from None
    except (OSError, HTTPException) as exc:
        raise LLMClientError(None, "connection_broken", f"the companion's answer broke off: {exc}") from None
    finally:
        response.close()


def stream_sync(target: Target, body: bytes, timeouts: Timeouts) -> Iterator[str]:
    """The `data:` payloads of a POSTed SSE stream; LLMClientError when it cannot start or breaks off."""
    response = _open("POST", target, body, timeouts, stream=True)
    decoder = SSEDecoder()
    try:
        while True:
            try:
                chunk = response.read1(READ_SIZE)
            except TimeoutError:
                raise StreamBroken(None, "timeout", f"no event from the companion within {timeouts.read:g} s") from None
            except (OSError, HTTPException) as exc:  # IncompleteRead: the connection closed mid-body
                raise StreamBroken(None, "stream_broken", f"the stream broke off: {exc!r}") from None
            if not chunk:
                return
            yield from decoder.feed(chunk)
    finally:
        response.close()


# -- async (aiohttp) ----------------------------------------------------------------------------


def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_connect=timeouts.connect,
                                 sock_read=timeouts.read)


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status >= 400:
        body = await response.content.read(ERROR_BODY)
        raise error_from_body(response.status, body)


async def request_async(method: str, target: Target, body: bytes | None, timeouts: Timeouts) -> bytes:
    # A session per call: the frameworks run this on loops they create and close (Strands, LangChain's
    # sync-to-async bridges), and a session must not outlive its loop.
    try:
        async with aiohttp.ClientSession(timeout=_client_timeout(timeouts)) as session, session.request(
                method, target.url, data=body, headers=target.headers(body=body is not None)) as response:
            await _check(response)
            data = await response.content.read(MAX_BODY + 1)
            if len(data) > MAX_BODY:
                raise LLMClientError(None, "response_too_large", f"the companion's answer exceeds {MAX_BODY} bytes")
            return data
    except TimeoutError:
        raise _timed_out(f"{method} {target.url}", timeouts.read) from None
    except aiohttp.ClientConnectionError as exc:
        raise _unreachable(target.url, exc) from None
    except aiohttp.ClientError as exc:
        raise LLMClientError(None, "connection_broken", f"the companion's answer broke off: {exc}") from None


async def stream_async(target: Target, body: bytes, timeouts: Timeouts) -> AsyncIterator[str]:
    decoder = SSEDecoder()
    started = False
    try:
        async with aiohttp.ClientSession(timeout=_client_timeout(timeouts)) as session, session.post(
                target.url, data=body, headers=target.headers(body=True, stream=True)) as response:
            await _check(response)
            started = True
            async for chunk in response.content.iter_any():
                for data in decoder.feed(chunk):
                    yield data
    except TimeoutError:
        if started:
            raise StreamBroken(None, "timeout", f"no event from the companion within {timeouts.read:g} s") from None
        raise _timed_out(f"POST {target.url}", timeouts.read) from None
    except aiohttp.ClientError as exc:
        if started:
            raise StreamBroken(None, "stream_broken", f"the stream broke off: {exc!r}") from None
        if isinstance(exc, aiohttp.ClientConnectionError):
            raise _unreachable(target.url, exc) from None
        raise LLMClientError(None, "connection_broken", f"the companion's answer broke off: {exc!r}") from None
