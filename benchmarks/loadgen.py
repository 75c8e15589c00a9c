"""A lean HTTP/1.1 keep-alive load generator: raw asyncio protocols, no client library in the way.

Used for what wrk cannot measure (time to first chunk, SSE events per stream) and as the fallback
when wrk is not installed. As a worker process:

    python -m benchmarks.loadgen --port P --request-file F --conns N (--duration S | --count R)

prints one JSON line: {"latency_us": [...], "ttfb_us": [...], "events": [...], "errors": n, "elapsed": s}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

perf = time.perf_counter


class ResponseError(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection answering one request at a time (Content-Length or chunked bodies)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, float, int]] | None = None
        self.buf = bytearray()
        self.lost: BaseException | None = None

    # -- protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        now = perf()
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            self._parse(now)
        except ResponseError as exc:
            self.waiter.set_exception(exc)

    # -- request / response ------------------------------------------------------------------

    def _reset(self) -> None:
        self.status = 0
        self.head_done = False
        self.length: int | None = None
        self.chunked = False
        self.first: float = 0.0
        self.events = 0
        self.need: int | None = None  # chunked: bytes of chunk data still expected (+2 for CRLF)
        self.tail = b""  # last bytes of body seen, so a "data: " split across reads is still counted

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, float, int]]:
        if self.lost is not None:
            raise ConnectionResetError("connection lost")
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    def _count(self, body: bytes | bytearray) -> None:
        if not body:
            return
        joined = self.tail + bytes(body)
        self.events += joined.count(b"data: ") - self.tail.count(b"data: ")
        self.tail = joined[-5:]

    def _parse(self, now: float) -> None:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            parts = head[0].split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ResponseError(f"bad status line {head[0]!r}")
            self.status = int(parts[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            self.head_done = True
            if not self.chunked and self.length is None:
                raise ResponseError("response without length (connection-close bodies unsupported)")
        if buf and not self.first:
            self.first = now
        if not self.chunked:
            assert self.length is not None
            if len(buf) >= self.length:
                self._count(buf[: self.length])
                del buf[: self.length]
                self._finish()
            return
        while True:
            if self.need is not None:
                if len(buf) < self.need:
                    return
                self._count(buf[: self.need - 2])
                del buf[: self.need]
                self.need = None
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < line_end + 4:
                    return
                del buf[: line_end + 4]
                self._finish()
                return
            del buf[: line_end + 2]
            self.need = size + 2

    def _finish(self) -> None:
        assert self.waiter is not None
        if self.first == 0.0:
            self.first = perf()
        self.waiter.set_result((self.status, self.first, self.events))


async def connect(host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, host, port)
    return protocol


async def run_load(
    host: str,
    port: int,
    raw: bytes,
    conns: int,
    *,
    duration: float | None = None,
    count: int | None = None,
    stagger: float = 0.0,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Each of `conns` connections sends `raw` back to back, for `duration` seconds or `count` times."""
    latency: list[int] = []
    ttfb: list[int] = []
    events: list[int] = []
    statuses: dict[int, int] = {}
    errors = 0
    connections = [await connect(host, port) for _ in range(conns)]
    started = perf()
    deadline = started + duration if duration is not None else None

    async def one(index: int, connection: Connection) -> None:
        nonlocal errors
        if stagger:
            await asyncio.sleep(index * stagger)
        done = 0
        while True:
            if deadline is not None and perf() >= deadline:
                return
            if count is not None and done >= count:
                return
            sent = perf()
            try:
                status, first, n_events = await asyncio.wait_for(connection.request(raw), timeout)
            except (OSError, ResponseError, TimeoutError):
                errors += 1
                if connection.transport is not None:
                    connection.transport.close()
                try:
                    connection = await connect(host, port)
                except OSError:
                    return
                continue
            ended = perf()
            done += 1
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 400:
                errors += 1
                continue
            latency.append(int((ended - sent) * 1e6))
            ttfb.append(int((first - sent) * 1e6))
            events.append(n_events)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(connections)))
    elapsed = perf() - started
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return {"latency_us": latency, "ttfb_us": ttfb, "events": events, "errors": errors,
            "statuses": {str(k): v for k, v in statuses.items()}, "elapsed": elapsed}


def build_request(method: str, host: str, port: int, path: str, token: str, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Bearer {token}",
             "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loopback HTTP/1.1 load worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request-file", required=True, help="the raw HTTP request bytes to send")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--count", type=int, help="requests per connection")
    parser.add_argument("--stagger-ms", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if (args.duration is None) == (args.count is None):
        parser.error("give exactly one of --duration and --count")
    with open(args.request_file, "rb") as handle:
        raw = handle.read()
    coroutine = run_load(args.host, args.port, raw, args.conns, duration=args.duration, count=args.count,
                         stagger=args.stagger_ms / 1000.0, timeout=args.timeout)
    try:
        import uvloop

        result = uvloop.run(coroutine)
    except ImportError:
        result = asyncio.run(coroutine)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
