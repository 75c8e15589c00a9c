"""What a tool call gives back: its result for the model, or the preview shown before approval."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class ToolResult:
    """What a tool call produced: `content` goes back to the model as the `tool` message."""

    content: str
    ok: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def to_message(self, tool_call_id: str | None) -> dict[str, Any]:
        """The OpenAI `{"role": "tool", ...}` message carrying this result."""
        message: dict[str, Any] = {"role": "tool", "content": self.content}
        if tool_call_id:
            message["tool_call_id"] = tool_call_id
        return message


@dataclass(slots=True)
class Preview:
    """What a call would do, computed without doing it: shown to the person asked to approve it.

    `kind` is "diff" (write_file / search_replace: `text` is a unified diff), "command"
    (run_terminal: `text` is the command, `meta["cwd"]` where it runs) or "read"/"list". When the
    call cannot succeed, `error` holds the result to return instead of asking.
    """

    kind: Literal["diff", "command", "read", "list"]
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    error: ToolResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.meta}


class Refused(Exception):
    """Internal: end the call with this message (ok=False)."""

    def __init__(self, message: str, **meta: Any) -> None:
        super().__init__(message)
        self.message = message
        self.meta = meta
