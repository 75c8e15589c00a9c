"""A stand-in for the public side of `connect cursor`'s tunnel: a raw TCP relay on another loopback port.

It implements the `Forwarder` protocol (daemon/connect/tunnel.py) the way ngrok does it for real:
every byte that reaches the "public" address goes to the local URL it was opened for, and nothing
else; so tests see exactly what a caller on the internet would see.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class LoopbackForwarder:
    def __init__(self) -> None:
        self.opened_with: str | None = None
        self.closed = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self, local_url: str) -> str:
        self.opened_with = local_url
        target = urlsplit(local_url)
        assert target.hostname is not None and target.port is not None

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(target.hostname, target.port)
            except OSError:
                client_writer.close()
                return
            tasks = [asyncio.ensure_future(pipe(client_reader, upstream_writer)),
                     asyncio.ensure_future(pipe(upstream_reader, client_writer))]
            self._pipes.update(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            self._pipes.difference_update(tasks)

        self._server = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.closed = True
        if self._server is not None:
            self._server.close()
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
            await self._server.wait_closed()
