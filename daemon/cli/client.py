"""Talking to the daemon that runs for this settings directory, over its HTTP API on loopback."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

import orjson

from ..config.paths import Paths
from ..instance import is_running, read_daemon_file
from .common import CLIError


class DaemonError(CLIError):
    """The daemon answered with an error: its HTTP status, our error code and its message."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"the daemon answered {status}: {message}")
        self.status = status
        self.error_code = code
        self.error_message = message


class DaemonUnreachable(CLIError):
    """Nothing answered at the daemon's URL."""


def daemon_url(paths: Paths) -> str | None:
    """The URL of the daemon that is running for this settings directory, if any."""

    info = read_daemon_file(paths) or {}
    url, pid = info.get("url"), info.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int):
        return None
    if paths.lock_file.exists() and not is_running(paths):
        return None  # left by a daemon that died; its pid may belong to another process by now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url


def call_daemon(url: str, path: str, token: str, *, method: str = "GET",
                headers: dict[str, str] | None = None, timeout: float = 30.0, json: Any = None) -> Any:
    if not url.startswith("http://"):
        raise CLIError(f"unexpected daemon URL {url!r}")
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    data = None
    if json is not None:
        data = orjson.dumps(json)
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, data=data, method=method, headers=all_headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http URL from daemon.json)
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        code: str | None = None
        try:
            error = orjson.loads(exc.read())["error"]
            message, code = str(error["message"]), error.get("code")
        except Exception:
            message = str(exc.reason)
        raise DaemonError(exc.code, code, message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DaemonUnreachable(f"cannot reach the daemon at {url}: {exc}") from None


def control(paths: Paths) -> tuple[str, str]:
    """The running daemon's URL and the control token; an error when no daemon runs."""
    from ..api.control import load_control_token

    url = daemon_url(paths)
    if url is None:
        raise CLIError("the daemon is not running (start it with `llmtune-companion serve`)", 3)
    return url, load_control_token(paths)
