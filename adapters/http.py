"""HTTP relaying shared by the backends that speak HTTP: bytes in, bytes out, nothing re-encoded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from .base import AdapterContext, BackendResponse, BackendUnavailable, UpstreamBroken
from .http1 import Connection

# Upstream response headers worth passing to the client; hop-by-hop and length headers are ours.
PASSED_RESPONSE_HEADERS = (
    "Content-Type",
    # Asked for identity; an upstream that compresses anyway must still be decodable downstream.
    "Content-Encoding",
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


# Looked up by the lower-cased name the parser gives.
_PASSED_BY_NAME = {name.lower().encode(): name for name in (*PASSED_RESPONSE_HEADERS, "Content-Length")}


class HTTPResponse(BackendResponse):
    """An upstream answer whose body is read from its pooled connection as it arrives."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = conn.status
        headers: dict[str, str] = {}
        for name, value in conn.raw_headers:
            canonical = _PASSED_BY_NAME.get(name.lower())
            if canonical is not None:
                headers[canonical] = value.decode("latin-1")
        self.headers = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunk = conn.take()
            if chunk:
                yield chunk
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait()

    @property
    def at_end(self) -> bool:
        return self._conn.complete and not self._conn.buffered

    async def aclose(self) -> None:
        # A fully read answer leaves its connection in the pool; a half-read one is closed.
        self._conn.pool.release(self._conn)


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
    try:
        conn = await context.pool.request(
            method, url, headers, body, connect_timeout=context.connect_timeout,
            first_byte_timeout=context.first_byte_timeout, read_timeout=context.read_timeout,
        )
    except BackendUnavailable as exc:
        raise type(exc)(f"{what} {exc}", timeout=exc.timeout) from None
    except UpstreamBroken as exc:  # the headers came, and something malformed with them
        raise UpstreamBroken(f"{what}: {exc}") from None
    except ValueError as exc:  # a header with a line break, a URL that is not http(s)
        raise BackendUnavailable(f"{what}: cannot send the request ({exc})") from None
    return HTTPResponse(conn)
