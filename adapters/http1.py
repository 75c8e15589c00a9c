"""A lean HTTP/1.1 client for relaying: pooled keep-alive connections, bytes in, bytes out.

aiohttp's client cost more CPU per relayed request than all of the daemon's own work (request and
response objects, payload registry, tracing hooks, cookie jar, a timer re-armed on every read); the
benchmark showed it. A relay needs only this much of HTTP/1.1: the request written in one call, the
response parsed by llhttp (httptools), the body handed over as it arrives, the connection kept for
the next request. TLS, IPv6 and name resolution come from the event loop's own create_connection.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httptools
import yarl

from .base import BackendUnavailable, PoolTimeout, ShuttingDown, UpstreamBroken

# Past this much unread body the socket stops being read (the client downstream is slower than the upstream).
HIGH_WATER = 256 * 1024
# What every request sends: a relay passes bytes on as they came, so it asks for them unencoded.
DEFAULT_HEADERS = "User-Agent: llmtune-companion\r\nAccept-Encoding: identity\r\n"
# Longest status line and headers accepted from an upstream (server.max_header_bytes overrides it).
MAX_HEADER_BYTES = 64 * 1024
# RFC 9112 9.3.1: a request that may be sent twice is retried once when a reused connection turns
# out to be closed before any answer; like Go's net/http, an Idempotency-Key makes a POST replayable.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split once into what opening a connection and writing a request line need."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are pooled per origin
    host: str
    port: int
    tls: bool
    path: str  # path and query, as sent on the request line
    host_header: str
    loopback: bool = False  # this machine: the relay's own client serves it (see session.py for the rest)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=128)
def target_of(url: str) -> Target:
    """Parsed once per URL: a backend calls the same few URLs over and over."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.port is None:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    host, port = parsed.raw_host, parsed.port
    return Target((parsed.scheme, host, port), host, port, parsed.scheme == "https", parsed.raw_path_qs or "/",
                  parsed.host_port_subcomponent or host, is_loopback(host))


