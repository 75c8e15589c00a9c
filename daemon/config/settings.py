"""config.toml, the secrets file and the environment, validated into one immutable `Config`.

config.toml holds what a person edits (server, backends, routes, workspaces); secrets.json (mode
0600) holds LLMTune keys and local tokens, so config.toml can be shared or committed safely.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..adapters import BackendSettings, BackendTable, check_http_url
from ..adapters.http1 import is_loopback
from ..tools.policy import ToolPolicySettings
from .keychain import KeychainError, KeyStore
from .paths import Paths, write_private
from .tool_limits import ToolLimits

DEFAULT_PORT = 8742
# One loopback test for the listener, the Host guard and the upstream client.
is_loopback_host = is_loopback
DEFAULT_HOSTED_URL = "https://api.llmtune.io"
DEFAULT_WORKSPACE = "default"
HOSTED_BACKEND = "llmtune"
ECHO_BACKEND = "echo"
TOKEN_PREFIX = "lct_"  # noqa: S105 (a prefix, not a secret)

ENV_API_KEY = "LLMTUNE_API_KEY"
ENV_BASE_URL = "LLMTUNE_BASE_URL"
ENV_LOCAL_URL = "LLMTUNE_LOCAL_URL"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    # A misspelt key is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    log_requests: bool = True
    # On SIGTERM, how long running streams may go on before they are ended with an error event.
    shutdown_grace: float = Field(10.0, ge=0, le=3600)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not is_loopback_host(value):
            raise ValueError("the companion binds loopback only (127.0.0.1, ::1 or localhost)")
        return value


class UpstreamSettings(_Strict):
    connect_timeout: float = Field(10.0, gt=0)
    # A local GPU can take minutes to process a long prompt before the first token.
    first_byte_timeout: float = Field(300.0, gt=0)
    # Longest silence tolerated between two chunks of a response.
    read_timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    # A 429 whose Retry-After is longer than this is passed to the client instead of waited out.
    retry_max_wait: float = Field(8.0, ge=0)
    backoff_base: float = Field(0.25, ge=0)
    # Connections per backend: one slow backend cannot take another's.
    pool_size: int = Field(100, ge=1)
    # Longest wait for a free connection to a backend before answering 503 upstream_pool_timeout.
    pool_timeout: float = Field(30.0, gt=0)
    # Longest status line and headers accepted from an upstream (more: 502 upstream_broken).
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # A PEM file of CA certificates for TLS upstreams instead of the operating system's trust store.
    ca_bundle: str | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"{value!r} is not a readable file of CA certificates (PEM)")
        return str(path)


class CacheSettings(_Strict):
    models_ttl: float = Field(300.0, ge=0)


class HostedSettings(_Strict):
    base_url: str = DEFAULT_HOSTED_URL
    enabled: bool = True
    # Model id served instead when the hosted API is unreachable, answers 5xx or 402.
    fallback: str | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class RouteSettings(_Strict):
    match: str = Field(min_length=1)
    backend: str
    model: str | None = None
    fallback: str | None = None


class WorkspaceSettings(_Strict):
    description: str = ""
    # The directory the Agent tools are confined to; tool modes other than passthrough need it.
    root: str | None = None
    tools: Literal["passthrough", "gate", "execute"] = "passthrough"
    # How many rounds of tool calls execute mode runs before it answers anyway.
    max_steps: int = Field(8, ge=1, le=100)
    policy: ToolPolicySettings = ToolPolicySettings()
    limits: ToolLimits = ToolLimits()

    @model_validator(mode="after")
    def _root_for_tools(self) -> WorkspaceSettings:
        if self.tools != "passthrough" and not self.root:
            raise ValueError(f"tools = {self.tools!r} needs root, the directory the tools are confined to")
        if self.root and not Path(self.root).expanduser().is_dir():
            raise ValueError(f"root {self.root!r} is not a directory")
        return self


class ToolsSettings(_Strict):
    # Seconds a pending approval waits for a person before it is refused.
    approval_timeout: float = Field(120.0, gt=0)


class LlmApiSettings(_Strict):
    # The model the LLM routing API (/api/v1/llm) uses when a request names none.
    default_model: str = Field("echo", min_length=1)


class JobsSettings(_Strict):
    # Seconds before the first status poll of an unfinished fine-tune job; doubled after each unchanged one.
    poll_interval: float = Field(5.0, gt=0)
    # The longest wait between two polls of one job.
    max_poll_interval: float = Field(300.0, gt=0)
    # Where each job event is also POSTed as {"event", "data", "timestamp"}; none when unset.
    webhook_url: str | None = None

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @model_validator(mode="after")
    def _intervals(self) -> JobsSettings:
        if self.max_poll_interval < self.poll_interval:
            raise ValueError("max_poll_interval must not be below poll_interval")
        return self


class TraySettings(_Strict):
    """`[tray]`: which desktop notifications the tray shows."""

    # A tool call waiting for approval (tool, target, workspace).
    notify_approvals: bool = True
    # Fine-tune jobs: training completed or failed, model deployed.
    notify_jobs: bool = True
    # The hosted API falling back to another model, and coming back.
    notify_hosted: bool = True
    # The daemon stopping without being asked to.
    notify_daemon: bool = True

    def allows(self, kind: str) -> bool:
        """Whether notifications of `kind` ("approvals", "jobs", "hosted", "daemon") are on."""
        return bool(getattr(self, f"notify_{kind}", True))


# Where local OpenAI-compatible servers listen by default; each found one becomes a backend of that name.
DetectedServer = Literal["ollama", "lmstudio", "llamacpp", "vllm"]
AUTODETECT_PORTS: dict[DetectedServer, int] = {"ollama": 11434, "lmstudio": 1234, "llamacpp": 8080, "vllm": 8000}


class AutodetectSettings(_Strict):
    enabled: bool = True
    # Replaces the whole list: `ports = { llamacpp = 8081 }` probes only llama.cpp's server, on 8081.
    ports: dict[DetectedServer, int] = Field(default_factory=lambda: dict(AUTODETECT_PORTS))
    # Seconds one probe (`GET /v1/models` on 127.0.0.1) may take; requests never wait for it.
    timeout: float = Field(0.5, gt=0, le=10)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: dict[str, int]) -> dict[str, int]:
        for name, port in value.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{name}: port {port} is not between 1 and 65535")
        return value


class TunnelSettings(_Strict):
    """`connect cursor`: the restricted listener a public tunnel forwards to."""

    # Its loopback port; 0 picks a free one each time.
    port: int = Field(0, ge=0, le=65535)
    # Requests per minute it answers (all callers together); the rest get 429 with Retry-After.
    requests_per_minute: int = Field(60, ge=1, le=100_000)


class HistorySettings(_Strict):
    """`[history]`: the request history the dashboard shows (kept in <settings dir>/history.sqlite3)."""

    # Keep the last message of each prompt too; off, only time, model, backend, status, duration, tokens.
    store_content: bool = False
    # Requests kept in memory for the Activity page.
    ring_size: int = Field(2000, ge=10, le=100_000)
    # Days kept on disk.
    retention_days: float = Field(30.0, gt=0, le=3650)
    # False: memory only, nothing written to disk.
    persist: bool = True


class SecretsSettings(_Strict):
    # Where LLMTune keys live: "auto" is the OS keychain when one works here, else secrets.json.
    backend: Literal["auto", "keyring", "file"] = "auto"


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    cache: CacheSettings = CacheSettings()
    hosted: HostedSettings = HostedSettings()
    backends: dict[str, BackendTable] = {}
    routes: tuple[RouteSettings, ...] = ()
    workspaces: dict[str, WorkspaceSettings] = {}
    tools: ToolsSettings = ToolsSettings()
    jobs: JobsSettings = JobsSettings()
    llm_api: LlmApiSettings = LlmApiSettings()
    tray: TraySettings = TraySettings()
    history: HistorySettings = HistorySettings()
    autodetect: AutodetectSettings = AutodetectSettings()
    tunnel: TunnelSettings = TunnelSettings()
    secrets: SecretsSettings = SecretsSettings()

    @field_validator("backends", "workspaces")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a valid name (letters, digits, . _ -)")
        return value

    @model_validator(mode="after")
    def _routes_name_backends(self) -> Settings:
        if HOSTED_BACKEND in self.backends:
            raise ValueError(f"backends: {HOSTED_BACKEND!r} is the built-in hosted backend's name")
        # "local" may come from LLMTUNE_LOCAL_URL; load_config checks it exists once the env is read.
        known = {HOSTED_BACKEND, ECHO_BACKEND, "local", *self.backends}
        for index, route in enumerate(self.routes):
            if route.backend not in known:
                raise ValueError(
                    f"routes[{index}].backend: unknown backend {route.backend!r} (known: {sorted(known)})"
                )
        return self


class ConfigError(Exception):
    """config.toml or secrets.json cannot be used; the message names the field and what was expected."""


@dataclass(frozen=True, slots=True)
class Workspace:
    name: str
    token: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    # "secrets" (secrets.json), "keyring" (the OS keychain), "env" or "none": shown by status instead of the key
    key_source: str = "none"
    settings: WorkspaceSettings = field(default_factory=lambda: WorkspaceSettings())

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    workspaces: Mapping[str, Workspace]
    backends: Mapping[str, BackendSettings]
    hosted_url: str
    # Where keys are kept: "keyring" (then `keychain` names it) or "file"; problems reading them.
    secrets_backend: str = "file"
    keychain: str | None = None
    secrets_warnings: tuple[str, ...] = ()


def secrets_status(config: Config) -> dict[str, Any]:
    """Where the keys are, for `status`: "keyring" (naming the keychain), "file", or "auto" while none is stored."""
    return {"backend": config.secrets_backend, "keychain": config.keychain,
            "setting": config.settings.secrets.backend, "warnings": list(config.secrets_warnings)}


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _unwrapped(annotation: Any) -> Any:
    """`Annotated[Model, validator]` -> Model."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _known_keys(loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed in the table holding `loc` (an unknown key), to say what was expected."""
    target: Any = Settings
    for part in loc[:-1]:
        origin = typing.get_origin(target)
        if origin is dict:
            target = _unwrapped(typing.get_args(target)[1])
        elif origin is tuple:
            target = _unwrapped(typing.get_args(target)[0])
        elif isinstance(target, type) and issubclass(target, BaseModel) and part in target.model_fields:
            target = target.model_fields[str(part)].annotation
        else:
            return None
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return None


