"""HTTP relaying shared by the backends that speak HTTP: bytes in, bytes out, nothing re-encoded."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping

import aiohttp
import yarl

from .base import AdapterContext, BackendResponse, BackendUnavailable, UpstreamBroken

# Upstream response headers worth passing to the client; hop-by-hop and length headers are ours.
PASSED_RESPONSE_HEADERS = (
    "Content-Type",
    "Retry-After",
    "X-Request-Id",
    "OpenAI-Processing-Ms",
    "OpenAI-Version",
    "X-RateLimit-Limit-Requests",
    "X-RateLimit-Limit-Tokens",
    "X-RateLimit-Remaining-Requests",
    "X-RateLimit-Remaining-Tokens",
    "X-RateLimit-Reset-Requests",
    "X-RateLimit-Reset-Tokens",
)


class HTTPResponse(BackendResponse):
    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self.status = response.status
        headers = {name: response.headers[name] for name in PASSED_RESPONSE_HEADERS if name in response.headers}
        length = response.headers.get("Content-Length")
        if length is not None:
            headers["Content-Length"] = length
        self.headers = headers
        # The first byte may take minutes (prompt processing); later gaps are held to read_timeout.
        if response.connection is not None and response.connection.protocol is not None:
            response.connection.protocol.read_timeout = read_timeout
            if not response.content.is_eof():
                # The timer already running was armed with first_byte_timeout: re-arm it now.
                response.connection.protocol.start_timeout()

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamBroken("the upstream went silent mid-response") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamBroken("the upstream connection broke mid-response") from exc

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        try:
            body = await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamBroken("the upstream went silent mid-response") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamBroken("the upstream connection broke mid-response") from exc
        if len(body) > limit:
            raise UpstreamBroken(f"response larger than {limit} bytes")
        return body

    async def aclose(self) -> None:
        # release() keeps a fully read connection in the pool; close() drops a half-read one.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


@functools.lru_cache(maxsize=64)
def upstream_url(url: str) -> yarl.URL:
    """Parsed once: a backend calls the same few URLs over and over."""
    return yarl.URL(url)


@functools.lru_cache(maxsize=16)
def request_timeout(connect: float, first_byte: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=first_byte)


async def send(
    context: AdapterContext,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str],
    what: str,
) -> HTTPResponse:
    """Open one upstream request and return once its status and headers have arrived."""
    timeout = request_timeout(context.connect_timeout, context.first_byte_timeout)
    try:
        response = await context.session.request(
            method, upstream_url(url), data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
    except (TimeoutError, aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError) as exc:
        raise BackendUnavailable(f"{what} did not answer in time", timeout=True) from exc
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(f"{what} cannot be reached ({type(exc).__name__})") from exc
    except asyncio.CancelledError:
        raise
    return HTTPResponse(response, context.read_timeout)
