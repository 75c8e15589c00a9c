"""Graceful shutdown with a bound (issue 8): a real `llmtune-companion serve` process, real signals.

Behind it, an upstream on loopback streams one SSE chunk every 0.1 s for a minute, much longer than
the grace period, so the test sees what a person would: the stream is ended with an error event
and `[DONE]` once `server.shutdown_grace` has passed, the process exits 0, daemon.json lasts
until then; a second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from llmtune_companion.config.paths import HOME_ENV, Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace

from tests.conftest import WORKSPACE_KEY

MODEL = "slow-model"


@pytest.fixture
async def slow_upstream(aiohttp_server: Any) -> str:
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(600):
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                     "choices": [{"index": 0, "delta": {"content": f"w{n} "}, "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await asyncio.sleep(0.1)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "data": [{"id": MODEL}], "count": 1})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/api/agent/models", models)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


class Serving:
    def __init__(self, process: asyncio.subprocess.Process, url: str, token: str, paths: Paths) -> None:
        self.process, self.url, self.token, self.paths = process, url, token, paths


@pytest.fixture
async def serving(home: Paths, slow_upstream: str, tmp_path: Path) -> AsyncIterator[Serving]:
    home.ensure()
    home.config_file.write_text("[server]\nshutdown_grace = 1.5\n", encoding="utf-8")
    add_workspace(home, "default", WORKSPACE_KEY)
    token = load_config(home).workspaces["default"].token
    env = {**os.environ, HOME_ENV: str(home.root), "LLMTUNE_BASE_URL": slow_upstream}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmtune_companion", "serve", "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    url = line.split("serving at ", 1)[1].strip().removesuffix("/v1")
    try:
        yield Serving(process, url, token, home)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def open_stream(http: aiohttp.ClientSession, serving: Serving) -> aiohttp.ClientResponse:
    response = await http.post(serving.url + "/v1/chat/completions",
                               headers={"Authorization": f"Bearer {serving.token}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "stream": True})
    assert response.status == 200
    assert (await response.content.readline()).startswith(b"data: ")  # the stream is running
    return response


async def test_sigterm_ends_streams_after_the_grace_and_exits_0(serving: Serving) -> None:
    async with aiohttp.ClientSession() as http:
        response = await open_stream(http, serving)
        started = time.monotonic()
        serving.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # Still draining: the process lives, and says so; new connections are refused.
        assert serving.process.returncode is None
        assert serving.paths.daemon_file.exists(), "daemon.json went away while the process still served"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(serving.url + "/healthz")
        rest = await asyncio.wait_for(response.read(), 10)
        ended_after = time.monotonic() - started
    events = [line for line in rest.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "shutting_down"
    assert 1.3 < ended_after < 6, f"the stream ended {ended_after:.1f}s after SIGTERM (grace 1.5s)"
    assert await asyncio.wait_for(serving.process.wait(), 10) == 0
    assert not serving.paths.daemon_file.exists()


async def test_an_idle_daemon_stops_at_once(serving: Serving) -> None:
    started = time.monotonic()
    serving.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(serving.process.wait(), 10) == 0
    assert time.monotonic() - started < 1.4, "an idle daemon waited for the grace period"


async def test_a_second_signal_exits_at_once(serving: Serving) -> None:
    async with aiohttp.ClientSession() as http:
        response = await open_stream(http, serving)
        serving.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        serving.process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(serving.process.wait(), 5)
        assert time.monotonic() - started < 1.0
        assert code != 0
        response.close()
    assert not serving.paths.daemon_file.exists()