# pydantic's wording -> plain words (the prefix pydantic puts before our own validators' messages goes).
PLAIN_MESSAGES = {"bool_type": "Input should be true or false"}


def format_validation(error: ValidationError, source: str) -> str:
    """`config.toml: workspaces.team: tools = 'execute' needs root ...`: the field, then what is wrong."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = PLAIN_MESSAGES.get(item["type"]) or item["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        known = _known_keys(item["loc"]) if item["type"] == "extra_forbidden" else None
        if known:
            message = f"unknown key (expected one of: {', '.join(known)})"
        lines.append(f"{source}: {where}: {message}")
    return "; ".join(lines)


def read_settings(path: Path) -> Settings:
    if not path.exists():
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot be read: {exc}") from exc
    try:
        return validate_settings(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path.name)) from exc


def validate_settings(raw: dict[str, Any]) -> Settings:
    """Strict types: `port = "8080"` or `max_retries = true` is an error, not silently coerced.

    Validated as JSON so that strict mode still takes TOML arrays for tuples and integers for floats.
    """
    try:
        document = orjson.dumps(raw)
    except TypeError as exc:  # TOML dates and times: no setting takes one
        raise ConfigError(f"config.toml: unexpected value ({exc})") from exc
    return Settings.model_validate_json(document, strict=True)


class SecretsStore:
    """secrets.json: `{"workspaces": {name: {"api_key": ..., "token": ...}}}`, mode 0600.

    A key kept in the OS keychain is not in the file: its entry says `"api_key_in": "keyring"` instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"workspaces": {}}
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{self.path.name}: not valid JSON ({type(exc).__name__})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("workspaces", {}), dict):
            raise ConfigError(f"{self.path.name}: expected an object with a 'workspaces' object")
        data.setdefault("workspaces", {})
        for name, entry in data["workspaces"].items():
            if not isinstance(entry, dict):
                raise ConfigError(f"{self.path.name}: workspaces.{name}: expected an object")
        return data

    def write(self, data: dict[str, Any]) -> None:
        write_private(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))


