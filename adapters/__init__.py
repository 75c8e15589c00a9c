"""Backends, one per file. Adding a backend is adding a file and one line to BACKEND_TYPES."""

from .base import (
    AdapterContext,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendUnavailable,
    BytesResponse,
    Endpoint,
    PoolTimeout,
    ShuttingDown,
    UpstreamBroken,
)
from .bedrock import BedrockBackend
from .echo import EchoBackend
from .llmtune import LLMTuneBackend
from .openai import OpenAIBackend

BACKEND_TYPES: dict[str, type[Backend]] = {
    "bedrock": BedrockBackend,
    "echo": EchoBackend,
    "llmtune": LLMTuneBackend,
    "openai": OpenAIBackend,
}

__all__ = [
    "BACKEND_TYPES",
    "AdapterContext",
    "Backend",
    "BackendRequest",
    "BackendResponse",
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
]
