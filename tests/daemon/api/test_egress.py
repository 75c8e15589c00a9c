"""One scrubber for everything that leaves the daemon (daemon/api/egress.py), on every path.

An upstream that quotes the workspace key - in an error body, a whole answer, or a header such as a
request id - must not hand it to the client, whichever front door the request came in by: the
relay, gate and execute modes, the LLM routing API or the platform endpoints. The key is only ever
compared into booleans here, so a failing assertion cannot print it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
HELLO = [{"role": "user", "content": "hello"}]
QUOTED = {"error": {"message": f"key {WORKSPACE_KEY} is over quota", "code": "QUOTA",
                    "details": {"api_key": WORKSPACE_KEY}}}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, daemon: Daemon, path: str, body: Any = None,
               method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    async with http.request(method, daemon.url + path, data=None if body is None else orjson.dumps(body),
                            headers={**daemon.auth(), "Content-Type": "application/json", **(headers or {})}) as r:
        return r.status, repr(sorted(r.headers.items())), await r.read()


def leaked(headers: str, body: bytes) -> bool:
    return WORKSPACE_KEY in headers or WORKSPACE_KEY.encode() in body


def config_for(root: Path, mode: str) -> str:
    return f'[workspaces.default]\nroot = "{root}"\ntools = "{mode}"\n'


@pytest.mark.parametrize("mode", ["gate", "execute"])
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_modes_scrub_an_upstream_error_quoting_the_key(
    standin: StandIn, start_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession, mode: str,
    stream: bool,
) -> None:
    daemon = await start_daemon(config=config_for(tmp_path, mode), env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(402, body=QUOTED)
    status, headers, body = await call(http, daemon, "/v1/chat/completions",
                                       {"model": MODEL, "messages": HELLO, "stream": stream})
    assert status == 402
    assert not leaked(headers, body), f"{mode} mode passed the workspace key to the client"
    assert orjson.loads(body)["error"]["message"] == "key [redacted] is over quota"


async def test_routing_api_and_platform_scrub_an_error_quoting_the_key(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    for path, body in (("/api/v1/llm/completions", {"model": MODEL, "messages": HELLO}),
                       ("/api/v1/llm/completions/stream", {"model": MODEL, "messages": HELLO}),
                       ("/v1/playground/inference", {"model": MODEL, "prompt": "hi"}),
                       ("/v1/fine-tune", {"model": MODEL, "dataset": "ds"})):
        standin.api.fail_next(400, body=QUOTED)
        status, headers, answer = await call(http, daemon, path, body)
        assert status == 400, path
        assert not leaked(headers, answer), f"{path} passed the workspace key to the client"
        assert b"[redacted]" in answer, path


@pytest.fixture
async def echoing_upstream(aiohttp_server: Any) -> str:
    """A hosted API that echoes the key it was sent in a request-id header and in a whole body."""

    async def chat(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = {"id": "c1", "object": "chat.completion", "model": MODEL, "note": f"billed to {sent}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                             "finish_reason": "stop"}]}
        status = 500 if (await request.json()).get("fail") else 200
        return web.json_response(body, status=status, headers={"X-Request-Id": f"req-{sent}"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "data": [{"id": MODEL}], "count": 1})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/api/agent/models", models)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("fail", [False, True])
async def test_a_key_echoed_in_a_header_or_a_whole_answer_is_scrubbed(
    echoing_upstream: str, start_daemon: StartDaemon, http: aiohttp.ClientSession, fail: bool
) -> None:
    daemon = await start_daemon(config="[upstream]\nmax_retries = 0\n", env={"LLMTUNE_BASE_URL": echoing_upstream})
    status, headers, body = await call(http, daemon, "/v1/chat/completions",
                                       {"model": MODEL, "messages": HELLO, "fail": fail})
    assert status == (500 if fail else 200)
    assert not leaked(headers, body), "the key echoed by the upstream reached the client"
    assert "req-[redacted]" in headers
    assert orjson.loads(body)["note"] == "billed to [redacted]"


async def test_a_header_carrying_a_backend_key_is_scrubbed(
    aiohttp_server: Any, start_daemon: StartDaemon, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend_key = "gw-key-0123456789abcdef"  # a local backend's key, read from the environment

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"X-Request-Id": request.headers["Authorization"]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    monkeypatch.setenv("GATEWAY_KEY", backend_key)
    config = (f'[backends.gw]\ntype = "openai"\nurl = "{server.make_url("/v1")}"\napi_key_env = "GATEWAY_KEY"\n'
              'models = ["m"]\n')
    daemon = await start_daemon(config=config)
    status, headers, _ = await call(http, daemon, "/v1/chat/completions", {"model": "gw/m", "messages": HELLO})
    assert status == 200
    assert backend_key not in headers
    assert "Bearer [redacted]" in headers
