"""The Python client of the companion's LLM routing API (/api/v1/llm), and the agent-framework
models built on it: `LLMClient().get_model(format="strands" | "langchain")`."""

from .client import LLMClient
from .frameworks import MissingExtraError
from .types import (
    Completion,
    ContentDelta,
    LLMClientError,
    MessageStop,
    Metadata,
    ModelList,
    StreamError,
    StreamEvent,
    StreamUsage,
    ToolCall,
    ToolUseComplete,
    ToolUseDelta,
    ToolUseStart,
    Usage,
)

__all__ = [
    "Completion",
    "ContentDelta",
    "LLMClient",
    "LLMClientError",
    "MessageStop",
    "Metadata",
    "MissingExtraError",
    "ModelList",
    "StreamError",
    "StreamEvent",
    "StreamUsage",
    "ToolCall",
    "ToolUseComplete",
    "ToolUseDelta",
    "ToolUseStart",
    "Usage",
]
