"""The relay's HTTP/1.1 client against raw loopback servers that write exactly the bytes each test needs."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme
from llmtune_companion.adapters import BackendUnavailable, PoolTimeout, UpstreamBroken
from llmtune_companion.adapters.http import HTTPResponse
from llmtune_companion.adapters.http1 import HIGH_WATER, Connection, ConnectionPool

from tests.conftest import closed_port

Handler = Callable[["Exchange"], Awaitable[None]]
TIMEOUTS = {"connect_timeout": 2.0, "first_byte_timeout": 2.0, "read_timeout": 2.0}


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """One accepted connection: read requests from it, write raw bytes to it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int

    async def request(self) -> Request | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Request(line, headers, body)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class RawServer:
    url: str
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)  # indexes of connections the client closed


ServerFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[ServerFactory]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> RawServer:
        state = RawServer("")

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            exchange = Exchange(reader, writer, state.connections)
            original = exchange.request

            async def recorded() -> Request | None:
                request = await original()
                if request is None:
                    state.closed.append(exchange.index)
                else:
                    state.requests.append(request)
                return request

            exchange.request = recorded  # type: ignore[method-assign]
            try:
                await handler(exchange)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        state.url = f"{'https' if tls else 'http'}://{host}:{port}"
        return state

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    async with ConnectionPool(limit=10, keepalive=30.0) as pool:
        yield pool


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in ("HTTP/1.1 200 OK", "Content-Type: application/json",
                                              f"Content-Length: {len(body)}", *extra))
    return head.encode() + b"\r\n" + body


async def keep_answering(exchange: Exchange) -> None:
    while (request := await exchange.request()) is not None:
        await exchange.send(ok(b'{"echo": "' + request.line.encode() + b'"}', "X-Request-Id: r-1"))


async def read_all(conn: Connection) -> bytes:
    return await HTTPResponse(conn).read()


