"""The one error shape the daemon itself answers with.

`{"error": {"message", "type", "code", "details"}}` is read by both kinds of client: LLMTune's
(message, code, details) and OpenAI's SDKs (message, type, code).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# HTTP status -> OpenAI-style error type, so SDKs map our errors onto their exception classes.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}

# Our code for an error answered by status alone (aiohttp's parser, an unhandled exception).
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    413: "body_too_large",
    431: "headers_too_large",
    500: "internal_error",
}


def error_body(status: int, message: str, code: str, details: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": ERROR_TYPES.get(status, "api_error"),
                "code": code,
                "details": details or {},
            }
        }
    )


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
