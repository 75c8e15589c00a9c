"""The restricted listener behind `connect cursor`'s tunnel, reached the way the internet reaches it.

`serve_tunnel` runs for real on loopback; its public side is a raw TCP relay on another loopback
port (tests/support/loopback_forwarder.py) standing in for ngrok. Clients are the official openai
SDK and aiohttp, sending what Cursor's servers (or anyone else) would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from llmtune_companion.api.control import load_control_token
from llmtune_companion.api.tunnel import RateLimiter
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace
from llmtune_companion.connect import tunnel
from llmtune_companion.connect.tunnel import Opened, serve_tunnel

from tests.support.loopback_forwarder import LoopbackForwarder

TIMEOUT = 30.0
ALL_WRONG = (
    ("GET", "/companion/v1/status"), ("POST", "/companion/v1/reload"), ("GET", "/companion/v1/approvals"),
    ("GET", "/companion/v1/events"), ("POST", "/companion/v1/undo"), ("GET", "/healthz"),
    ("POST", "/v1/embeddings"), ("GET", "/v1/models/echo"), ("GET", "/api/agent/models"),
    ("POST", "/api/agent/v1/chat/completions"), ("POST", "/v1/fine-tune"), ("GET", "/api/v1/llm/models"),
    ("GET", "/dashboard/"), ("GET", "/"),
)


@dataclass
class Tunnel:
    paths: Paths
    opened: Opened
    forwarder: LoopbackForwarder
    token: str
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        return self.opened.public_url + "/v1"

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def sdk(self, token: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=token or self.token, max_retries=0)


StartTunnel = Callable[..., Awaitable[Tunnel]]


@pytest.fixture
async def start_tunnel(home: Paths) -> AsyncIterator[StartTunnel]:
    started: list[Tunnel] = []

    async def start(config: str = "[autodetect]\nenabled = false\n") -> Tunnel:
        home.ensure()
        home.config_file.write_text(config, encoding="utf-8")
        add_workspace(home, "default", None)
        token = tunnel.issue_token(home, "default")
        forwarder = LoopbackForwarder()
        opened: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve_tunnel(home, load_config(home), forwarder, ready=opened.set_result,
                                                stop=stop))
        done, _ = await asyncio.wait({task, opened}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what failed
        running = Tunnel(home, opened.result(), forwarder, token, stop, task)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running.task, TIMEOUT)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json()
    assert set(body["error"]) == {"message", "type", "code", "details"}
    error: dict[str, Any] = body["error"]
    return error


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "through the tunnel"}]}


async def test_cursor_endpoints_answer_through_the_public_side(start_tunnel: StartTunnel,
                                                              http: aiohttp.ClientSession) -> None:
    running = await start_tunnel()
    # The public side forwards to the restricted listener, on its own loopback port.
    assert running.forwarder.opened_with == running.opened.local_url
    assert running.opened.local_url.startswith("http://127.0.0.1:")
    assert running.opened.local_url != running.opened.public_url
    client = running.sdk()
    assert "echo" in [m.id async for m in client.models.list()]
    reply = await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "through the tunnel"
    chunks = [c async for c in await client.chat.completions.create(**CHAT, stream=True)]  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "through the tunnel"
    completion = await client.completions.create(model="echo", prompt="def f(")
    assert completion.choices[0].text
    # A public host name (ngrok's) is what callers send: the loopback Host check of the main port does not apply.
    async with http.get(running.base_url + "/models", headers={**running.auth(), "Host": "abc.ngrok-free.app"}) as r:
        assert r.status == 200
    # Bad input gets the error shape.
    async with http.post(running.base_url + "/chat/completions", headers=running.auth(), data=b"{nope") as r:
        assert r.status == 400 and (await error_of(r))["code"] == "invalid_json"
    async with http.post(running.base_url + "/chat/completions", headers=running.auth(), json={"messages": []}) as r:
        assert r.status == 400 and (await error_of(r))["code"] == "model_required"


async def test_everything_else_is_refused(start_tunnel: StartTunnel, http: aiohttp.ClientSession) -> None:
    running = await start_tunnel()
    control = load_control_token(running.paths)
    for method, path in ALL_WRONG:
        for token in (running.token, control):
            async with http.request(method, running.opened.public_url + path, headers=running.auth(token)) as r:
                error = await error_of(r)
                if token == control:
                    assert r.status == 401 and error["code"] == "invalid_token", (method, path)
                else:
                    assert r.status == 404 and error["code"] == "not_found", (method, path)
                    assert "serves only" in error["message"]
    for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v1/models"), ("DELETE", "/v1/completions")):
        async with http.request(method, running.opened.public_url + path, headers=running.auth()) as r:
            assert r.status == 405 and (await error_of(r))["code"] == "method_not_allowed"


async def test_only_the_tunnel_token_opens_it(start_tunnel: StartTunnel, http: aiohttp.ClientSession) -> None:
    running = await start_tunnel()
    local_token = load_config(running.paths).workspaces["default"].token
    url = running.base_url + "/models"
    async with http.get(url) as r:
        assert r.status == 401 and (await error_of(r))["code"] == "missing_token"
    for wrong in (local_token, running.token + "x", "lctt_" + "a" * 43):
        async with http.get(url, headers=running.auth(wrong)) as r:
            assert r.status == 401 and (await error_of(r))["code"] == "invalid_token"
    with pytest.raises(openai.AuthenticationError):
        await running.sdk(local_token).models.list()
    async with http.get(url, headers={"x-api-key": running.token}) as r:
        assert r.status == 200

    # Rotated from another process (the file changes): the old token stops working at once.
    new = tunnel.issue_token(running.paths, "default", rotate=True)
    assert new.startswith("lctt_")
    if new == running.token:
        raise AssertionError("--rotate kept the token")
    async with http.get(url, headers=running.auth()) as r:
        assert r.status == 401
    async with http.get(url, headers=running.auth(new)) as r:
        assert r.status == 200
    # Revoked: nothing opens it.
    assert tunnel.revoke_token(running.paths)
    async with http.get(url, headers=running.auth(new)) as r:
        error = await error_of(r)
        assert r.status == 401 and "revoked" in error["message"]


async def test_requests_per_minute_are_capped(start_tunnel: StartTunnel, http: aiohttp.ClientSession) -> None:
    running = await start_tunnel("[autodetect]\nenabled = false\n[tunnel]\nrequests_per_minute = 3\n")
    for _ in range(3):
        async with http.post(running.base_url + "/chat/completions", headers=running.auth(), json=CHAT) as r:
            assert r.status == 200
    for headers in (running.auth(), {}):  # unauthenticated callers count too: the cap protects the machine
        async with http.post(running.base_url + "/chat/completions", headers=headers, json=CHAT) as r:
            assert r.status == 429
            error = await error_of(r)
            assert error["code"] == "rate_limited" and "3 requests per minute" in error["message"]
            assert 1 <= int(r.headers["Retry-After"]) <= 60 and error["details"]["retry_after"] >= 1
    with pytest.raises(openai.RateLimitError):
        await running.sdk().models.list()


def test_the_cap_is_a_sliding_minute() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.admit() is None
    now[0] += 30
    assert limiter.admit() is None
    assert limiter.admit() == pytest.approx(30.0)  # the first one leaves the window in 30 s
    now[0] += 30
    assert limiter.admit() is None  # it did
    assert limiter.admit() == pytest.approx(30.0)


async def test_no_local_tool_runs_through_the_tunnel(start_tunnel: StartTunnel, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "secret.txt").write_text("not for the internet")
    running = await start_tunnel(f'[autodetect]\nenabled = false\n[workspaces.default]\nroot = "{root}"\n'
                                 'tools = "execute"\n')
    request = {
        **CHAT, "messages": [{"role": "user", "content": "."}],
        "tools": [{"type": "function", "function": {"name": "list_directory", "parameters": {
            "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "list_directory"}},
    }
    async with http.post(running.base_url + "/chat/completions", headers=running.auth(), json=request) as r:
        assert r.status == 200
        body = await r.json()
    # Passthrough: the call goes back to the caller, unexecuted (execute mode would have run it and answered).
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "list_directory"
    assert "secret.txt" not in orjson.dumps(body).decode()
    for mode in ("execute", "gate", "passthrough"):
        async with http.post(running.base_url + "/chat/completions", json=request,
                             headers={**running.auth(), "X-Companion-Tools": mode}) as r:
            assert r.status == 400 and (await error_of(r))["code"] == "tool_mode_not_allowed"


async def test_stopping_closes_the_public_side_first(start_tunnel: StartTunnel, http: aiohttp.ClientSession) -> None:
    running = await start_tunnel()
    state = orjson.loads(tunnel.state_file(running.paths).read_bytes())
    assert state["local_url"] == running.opened.local_url and state["public_url"] == running.opened.public_url
    if running.token in tunnel.state_file(running.paths).read_text():
        raise AssertionError("the tunnel token is in tunnel.json")  # no secret in it
    assert tunnel.running_tunnel(running.paths) is not None
    running.stop.set()
    await asyncio.wait_for(running.task, TIMEOUT)
    assert running.forwarder.closed
    assert not tunnel.state_file(running.paths).exists() and tunnel.running_tunnel(running.paths) is None
    assert tunnel.current_token(running.paths) is not None  # Ctrl+C keeps the token for next time
    for url in (running.base_url + "/models", running.opened.local_url + "/v1/models"):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url, headers=running.auth()):
                pass


def test_a_stale_state_file_is_not_a_running_tunnel(home: Paths) -> None:
    """After a crash the pid may belong to another program: without its listener it is not signalled."""
    home.ensure()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tunnel.state_file(home).write_bytes(orjson.dumps({"pid": os.getpid(), "local_url": f"http://127.0.0.1:{port}",
                                                      "public_url": "https://x.example"}))
    assert tunnel.running_tunnel(home) is None
    assert tunnel.stop_running(home) is None  # and this test process got no SIGTERM