def load_config(paths: Paths, environ: Mapping[str, str] | None = None) -> Config:
    """Read everything; create missing local tokens (persisted) so each workspace has one."""
    env = os.environ if environ is None else environ
    settings = read_settings(paths.config_file)
    store = SecretsStore(paths.secrets_file)
    data = store.read()
    stored: dict[str, Any] = data["workspaces"]

    names = [DEFAULT_WORKSPACE, *settings.workspaces, *stored]
    changed = False
    workspaces: dict[str, Workspace] = {}
    keys = KeyStore(paths, settings.secrets.backend)
    for name in dict.fromkeys(names):
        entry = stored.setdefault(name, {})
        token = entry.get("token")
        if not isinstance(token, str) or len(token) < 32:
            entry["token"] = token = new_token()
            changed = True
        try:
            api_key, source, moved = keys.read(name, entry)  # a key found in secrets.json moves to the keychain
        except KeychainError as exc:
            raise ConfigError(str(exc)) from None
        changed = changed or moved
        if name == DEFAULT_WORKSPACE and env.get(ENV_API_KEY):
            api_key, source = env[ENV_API_KEY], "env"
        workspaces[name] = Workspace(name=name, token=token, api_key=api_key, key_source=source,
                                     settings=settings.workspaces.get(name) or WorkspaceSettings())
    if changed:
        paths.ensure()
        store.write(data)
    if paths.root.is_dir() and not paths.config_file.exists():
        from .template import write_template

        write_template(paths)  # first run: every setting, commented out, to discover by opening the file

    backends = dict(settings.backends)
    local_url = env.get(ENV_LOCAL_URL)
    if local_url and "local" not in backends:
        try:
            backends["local"] = BackendSettings(type="openai", url=local_url)
        except ValidationError as exc:
            raise ConfigError(format_validation(exc, ENV_LOCAL_URL)) from exc
    backends.setdefault(ECHO_BACKEND, BackendSettings(type="echo"))
    for index, route in enumerate(settings.routes):
        if route.backend != HOSTED_BACKEND and route.backend not in backends:
            raise ConfigError(f"{paths.config_file.name}: routes[{index}].backend: backend {route.backend!r} "
                              f"needs [backends.{route.backend}] or {ENV_LOCAL_URL}")

    hosted_url = settings.hosted.base_url
    if env.get(ENV_BASE_URL):
        try:
            hosted_url = check_http_url(env[ENV_BASE_URL])
        except ValueError as exc:
            raise ConfigError(f"{ENV_BASE_URL}: {exc}") from exc
    return Config(settings=settings, workspaces=workspaces, backends=backends, hosted_url=hosted_url,
                  secrets_backend=keys.backend, keychain=keys.keychain_name, secrets_warnings=tuple(keys.warnings))
