"""HTTP relaying shared by the backends that speak HTTP: bytes in, bytes out, nothing re-encoded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

from . import session
from .base import AdapterContext, BackendResponse, BackendUnavailable, UpstreamBroken
from .http1 import Connection, target_of

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


def passed_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        canonical = _PASSED_BY_NAME.get(name.lower())
        if canonical is not None:
            headers[canonical] = value.decode("latin-1")
    return headers


class HTTPResponse(BackendResponse):
    """An upstream answer whose body is read from its pooled connection as it arrives."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = passed_headers(conn.raw_headers)

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
) -> BackendResponse:
    """Open one upstream request and return once its status and headers have arrived."""
    if context.session is not None and context.slots is not None:
        try:
            remote = not target_of(url).loopback
        except ValueError as exc:
            raise BackendUnavailable(f"{what}: cannot send the request ({exc})") from None
        if remote:
            return await _send_remote(context, method, url, body=body, headers=headers, what=what)
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


async def _send_remote(context: AdapterContext, method: str, url: str, *, body: bytes | None,
                       headers: Mapping[str, str], what: str) -> BackendResponse:
    assert context.session is not None and context.slots is not None
    try:
        response, slots = await session.send(
            context.session, context.slots, method, url, body=body, headers=headers,
            connect_timeout=context.connect_timeout, first_byte_timeout=context.first_byte_timeout,
        )
    except BackendUnavailable as exc:
        raise type(exc)(f"{what} {exc}", timeout=exc.timeout) from None
    except UpstreamBroken as exc:
        raise UpstreamBroken(f"{what}: {exc}") from None
    if response.status == 407:  # the proxy (not the upstream) wants other credentials
        response.release()
        slots.release()
        raise BackendUnavailable(f"{what} cannot be reached (the proxy refused its credentials: HTTP 407; "
                                 "check HTTPS_PROXY / HTTP_PROXY)")
    return session.SessionResponse(response, passed_headers(response.raw_headers), slots, context.read_timeout)
