"""Upstreams off this machine (the hosted API, a vLLM box on the LAN, a team gateway) through aiohttp.

The relay's own HTTP/1.1 client (http1.py) is kept for loopback backends, where the benchmark shows
it pays. Anything else goes through aiohttp's ClientSession, a well-kept client that knows real
networks: `trust_env=True` takes HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and proxy credentials in
their URLs) from the environment, and certificates are checked against the operating system's
trust store (`truststore`, so a corporate CA installed on the machine works) or a CA bundle file.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp

from .base import BackendResponse, BackendUnavailable, PoolTimeout, UpstreamBroken


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The OS trust store (truststore) or, when given, a PEM bundle of CA certificates."""
    if ca_bundle:
        context = ssl.create_default_context(cafile=ca_bundle)
    else:
        try:
            import truststore
        except ImportError:  # not installed: Python's default CA paths
            context = ssl.create_default_context()
        else:
            context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return context


def make_session(*, ca_bundle: str | None, max_header_bytes: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # each backend's own Slots bound its connections
        keepalive_timeout=60,
        ttl_dns_cache=300,
        ssl=tls_context(ca_bundle),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,  # relay bytes as they came; the client decodes
        headers={"User-Agent": "llmtune-companion", "Accept-Encoding": "identity"},
        trust_env=True,
        max_line_size=max_header_bytes,
        max_field_size=max_header_bytes,
    )


class Slots:
    """At most `limit` requests in flight to one backend; waiting for one is bounded by `timeout`."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            raise PoolTimeout(f"is busy: all {self.limit} connections stayed in use for {self.timeout:g}s") from None

    def release(self) -> None:
        self._semaphore.release()


class SessionResponse(BackendResponse):
    def __init__(self, response: aiohttp.ClientResponse, headers: dict[str, str], slots: Slots,
                 read_timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.headers = headers
        self._slots: Slots | None = slots
        self._read_timeout = read_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError:
            raise UpstreamBroken("the upstream went silent mid-response") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamBroken(f"the upstream connection broke mid-response ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        self._response.release()
        slots = self._slots
        if slots is not None:  # released once, however often aclose is called
            self._slots = None
            slots.release()


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


async def send(
    session: aiohttp.ClientSession,
    slots: Slots,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    connect_timeout: float,
    first_byte_timeout: float,
) -> tuple[aiohttp.ClientResponse, Slots]:
    """Open one request; return once the status and headers have arrived (the slot held until aclose)."""
    await slots.acquire()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=first_byte_timeout)
    try:
        response = await session.request(method, url, data=body, headers=dict(headers), timeout=timeout,
                                         allow_redirects=False)
    except BaseException as exc:
        slots.release()
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            raise BackendUnavailable(f"cannot be reached (TLS failed: {_reason(exc)})") from None
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            raise BackendUnavailable(f"cannot be reached (the proxy cannot be reached: {_reason(exc)})") from None
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            raise BackendUnavailable(f"cannot be reached (the proxy answered {exc.status})") from None
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise BackendUnavailable(f"did not answer in time (no connection within {connect_timeout:g}s)",
                                     timeout=True) from None
        if isinstance(exc, TimeoutError):
            raise BackendUnavailable(f"did not answer in time (nothing within {first_byte_timeout:g}s)",
                                     timeout=True) from None
        if isinstance(exc, aiohttp.ClientResponseError):  # a malformed status line or headers, too long ones
            raise UpstreamBroken(f"the upstream sent a malformed response ({_reason(exc)})") from None
        if isinstance(exc, aiohttp.ClientError | OSError):
            raise BackendUnavailable(f"cannot be reached ({type(exc).__name__}: {_reason(exc)})") from None
        raise
    return response, slots
