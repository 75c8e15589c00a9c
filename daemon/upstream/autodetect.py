"""Local model servers found without configuration: Ollama, LM Studio, llama.cpp's server, vLLM.

Each listens on a well-known port of 127.0.0.1 and answers `GET /v1/models`. A probe asks every
port at once with a short timeout, in a task of its own: requests are served from what the last
probe found and never wait for the next one. What answers becomes a backend named after the
server (`llamacpp/<id>`), unless a configured backend already serves that URL or has that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..adapters import BackendSettings
from ..config.settings import AutodetectSettings, is_loopback_host

log = logging.getLogger(__name__)

PROBE_HOST = "127.0.0.1"
# The most a probe reads of an answer: a model list, not a download.
MAX_LIST_BYTES = 1024 * 1024


def base_url(port: int) -> str:
    return f"http://{PROBE_HOST}:{port}/v1"


def same_server(a: str, b: str) -> bool:
    """Whether two base URLs reach the same loopback server (127.0.0.1, localhost and ::1 are one)."""
    try:
        one, two = urlsplit(a), urlsplit(b)
        ports = (one.port or 80, two.port or 80)
    except ValueError:
        return False
    hosts = (one.hostname or "", two.hostname or "")
    if not all(is_loopback_host(host) for host in hosts):
        return hosts[0] == hosts[1] and ports[0] == ports[1]
    return ports[0] == ports[1] and one.path.rstrip("/") == two.path.rstrip("/")


def wanted(found: Mapping[str, str], configured: Mapping[str, BackendSettings]) -> dict[str, str]:
    """The found servers that become backends: a configured backend's name or URL wins."""
    urls = [spec.url for spec in configured.values() if spec.url]
    return {name: url for name, url in found.items()
            if name not in configured and not any(same_server(url, other) for other in urls)}


class Autodetector:
    """Probes the well-known ports; `found` is what answered at the last probe (name -> base URL)."""

    def __init__(self, session: aiohttp.ClientSession, on_change: Callable[[], None]) -> None:
        self._session = session
        self._on_change = on_change
        self.found: dict[str, str] = {}
        self.probed_at: float | None = None  # wall-clock time the last probe finished
        self._started = 0.0  # monotonic time the last probe started
        self._task: asyncio.Task[None] | None = None

    def kick(self, settings: AutodetectSettings, *, older_than: float = 0.0, skip_port: int | None = None) -> None:
        """Start a probe in the background unless one runs or the last began under `older_than` seconds ago."""
        if self._task is not None and not self._task.done():
            return
        if self._started and time.monotonic() - self._started < older_than:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next list refresh probes
            return
        self._started = time.monotonic()
        self._task = loop.create_task(self.probe(settings, skip_port=skip_port))

    async def wait(self) -> None:
        """Until the running probe (if any) has finished."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def probe(self, settings: AutodetectSettings, *, skip_port: int | None = None) -> None:
        if not settings.enabled:
            found: dict[str, str] = {}
        else:
            ports = {name: port for name, port in settings.ports.items() if port != skip_port}
            answers = await asyncio.gather(*(self._answers(port, settings.timeout) for port in ports.values()))
            found = {name: base_url(port) for (name, port), ok in zip(ports.items(), answers, strict=True) if ok}
        self.probed_at = time.time()
        if found != self.found:
            gone, new = set(self.found) - set(found), {k: v for k, v in found.items() if self.found.get(k) != v}
            for name, url in new.items():
                log.info("found a local model server: %s at %s", name, url)
            for name in gone:
                log.info("local model server %s no longer answers", name)
            self.found = found
            self._on_change()

    async def _answers(self, port: int, limit: float) -> bool:
        """Whether an OpenAI-style model list answers on this port."""
        try:
            async with asyncio.timeout(limit):  # not wait_for: see upstream/jobs.py
                async with self._session.get(base_url(port) + "/models", allow_redirects=False) as response:
                    if response.status != 200:
                        return False
                    body = await response.content.read(MAX_LIST_BYTES)
            parsed: Any = orjson.loads(body)
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, ValueError):
            return False
        return isinstance(parsed, dict) and isinstance(parsed.get("data"), list)

    def status(self, settings: AutodetectSettings, used: Mapping[str, str]) -> dict[str, Any]:
        return {
            "enabled": settings.enabled,
            "ports": dict(settings.ports),
            "probed_at": self.probed_at,
            "found": [{"name": name, "url": url, "backend": name in used} for name, url in sorted(self.found.items())],
        }

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
