"""The one interface every backend implements: `handle(request) -> response`, like httpx's transports.

A backend receives the client's body as bytes and answers with a status, headers and a body that
is read chunk by chunk as it arrives, so a relaying backend never buffers a stream.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import aiohttp

    from .http1 import ConnectionPool
    from .session import Slots

# What the client asked for; each backend maps these onto its own paths.
# "platform" is any other hosted API path (fine-tune, batch ...), given in BackendRequest.path.
Endpoint = Literal["chat", "agent_chat", "completions", "embeddings", "models", "platform"]


@dataclass(slots=True)
class BackendRequest:
    endpoint: Endpoint
    body: bytes = b""
    stream: bool = False
    # The workspace's LLMTune key; only the hosted backend sends it anywhere.
    api_key: str | None = field(default=None, repr=False)
    # Client headers worth forwarding (Accept, Idempotency-Key, OpenAI-Beta ...), already filtered.
    headers: Mapping[str, str] = field(default_factory=dict)
    # The parsed body, for backends that must read it (echo); relaying backends ignore it.
    payload: dict[str, Any] | None = None
    # For the "platform" endpoint: the upstream path (e.g. "/v1/fine-tune/ft_1") and its method.
    path: str | None = None
    method: str = "POST"


class BackendUnavailable(Exception):
    """The backend could not be reached or did not answer in time; nothing was sent to the client."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class PoolTimeout(BackendUnavailable):
    """Every connection to the backend stayed in use for `upstream.pool_timeout`: nothing was sent."""


class UpstreamBroken(Exception):
    """The body broke off after the status was sent: the connection died or went silent."""

    code = "upstream_broken"  # the error code a client is told (as an SSE error event, in a stream)


class ShuttingDown(UpstreamBroken):
    """The daemon ended the exchange: its shutdown grace ran out."""

    code = "shutting_down"


class BackendResponse(abc.ABC):
    status: int
    headers: Mapping[str, str]

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamBroken if it breaks off."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection (closing it if the body was not read to the end)."""

    @property
    def at_end(self) -> bool:
        """True once the chunk just yielded was the last one: the relay then sends it with the end of
        the body in one write. False when a backend cannot tell (the end is then found one step later)."""
        return False

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value and value.isdigit() else None

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise UpstreamBroken(f"response larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


class BytesResponse(BackendResponse):
    """A response made in-process (the echo backend, translated model lists)."""

    def __init__(self, status: int, body: bytes | AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = dict(headers)
        if isinstance(body, bytes):
            self.headers["Content-Length"] = str(len(body))
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self._body, bytes):
            yield self._body
            return
        async for chunk in self._body:
            yield chunk

    async def aclose(self) -> None:
        if not isinstance(self._body, bytes):
            await self._body.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """One backend's upstream connections and timeouts: its own pool, so a slow backend starves no other.

    `pool` (the relay's lean client) serves loopback URLs; `session` with `slots` serves the rest.
    """

    pool: ConnectionPool
    connect_timeout: float = 10.0
    first_byte_timeout: float = 300.0
    read_timeout: float = 120.0
    session: aiohttp.ClientSession | None = None
    slots: Slots | None = None


class Backend(abc.ABC):
    """One upstream. Subclasses live one per file in this package and register in __init__."""

    kind: str = "abstract"
    # Whether this backend's model list depends on the workspace's key (cached per workspace).
    per_workspace_models: bool = False

    def __init__(
        self,
        name: str,
        context: AdapterContext,
        *,
        url: str | None = None,
        api_key: str | None = None,
        models: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.context = context
        self.url = url
        self._api_key = api_key
        self.static_models = models

    @abc.abstractmethod
    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Send one request; raise BackendUnavailable if the upstream cannot be reached in time."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "url": self.url}