async def test_one_connection_carries_every_request_in_turn(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    server = await raw_server(keep_answering)
    for n in range(3):
        conn = await pool.request("POST", f"{server.url}/v1/chat?n={n}", {"Authorization": "Bearer sk_x"},
                                  b'{"model": "m"}', **TIMEOUTS)
        assert conn.status == 200
        assert (b"x-request-id", b"r-1") in [(k.lower(), v) for k, v in conn.raw_headers]
        assert await read_all(conn) == b'{"echo": "POST /v1/chat?n=' + str(n).encode() + b' HTTP/1.1"}'
        pool.release(conn)
    assert server.connections == 1
    first = server.requests[0]
    assert first.headers["host"] == server.url.removeprefix("http://")
    assert first.headers["authorization"] == "Bearer sk_x" and first.headers["content-length"] == "14"
    assert first.headers["accept-encoding"] == "identity" and first.body == b'{"model": "m"}'


async def test_a_chunked_body_arrives_as_it_is_sent(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    events = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]

    async def stream(exchange: Exchange) -> None:
        while await exchange.request() is not None:
            await exchange.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n")
            for event in events:
                await exchange.send(b"%x\r\n%s\r\n" % (len(event), event))
                await asyncio.sleep(0.05)
            await exchange.send(b"0\r\n\r\n")

    server = await raw_server(stream)
    conn = await pool.request("POST", server.url + "/s", {}, b"{}", **TIMEOUTS)
    arrivals: list[tuple[float, bytes]] = []
    while not conn.complete:
        chunk = conn.take()
        if chunk:
            arrivals.append((time.monotonic(), chunk))
        else:
            await conn.wait()
    # Each event is handed over when it arrives (not when the body ends), bytes untouched.
    assert [chunk for _, chunk in arrivals] == events
    assert arrivals[-1][0] - arrivals[0][0] >= 0.08
    pool.release(conn)
    again = await pool.request("POST", server.url + "/s", {}, b"{}", **TIMEOUTS)
    assert await read_all(again) == b"".join(events)
    assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def until_close(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\npart one, ")
        await asyncio.sleep(0.05)
        await exchange.send(b"part two")

    server = await raw_server(until_close)
    conn = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
    assert await read_all(conn) == b"part one, part two"
    assert not conn.reusable
    pool.release(conn)
    assert server.requests[0].line == "GET / HTTP/1.1" and "content-length" not in server.requests[0].headers


async def test_a_body_cut_short_is_broken(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def cut(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    server = await raw_server(cut)
    conn = await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)
    with pytest.raises(UpstreamBroken, match="broke mid-response"):
        await read_all(conn)


async def test_no_answer_in_time_is_a_timeout(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def silent(exchange: Exchange) -> None:
        await exchange.request()
        await asyncio.sleep(5)

    server = await raw_server(silent)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not answer in time") as caught:
        await pool.request("POST", server.url + "/", {}, b"{}", connect_timeout=1, first_byte_timeout=0.2,
                           read_timeout=5)
    assert caught.value.timeout and 0.2 <= time.monotonic() - started < 1.5


async def test_silence_mid_body_breaks_it_but_a_steady_trickle_does_not(
    pool: ConnectionPool, raw_server: ServerFactory
) -> None:
    async def trickle(exchange: Exchange) -> None:
        while (request := await exchange.request()) is not None:
            await exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            gap = 0.1 if request.line.startswith("POST /steady") else 0.6
            for _ in range(5):
                await exchange.send(b"1\r\nx\r\n")
                await asyncio.sleep(gap)
            await exchange.send(b"0\r\n\r\n")

    server = await raw_server(trickle)
    # 5 chunks 0.1 s apart: 0.5 s in all, longer than the 0.25 s timeout, yet never silent that long.
    conn = await pool.request("POST", server.url + "/steady", {}, b"{}", connect_timeout=1, first_byte_timeout=1,
                              read_timeout=0.25)
    assert await read_all(conn) == b"xxxxx"
    pool.release(conn)
    conn = await pool.request("POST", server.url + "/stalls", {}, b"{}", connect_timeout=1, first_byte_timeout=1,
                              read_timeout=0.25)
    with pytest.raises(UpstreamBroken, match="went silent"):
        await read_all(conn)


async def test_a_pooled_connection_closed_unanswered_is_retried_only_when_replayable(
    pool: ConnectionPool, raw_server: ServerFactory
) -> None:
    async def answers_once_per_connection(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(ok(b"{}"))
        await exchange.request()  # the next request on this connection is read, then dropped unanswered

    server = await raw_server(answers_once_per_connection)

    async def once(method: str, headers: dict[str, str]) -> Connection:
        conn = await pool.request(method, server.url + "/", headers, None if method == "GET" else b"{}", **TIMEOUTS)
        await read_all(conn)
        pool.release(conn)
        return conn

    await once("GET", {})
    await once("GET", {})  # the pooled connection fails; a GET may be sent again, on a new one
    assert server.connections == 2
    # A POST may have been acted on: it is not sent twice ...
    with pytest.raises(BackendUnavailable, match="closed the connection without answering"):
        await once("POST", {})
    assert server.connections == 2
    await once("POST", {})  # (a new connection: the failed one was dropped)
    # ... unless an Idempotency-Key makes sending it again harmless.
    await once("POST", {"Idempotency-Key": "job-1"})
    assert server.connections == 4
    assert [r.line.split()[0] for r in server.requests].count("POST") == 4


async def test_a_header_with_a_line_break_is_never_sent(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    server = await raw_server(keep_answering)
    for headers in ({"X-Test": "a\r\nInjected: 1"}, {"X-Test\nInjected": "1"}, {"Bad: name": "1"}):
        with pytest.raises(ValueError, match="line break or a colon"):
            await pool.request("POST", server.url + "/", headers, b"{}", **TIMEOUTS)
    assert server.connections == 0


async def test_beyond_the_limit_requests_wait_for_a_connection(raw_server: ServerFactory) -> None:
    open_now = peak = 0

    async def slow(exchange: Exchange) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while await exchange.request() is not None:
                await asyncio.sleep(0.05)
                await exchange.send(ok(b"{}"))
        finally:
            open_now -= 1

    server = await raw_server(slow)
    async with ConnectionPool(limit=2) as pool:

        async def one() -> bytes:
            conn = await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)
            body = await read_all(conn)
            pool.release(conn)
            return body

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"{}"] * 6
    assert peak == 2 and server.connections == 2


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(
    pool: ConnectionPool, raw_server: ServerFactory
) -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MB

    async def firehose(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)

    server = await raw_server(firehose)
    conn = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
    await asyncio.sleep(0.3)  # the reader is busy elsewhere: what piles up stays near the high-water mark
    assert 0 < conn.buffered <= HIGH_WATER + 512 * 1024
    assert await read_all(conn) == payload


async def test_an_informational_answer_is_skipped(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def early_hints(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                            + ok(b'{"final": true}'))

    server = await raw_server(early_hints)
    conn = await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)
    assert conn.status == 200 and await read_all(conn) == b'{"final": true}'
    assert not any(name.lower() == b"link" for name, _ in conn.raw_headers)


async def test_a_malformed_answer_is_refused(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def garbage(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    server = await raw_server(garbage)
    with pytest.raises(BackendUnavailable, match="malformed response"):
        await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)


async def test_a_cancelled_request_closes_its_connection(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    seen = asyncio.Event()
    hung_up = asyncio.Event()

    async def never_answers(exchange: Exchange) -> None:
        await exchange.request()
        seen.set()
        if await exchange.reader.read() == b"":
            hung_up.set()

    server = await raw_server(never_answers)
    task = asyncio.create_task(pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS))
    await asyncio.wait_for(seen.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hung_up.wait(), 2)  # nobody pays for an answer no one will read


async def test_releasing_twice_pools_the_connection_once(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def slow(exchange: Exchange) -> None:
        while await exchange.request() is not None:
            await asyncio.sleep(0.05)
            await exchange.send(ok(b"{}"))

    server = await raw_server(slow)
    conn = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
    await read_all(conn)
    pool.release(conn)
    pool.release(conn)  # (a response closed twice)

    async def one() -> bytes:
        got = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
        body = await read_all(got)
        pool.release(got)
        return body

    # Were it listed twice, both requests would be written to the one connection.
    assert await asyncio.gather(one(), one()) == [b"{}", b"{}"]
    assert server.connections == 2


async def test_a_waiter_cancelled_after_its_turn_passes_it_on(raw_server: ServerFactory) -> None:
    server = await raw_server(keep_answering)
    async with ConnectionPool(limit=1) as pool:
        holder = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
        first = asyncio.create_task(pool.request("GET", server.url + "/a", {}, None, **TIMEOUTS))
        second = asyncio.create_task(pool.request("GET", server.url + "/b", {}, None, **TIMEOUTS))
        await asyncio.sleep(0.05)  # both wait for the one connection
        await read_all(holder)
        pool.release(holder)  # wakes `first` ...
        first.cancel()  # ... which leaves before it runs: `second` must get the connection
        conn = await asyncio.wait_for(second, 2)
        assert b"GET /b" in await read_all(conn)


async def test_a_half_read_answer_is_not_pooled(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def big(exchange: Exchange) -> None:
        while await exchange.request() is not None:
            await exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await asyncio.sleep(0.2)
            await exchange.send(b"0\r\n\r\n")

    server = await raw_server(big)
    conn = await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)
    assert conn.take() in (b"", b"hello")
    pool.release(conn)  # the rest of the body was never read: the connection cannot carry another request
    conn = await pool.request("POST", server.url + "/", {}, b"{}", **TIMEOUTS)
    assert await read_all(conn) == b"hello"
    assert server.connections == 2


async def test_idle_connections_are_closed_after_the_keepalive(raw_server: ServerFactory) -> None:
    server = await raw_server(keep_answering)
    async with ConnectionPool(keepalive=0.2) as pool:
        conn = await pool.request("GET", server.url + "/", {}, None, **TIMEOUTS)
        await read_all(conn)
        pool.release(conn)
        await asyncio.sleep(0.6)
        assert server.closed == [1] and conn.closed


async def test_unreachable_upstreams(pool: ConnectionPool) -> None:
    with pytest.raises(BackendUnavailable, match=r"cannot be reached \(ConnectionRefusedError\)"):
        await pool.request("GET", f"http://127.0.0.1:{closed_port()}/", {}, None, **TIMEOUTS)
    with pytest.raises(ValueError, match="not an http"):
        await pool.request("GET", "ftp://127.0.0.1/", {}, None, **TIMEOUTS)


async def test_https_with_a_trusted_certificate_and_refused_without(raw_server: ServerFactory) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    server = await raw_server(keep_answering, tls=server_context, host="localhost")
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with ConnectionPool(ssl_context=client_context) as pool:
        conn = await pool.request("POST", server.url + "/v1/x", {}, b"{}", **TIMEOUTS)
        assert conn.status == 200 and b"POST /v1/x" in await read_all(conn)
    async with ConnectionPool() as untrusting:  # the system's roots do not know this authority
        with pytest.raises(BackendUnavailable, match="TLS failed"):
            await untrusting.request("POST", server.url + "/v1/x", {}, b"{}", **TIMEOUTS)


# -- issue 8: HEAD, header limits, a malformed chunk with the headers, waiting for a connection -------


async def test_head_with_a_content_length_ends_at_the_headers(pool: ConnectionPool, raw_server: ServerFactory) -> None:
    async def head_answer(exchange: Exchange) -> None:
        while await exchange.request() is not None:
            await exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n")

    server = await raw_server(head_answer)
    started = time.monotonic()
    conn = await pool.request("HEAD", f"{server.url}/file", {}, None, **TIMEOUTS)
    response = HTTPResponse(conn)
    assert await asyncio.wait_for(response.read(), 1.0) == b""
    assert response.content_length == 1234
    await response.aclose()
    assert time.monotonic() - started < 1.0, "HEAD waited for a body that never comes"
    # The connection is not reused (its parser expected a body); the next request opens a new one.
    conn = await pool.request("HEAD", f"{server.url}/file", {}, None, **TIMEOUTS)
    await HTTPResponse(conn).aclose()
    assert server.connections == 2


async def test_response_headers_over_the_limit_are_refused(raw_server: ServerFactory) -> None:
    sent = 0

    async def huge_header(exchange: Exchange) -> None:
        nonlocal sent
        await exchange.request()
        await exchange.send(b"HTTP/1.1 200 OK\r\nX-Junk: ")
        piece = b"a" * 65536
        for _ in range(1024):  # 64 MB, if nobody stops reading
            await exchange.send(piece)
            sent += len(piece)

    server = await raw_server(huge_header)
    async with ConnectionPool(limit=2, max_header_bytes=64 * 1024) as small:
        with pytest.raises(UpstreamBroken, match="over 65536 bytes"):
            await small.request("GET", f"{server.url}/", {}, None, **TIMEOUTS)
    assert sent < 4 * 1024 * 1024, "the client went on reading a header far past the limit"


async def test_a_malformed_chunk_with_the_headers_is_upstream_broken(
    pool: ConnectionPool, raw_server: ServerFactory
) -> None:
    async def bad_chunk(exchange: Exchange) -> None:
        await exchange.request()
        await exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n")

    server = await raw_server(bad_chunk)
    with pytest.raises(UpstreamBroken, match="malformed"):
        await pool.request("GET", f"{server.url}/", {}, None, **TIMEOUTS)


async def test_waiting_for_a_connection_is_bounded(raw_server: ServerFactory) -> None:
    async def slow(exchange: Exchange) -> None:
        await exchange.request()
        await asyncio.sleep(3)

    server = await raw_server(slow)
    async with ConnectionPool(limit=1, pool_timeout=0.3) as tiny:
        first = asyncio.create_task(tiny.request("GET", f"{server.url}/", {}, None, **TIMEOUTS))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="busy"):
            await tiny.request("GET", f"{server.url}/", {}, None, **TIMEOUTS)
        assert time.monotonic() - started < 1.0
        first.cancel()
