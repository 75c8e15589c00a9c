"""The one place secrets are taken out of what leaves the daemon.

Every response passes `scrub_response` (an `on_response_prepare` hook) just before its headers are
written: header values and whole bodies (error bodies, non-streamed answers, our own errors) lose
every secret the daemon knows - the workspaces' LLMTune keys and the local backends' keys. An
upstream that quotes the key it was sent (in an error message, a request id header) cannot hand it
to a client. Streamed bodies are not scanned: a stream is relayed as it arrives, and scanning it
would mean holding pieces back across chunk edges; upstreams are not known to echo keys in them.
"""

from __future__ import annotations

from aiohttp import web

from ..appkeys import RUNTIME

REDACTED = "[redacted]"
# Shorter values are not worth the risk of redacting ordinary text that happens to match.
MIN_SECRET_LENGTH = 8


def known_secrets(values: list[str | None]) -> tuple[str, ...]:
    """The distinct secrets worth scrubbing, longest first (a key containing another is replaced whole)."""
    unique = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_bytes(body: bytes, secrets: tuple[str, ...]) -> bytes:
    for secret in secrets:
        raw = secret.encode()
        if raw in body:
            body = body.replace(raw, REDACTED.encode())
    return body


async def scrub_response(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers of every response, and the body of every whole one."""
    runtime = request.app.get(RUNTIME)
    if runtime is None:
        return
    secrets = runtime.built.secrets
    if not secrets:
        return
    headers = response.headers
    for name, value in list(headers.items()):
        cleaned = scrub_text(value, secrets)
        if cleaned != value:
            del headers[name]
            headers.add(name, cleaned)
    if isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes | bytearray):
            cleaned_body = scrub_bytes(bytes(body), secrets)
            if cleaned_body != body:
                response.body = cleaned_body
                if "Content-Length" in headers:  # already worked out from the old body
                    headers["Content-Length"] = str(len(cleaned_body))
