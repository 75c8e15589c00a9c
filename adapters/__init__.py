"""Backends, one per file. Adding a backend is adding a file and one line to BACKEND_TYPES.

A backend class carries everything the daemon needs to know about its kind: the keys of its
`[backends.NAME]` table (`settings_model`), how it is built from them (`from_settings`) and the
flags the request path reads (`injects_workspace_key`, `per_workspace_models`, `serves_any_model`).
"""

from .base import (
    AdapterContext,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendSettings,
    BackendTable,
    BackendUnavailable,
    BytesResponse,
    Endpoint,
    PoolTimeout,
    ShuttingDown,
    UpstreamBroken,
    check_http_url,
    settings_model_for,
)
from .bedrock import BedrockBackend
from .echo import EchoBackend
from .llmtune import LLMTuneBackend
from .openai import OpenAIBackend

# `type = "..."` in config.toml -> the class; the order is the one error messages list them in.
BACKEND_TYPES: dict[str, type[Backend]] = {
    "openai": OpenAIBackend,
    "echo": EchoBackend,
    "bedrock": BedrockBackend,
    "llmtune": LLMTuneBackend,
}

__all__ = [
    "BACKEND_TYPES",
    "AdapterContext",
    "Backend",
    "BackendRequest",
    "BackendResponse",
    "BackendSettings",
    "BackendTable",
    "BackendUnavailable",
    "BedrockBackend",
    "BytesResponse",
    "EchoBackend",
    "Endpoint",
    "LLMTuneBackend",
    "OpenAIBackend",
    "PoolTimeout",
    "ShuttingDown",
    "UpstreamBroken",
    "check_http_url",
    "settings_model_for",
]
