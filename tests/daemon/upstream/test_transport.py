"""Upstream transport for real networks (issue 8): per-backend pools, a real forward proxy, TLS trust.

The proxy is Debian's tinyproxy, started here on a free loopback port with its own config file. The
hosted API's name, `api.hosted.test`, resolves nowhere: tinyproxy hands every request for it to the
hosted stand-in (its `upstream` rule), so a request only arrives if it went through the proxy. With
NO_PROXY naming the host, the daemon goes direct - and cannot resolve it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from llmtune_companion.adapters.session import make_session

from tests.conftest import WORKSPACE_KEY, StandIn, StartDaemon
from tests.support.system import require_executable

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
HELLO: list[Any] = [{"role": "user", "content": "hello through the proxy"}]
HOSTED_NAME = "api.hosted.test"
PROXY_USER, PROXY_PASSWORD = "alice", "s3cret-proxy"
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
                   "ALL_PROXY", "all_proxy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tinyproxy:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    @property
    def url(self) -> str:
        return f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Request (file descriptor" in line]


@pytest.fixture
def tinyproxy(standin: StandIn, tmp_path: Path) -> Iterator[Tinyproxy]:
    binary = require_executable("tinyproxy")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    config = tmp_path / "tinyproxy.conf"
    standin_port = standin.server.port
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nLogFile \"{log}\"\nMaxClients 50\n"
        f"Allow 127.0.0.1\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"
        f'upstream http 127.0.0.1:{standin_port} ".hosted.test"\n', encoding="utf-8")
    process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("tinyproxy did not start") from None
                time.sleep(0.05)
        yield Tinyproxy(port, log)
    finally:
        process.terminate()
        process.wait(5)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def test_hosted_chat_and_streams_go_through_the_proxy(
    no_proxy_env: None, tinyproxy: Tinyproxy, standin: StandIn, start_daemon: StartDaemon
) -> None:
    # NO_PROXY as people set it: this test's SDK reaches the daemon directly, the daemon the hosted API by proxy.
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": f"http://{HOSTED_NAME}",
                                     "HTTP_PROXY": tinyproxy.url, "http_proxy": tinyproxy.url,
                                     "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    client = daemon.openai()
    reply = await client.chat.completions.create(model=MODEL, messages=HELLO)
    assert reply.choices[0].message.content
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == reply.choices[0].message.content
    chats = [r for r in standin.api.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 2
    assert all(r.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}" for r in chats)
    assert all(r.headers.get("Host") == HOSTED_NAME for r in chats)
    assert len([line for line in tinyproxy.requests() if "/chat/completions" in line]) == 2


async def test_no_proxy_bypasses_the_proxy(
    no_proxy_env: None, tinyproxy: Tinyproxy, standin: StandIn, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": f"http://{HOSTED_NAME}",
                                     "HTTP_PROXY": tinyproxy.url, "http_proxy": tinyproxy.url,
                                     "NO_PROXY": HOSTED_NAME, "no_proxy": HOSTED_NAME})
    async with aiohttp.ClientSession() as http, http.post(
        daemon.base_url + "/chat/completions", headers=daemon.auth(), json={"model": MODEL, "messages": HELLO}
    ) as response:
        body = await response.json()
    assert response.status == 502 and body["error"]["code"] == "upstream_unreachable"
    assert tinyproxy.requests() == [], "NO_PROXY named the host, yet the proxy was used"
    assert not [r for r in standin.api.requests if r.path.endswith("/chat/completions")]


async def test_wrong_proxy_credentials_fail_without_showing_them(
    no_proxy_env: None, tinyproxy: Tinyproxy, start_daemon: StartDaemon
) -> None:
    wrong = f"http://{PROXY_USER}:nope-{PROXY_PASSWORD}@127.0.0.1:{tinyproxy.port}"
    daemon = await start_daemon(config="[upstream]\nmax_retries = 0\n",
                                env={"LLMTUNE_BASE_URL": f"http://{HOSTED_NAME}", "HTTP_PROXY": wrong,
                                     "http_proxy": wrong})
    async with aiohttp.ClientSession() as http, http.post(
        daemon.base_url + "/chat/completions", headers=daemon.auth(), json={"model": MODEL, "messages": HELLO}
    ) as response:
        body = await response.read()
    # tinyproxy answers 401 (not 407) to bad credentials; a 407 becomes our 502 upstream_unreachable.
    assert response.status in (401, 502)
    assert PROXY_PASSWORD.encode() not in body


async def test_one_slow_backend_does_not_starve_another(
    aiohttp_server: Any, start_daemon: StartDaemon
) -> None:
    release = asyncio.Event()

    async def hung(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"late": True})

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({"id": "c", "object": "chat.completion", "choices": []})

    slow_app, fast_app = web.Application(), web.Application()
    slow_app.router.add_post("/v1/chat/completions", hung)
    fast_app.router.add_post("/v1/chat/completions", quick)
    slow, fast = await aiohttp_server(slow_app), await aiohttp_server(fast_app)
    config = ("[upstream]\npool_size = 2\npool_timeout = 0.5\nmax_retries = 0\n"
              f'[backends.slow]\ntype = "openai"\nurl = "{slow.make_url("/v1")}"\nmodels = ["m"]\n'
              f'[backends.fast]\ntype = "openai"\nurl = "{fast.make_url("/v1")}"\nmodels = ["m"]\n')
    daemon = await start_daemon(config=config)
    async with aiohttp.ClientSession() as http:
        async def chat(model: str) -> tuple[int, dict[str, Any]]:
            async with http.post(daemon.base_url + "/chat/completions", headers=daemon.auth(),
                                 json={"model": model, "messages": HELLO}) as response:
                return response.status, await response.json()

        stuck = [asyncio.create_task(chat("slow/m")) for _ in range(2)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        status, _ = await asyncio.wait_for(chat("fast/m"), 5)
        assert status == 200 and time.monotonic() - started < 0.4, "the fast backend waited behind the slow one"
        status, body = await asyncio.wait_for(chat("slow/m"), 5)
        assert status == 503 and body["error"]["code"] == "upstream_pool_timeout"
        release.set()
        assert [(await task)[0] for task in stuck] == [200, 200]


async def test_tls_is_checked_against_the_trust_store_or_the_ca_bundle(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    bundle = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        async with make_session(ca_bundle=None, max_header_bytes=65536) as system_trust:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await system_trust.get(url)  # an unknown CA: refused
        async with make_session(ca_bundle=str(bundle), max_header_bytes=65536) as corporate:
            async with corporate.get(url) as response:
                assert (await response.json()) == {"ok": True}
    finally:
        await runner.cleanup()
