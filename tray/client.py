"""The control API as the tray uses it: a few JSON calls and the event stream, over aiohttp.

Authenticated with the control token from the settings directory. The tray only reads that token
(the daemon creates it), so a tray started before any daemon never invents one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from ..config.paths import Paths

CONTROL = "/companion/v1"
# Longest wait for one control call (they answer at once; a slow one means a stuck daemon).
CALL_TIMEOUT = 15.0
# The daemon sends a comment line every 15 s on an idle stream; three missed mean it is gone.
STREAM_SILENCE = 45.0
# Read buffer of the event stream; a line over twice this is refused (an approval carries a diff preview).
EVENT_BUFFER = 1024 * 1024


class ControlError(Exception):
    """A control call failed: the daemon's JSON error (status, code), or no answer (status 0)."""

    def __init__(self, message: str, status: int = 0, code: str = "unreachable") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def read_control_token(paths: Paths) -> str:
    try:
        token = paths.control_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ControlError(f"cannot read the control token ({type(exc).__name__})") from None
    if not token:
        raise ControlError("the control token file is empty")
    return token


class ControlClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else orjson.dumps(body)
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, self.url + CONTROL + path, data=data, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ControlError(f"cannot reach the companion at {self.url}: {type(exc).__name__}") from None
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if status >= 400:
            error = parsed.get("error") if isinstance(parsed, dict) else None
            error = error if isinstance(error, dict) else {}
            raise ControlError(str(error.get("message") or f"HTTP {status}"), status, str(error.get("code") or ""))
        return parsed if isinstance(parsed, dict) else {"data": parsed}

    async def status(self) -> dict[str, Any]:
        return await self.call("GET", "/status")

    async def decide(self, approval_id: str, allow: bool, *, remember: bool = False,
                     reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"decision": "allow" if allow else "deny", "remember": remember}
        if reason is not None:
            body["reason"] = reason
        return await self.call("POST", "/approvals/" + urllib.parse.quote(approval_id, safe=""), body)

    async def set_tools(self, workspace: str, mode: str) -> dict[str, Any]:
        return await self.call("POST", "/workspaces/" + urllib.parse.quote(workspace, safe=""), {"tools": mode})

    async def dashboard_link(self) -> str:
        url = (await self.call("POST", "/dashboard/link", {})).get("url")
        if not isinstance(url, str) or not url.startswith("http://"):
            raise ControlError("the daemon sent no dashboard link", 502, "bad_answer")
        return url

    async def shutdown(self) -> None:
        await self.call("POST", "/shutdown", {})

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Open the event stream; once entered the daemon has subscribed us, so no later event is missed."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CALL_TIMEOUT, sock_read=STREAM_SILENCE)
        try:
            response = await self.session.get(self.url + CONTROL + "/events", headers=self._headers,
                                               timeout=timeout, read_bufsize=EVENT_BUFFER)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ControlError(f"cannot reach the companion at {self.url}: {type(exc).__name__}") from None
        try:
            if response.status != 200:
                raise ControlError(f"the event stream answered HTTP {response.status}", response.status, "bad_status")
            yield _parse_events(response.content)
        finally:
            response.release()


async def _parse_events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events' `data:` objects; ends when the daemon closes the stream."""
    data: list[bytes] = []
    while True:
        try:
            line = await content.readuntil(b"\n")
        except aiohttp.client_exceptions.ClientPayloadError:
            return
        except ValueError:  # a line longer than the reader allows: the stream is not ours
            raise ControlError("the event stream sent an oversized line", 502, "bad_stream") from None
        except aiohttp.EofStream:
            return
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                try:
                    event = orjson.loads(b"\n".join(data))
                except orjson.JSONDecodeError:
                    event = None
                data = []
                if isinstance(event, dict):
                    yield event
            continue
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
