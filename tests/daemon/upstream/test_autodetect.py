"""autodetect.py: local model servers found on their ports with no backend configured.

A real llama.cpp server (tests/support/llama_fixture.py) stands on a port named in
`[autodetect] ports`; the daemon is the real one on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from llmtune_companion.cli.models import _format_status
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import ConfigError, read_settings
from llmtune_companion.upstream.autodetect import same_server

from tests.conftest import Daemon, StartDaemon
from tests.support.llama_server import LlamaServerProcess

WAIT = 15.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def model_ids(http: aiohttp.ClientSession, daemon: Daemon, *, refresh: bool = True) -> list[str]:
    headers = {**daemon.auth(), **({"Cache-Control": "no-cache"} if refresh else {})}
    async with http.get(daemon.url + "/v1/models", headers=headers) as response:
        assert response.status == 200
        return [m["id"] for m in (await response.json())["data"]]


async def status(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(daemon.url + "/companion/v1/status", headers=daemon.auth(daemon.control_token)) as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def probed(http: aiohttp.ClientSession, daemon: Daemon) -> bool:
    return (await status(http, daemon))["autodetect"]["probed_at"] is not None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_llama_server_on_a_listed_port_is_found_and_answers(
    start_daemon: StartDaemon, llama_server: LlamaServerProcess, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=f"[autodetect]\nports = {{ llamacpp = {llama_server.port} }}\n", key=None)
    model = f"llamacpp/{llama_server.alias}"

    async def listed() -> bool:
        return model in await model_ids(http, daemon)

    await eventually(listed, f"{model} in /v1/models")
    client = daemon.openai()
    reply = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert reply.http_response.headers["X-Companion-Backend"] == "llamacpp"
    assert reply.parse().choices[0].message.content is not None
    completion = await client.completions.create(model=model, prompt="def f(", max_tokens=3)
    assert completion.choices[0].text is not None

    report = await status(http, daemon)
    assert report["autodetect"]["found"] == [{"name": "llamacpp", "url": llama_server.base_url, "backend": True}]
    assert {"name": "llamacpp", "type": "openai", "url": llama_server.base_url} in report["backends"]
    shown = _format_status({"running": True, "url": daemon.url, "settings_dir": "x", **report})
    assert f"detected:  llamacpp at {llama_server.base_url}" in shown


async def test_a_configured_backend_on_the_same_url_wins(
    start_daemon: StartDaemon, llama_server: LlamaServerProcess, http: aiohttp.ClientSession
) -> None:
    config = (f"[autodetect]\nports = {{ llamacpp = {llama_server.port} }}\n"
              f'[backends.gpu]\nurl = "http://localhost:{llama_server.port}/v1"\n')
    daemon = await start_daemon(config=config, key=None)
    await eventually(lambda: probed(http, daemon), "a probe")
    report = await status(http, daemon)
    assert report["autodetect"]["found"] == [{"name": "llamacpp", "url": llama_server.base_url, "backend": False}]
    assert "llamacpp" not in {b["name"] for b in report["backends"]}
    ids = await model_ids(http, daemon)
    assert f"gpu/{llama_server.alias}" in ids and f"llamacpp/{llama_server.alias}" not in ids
    assert "not used: a configured backend" in _format_status({"running": True, "url": "u", "settings_dir": "x",
                                                                **report})


async def test_turned_off(start_daemon: StartDaemon, llama_server: LlamaServerProcess,
                          http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(
        config=f"[autodetect]\nenabled = false\nports = {{ llamacpp = {llama_server.port} }}\n", key=None)
    await eventually(lambda: probed(http, daemon), "a probe")
    assert not any(m.startswith("llamacpp/") for m in await model_ids(http, daemon))
    report = await status(http, daemon)
    assert report["autodetect"]["enabled"] is False and report["autodetect"]["found"] == []
    assert "detected:  off" in _format_status({"running": True, "url": "u", "settings_dir": "x", **report})


async def test_a_silent_port_never_holds_up_a_request(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    # Listening but never answering: the connection is accepted by the kernel, the probe waits for its timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        daemon = await start_daemon(config=f"[autodetect]\ntimeout = 3.0\nports = {{ ollama = {port} }}\n", key=None)
        started = time.monotonic()
        assert await model_ids(http, daemon) == ["echo"]
        async with http.post(daemon.url + "/v1/chat/completions", headers=daemon.auth(),
                             json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 200
        assert time.monotonic() - started < 2.0  # well inside the probe's 3 s
        assert not await probed(http, daemon)  # the probe is still waiting
        await eventually(lambda: probed(http, daemon), "the probe's timeout")
        assert (await status(http, daemon))["autodetect"]["found"] == []


async def test_servers_that_come_and_go(start_daemon: StartDaemon, http: aiohttp.ClientSession,
                                        aiohttp_server: Any) -> None:
    """A model list that appears is picked up at the next list refresh, and dropped when it goes away;
    a port answering something else than a model list is not a model server."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "coder", "object": "model"}]})

    async def not_a_list(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    lists, other = web.Application(), web.Application()
    lists.router.add_get("/v1/models", models)
    other.router.add_get("/v1/models", not_a_list)
    other_server = await aiohttp_server(other)
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    daemon = await start_daemon(
        config=f"[autodetect]\nports = {{ vllm = {port}, lmstudio = {other_server.port} }}\n", key=None)
    await eventually(lambda: probed(http, daemon), "a probe")
    assert await model_ids(http, daemon) == ["echo"]

    runner = web.AppRunner(lists)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async def appeared() -> bool:
            return "vllm/coder" in await model_ids(http, daemon)

        await eventually(appeared, "vllm/coder after a refresh")
        async with http.post(daemon.url + "/v1/chat/completions", headers=daemon.auth(),
                             json={"model": "vllm/nope", "messages": [{"role": "user", "content": "x"}]}) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"
    finally:
        await runner.cleanup()

    async def gone() -> bool:
        return "vllm/coder" not in await model_ids(http, daemon)

    await eventually(gone, "vllm/coder gone after a refresh")
    assert (await status(http, daemon))["autodetect"]["found"] == []


def test_ports_are_validated(tmp_path: Any) -> None:
    paths = Paths(tmp_path)
    for text, expected in (
        ("[autodetect]\nports = { foo = 1 }\n", "autodetect.ports.foo"),
        ("[autodetect]\nports = { vllm = 0 }\n", "port 0 is not between 1 and 65535"),
        ("[autodetect]\nports = { vllm = \"8000\" }\n", "autodetect.ports.vllm"),
        ("[autodetect]\nenabled = \"no\"\n", "autodetect.enabled"),
        ("[autodetect]\nport = 1\n", "unknown key (expected one of: enabled, ports, timeout)"),
        ("[autodetect]\ntimeout = 0\n", "autodetect.timeout"),
    ):
        paths.config_file.write_text(text)
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            read_settings(paths.config_file)


def test_same_server() -> None:
    assert same_server("http://127.0.0.1:8080/v1", "http://localhost:8080/v1/")
    assert same_server("http://[::1]:8080/v1", "http://127.0.0.1:8080/v1")
    assert not same_server("http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1")
    assert not same_server("http://127.0.0.1:8080/v1", "http://gpu.lan:8080/v1")
    assert not same_server("http://127.0.0.1:8080/v1", "http://[bad")