def request_head(method: str, target: Target, headers: Mapping[str, str], body: bytes | None) -> bytes:
    parts = [f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n{DEFAULT_HEADERS}"]
    for name, value in headers.items():
        # A line break in a header would let its value write a header (or a request) of its own.
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise ValueError(f"header {name.strip()[:40]!r} holds a line break or a colon")
        parts.append(f"{name}: {value}\r\n")
    if body is not None:
        parts.append(f"Content-Length: {len(body)}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


class Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one exchange at a time; also the parser's callback object."""

    def __init__(self, pool: ConnectionPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._head_request = False
        self._reset()

    def _reset(self) -> None:
        self.active = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BackendUnavailable | UpstreamBroken | None = None
        self.received_any = False
        self._framed = False  # Content-Length or chunked: else the body runs to the connection's close
        self._informational = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = 0.0
        self._read_timeout = 0.0
        self._last_io = 0.0
        self._head_bytes = 0  # bytes received before the headers were complete

    # -- the exchange, as the response sees it --------------------------------------------------

    def send(self, head: bytes, body: bytes | None, first_byte_timeout: float, read_timeout: float,
             *, head_request: bool = False) -> None:
        assert self.transport is not None and not self.active
        self._reset()
        self._head_request = head_request
        self.active = True
        self._timeout = first_byte_timeout
        self._read_timeout = read_timeout
        self._last_io = self.loop.time()
        self._arm(self._last_io + first_byte_timeout)
        if body is None:
            self.transport.write(head)
        elif len(body) < 64 * 1024:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    async def wait(self) -> None:
        """Until more body, the end, or a failure."""
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """Whatever body has arrived, as one piece (b"" if none)."""
        if not self._chunks:
            return b""
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self._last_io = self.loop.time()  # the silence clock restarts when reading does
            self.transport.resume_reading()
            self._arm(self._last_io + self._timeout)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet taken."""
        return self._buffered

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.closed and not self._chunks

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- timeouts: one timer per connection, moved lazily --------------------------------------

    def _arm(self, when: float) -> None:
        # Re-arming a timer on every read costs more than the read; this one only checks, when it fires,
        # whether the connection was really silent for the whole timeout, and re-arms if not.
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.active or self.complete or self.error is not None or self._paused:
            return
        deadline = self._last_io + self._timeout
        if self.loop.time() < deadline:
            self._arm(deadline)
            return
        if self.headers_done:
            self._fail(UpstreamBroken("the upstream went silent mid-response"))
        else:
            self._fail(BackendUnavailable(f"did not answer in time (nothing within {self._timeout:g}s)", timeout=True))

    def _fail(self, error: BackendUnavailable | UpstreamBroken) -> None:
        if self.error is None:
            self.error = error
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            self.close()  # bytes nobody asked for: the connection can no longer be trusted
            return
        self._last_io = self.loop.time()
        self.received_any = True
        if not self.headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            if self.headers_done:
                self._fail(UpstreamBroken(f"the upstream sent a malformed response ({exc})"))
            else:
                self._fail(BackendUnavailable(f"sent a malformed response ({exc})"))
            return
        if not self.headers_done and self._head_bytes > self.pool.max_header_bytes:
            # Checked per read, so at most one read more than the limit is ever held.
            self._fail(UpstreamBroken(f"the upstream's response headers are over {self.pool.max_header_bytes} bytes"))
            return
        if self._buffered > HIGH_WATER and not self._paused and not self.complete:
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.active and not self.complete and self.error is None:
            if self.headers_done and not self._framed:
                self.complete = True  # a body without a length ends where the connection does
                self.keep_alive = False
            elif self.headers_done:
                self.error = UpstreamBroken("the upstream connection broke mid-response")
            else:
                self.error = BackendUnavailable("closed the connection without answering")
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the real answer follows
            return
        self.status = status
        self.headers_done = True
        if status in (204, 304):
            self._framed = True
        if self._head_request:
            # A HEAD answer has no body whatever its Content-Length says, and llhttp cannot be told so:
            # the exchange ends here, and the connection is not reused (its parser would wait for a body).
            self.complete = True
            self.keep_alive = False
            return
        self._timeout = self._read_timeout
        self._arm(self._last_io + self._read_timeout)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self._head_request and self.complete:
            return  # ended at the headers (see on_headers_complete)
        if self._informational:
            self._informational = False
            self.raw_headers = []
            self._framed = False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()


class ConnectionPool:
    """Keep-alive connections per origin, at most `limit` open at once (callers wait beyond that)."""

    def __init__(self, *, limit: int = 100, keepalive: float = 60.0, ssl_context: ssl.SSLContext | None = None,
                 max_header_bytes: int = MAX_HEADER_BYTES, pool_timeout: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.max_header_bytes = max_header_bytes
        self.pool_timeout = pool_timeout
        self.keepalive = keepalive
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
            self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        connect_timeout: float,
        first_byte_timeout: float,
        read_timeout: float,
    ) -> Connection:
        """Send one request; return its connection once the status and headers have arrived.

        Raises BackendUnavailable when nothing was answered (refused, timed out, closed, malformed); its
        message is a predicate ("cannot be reached (...)") for the caller to put its upstream's name before.
        The caller reads the body through the connection, then hands it back with `release`.
        """
        target = target_of(url)
        head = request_head(method, target, headers, body)
        replayable = method in REPLAYABLE_METHODS or "Idempotency-Key" in headers
        fresh = False
        while True:
            conn = await self._acquire(target, connect_timeout, fresh=fresh)
            try:
                conn.send(head, body, first_byte_timeout, read_timeout, head_request=method == "HEAD")
                while not conn.headers_done and conn.error is None:
                    await conn.wait()
            except BaseException:
                conn.close()  # cancelled (the client left) mid-request: nobody will read this answer
                raise
            if conn.error is None:
                return conn
            error = conn.error
            conn.close()
            if conn.reused and not conn.received_any and replayable and not fresh:
                fresh = True  # the pooled connection had been closed by the server: once more, on a new one
                continue
            raise error

    def release(self, conn: Connection) -> None:
        """Back to the pool if the exchange ended cleanly, else closed. Releasing twice is harmless."""
        if not conn.active:
            return
        conn.active = False
        if not conn.reusable or self._closed:
            conn.close()
            return
        conn.reused = True
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive, self._sweep)
        self._wake_waiter()

    def abort(self, reason: str) -> None:
        """End every exchange in progress: a body being read breaks off with ShuttingDown(reason)."""
        for conn in list(self._open):
            if conn.active and not conn.complete:
                error = ShuttingDown(reason) if conn.headers_done else BackendUnavailable(f"cannot answer ({reason})")
                conn._fail(error)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports finish closing

    # -- the pool ---------------------------------------------------------------------------------

    async def _acquire(self, target: Target, connect_timeout: float, *, fresh: bool) -> Connection:
        while True:
            if self._closed:
                raise BackendUnavailable("cannot be reached (the daemon is shutting down)")
            idle = self._idle.get(target.key)
            if idle and not fresh:
                now = self.loop.time()
                while idle:
                    conn = idle.pop()
                    if not conn.closed and now - conn.idle_since < self.keepalive:
                        return conn
                    conn.close()
            if len(self._open) + self._opening < self.limit:
                return await self._connect(target, connect_timeout)
            if self._close_oldest_idle():
                continue  # room made by dropping a connection to another origin nobody uses now
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await waiter
            except TimeoutError:
                raise PoolTimeout(f"is busy: all {self.limit} connections stayed in use for "
                                  f"{self.pool_timeout:g}s") from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiter()  # woken, then cancelled: the turn passes to the next in line
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, target: Target, connect_timeout: float) -> Connection:
        self._opening += 1
        conn: Connection | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self, target.key),
                    target.host,
                    target.port,
                    ssl=self.ssl_context if target.tls else None,
                    server_hostname=target.host if target.tls else None,
                )
        except TimeoutError:
            raise BackendUnavailable(f"did not answer in time (no connection within {connect_timeout:g}s)",
                                     timeout=True) from None
        except ssl.SSLError as exc:
            raise BackendUnavailable(f"cannot be reached (TLS failed: {exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot be reached ({type(exc).__name__})") from None
        finally:
            self._opening -= 1
            if conn is None:
                self._wake_waiter()  # the slot this attempt held is free again
        self._open.add(conn)
        return conn

    def _forget(self, conn: Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_oldest_idle(self) -> bool:
        oldest: Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        oldest.close()
        return True

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.keepalive
        remaining = False
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since <= cutoff]:
                conn.close()
            remaining = remaining or bool(idle)
        if remaining:
            self._sweeper = self.loop.call_later(self.keepalive, self._sweep)
