"""The errors the daemon itself answers with, in the one error shape (adapters/errors.py).

`{"error": {"message", "type", "code", "details"}}` is read by both kinds of client: LLMTune's
(message, code, details) and OpenAI's SDKs (message, type, code).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The shape itself is shared with the backends that answer in-process (adapters/errors.py).
from .adapters.errors import ERROR_TYPES, error_body

# Our code for an error answered by status alone (aiohttp's parser, an unhandled exception).
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    413: "body_too_large",
    431: "headers_too_large",
    500: "internal_error",
}


class CompanionError(Exception):
    """An error the daemon answers itself; raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.details = details or {}
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        return error_response(self.status, self.message, self.code, self.details, self.headers)


def error_response(
    status: int,
    message: str,
    code: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, code, details),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str, status: int = 502) -> bytes:
    """An error as an SSE event: the OpenAI SDKs raise on a data line carrying an `error` object."""
    return b"data: " + error_body(status, message, code) + b"\n\n"


__all__ = ["ERROR_TYPES", "CompanionError", "error_body", "error_response", "sse_error_event"]
