"""The one error shape, `{"error": {"message", "type", "code", "details"}}`, as bytes.

Read by both kinds of client: LLMTune's (message, code, details) and OpenAI's SDKs (message, type,
code). The daemon answers with it (daemon/errors.py adds the aiohttp side), and so do the backends
that answer in-process (echo, bedrock), so an error looks the same whoever made it.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import BytesResponse

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


def error_reply(status: int, message: str, code: str, details: dict[str, Any] | None = None) -> BytesResponse:
    """A backend's own error answer, as a response the relay passes on like an upstream's."""
    return BytesResponse(status, error_body(status, message, code, details), {"Content-Type": "application/json"})
