"""The one interface every backend implements: `handle(request) -> response`, like httpx's transports.

A backend receives the client's body as bytes and answers with a status, headers and a body that
is read chunk by chunk as it arrives, so a relaying backend never buffers a stream.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

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


def check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def settings_model_for(kind: object) -> type[BackendSettings] | None:
    """The settings model of a registered backend type that config.toml may name; None for any other."""
    from . import BACKEND_TYPES  # the registry imports every backend, so it is read at validation time

    backend = BACKEND_TYPES.get(kind) if isinstance(kind, str) else None
    return backend.settings_model if backend is not None and backend.configurable else None


class BackendSettings(BaseModel):
    """One `[backends.NAME]` table of config.toml: the keys every backend reads.

    A backend that reads more keys (bedrock's region) declares a subclass as its `settings_model`.
    In config.toml a table is validated by the model of its `type` (see `BackendTable`), and
    `BackendSettings(type=..., ...)` builds the model of that type too.
    """

    # A misspelt key is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = "openai"
    # The server's root URL (for bedrock, an optional endpoint override: a VPC endpoint, a test stand-in).
    url: str | None = None
    # Name of an environment variable holding this backend's key (vLLM --api-key, LM Studio ...).
    api_key_env: str | None = None
    # Models to list when the server cannot list them itself.
    models: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **data: Any) -> BackendSettings:
        if cls is BackendSettings and data:
            cls = settings_model_for(data.get("type", "openai")) or cls
        return super().__new__(cls)

    def __init__(self, /, **data: Any) -> None:
        _refuse_keys_of_other_types(type(self), data)
        super().__init__(**data)

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        if settings_model_for(value) is None:
            from . import BACKEND_TYPES

            names = [repr(name) for name, backend in BACKEND_TYPES.items() if backend.configurable]
            expected = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Normalised like hosted.base_url: "http://host/v1/" must not become "/v1//chat/completions".
        return None if value is None else check_http_url(value)


def _refuse_keys_of_other_types(model: type[BackendSettings], data: Mapping[str, Any]) -> None:
    """`region` under an openai backend: say which type reads it, not just "unknown key"."""
    from . import BACKEND_TYPES

    errors: list[InitErrorDetails] = []
    for key in data:
        if key in model.model_fields:
            continue
        readers = [name for name, backend in BACKEND_TYPES.items()
                   if backend.configurable and key in backend.settings_model.model_fields]
        if readers:
            message = PydanticCustomError("key_of_another_type", "{key} is only read by a {readers} backend",
                                          {"key": key, "readers": " or ".join(readers)})
            errors.append({"type": message, "loc": (key,), "input": data[key]})
    if errors:
        raise ValidationError.from_exception_data(model.__name__, errors)


def _validate_table(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> BackendSettings:
    if isinstance(value, BackendSettings) or not isinstance(value, dict):
        return cast(BackendSettings, handler(value))
    model = settings_model_for(value.get("type", "openai")) or BackendSettings
    _refuse_keys_of_other_types(model, value)
    if info.mode == "json":
        # config.toml is validated strictly as JSON (TOML arrays are tuples there), so the type's model is too.
        return model.model_validate_json(orjson.dumps(value), strict=True)
    return model.model_validate(value)


# A `[backends.NAME]` table as Settings declares it: validated (and dumped) as the settings model of its type.
BackendTable = Annotated[BackendSettings, WrapValidator(_validate_table), SerializeAsAny()]


class Backend(abc.ABC):
    """One upstream. Subclasses live one per file in this package and register in __init__.

    Everything the daemon treats differently per kind of backend is a class attribute here, so a new
    backend is its file and one line in the registry.
    """

    kind: str = "abstract"
    # The `[backends.NAME]` keys this backend reads; a subclass of BackendSettings adds its own.
    settings_model: ClassVar[type[BackendSettings]] = BackendSettings
    # Whether config.toml may name this type (the hosted backend is built in, never configured).
    configurable: ClassVar[bool] = True
    # Whether requests carry the workspace's LLMTune key: without one the daemon answers 401 itself.
    injects_workspace_key: ClassVar[bool] = False
    # Whether this backend's model list depends on the workspace's key (cached per workspace).
    per_workspace_models: ClassVar[bool] = False
    # Whether it answers any model id (echo): its list is made in-process, never cached or checked.
    serves_any_model: ClassVar[bool] = False

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

    @classmethod
    def from_settings(cls, name: str, context: AdapterContext, settings: BackendSettings) -> Backend:
        """The backend a `[backends.NAME]` table describes; a backend with more keys passes them on."""
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        return cls(name, context, url=settings.url, api_key=key, models=settings.models)

    @abc.abstractmethod
    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Send one request; raise BackendUnavailable if the upstream cannot be reached in time."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "url": self.url}

    def missing_dependency(self) -> str | None:
        """What this backend cannot work without and is not installed, said with how to install it."""
        return None
